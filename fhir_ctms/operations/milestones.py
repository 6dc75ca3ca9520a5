"""``$milestones`` (profiles/OperationDefinition-ResearchStudy-milestones.json): planned versus
actual milestones of a study, its countries and sites, or of every study that matches a search
(the figures are defined in ``fhir_ctms/ctms/milestones.py``).

- ``GET|POST [base]/ResearchStudy/[id]/$milestones[?date=YYYY-MM-DD][&state=...]``: the study's
  milestones and those of its countries and sites. Invoked on a country or a site, the report is
  the study's restricted to that level and the levels under it (as ``$enrollment``).
- ``GET|POST [base]/ResearchStudy/$milestones[?date=...][&state=...][&<search parameters>]``:
  the same for every study-level ResearchStudy (classifier ``study-level|study``) the search
  finds. Every input other than ``date`` and ``state`` is a ResearchStudy search parameter
  (``status``, ``phase``, ``identifier``, ``title``, ``region``, ``sponsor`` (the custom
  SearchParameter ``ResearchStudy-sponsor``: a sponsor's portfolio), ``_id``, ``_lastUpdated``...; a
  POST gives them as string parameters): they go through the server's search parser (an
  unknown or unsupported one is a 400), AND-ed with the classifier; the result parameters
  (``_count``, ``_sort``, ``_include``...) are refused, and ResearchStudy's own ``date`` search
  parameter cannot be used (``date`` is the evaluation date).

``affectsState`` false. Studies, their countries and sites (``part-of``, two levels) and their
ResearchSubjects (``study``) are read through searches on one read session guarded by the
request's token, as ``$enrollment`` reads them; once a study's enrolment is closed and every
enrolled subject is off study, their ``ctms-visit-plan`` CarePlans and the completed Encounters
based on them too (``last-subject-last-visit``). ``date``: the evaluation date (default today,
UTC). ``state``: keep only milestones in these states (comma-separated and/or repeated: ``met``,
``met-late``, ``overdue``, ``at-risk``, ``upcoming``). ``_format=csv``: text/csv, one row per
milestone.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from typing import Any

from ..ctms import enrollment as en
from ..ctms import milestones as ms
from ..ctms import tree
from ..ctms.subjects import parse_date
from ..errors import BadRequest
from ..interactions.access import require_whole, wrap
from ..interactions.context import Context, FhirRequest, FhirResponse
from ..search.parse import parse
from ..storage.repository import Session
from .enrollment import CSV_FORMATS, _as_of

_OWN = {"date", "state"}
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
VISIT_PLAN = "http://fhir-ctms.org/fhir/sid/visit-plan"
#: search result parameters: they shape a Bundle, which this operation does not return
_RESULT = {"_count", "_sort", "_include", "_revinclude", "_summary", "_elements", "_total",
           "_contained", "_containedType", "_maxresults", "_graph", "_score", "_format", "_pretty"}
LEVEL_SYSTEM = en.LEVEL_SYSTEM

COLUMNS = ("study", "level", "reference", "title", "system", "code", "display", "planned",
           "actual", "source", "derived", "forecast", "forecastNote", "variance", "state",
           "discrepancyRecorded", "discrepancyDerived")


async def milestones(req: FhirRequest, ctx: Context, params: list[tuple[str, Any]]) -> FhirResponse:
    instance = req.id is not None
    if instance:
        unknown = sorted({name for name, _ in params} - _OWN)
        if unknown:
            raise BadRequest(f"$milestones: unknown parameter(s) {', '.join(unknown)}")
    as_of = _date([v for n, v in params if n == "date"])
    states = _states([v for n, v in params if n == "state"])
    require_whole(ctx, ("ResearchStudy", "ResearchSubject", "CarePlan", "Encounter"), "milestones")
    search = [(n, v) for n, v in params if n not in _OWN]
    for n, v in search:
        if n.split(":")[0] in _RESULT:
            raise BadRequest(f"$milestones: the search result parameter {n} is not supported")
        if not isinstance(v, str):
            raise BadRequest(f"$milestones: the search parameter {n} must be a string")
    found: list[ms.Milestone] = []
    async with ctx.repo.session(write=False) as raw:
        s = wrap(ctx, None, raw)
        if instance:
            asked = await tree.read_study(s, req.id or "")
            top = asked
            for _ in range(2):  # a site's country, a country's study
                parent = en.ref_id(next(iter(top.get("partOf") or []), None))
                if en.level_of(top) == "study" or parent is None:
                    break
                top = await tree.read_study(s, parent)
            studies = [top]
        else:
            q = parse(("ResearchStudy",), [*search, ("classifier", f"{LEVEL_SYSTEM}|study")],
                      strict=True)
            studies = await tree.search_all(s, q)
        for top in sorted(studies, key=lambda x: x.get("id", "")):
            children, subjects = await tree.study_tree(s, top)
            whose = ms.visit_subjects(top, children, subjects, as_of)
            visits = await _visits(s, whose) if whose is not None else None
            got = ms.milestones(top, children, subjects, as_of, visits=visits)
            if instance and asked["id"] != top["id"]:
                got = [m for m in got if m.study in _subtree(children, asked["id"])]
            found += got
    if states:
        found = [m for m in found if m.state in states]
    if req.param("_format") in CSV_FORMATS:
        return FhirResponse(200, raw=_csv(found), headers={"Content-Type": "text/csv; charset=utf-8"})
    return FhirResponse(200, body=_parameters(as_of, found))


def _subtree(children: list[dict[str, Any]], root: str) -> set[str]:
    """The ids of ``root`` and the levels under it (a country's sites)."""
    keep = {root}
    for c in sorted(children, key=lambda c: en.level_of(c) != "country"):
        if en.ref_id(next(iter(c.get("partOf") or []), None)) in keep:
            keep.add(c["id"])
    return keep


def _date(values: list[Any]) -> dt.date:
    return _as_of(values, "milestones")


def _states(values: list[Any]) -> set[str]:
    out: set[str] = set()
    for v in values:
        if not isinstance(v, str):
            raise BadRequest("$milestones: state must be a code")
        for code in v.split(","):
            code = code.strip()
            if code not in ms.STATES:
                raise BadRequest(f"$milestones: unknown state {code!r} (one of {', '.join(ms.STATES)})")
            out.add(code)
    return out


async def _visits(s: Session, subjects: list[str]) -> dict[str, list[dt.date]]:
    """The dates (``actualPeriod.start``) of the completed visits of ``subjects``: their
    ``ctms-visit-plan`` CarePlans (identifier ``visit-plan|<ResearchSubject id>``), then the
    completed Encounters ``basedOn`` them (profiles/README.md, the schedule of activities)."""
    plans: dict[str, str] = {}
    for plan in await tree.search(s, "CarePlan", "identifier", [f"{VISIT_PLAN}|{i}" for i in subjects]):
        for ident in plan.get("identifier") or []:
            if ident.get("system") == VISIT_PLAN and ident.get("value") in subjects:
                plans[plan["id"]] = ident["value"]
    out: dict[str, list[dt.date]] = {}
    for enc in await tree.search(s, "Encounter", "based-on", [f"CarePlan/{i}" for i in sorted(plans)],
                                 also=(("status", "completed"),)):
        day = parse_date((enc.get("actualPeriod") or {}).get("start"))
        for ref in enc.get("basedOn") or []:
            plan = en.ref_id(ref, "CarePlan")
            if day is not None and plan in plans:
                out.setdefault(plans[plan], []).append(day)
    return out


def _row(m: ms.Milestone) -> dict[str, Any]:
    d = m.discrepancy
    return {
        "study": f"ResearchStudy/{m.top}", "level": m.level, "reference": m.reference,
        "title": m.title, "system": m.system, "code": m.code, "display": m.display,
        "planned": m.planned, "actual": m.actual, "source": m.source, "derived": m.derived,
        "forecast": m.forecast, "forecastNote": m.forecast_note, "variance": m.variance,
        "state": m.state, "discrepancyRecorded": d.recorded if d else None,
        "discrepancyDerived": d.derived if d else None,
    }


def _parameters(as_of: dt.date, found: list[ms.Milestone]) -> dict[str, Any]:
    out: list[dict[str, Any]] = [{"name": "date", "valueDate": as_of.isoformat()}]
    for m in found:
        parts: list[dict[str, Any]] = [
            {"name": "study", "valueReference": {"reference": f"ResearchStudy/{m.top}"}},
            {"name": "level", "valueCode": m.level},
            {"name": "reference", "valueReference": {"reference": m.reference,
                                                     **({"display": m.title} if m.title else {})}},
            {"name": "milestone", "valueCoding": {k: v for k, v in (
                ("system", m.system), ("code", m.code), ("display", m.display)) if v}},
        ]
        for name, value in (("planned", m.planned), ("actual", m.actual)):
            if value is not None:
                parts.append({"name": name, "valueDate": value.isoformat()})
        if m.source:
            parts.append({"name": "source", "valueCode": m.source})
        if m.derived is not None:
            parts.append({"name": "derived", "valueDate": m.derived.isoformat()})
        if m.forecast is not None:
            parts.append({"name": "forecast", "valueDate": m.forecast.isoformat()})
        if m.forecast_note:
            parts.append({"name": "forecastNote", "valueString": m.forecast_note})
        if m.variance is not None:
            parts.append({"name": "variance", "valueInteger": m.variance})
        parts.append({"name": "state", "valueCode": m.state})
        if m.discrepancy is not None:
            d = m.discrepancy
            sub = [{"name": "recorded", "valueDate": d.recorded.isoformat()}]
            if d.derived is not None:
                sub.append({"name": "derived", "valueDate": d.derived.isoformat()})
            text = (f"recorded {d.recorded.isoformat()}, the data give {d.derived.isoformat()}"
                    if d.derived else
                    f"recorded {d.recorded.isoformat()}, the data show it has not happened")
            sub.append({"name": "text", "valueString": text})
            parts.append({"name": "discrepancy", "part": sub})
        out.append({"name": "milestone", "part": parts})
    return {"resourceType": "Parameters", "parameter": out}


def _csv(found: list[ms.Milestone]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(COLUMNS)
    for m in found:
        row = _row(m)
        w.writerow(["" if row[c] is None else
                    row[c].isoformat() if isinstance(row[c], dt.date) else row[c]
                    for c in COLUMNS])
    return buf.getvalue()
