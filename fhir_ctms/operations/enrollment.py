"""``$enrollment`` (profiles/OperationDefinition-ResearchStudy-enrollment.json): enrolment counts,
rates and the forecast of the date the target is reached, for a study, each of its countries and
each of its sites (the figures are defined in ``fhir_ctms/ctms/enrollment.py``, the model in
``fhir_ctms/ctms/forecast.py``).

``GET|POST [base]/ResearchStudy/[id]/$enrollment[?date=YYYY-MM-DD]``; ``affectsState`` false.
The study, its countries and sites (``part-of``, two levels: a site is ``partOf`` the study and
its country, found by both searches and counted once) and their ResearchSubjects
(``study``) are read through searches on one read session, guarded by the request's token like
any search (``interactions/access.py``: subjects the token cannot search are not counted).

On a country or a site the operation answers for that part of the study: the report is the
whole study's (the recruitment model is fitted over all its sites, so the figures are the same
as in the study's report), restricted to the level asked for and the levels under it.

``date``: the evaluation date (default: today, UTC): subjects' progress and milestones after it
are ignored, so a report can be reproduced. ``_format=csv`` (or ``text/csv``): the same figures
as text/csv, one row per level.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from typing import Any

from ..ctms import enrollment as en
from ..ctms import tree
from ..errors import BadRequest
from ..interactions.access import require_whole, wrap
from ..interactions.context import Context, FhirRequest, FhirResponse

_INPUTS = {"date"}
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
CSV_FORMATS = ("csv", "text/csv")

COLUMNS = ("level", "reference", "title", "partOf", "region", "target", "screened",
           "screenFailures", "enrolled", "active", "withdrawn", "completed", "percentOfTarget",
           "activated", "plannedActivation", "enrolmentClosed", "activeSites", "siteDays", "rate",
           "ratePerSite", "posteriorRate", "lagging", "laggingReason", "lagProbability",
           "targetMetOn", "forecastMedian", "forecastLow", "forecastHigh", "forecastNote")


async def enrollment(req: FhirRequest, ctx: Context, params: list[tuple[str, Any]]) -> FhirResponse:
    unknown = sorted({name for name, _ in params} - _INPUTS)
    if unknown:
        raise BadRequest(f"$enrollment: unknown parameter(s) {', '.join(unknown)}")
    as_of = _as_of([v for n, v in params if n == "date"])
    require_whole(ctx, ("ResearchStudy", "ResearchSubject"), "enrollment")
    async with ctx.repo.session(write=False) as raw:
        s = wrap(ctx, None, raw)
        asked = await tree.read_study(s, req.id or "")
        top = asked
        for _ in range(2):  # up to the study: a site is partOf its study (and its country)
            parents = [p for p in (en.ref_id(r) for r in top.get("partOf") or []) if p]
            if en.level_of(top) == "study" or not parents:
                break
            above = [await tree.read_study(s, p) for p in parents]
            top = next((a for a in above if en.level_of(a) == "study"), above[0])
        children, subjects = await tree.study_tree(s, top)
    rep = en.report(top, children, subjects, as_of)
    levels = _subtree(rep.levels, asked["id"])
    if req.param("_format") in CSV_FORMATS:
        return FhirResponse(200, raw=_csv(levels),
                            headers={"Content-Type": "text/csv; charset=utf-8"})
    return FhirResponse(200, body=_parameters(rep, levels))


def _as_of(values: list[Any], op: str = "enrollment") -> dt.date:
    """The evaluation date of a counting operation (``date``, default today UTC)."""
    if not values:
        return dt.datetime.now(dt.timezone.utc).date()
    if len(values) > 1:
        raise BadRequest(f"${op}: date may be given once")
    v = values[0]
    if not isinstance(v, str) or not _DATE.match(v):
        raise BadRequest(f"${op}: date must be a full date (YYYY-MM-DD), not {v!r}")
    try:
        return dt.date.fromisoformat(v)
    except ValueError:
        raise BadRequest(f"${op}: date {v!r} is not a valid date") from None


def _subtree(levels: list[en.Level], root: str) -> list[en.Level]:
    keep = {root}
    for lv in levels:  # study, countries, sites: parents come first
        if lv.part_of in keep:
            keep.add(lv.id)
    return [lv for lv in levels if lv.id in keep]


def _row(lv: en.Level) -> dict[str, Any]:
    """The figures of one level by column name (None: not applicable or unknown)."""
    c = lv.counts
    site = lv.level == "site"
    return {
        "level": lv.level, "reference": lv.reference, "title": lv.title,
        "partOf": f"ResearchStudy/{lv.part_of}" if lv.part_of else None,
        "region": lv.region, "target": lv.target, "screened": c.screened,
        "screenFailures": c.screen_failures, "enrolled": c.enrolled, "active": c.active,
        "withdrawn": c.withdrawn, "completed": c.completed, "percentOfTarget": lv.percent,
        "activated": lv.activated, "plannedActivation": lv.planned_activation if site else None,
        "enrolmentClosed": lv.enrolment_closed if site else None,
        "activeSites": lv.active_sites, "siteDays": lv.site_days, "rate": lv.rate,
        "ratePerSite": lv.rate_per_site, "posteriorRate": lv.posterior_rate,
        "lagging": lv.lagging, "laggingReason": lv.lagging_reason,
        "lagProbability": lv.lag_probability, "targetMetOn": lv.target_met_on,
        "forecastMedian": lv.forecast_median, "forecastLow": lv.forecast_low,
        "forecastHigh": lv.forecast_high, "forecastNote": lv.forecast_note,
    }


_INTEGERS = {"target", "screened", "screenFailures", "enrolled", "active", "withdrawn",
             "completed", "activeSites", "siteDays"}
_DECIMALS = {"percentOfTarget", "rate", "ratePerSite", "posteriorRate", "lagProbability"}
_DATES = {"activated", "plannedActivation", "enrolmentClosed", "targetMetOn", "forecastMedian",
          "forecastLow", "forecastHigh"}


def _part(name: str, value: Any, title: str | None = None) -> dict[str, Any]:
    if name in ("reference", "partOf"):
        ref: dict[str, Any] = {"reference": value}
        if title and name == "reference":
            ref["display"] = title
        return {"name": name, "valueReference": ref}
    if name in _INTEGERS:
        return {"name": name, "valueInteger": value}
    if name in _DECIMALS:
        return {"name": name, "valueDecimal": value}
    if name in _DATES:
        return {"name": name, "valueDate": value.isoformat()}
    if name == "lagging":
        return {"name": name, "valueBoolean": value}
    if name == "region":
        return {"name": name, "valueCode": value}
    return {"name": name, "valueString": value}


def _parameters(rep: en.Report, levels: list[en.Level]) -> dict[str, Any]:
    out: list[dict[str, Any]] = [{"name": "date", "valueDate": rep.date.isoformat()}]
    out.append({"name": "model", "part": _model(rep)})
    for lv in levels:
        row = _row(lv)
        parts = [_part(k, v, lv.title) for k, v in row.items()
                 if v is not None and k not in ("level", "title")]
        parts.append({"name": "targetMet", "valueBoolean": lv.target_met_on is not None
                      or (lv.target is not None and lv.counts.enrolled >= lv.target)})
        out.append({"name": lv.level, "part": parts})
    return {"resourceType": "Parameters", "parameter": out}


def _model(rep: en.Report) -> list[dict[str, Any]]:
    from ..ctms import forecast as fc
    f = rep.fit
    if f is None:
        return [{"name": "method", "valueCode": "none"},
                {"name": "note", "valueString": "no activated site with active days"}]
    parts: list[dict[str, Any]] = [
        {"name": "method", "valueCode": f.method},
        {"name": "alpha", "valueDecimal": round(f.alpha, 4)},
        {"name": "beta", "valueDecimal": round(f.beta, 4)},
        {"name": "meanRate", "valueDecimal": round(en.PER * f.mean_rate, 2)},
        {"name": "sites", "valueInteger": f.sites},
        {"name": "recruits", "valueInteger": f.recruits},
        {"name": "siteDays", "valueInteger": int(f.site_days)},
        {"name": "draws", "valueInteger": fc.DRAWS},
        {"name": "seed", "valueInteger": fc.SEED},
        {"name": "lagProbability", "valueDecimal": en.LAG_PROBABILITY},
        {"name": "lagMinDays", "valueInteger": en.LAG_MIN_DAYS},
    ]
    if f.lr is not None:
        parts.append({"name": "likelihoodRatio", "valueDecimal": round(f.lr, 3)})
    if f.note:
        parts.append({"name": "note", "valueString": f.note})
    return parts


def _csv(levels: list[en.Level]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(COLUMNS)
    for lv in levels:
        row = _row(lv)
        w.writerow(["" if row[c] is None else
                    ("true" if row[c] is True else "false" if row[c] is False else
                     row[c].isoformat() if isinstance(row[c], dt.date) else row[c])
                    for c in COLUMNS])
    return buf.getvalue()
