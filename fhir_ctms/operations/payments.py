"""``$payments`` (profiles/OperationDefinition-ResearchStudy-payments.json): what a study owes
each site for a period, and, with ``persist=true``, the ChargeItems and draft Invoices for it.

``GET|POST [base]/ResearchStudy/[id]/$payments?site=...&start=...&end=...``. ``site`` (optional,
repeatable: ``ResearchStudy/<id>`` or ``<id>``) must be a site of the study (else 422);
``start``/``end`` (YYYY-MM-DD, both optional, inclusive) bound the events by their date. The
figures are defined in ``fhir_ctms/ctms/payments.py``.

Reads (one read session, guarded by the token like any search): the study, its sites
(``part-of``, two levels, classifier ``site``), their ResearchSubjects, the subjects' Consents,
Appointments and Encounters (by ``subject`` = the Patients), the fee schedule (every ``active``
ChargeItemDefinition; those whose ``useContext`` ``program`` names the study are used), the
ChargeItems already made (identifier system ``sid/payable-event``), the site Invoices
(``sid/site-invoice``) and the PaymentNotices whose ``request`` is one of them.

``persist=true`` (POST only: the OperationDefinition says ``affectsState`` true and carries the
``read-only-unless`` extension naming ``persist``, so the registry lets GET through for the
read-only form and answers 405 to a GET with ``persist``): ONE write transaction (each write goes
through its interaction, as a transaction Bundle's entries do: version, Provenance and
AuditEvent, the token's guard; a failure writes nothing). Inside it, before anything is written,
the ChargeItems, Invoices, PaymentNotices and Groups are read again and the report computed
again from them: write transactions are serialised (SQLite: one writer; PostgreSQL: the
partition's writer lock, taken first), so two concurrent runs, with the same or different
periods, see each other's ChargeItems and invoices whole, and an event is never on two live
invoices. Then, for every site with something due, it

- creates the site's Group (``sid/site-subjects|<site>``, the ChargeItem ``subject`` of site-level
  events and the Invoice ``subject``) if it does not exist (conditional create);
- creates a ChargeItem per due event that has none (conditional create on its identifier, the
  event key; a key whose ChargeItems are all void gets a new one); the ChargeItem of an event whose
  invoice was cancelled is reused;
- creates a ``draft`` Invoice listing exactly those ChargeItems (conditional create on an
  identifier made of the site and a hash of the keys and of the site's cancelled invoices; a
  match, i.e. an invoice of these events that no longer lists them, is a 409);
- and updates to ``balanced`` every ``issued`` Invoice of the study's sites paid in full by its
  PaymentNotices (``ctms.payments.settled``), with ``If-Match`` (one issued after its notices
  arrived: a notice's own write balances its invoice at once, :func:`confirm_payment`).

Each write's Provenance names the operation (:func:`operation_context`: reason "$payments persist
for ResearchStudy/<study>, site <ids>, period <start>..<end>", activity ``operation``).

When the first read finds nothing due and nothing settled, nothing is written. Amounts are
written as exact decimals with the currency's minor unit (``16952.00``).

The call is recorded as one AuditEvent (restful-interaction ``operation``) besides the writes'.

Under a token: the read-only form (a GET without ``persist``) needs read of the study
(``operations.changes_state``: the definition's read-only-unless names ``persist``); a POST needs
a ``system/`` or ``user/`` scope with ``u`` on ResearchStudy. The reads are filtered by the token
and each write of the transaction is checked like any transaction entry (ChargeItem, Invoice,
Group).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from dataclasses import replace
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from ..audit import records
from ..ctms import payments as pay
from ..ctms import tree
from ..errors import BadRequest, Conflict, MethodNotAllowed, Unprocessable
from ..interactions import table  # a module: table imports the operations (perform looked up at call time)
from ..interactions.access import require_whole, wrap
from ..interactions.context import Context, FhirRequest, FhirResponse, etag, instant, now_us
from ..interactions.persist import record_security_event
from ..interactions import reactions
from ..interactions.router import entry_request
from ..resources.json import loads
from ..storage.repository import Session

_INPUTS = {"site", "start", "end", "persist"}
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
LEVEL = "http://fhir-ctms.org/fhir/CodeSystem/study-level"
PARTY_ROLE = "http://hl7.org/fhir/research-study-party-role"


async def payments(req: FhirRequest, ctx: Context, params: list[tuple[str, Any]]) -> FhirResponse:
    unknown = sorted({name for name, _ in params} - _INPUTS)
    if unknown:
        raise BadRequest(f"$payments: unknown parameter(s) {', '.join(unknown)}")
    start, end = _date(params, "start"), _date(params, "end")
    if start and end and start > end:
        raise BadRequest(f"$payments: start {start.isoformat()} is after end {end.isoformat()}")
    persist = _persist(params)
    if persist and req.method != "POST":
        raise MethodNotAllowed("$payments with persist=true changes state: invoke it with POST",
                               headers={"Allow": "POST"})
    asked = [_site_id(v) for n, v in params if n == "site"]
    require_whole(ctx, ("ResearchStudy", "ResearchSubject", "Consent", "Appointment", "Encounter", "Procedure",
                        "ChargeItemDefinition", "ChargeItem", "Invoice", "PaymentNotice"), "payments")
    data = await _read(ctx, req.id or "", asked)
    reports = _report(data, start, end)
    written: dict[str, Any] = {}
    if persist:
        # nothing due nor settled as read: nothing to write (the run is then as of that read)
        if any(_due(rep) for rep in reports) or _settled(data):
            reports, written = await _persist_all(ctx, data, start, end)
        await _audit(ctx, data["study"]["id"], written)
    return FhirResponse(200, body=_output(data["study"], reports, start, end, written, persist))


# -- parameters ----------------------------------------------------------------------------------

def _date(params: list[tuple[str, Any]], name: str) -> dt.date | None:
    values = [v for n, v in params if n == name]
    if not values:
        return None
    if len(values) > 1:
        raise BadRequest(f"$payments: {name} may be given once")
    v = values[0]
    try:
        if not isinstance(v, str) or not _DATE.match(v):
            raise ValueError
        return dt.date.fromisoformat(v)
    except ValueError:
        raise BadRequest(f"$payments: {name} must be a date (YYYY-MM-DD), not {v!r}") from None


def _persist(params: list[tuple[str, Any]]) -> bool:
    values = [v for n, v in params if n == "persist"]
    if len(values) > 1:
        raise BadRequest("$payments: persist may be given once")
    if not values:
        return False
    v = values[0]
    if v in (True, "true"):
        return True
    if v in (False, "false"):
        return False
    raise BadRequest(f"$payments: persist must be true or false, not {v!r}")


def _site_id(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise BadRequest("$payments: site must be a ResearchStudy id or reference")
    return value.removeprefix("ResearchStudy/")


# -- reading -------------------------------------------------------------------------------------

async def _read(ctx: Context, study_id: str, asked: list[str]) -> dict[str, Any]:
    async with ctx.repo.session(write=False) as raw:
        s = wrap(ctx, None, raw)
        study = await tree.read_study(s, study_id)  # 404, or 410 once deleted
        children = await tree.parts(s, study_id, level=_level)
        # a site is part of its study and of its country (profiles/README.md): found twice, counted once
        sites = list({c["id"]: c for c in children if _level(c) == "site"}.values())
        if asked:
            known = {c["id"] for c in sites}
            stray = [a for a in asked if a not in known]
            if stray:
                raise Unprocessable(f"$payments: ResearchStudy/{stray[0]} is not a site of ResearchStudy/{study_id}")
            sites = [c for c in sites if c["id"] in set(asked)]
        subjects = await tree.subjects(s, [c["id"] for c in sites])
        consent_ids = sorted({pay.ref_id(r, "Consent") or "" for x in subjects
                              for r in (x.get("consent") if isinstance(x.get("consent"), list)
                                        else [x.get("consent")])} - {""})
        patients = sorted({pay.ref_id(x.get("subject"), "Patient") or "" for x in subjects} - {""})
        refs = [f"Patient/{p}" for p in patients]
        data = {
            "study": study, "sites": sites, "subjects": subjects,
            "consents": await tree.search(s, "Consent", "_id", consent_ids),
            "appointments": await tree.search(s, "Appointment", "subject", refs),
            "encounters": await tree.search(s, "Encounter", "subject", refs),
            "procedures": await tree.search(s, "Procedure", "subject", refs),
            "definitions": await tree.search(s, "ChargeItemDefinition", "status", ["active"]),
        }
        await _read_state(s, data)
    return data


async def _read_state(s: Session, data: dict[str, Any]) -> None:
    """What was charged, invoiced and paid (ChargeItems, the sites' Invoices, their
    PaymentNotices, the site Groups) into ``data``: read with the rest, and read again inside
    the write transaction of ``persist=true``, where no other writer can change it."""
    data["charge_items"] = {c["id"]: c for c in await tree.search(s, "ChargeItem", "identifier", [f"{pay.EVENT_SYSTEM}|"])}
    site_ids = {c["id"] for c in data["sites"]}
    invoices = [i for i in await tree.search(s, "Invoice", "identifier", [f"{pay.INVOICE_SYSTEM}|"])
                if _invoice_site(i) in site_ids]
    data["invoices"] = invoices
    issued = [f"Invoice/{i['id']}" for i in invoices if i.get("status") == "issued"]
    data["notices"] = await tree.search(s, "PaymentNotice", "request", issued)
    groups = await tree.search(s, "Group", "identifier", [f"{pay.SITE_GROUP_SYSTEM}|{i}" for i in sorted(site_ids)])
    data["groups"] = {_ident(g, pay.SITE_GROUP_SYSTEM): g["id"] for g in groups}


def _level(study: dict[str, Any]) -> str | None:
    return next((c.get("code") for cc in study.get("classifier") or [] if isinstance(cc, dict)
                 for c in cc.get("coding") or [] if isinstance(c, dict) and c.get("system") == LEVEL), None)


def _ident(resource: dict[str, Any], system: str) -> str | None:
    return next((i.get("value") for i in resource.get("identifier") or []
                 if isinstance(i, dict) and i.get("system") == system), None)


def _invoice_site(invoice: dict[str, Any]) -> str | None:
    return pay.invoice_site(invoice)


def _settled(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``issued`` invoices paid in full, whose figures add up (an edited invoice that does
    not is reported as ``invoice-mismatch`` and left as it is)."""
    return [i for i in data["invoices"] if pay.settled(i, data["notices"])
            and not pay.invoice_problems(i, data["charge_items"])]


