"""``$payment-file`` (profiles/OperationDefinition-Invoice-payment-file.json): an Invoice as a CSV
payment file for the accounts-payable system.

``GET|POST [base]/Invoice/[id]/$payment-file``; ``affectsState`` false; the answer is text/csv
(RFC 4180, CRLF line ends, UTF-8), one row per invoice line, then one ``TOTAL`` row:

``payee_name, payee_identifier`` (the issuer Organization: its name and first identifier as
``system|value``), ``site, site_title`` (the site ResearchStudy, from the invoice identifier
``sid/site-invoice|<site>/...``), ``currency``, ``invoice`` (``Invoice/<id>``), ``invoice_status``,
``line`` (the line's sequence; ``TOTAL``), ``charge_item`` (``ChargeItem/<id>``), ``event_key``
(the ChargeItem's ``sid/payable-event`` identifier), ``event_date``, ``event``, ``gross``,
``holdback``, ``net`` (the line's base, holdback deduction and net; on the TOTAL row the invoice's
``totalGross``, holdback and ``totalNet``). Amounts are written with the currency's minor unit.
A text cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return (a formula to
a spreadsheet: CSV injection) is written with a single quote before it; amounts are numbers
written by the server and never quoted so.

Only an ``issued`` or ``balanced`` Invoice is paid: a ``draft``, ``cancelled`` or
``entered-in-error`` one is a 422. So is one whose figures do not add up
(``ctms.payments.invoice_problems``: line amounts against their ChargeItems, the holdback
against its factor, the lines against ``totalGross``/``totalNet``): the file never carries lines
that do not sum to the total paid. Nothing in the write path stops an ordinary update of an
issued invoice (the server has no per-type write hooks); this check is what keeps such an edit
out of accounts payable. An unknown Invoice is a 404 (deleted: 410). Reads are guarded
by the token like any read.
"""

from __future__ import annotations

import csv
import io
from decimal import Decimal
from typing import Any

from ..ctms import payments as pay
from ..errors import BadRequest, Gone, Issue, NotFound, Unprocessable
from ..interactions.access import wrap
from ..interactions.context import Context, FhirRequest, FhirResponse
from ..resources.json import loads

COLUMNS = ("payee_name", "payee_identifier", "site", "site_title", "currency", "invoice",
           "invoice_status", "line", "charge_item", "event_key", "event_date", "event", "gross",
           "holdback", "net")


async def payment_file(req: FhirRequest, ctx: Context, params: list[tuple[str, Any]]) -> FhirResponse:
    if params:
        raise BadRequest(f"$payment-file: unknown parameter(s) {', '.join(sorted({n for n, _ in params}))}")
    rid = req.id or ""
    async with ctx.repo.session(write=False) as raw:
        s = wrap(ctx, None, raw)
        invoice = await _get(s, "Invoice", rid, NotFound)
        if invoice.get("status") not in ("issued", "balanced"):
            raise Unprocessable(f"Invoice/{rid} is {invoice.get('status')}: only an issued or balanced "
                                "invoice goes to accounts payable")
        org_id = pay.ref_id(invoice.get("issuer"), "Organization")
        org = await _get(s, "Organization", org_id, None) if org_id else {}
        site_id = (next((i.get("value") for i in invoice.get("identifier") or []
                         if i.get("system") == pay.INVOICE_SYSTEM), "") or "").partition("/")[0]
        site = (await _get(s, "ResearchStudy", site_id, None) if site_id else {}) or {}
        items = {}
        for li in invoice.get("lineItem") or []:
            cid = pay.ref_id(li.get("chargeItemReference"), "ChargeItem")
            if cid:
                items[cid] = await _get(s, "ChargeItem", cid, None) or {}
    problems = pay.invoice_problems(invoice, items)
    if problems:
        raise Unprocessable(f"Invoice/{rid} does not add up; no payment file is made: {problems[0]}",
                            issues=[Issue("business-rule", f"Invoice/{rid} does not add up: {p}") for p in problems])
    return FhirResponse(200, raw=_csv(invoice, org or {}, site_id, site, items),
                        headers={"Content-Type": "text/csv; charset=utf-8",
                                 "Content-Disposition": f'attachment; filename="invoice-{rid}.csv"'})


async def _get(s: Any, rtype: str, rid: str, missing: type | None) -> dict[str, Any] | None:
    st = await s.current(rtype, rid)
    if st is None or st.content is None or st.deleted:
        if missing is None:
            return None
        raise (Gone if st is not None and st.deleted else missing)(f"{rtype}/{rid} does not exist"
                                                                   if st is None else f"{rtype}/{rid} is deleted")
    return loads(st.content)


def _fmt(value: Any, currency: str) -> str:
    return str(pay.money(Decimal(str(value or 0)), currency))


_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def _text(value: Any) -> str:
    """A text cell, defused: a spreadsheet reads a cell starting with = + - @ (or a tab or CR
    before one) as a formula; a leading single quote makes it text."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA) else text


def _csv(invoice: dict[str, Any], org: dict[str, Any], site_id: str, site: dict[str, Any],
         items: dict[str, dict[str, Any]]) -> str:
    currency = (invoice.get("totalNet") or {}).get("currency") or ""
    ident = next(iter(org.get("identifier") or []), {}) or {}
    head = [_text(v) for v in (
        org.get("name") or "", f"{ident.get('system', '')}|{ident.get('value', '')}" if ident else "",
        f"ResearchStudy/{site_id}" if site_id else "", site.get("title") or "", currency,
        f"Invoice/{invoice['id']}", invoice.get("status") or "")]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(COLUMNS)
    hb_total = Decimal(0)
    for li in invoice.get("lineItem") or []:
        cid = pay.ref_id(li.get("chargeItemReference"), "ChargeItem") or ""
        ci = items.get(cid) or {}
        gross = sum((Decimal(str((pc.get("amount") or {}).get("value") or 0)) for pc in li.get("priceComponent") or []
                     if pc.get("type") in ("base", "surcharge")), Decimal(0))
        hb = sum((Decimal(str((pc.get("amount") or {}).get("value") or 0)) for pc in li.get("priceComponent") or []
                  if pc.get("type") in ("deduction", "discount")), Decimal(0))
        hb_total += hb
        key = next((i.get("value") for i in ci.get("identifier") or [] if i.get("system") == pay.EVENT_SYSTEM), "")
        event = (ci.get("code") or {}).get("text") or next(
            (c.get("code") for c in (ci.get("code") or {}).get("coding") or []), "")
        w.writerow([*head, _text(li.get("sequence", "")), _text(f"ChargeItem/{cid}" if cid else ""), _text(key),
                    _text(li.get("servicedDate") or (ci.get("occurrenceDateTime") or "")[:10]), _text(event),
                    _fmt(gross, currency), _fmt(hb, currency), _fmt(gross - hb, currency)])
    w.writerow([*head, "TOTAL", "", "", "", "", _fmt((invoice.get("totalGross") or {}).get("value"), currency),
                _fmt(hb_total, currency), _fmt((invoice.get("totalNet") or {}).get("value"), currency)])
    return buf.getvalue()
