"""``$schedule`` (profiles/OperationDefinition-ResearchSubject-schedule.json): a subject's planned
visits from the protocol version its site runs.

``POST [base]/ResearchSubject/[id]/$schedule`` with optional ``anchor`` (Day 1; default the
enrolment date, ``ctms.subjects.enrolment_date``) and ``date`` (the evaluation date; default
today, UTC). The handler reads, in one read session, the subject, its site (a ``ctms-site``
ResearchStudy), the protocol the site runs on ``date`` (its ``site-protocol`` entry with the latest
``effective`` not after it; else the site's ``protocol``; else that of the study above it, through
``partOf``), the subject's CarePlan (identifier ``visit-plan|<id>``), its Appointments and
Encounters (by ``subject`` = the Patient). ``ctms.schedule.plan`` decides what changes (the rules
are in that module's docstring); the changes are ONE transaction Bundle run through
``interactions.bundle.transaction``, so each write gets its version, Provenance and AuditEvent and
a failure writes nothing. New resources are conditional creates on their identifier and updates
carry ``If-Match`` with the version read, so two concurrent calls cannot duplicate a visit or
overwrite each other (the loser fails with 412 and may simply be repeated). Unchanged resources
are not in the Bundle (no version); when nothing changes no transaction runs. The call itself is
always recorded as one AuditEvent (restful-interaction ``operation``, action E, the subject as
entity).

Errors: an unknown subject 404 (deleted 410); bad parameters 400; a subject whose study is not a
site, a site running no protocol, a protocol that cannot be found or has no usable timing, a
subject not enrolled without ``anchor``: 422, each with a sentence saying which.

The reads are not filtered by the token's scopes: ``$schedule`` needs an unconditional
``system/`` or ``user/`` scope with ``u`` on ResearchSubject (``interactions/access.py``), and each
write of the transaction is checked against the token like any transaction entry.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import urlencode

from ..audit import records
from ..ctms import schedule as soa
from ..ctms import subjects
from ..errors import BadRequest, Gone, NotFound, Unprocessable
from ..interactions import bundle  # a module: bundle -> table -> operations -> here
from ..interactions.context import Context, FhirRequest, FhirResponse, etag, instant, now_us
from ..interactions.persist import record_security_event
from ..resources.json import loads
from ..search.parse import parse
from ..storage.repository import Session

_INPUTS = {"anchor", "date"}
_PAGE = 500
SITE_LEVEL = ("http://fhir-ctms.org/fhir/CodeSystem/study-level", "site")


async def schedule(req: FhirRequest, ctx: Context, params: list[tuple[str, Any]]) -> FhirResponse:
    unknown = sorted({name for name, _ in params} - _INPUTS)
    if unknown:
        raise BadRequest(f"$schedule: unknown parameter(s) {', '.join(unknown)}")
    anchor = _date_param(params, "anchor")
    on = _date_param(params, "date") or dt.datetime.now(dt.timezone.utc).date()
    rid = req.id or ""

    async with ctx.repo.session(write=False) as s:
        subject = await _current(s, "ResearchSubject", rid, missing=NotFound)
        patient = _reference(subject.get("subject"), "Patient")
        if patient is None:
            raise Unprocessable(f"ResearchSubject/{rid}: subject must reference a Patient")
        site_id = _reference(subject.get("study"), "ResearchStudy")
        if site_id is None:
            raise Unprocessable(f"ResearchSubject/{rid}: study must reference the site's ResearchStudy")
        site = await _current(s, "ResearchStudy", site_id, missing=Unprocessable)
        if not _is_site(site):
            raise Unprocessable(f"ResearchSubject/{rid}: its study ResearchStudy/{site_id} is not a site "
                                f"(classifier {SITE_LEVEL[0]}|site)")
        protocol = await _protocol(s, site, site_id, on)
        status = subjects.classify(subject)
        stopped = status.withdrawn or status.screen_failure
        anchor = anchor or subjects.enrolment_date(subject)
        if anchor is None and not stopped:
            raise Unprocessable(f"ResearchSubject/{rid} is not enrolled (no on-study progress entry): "
                                "give the anchor parameter (the planned Day 1) to schedule its visits")
        plans = await _all(s, "CarePlan", [("identifier", f"{soa.PLAN_SYSTEM}|{rid}")])
        if len(plans) > 1:
            raise Unprocessable(f"ResearchSubject/{rid} has {len(plans)} visit plans "
                                f"(CarePlan?identifier={soa.PLAN_SYSTEM}|{rid}); one is expected")
        appointments = [a for a in await _all(s, "Appointment", [("subject", f"Patient/{patient}")])
                        if soa.action_of(a.resource, rid) is not None]
        encounters = [e.resource for e in await _all(s, "Encounter", [("subject", f"Patient/{patient}")])]

    result = soa.plan(subject_id=rid, patient=f"Patient/{patient}", protocol=protocol, anchor=anchor,
                      on=on, existing_plan=plans[0] if plans else None, appointments=appointments,
                      encounters=encounters, stopped=stopped)
    written = await _write(ctx, result)
    await _audit(ctx, rid, result)
    return FhirResponse(200, body=_output(result, written, anchor, on))


def _date_param(params: list[tuple[str, Any]], name: str) -> dt.date | None:
    values = [v for n, v in params if n == name]
    if not values:
        return None
    value = values[-1]
    try:
        if not isinstance(value, str) or len(value) != 10:
            raise ValueError
        return dt.date.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"$schedule: {name} must be a date (YYYY-MM-DD), not {value!r}") from None


def _reference(ref: Any, rtype: str) -> str | None:
    value = ref.get("reference") if isinstance(ref, dict) else None
    if not isinstance(value, str):
        return None
    parts = value.split("/_history/")[0].split("/")
    return parts[-1] if len(parts) >= 2 and parts[-2] == rtype and parts[-1] else None


async def _current(s: Session, rtype: str, rid: str, *, missing: type) -> dict[str, Any]:
    st = await s.current(rtype, rid)
    if st is None or st.content is None:
        raise missing(f"{rtype}/{rid} does not exist")
    if st.deleted:
        raise (Gone if missing is NotFound else missing)(f"{rtype}/{rid} is deleted")
    return loads(st.content)


async def _all(s: Session, rtype: str, criteria: list[tuple[str, str]]) -> list[soa.Stored]:
    q = parse((rtype,), criteria, strict=True)
    out: list[soa.Stored] = []
    after = None
    while True:
        rows = await s.search(q, limit=_PAGE, after=after)
        out += [soa.Stored(loads(st.content), st.id, st.version) for st, _ in rows if st.content]
        if len(rows) < _PAGE:
            return out
        after = rows[-1][1]


def _is_site(study: dict[str, Any]) -> bool:
    return any(isinstance(c, dict) and (c.get("system"), c.get("code")) == SITE_LEVEL
               for cc in study.get("classifier") or [] if isinstance(cc, dict)
               for c in cc.get("coding") or [])


async def _protocol(s: Session, site: dict[str, Any], site_id: str, on: dt.date) -> dict[str, Any]:
    """The protocol PlanDefinition the site runs on ``on``."""
    canonical = soa.site_protocol(site, on)
    if canonical is not None:
        url, _, version = canonical.partition("|")
        criteria = [("url", url)] + ([("version", version)] if version else [])
        found = await _all(s, "PlanDefinition", criteria)
        if len(found) != 1:
            raise Unprocessable(f"ResearchStudy/{site_id} runs the protocol {canonical} (site-protocol), "
                                f"which matches {len(found)} PlanDefinitions; exactly one is needed")
        return found[0].resource
    study, seen = site, {site_id}
    while True:  # the site's own protocol, else the country's, else the study's
        refs = [r for r in study.get("protocol") or [] if _reference(r, "PlanDefinition")]
        if refs:
            pid = _reference(refs[0], "PlanDefinition") or ""
            return await _current(s, "PlanDefinition", pid, missing=Unprocessable)
        parents = [_reference(r, "ResearchStudy") for r in study.get("partOf") or []]
        parent = next((p for p in parents if p), None)
        if parent is None or parent in seen:
            raise Unprocessable(f"ResearchStudy/{site_id} runs no protocol on {on.isoformat()}: no "
                                "site-protocol entry in effect and no protocol on the site or its study")
        seen.add(parent)
        study = await _current(s, "ResearchStudy", parent, missing=Unprocessable)


def _entry(change: soa.Change, full_url: str | None = None) -> dict[str, Any]:
    res = {k: v for k, v in (change.resource or {}).items() if k != "meta"}
    meta = {k: v for k, v in ((change.resource or {}).get("meta") or {}).items()
            if k not in ("versionId", "lastUpdated")}
    if meta:
        res["meta"] = meta
    if change.id is None:
        system = soa.PLAN_SYSTEM if change.resource_type == "CarePlan" else soa.VISIT_SYSTEM
        value = next(i["value"] for i in res["identifier"] if i.get("system") == system)
        request = {"method": "POST", "url": change.resource_type,
                   "ifNoneExist": urlencode({"identifier": f"{system}|{value}"})}
    else:
        res["id"] = change.id
        request = {"method": "PUT", "url": f"{change.resource_type}/{change.id}",
                   "ifMatch": etag(change.version or 0)}
    entry: dict[str, Any] = {"resource": res, "request": request}
    if full_url:
        entry["fullUrl"] = full_url
    return entry


async def _write(ctx: Context, result: soa.Plan) -> dict[int, tuple[str, int]]:
    """Run the changes as one transaction; (id, version) of each written change (by ``id()``)."""
    changes = [c for c in (result.care_plan, *result.visits) if c.writes]
    if not changes:
        return {}
    entries = [_entry(c, soa.PLAN_PLACEHOLDER if c is result.care_plan and c.id is None else None)
               for c in changes]
    body = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    res = await bundle.transaction(body, ctx, "minimal")
    out: dict[int, tuple[str, int]] = {}
    for c, e in zip(changes, res.body["entry"], strict=True):
        rid = e.get("fullUrl", "").rsplit("/", 1)[-1]
        version = int(e["response"].get("etag", 'W/"0"')[3:-1])
        out[id(c)] = (rid, version)
    return out


def _output(result: soa.Plan, written: dict[int, tuple[str, int]], anchor: dt.date | None,
            on: dt.date) -> dict[str, Any]:
    out: list[dict[str, Any]] = [{"name": "protocol", "valueCanonical": result.protocol}]
    if anchor is not None:
        out.append({"name": "anchor", "valueDate": anchor.isoformat()})
    out.append({"name": "date", "valueDate": on.isoformat()})
    cp = result.care_plan
    cp_id = written.get(id(cp), (cp.id, 0))[0]
    if cp_id:
        out.append({"name": "carePlan", "part": _parts(cp, cp_id)})
    counts: dict[str, int] = {}
    for ch in result.visits:
        counts[ch.kind] = counts.get(ch.kind, 0) + 1
        vid = written.get(id(ch), (ch.id, 0))[0]
        part = [{"name": "action", "valueString": ch.action_id or ""}, *_parts(ch, vid)]
        res = ch.resource or {}
        if res.get("requestedPeriod"):
            part.append({"name": "window", "valuePeriod": res["requestedPeriod"][0]})
        if res.get("start"):
            part.append({"name": "start", "valueDate": res["start"][:10]})
        out.append({"name": "visit", "part": part})
    for kind in ("created", "updated", "unchanged", "cancelled", "fulfilled", "kept", "skipped"):
        out.append({"name": kind, "valueInteger": counts.get(kind, 0)})
    return {"resourceType": "Parameters", "parameter": out}


def _parts(ch: soa.Change, rid: str | None) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"name": "result", "valueCode": ch.kind}]
    if rid:
        parts.append({"name": "resource", "valueReference": {"reference": f"{ch.resource_type}/{rid}"}})
    if ch.why:
        parts.append({"name": "reason", "valueString": ch.why})
    return parts


async def _audit(ctx: Context, rid: str, result: soa.Plan) -> None:
    """One AuditEvent for the call, whatever it changed (each write has its own as well)."""
    ts = now_us()
    why = ctx.reason or ctx.settings.default_reason
    record = records.audit_event(f"ResearchSubject/{rid}", "update", instant(ts), ctx.actor, why,
                                 ctx.settings.source_name)
    record["code"] = {"coding": [{"system": records.RESTFUL_INTERACTION, "code": "operation"}],
                      "text": "$schedule"}
    record["action"] = "E"
    counts: dict[str, int] = {}
    for ch in (result.care_plan, *result.visits):
        counts[ch.kind] = counts.get(ch.kind, 0) + 1
    record["entity"][0]["detail"] = [{"type": {"text": "protocol"}, "valueString": result.protocol}] + [
        {"type": {"text": kind}, "valueInteger": n} for kind, n in sorted(counts.items())]
    await record_security_event(ctx.repo, record, ts)