# -- writing -------------------------------------------------------------------------------------

def _money(value: Decimal, currency: str) -> dict[str, Any]:
    """Money as an exact decimal with the currency's minor unit (JSON ``16952.00``: R5 decimals
    keep their precision; ``resources.json.dumps`` writes ``Decimal`` values as they are)."""
    return {"value": pay.money(value, currency) if currency else value, "currency": currency}


def _sponsor(study: dict[str, Any]) -> str | None:
    for party in study.get("associatedParty") or []:
        codes = {c.get("code") for c in ((party or {}).get("role") or {}).get("coding") or []}
        org = pay.ref_id((party or {}).get("party"), "Organization")
        if codes & {"sponsor", "lead-sponsor"} and org:
            return org
    return None


def _charge_item(ln: pay.Line, rep: pay.SiteReport, group: str) -> dict[str, Any]:
    ev = ln.event
    code: dict[str, Any] = {"coding": [{"system": pay.EVENT_CS, "code": ev.kind}]}
    if ev.detail:
        code["text"] = f"{ev.kind} {ev.detail}"
    ci: dict[str, Any] = {
        "resourceType": "ChargeItem",
        "identifier": [{"system": pay.EVENT_SYSTEM, "value": ev.key}],
        "status": "billed", "code": code,
        "subject": {"reference": f"Patient/{ev.patient}"} if ev.patient else {"reference": group},
        "occurrenceDateTime": ev.on.isoformat(),
        "supportingInformation": [{"reference": ev.source}],
        "quantity": {"value": 1},
        "totalPriceComponent": {"type": "base", "code": code, "amount": _money(ln.gross, rep.currency or "")},
    }
    if ln.fee is not None:
        ci["definitionCanonical"] = [ln.fee.canonical]
    if rep.organization:
        ci["performingOrganization"] = {"reference": f"Organization/{rep.organization}"}
    if ev.encounter:
        ci["encounter"] = {"reference": f"Encounter/{ev.encounter}"}
    if ev.subject and ev.source != f"ResearchSubject/{ev.subject}":
        ci["supportingInformation"].append({"reference": f"ResearchSubject/{ev.subject}"})
    return ci


def _invoice(study: dict[str, Any], rep: pay.SiteReport, lines: list[tuple[pay.Line, str]], group: str,
             start: dt.date | None, end: dt.date | None, dead: list[str]) -> dict[str, Any]:
    cur = rep.currency or ""
    items = []
    for n, (ln, ref) in enumerate(lines, 1):
        comps = [{"type": "base", "code": {"coding": [{"system": pay.EVENT_CS, "code": ln.event.kind}]},
                  "amount": _money(ln.gross, cur)}]
        if ln.fee is not None and ln.fee.factor and ln.holdback:  # none when paid without holdback
            comps.append({"type": "deduction", "code": {"coding": [{"system": pay.EVENT_CS, "code": pay.HOLDBACK}]},
                          "factor": ln.fee.factor, "amount": _money(ln.holdback, cur)})
        items.append({"sequence": n, "servicedDate": ln.event.on.isoformat(),
                      "chargeItemReference": {"reference": ref}, "priceComponent": comps})
    gross = sum((ln.gross for ln, _ in lines), pay.ZERO)
    holdback = sum((ln.holdback for ln, _ in lines), pay.ZERO)
    # the identifier: the site and a hash of the event keys and of the site's cancelled invoices
    # (two identical concurrent runs make one invoice; events of a cancelled one get a new one)
    keys = "\n".join([*sorted(ln.event.key for ln, _ in lines), *sorted(dead)])
    inv: dict[str, Any] = {
        "resourceType": "Invoice",
        "identifier": [{"system": pay.INVOICE_SYSTEM,
                        "value": f"{rep.site}/{hashlib.sha256(keys.encode()).hexdigest()[:16]}"}],
        "status": "draft",
        "type": {"coding": [{"system": pay.EVENT_CS, "code": "site-payment", "display": "Site payment"}]},
        "subject": {"reference": group},
        "date": now_date(),
        "lineItem": items,
        "totalPriceComponent": [
            {"type": "base", "amount": _money(gross, cur)},
            {"type": "deduction", "code": {"coding": [{"system": pay.EVENT_CS, "code": pay.HOLDBACK}]},
             "amount": _money(holdback, cur)}],
        "totalGross": _money(gross, cur),
        "totalNet": _money(gross - holdback, cur),
        "note": [{"text": f"Payment to ResearchStudy/{rep.site} ({rep.title or rep.site}) "
                          f"for ResearchStudy/{study['id']}"}],
    }
    if start or end:
        inv["periodPeriod"] = {k: d.isoformat() for k, d in (("start", start), ("end", end)) if d}
    if rep.organization:
        inv["issuer"] = {"reference": f"Organization/{rep.organization}"}
    sponsor = _sponsor(study)
    if sponsor:
        inv["recipient"] = {"reference": f"Organization/{sponsor}"}
    return inv


def now_date() -> str:
    return dt.datetime.now(dt.timezone.utc).date().isoformat()


def _due(rep: pay.SiteReport) -> list[pay.Line]:
    """The lines of a site to put on a new invoice: paid, on no live invoice, something to pay."""
    if rep.currency is None:
        return []
    return [ln for ln in rep.lines if ln.status in ("payable", "release") and ln.invoice is None and ln.net > 0]


def _report(data: dict[str, Any], start: dt.date | None, end: dt.date | None) -> list[pay.SiteReport]:
    return pay.report(data["study"], data["sites"], data["subjects"], data["consents"], data["appointments"],
                      data["encounters"], data["definitions"], data["charge_items"], data["invoices"], start, end,
                      data.get("procedures", []))


async def _write(ctx: Context, s: Session, method: str, url: str, resource: dict[str, Any],
                 headers: dict[str, str]) -> FhirResponse:
    """One write through the interaction it is (version, index rows, Provenance, AuditEvent, the
    token's guard), in the caller's transaction: as a transaction Bundle entry is written."""
    return await table.perform(replace(entry_request(method, url, ctx.base, headers), resource=resource), ctx, s)


async def _create(ctx: Context, s: Session, resource: dict[str, Any], system: str, value: str,
                  conditional: bool = True) -> FhirResponse:
    headers = {"if-none-exist": urlencode({"identifier": f"{system}|{value}"})} if conditional else {}
    return await _write(ctx, s, "POST", resource["resourceType"], resource, headers)


async def _persist_all(ctx: Context, data: dict[str, Any], start: dt.date | None, end: dt.date | None
                       ) -> tuple[list[pay.SiteReport], dict[str, Any]]:
    """The writes of ``persist=true`` in ONE write transaction; the payment state (ChargeItems,
    Invoices, PaymentNotices, Groups) is read again inside it and the report computed again from
    it. Write transactions are serialised (SQLite: one writer; PostgreSQL: the writer lock of
    the partition, taken first), so what this run reads as not invoiced stays so until it
    commits: two concurrent runs, whatever their periods, never put one ChargeItem on two live
    invoices, and the second sees the first's ChargeItems and invoices (caps included)."""
    written: dict[str, Any] = {"invoices": {}, "charge_items": 0, "balanced": []}
    ctx = operation_context(ctx, data, start, end)
    async with ctx.repo.session(write=True) as raw:
        await _read_state(wrap(ctx, None, raw), data)
        reports = _report(data, start, end)
        # keys with ChargeItems, all void (entered-in-error, aborted, not-billable): a new one
        known = {_ident(ci, pay.EVENT_SYSTEM) for ci in data["charge_items"].values()}
        for rep in reports:
            due = _due(rep)
            if not due:
                continue
            group = data["groups"].get(rep.site)
            if group is None:
                res = await _create(ctx, raw, {
                    "resourceType": "Group", "identifier": [{"system": pay.SITE_GROUP_SYSTEM, "value": rep.site}],
                    "type": "person", "membership": "definitional", "name": f"Subjects of ResearchStudy/{rep.site}",
                    "description": "The site as a whole: the subject of its site-level ChargeItems and its Invoices"},
                    pay.SITE_GROUP_SYSTEM, rep.site)
                assert res.stored is not None
                group = data["groups"][rep.site] = res.stored.id
            group_ref = f"Group/{group}"
            refs: list[tuple[pay.Line, str]] = []
            for ln in due:
                if ln.charge_item:  # made earlier, its invoice cancelled: on no live invoice (read just now)
                    refs.append((ln, f"ChargeItem/{ln.charge_item}"))
                    continue
                res = await _create(ctx, raw, _charge_item(ln, rep, group_ref), pay.EVENT_SYSTEM, ln.event.key,
                                    conditional=ln.event.key not in known)
                assert res.stored is not None
                if res.status != 201:  # a ChargeItem this run could not see (the token's filter)
                    raise Conflict(f"$payments: ChargeItem/{res.stored.id} already holds the event key "
                                   f"{ln.event.key} but was not read as live; nothing was written")
                written["charge_items"] += 1
                refs.append((ln, f"ChargeItem/{res.stored.id}"))
            dead = [i["id"] for i in data["invoices"] if _invoice_site(i) == rep.site
                    and i.get("status") in ("cancelled", "entered-in-error")]
            inv = _invoice(data["study"], rep, refs, group_ref, start, end, dead)
            res = await _create(ctx, raw, inv, pay.INVOICE_SYSTEM, inv["identifier"][0]["value"])
            assert res.stored is not None
            if res.status != 201:  # an invoice for exactly these events exists, yet lists not all of them
                raise Conflict(f"$payments: Invoice/{res.stored.id} has the identifier of this run's invoice "
                               f"({inv['identifier'][0]['value']}) but does not list its events (edited?); "
                               "cancel it and run again; nothing was written")
            written["invoices"][rep.site] = res.stored.id
        for inv in _settled(data):
            await _balance(ctx, raw, inv)
            written["balanced"].append(inv["id"])
    return reports, written


def operation_context(ctx: Context, data: dict[str, Any], start: dt.date | None, end: dt.date | None) -> Context:
    """``ctx`` for the writes of ``persist=true``: their Provenance names the operation, its
    reason "$payments persist for ResearchStudy/<study>, site <ids>, period <start>..<end>" (or
    "from <start>", "to <end>", "all dates"; then
    the client's own reason, ``X-Reason``, if any) and its activity the restful-interaction code
    ``operation`` with the text ``$payments`` (after the client's ``X-Provenance`` codings)."""
    sites = ", ".join(sorted(c["id"] for c in data["sites"])) or "none"
    period = (f"period {start.isoformat()}..{end.isoformat()}" if start and end else
              f"from {start.isoformat()}" if start else f"to {end.isoformat()}" if end else "all dates")
    reason = f"$payments persist for ResearchStudy/{data['study']['id']}, site {sites}, {period}"
    given = json.loads(ctx.activity) if ctx.activity else {}
    activity = {"coding": [*(given.get("coding") or []),
                           {"system": records.RESTFUL_INTERACTION, "code": "operation", "display": "operation"}],
                "text": "$payments"}
    return replace(ctx, reason=f"{reason}: {ctx.reason}" if ctx.reason else reason,
                   activity=json.dumps(activity, sort_keys=True))


async def _balance(ctx: Context, s: Session, inv: dict[str, Any]) -> None:
    """``inv`` (as read in this transaction) updated to ``balanced``, with ``If-Match`` on the
    version read: an ordinary update (version, Provenance with ``ctx.reason``, AuditEvent)."""
    version = int(((inv.get("meta") or {}).get("versionId")) or 0)
    meta = {k: v for k, v in (inv.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")}
    balanced = {**{k: v for k, v in inv.items() if k != "meta"}, "status": "balanced",
                **({"meta": meta} if meta else {})}
    await _write(ctx, s, "PUT", f"Invoice/{inv['id']}", balanced, {"if-match": etag(version)})


# -- the reaction to a PaymentNotice -------------------------------------------------------------

@reactions.after_write("PaymentNotice")
async def confirm_payment(s: Session, ctx: Context, notice: dict[str, Any]) -> None:
    """A PaymentNotice written (created, updated, patched; a transaction entry alike) whose
    ``request`` names a stored Invoice, in the write's own transaction: an ``active`` notice in
    another currency than the invoice's is refused (422: ``ctms.payments.notice_problem``); an
    ``issued`` invoice that its active notices in its currency pay in full
    (``ctms.payments.settled``) and whose figures add up (``ctms.payments.invoice_problems``;
    one that does not is left ``issued`` and reported by ``$payments`` as ``invoice-mismatch``)
    is updated to ``balanced`` at once, a new version whose Provenance gives the reason
    "paid in full: PaymentNotice/<id>". Draft, balanced, cancelled invoices are left as they
    are. ``s`` is beneath the token's guard (``interactions/reactions.py``); the update runs
    under it like any write."""
    invoice_id = pay.ref_id(notice.get("request"), "Invoice")
    if invoice_id is None:
        return
    st = await s.current("Invoice", invoice_id)
    if st is None or st.deleted or st.content is None:
        return
    invoice = loads(st.content)
    problem = pay.notice_problem(notice, invoice)
    if problem:
        raise Unprocessable(problem)
    if invoice.get("status") != "issued":
        return
    notices = await tree.search(s, "PaymentNotice", "request", [f"Invoice/{invoice_id}"])
    if not pay.settled(invoice, notices):
        return
    cids = sorted({pay.ref_id(li.get("chargeItemReference"), "ChargeItem") or ""
                   for li in invoice.get("lineItem") or [] if isinstance(li, dict)} - {""})
    charge_items = {c["id"]: c for c in await tree.search(s, "ChargeItem", "_id", cids)}
    if pay.invoice_problems(invoice, charge_items):
        return
    await _balance(replace(ctx, reason=f"paid in full: PaymentNotice/{notice.get('id')}", activity=None),
                   s, invoice)


async def _audit(ctx: Context, study_id: str, written: dict[str, Any]) -> None:
    ts = now_us()
    record = records.audit_event(f"ResearchStudy/{study_id}", "update", instant(ts), ctx.actor,
                                 ctx.reason or ctx.settings.default_reason, ctx.settings.source_name)
    record["code"] = {"coding": [{"system": records.RESTFUL_INTERACTION, "code": "operation"}],
                      "text": "$payments"}
    record["action"] = "E"
    record["entity"][0]["detail"] = [
        {"type": {"text": "chargeItemsCreated"}, "valueInteger": written.get("charge_items", 0)},
        *({"type": {"text": "invoice"}, "valueString": f"Invoice/{i}"} for i in written.get("invoices", {}).values()),
        *({"type": {"text": "balanced"}, "valueString": f"Invoice/{i}"} for i in written.get("balanced", []))]
    await record_security_event(ctx.repo, record, ts)


# -- output --------------------------------------------------------------------------------------

def _output(study: dict[str, Any], reports: list[pay.SiteReport], start: dt.date | None,
            end: dt.date | None, written: dict[str, Any], persist: bool) -> dict[str, Any]:
    out: list[dict[str, Any]] = [{"name": "study", "valueReference": {"reference": f"ResearchStudy/{study['id']}"}}]
    if start:
        out.append({"name": "start", "valueDate": start.isoformat()})
    if end:
        out.append({"name": "end", "valueDate": end.isoformat()})
    for rep in reports:
        cur = rep.currency or ""
        parts: list[dict[str, Any]] = [{"name": "site", "valueReference": {"reference": f"ResearchStudy/{rep.site}"}}]
        if rep.organization:
            parts.append({"name": "payee", "valueReference": {"reference": f"Organization/{rep.organization}"}})
        if rep.currency:
            parts.append({"name": "currency", "valueCode": rep.currency})
        for ln in rep.lines:
            parts.append({"name": "event", "part": _line(ln, cur)})
        for d in rep.discrepancies:
            dp: list[dict[str, Any]] = [{"name": "code", "valueCode": d.code}, {"name": "note", "valueString": d.note}]
            if d.key:
                dp.append({"name": "key", "valueString": d.key})
            if d.source:
                dp.append({"name": "source", "valueReference": {"reference": d.source}})
            dp += [{"name": "definition", "valueCanonical": c} for c in d.definitions]
            parts.append({"name": "discrepancy", "part": dp})
        if rep.currency:
            for what in ("gross", "holdback", "net", "invoiced", "due"):
                parts.append({"name": what, "valueMoney": _money(rep.total(what), cur)})
        if persist and rep.site in written.get("invoices", {}):
            parts.append({"name": "invoice", "valueReference": {"reference": f"Invoice/{written['invoices'][rep.site]}"}})
        out.append({"name": "site", "part": parts})
    if persist:
        out.append({"name": "chargeItemsCreated", "valueInteger": written.get("charge_items", 0)})
        out += [{"name": "balanced", "valueReference": {"reference": f"Invoice/{i}"}}
                for i in written.get("balanced", [])]
    return {"resourceType": "Parameters", "parameter": out}


def _line(ln: pay.Line, cur: str) -> list[dict[str, Any]]:
    ev = ln.event
    parts: list[dict[str, Any]] = [
        {"name": "key", "valueString": ev.key}, {"name": "kind", "valueCode": ev.kind}]
    if ev.detail:
        parts.append({"name": "detail", "valueString": ev.detail})
    parts += [{"name": "date", "valueDate": ev.on.isoformat()},
              {"name": "source", "valueReference": {"reference": ev.source}}]
    if ev.subject:
        parts.append({"name": "subject", "valueReference": {"reference": f"ResearchSubject/{ev.subject}"}})
    parts.append({"name": "status", "valueCode": ln.status})
    if ln.issue:
        parts.append({"name": "issue", "valueCode": ln.issue})
    if ln.note:
        parts.append({"name": "note", "valueString": ln.note})
    if ln.fee is not None:
        parts += [{"name": "definition", "valueCanonical": ln.fee.canonical},
                  {"name": "rate", "valueMoney": _money(ln.fee.amount, ln.fee.currency)}]
        if ln.fee.factor:
            parts.append({"name": "holdbackFactor", "valueDecimal": ln.fee.factor})
    if cur:
        for what in ("gross", "holdback", "net", "invoiced", "due"):
            parts.append({"name": what, "valueMoney": _money(getattr(ln, what), cur)})
    if ln.charge_item:
        parts.append({"name": "chargeItem", "valueReference": {"reference": f"ChargeItem/{ln.charge_item}"}})
    if ln.invoice:
        parts.append({"name": "invoice", "valueReference": {"reference": f"Invoice/{ln.invoice}"}})
    return parts
