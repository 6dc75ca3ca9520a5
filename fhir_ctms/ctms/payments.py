"""Site payments: what a study owes each site, from the stored resources (``profiles/README.md``,
"Fee schedules and payments").

Pure functions over resource JSON: the fee schedule (ChargeItemDefinitions), the sites, their
subjects, consents, planned visits (Appointments) and visits done (Encounters), and what was
already charged (ChargeItems) and invoiced (Invoices) in; every payable event of each site with
its fee, gross, holdback, net, already invoiced and due out. ``operations/payments.py`` reads the
resources and writes ChargeItems and Invoices; nothing here touches a database.

Arithmetic is exact (:class:`decimal.Decimal`). Rounding rule: every line is rounded to the
currency's minor unit (ISO 4217: 2 decimals, 0 for JPY/KRW/...) with ROUND_HALF_UP, the holdback
of a line is ``round(gross x factor)``, its net ``gross - holdback``; totals are sums of rounded
lines (never rounded again).

Payable events (their idempotency key is the ChargeItem identifier value, system
:data:`EVENT_SYSTEM`):

==========================  ====================================  ===================================
event (code, detail)        from                                  key, date
==========================  ====================================  ===================================
visit-completed, action id  a ``completed`` Encounter whose        ``visit/<subject>/<action>``,
                            ``appointment`` is a planned visit     ``actualPeriod.start``
subject-milestone,          the progress entry with milestone      ``subject-milestone/<subject>/
``randomised``              ``Randomized`` (else the first         randomised``, its ``startDate``
                            on-study entry)
subject-milestone,          current ``off-study`` reason           ``subject-milestone/<subject>/
``completed``               ``completed`` (``subjects.classify``)  completed``, its ``startDate``
screen-failure              ``subjects.classify`` screen failure   ``screen-failure/<subject>``
site-milestone, ``activated`` / ``closed``  the site's actual      ``site-milestone/<site>/<code>``,
                            ``progressStatus`` entry               ``period.start``
holdback-release            the site's actual ``closed`` entry     ``holdback-release/<site>``
procedure, ``system|code``  a ``completed`` Procedure of the       ``procedure/<Procedure id>``,
                            subject's Patient whose ``encounter``  ``occurrence[x]`` (else the visit's
                            is one of the subject's study visits   ``actualPeriod.start``)
==========================  ====================================  ===================================

Fee selection: a ChargeItemDefinition (``active``, ``useContext`` ``program`` = the study)
applies to an event when its code is the event's, its ``payable-event-detail`` (if any) is the
event's detail, the event's date is in its ``applicability.effectivePeriod`` (both ends
inclusive, either open), its protocol (``applicability.relatedArtifact`` ``depends-on``, if any)
is the protocol version of the event, and its scope (``useContext`` ``venue``: a site
ResearchStudy reference, or an ISO 3166 country; none: the whole study) includes the site. The
most specific wins: site over country over study, then a definition naming the detail, then one
naming the protocol, then the latest ``effectivePeriod.start``, then the greatest canonical.

Not paid, reported (``issue``): ``out-of-window`` (the visit's ``actualPeriod.start`` outside its
Appointment's ``requestedPeriod``), ``no-consent`` (a subject event on a day no Consent
of the subject covers: covered when one of its ``consent`` Consents with ``decision`` ``permit``
(absent: permit) is in force that day, ``active``, or ``inactive`` with a ``period.end`` (the
withdrawal), from ``period.start`` (else ``date``) to ``period.end``, both inclusive, and no
``deny`` one is), ``after-withdrawal`` (a visit dated after the
subject's first ``withdrawn`` entry; procedures too), ``no-fee`` (no definition applies),
``invalid-fee`` (the definition that applies cannot pay: not exactly one base amount above 0
with a currency, or a holdback factor outside [0, 1); it is selected all the same, so no other
rate silently pays instead; :func:`invalid_fees` reports each such definition once),
``currency`` (a fee in another currency than the site's: :func:`site_currency`, the currency of
the site's country-level fees, else of the study-wide ones, else of its own). ``capped``: an event beyond its fee's
``per-site-cap`` (counted per site and fee code, over all time: the events already invoiced
first, whatever their date, and they keep their payment; then the others in date then key order,
so an event dated earlier but recorded after an invoice cannot push an invoiced one out).
``rate-changed`` (reported, each event paid at the rate of its date): in the period, the site's
most specific definitions for one (code, detail) that are in effect at some point of the period,
for any protocol or a protocol version the site ran in the period, have different amounts.
``not-derived`` (reported): a ``procedure`` fee of the site in effect in the period whose detail
names no code (``system|code``): it can match no procedure.

The holdback release (on the ``closed`` date) pays what was withheld: the holdbacks on the
site's live invoices (their lines' ``holdback`` deductions, as invoiced, not recomputed from the
fees) plus those of the payable events not yet invoiced dated in the period asked (the run that
invoices the release invoices them with it); its line has no holdback of its own. Once the
release is on a live invoice, events invoiced later are paid without holdback (nothing would
release it): their lines carry no ``holdback`` deduction, which is how a later report knows them.

Already invoiced: the net of the line of an Invoice (not ``cancelled`` or ``entered-in-error``)
that lists the event's ChargeItem; due = net - invoiced (an event whose ChargeItem is on an
invoice is due 0). ``invoice-mismatch`` (reported): an invoiced event whose invoice line's net
differs from the net computed now (the line or the fee was changed after invoicing, or the event
is no longer payable); and a live invoice of the site whose own figures do not add up
(:func:`invoice_problems`), which ``$payments`` then never sets ``balanced``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, replace
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from . import subjects as subj
from .schedule import site_protocol

CTMS = "http://fhir-ctms.org/fhir"
EVENT_CS = f"{CTMS}/CodeSystem/payable-event"
EVENT_SYSTEM = f"{CTMS}/sid/payable-event"
INVOICE_SYSTEM = f"{CTMS}/sid/site-invoice"
SITE_GROUP_SYSTEM = f"{CTMS}/sid/site-subjects"
DETAIL_EXT = f"{CTMS}/StructureDefinition/payable-event-detail"
CAP_EXT = f"{CTMS}/StructureDefinition/per-site-cap"
VISIT_SYSTEM = f"{CTMS}/sid/planned-visit"
PROTOCOL_VISIT = f"{CTMS}/StructureDefinition/protocol-visit"
SITE_MILESTONE = f"{CTMS}/CodeSystem/site-milestone"
SITE_PROTOCOL = f"{CTMS}/StructureDefinition/site-protocol"
USAGE = "http://terminology.hl7.org/CodeSystem/usage-context-type"
ISO3166 = "urn:iso:std:iso:3166"
HOLDBACK = "holdback"
KINDS = ("visit-completed", "procedure", "subject-milestone", "screen-failure", "site-milestone",
         "holdback-release")
#: ISO 4217 currencies without a minor unit (the rest: 2 decimals; 3 for the dinars below)
_MINOR = {**{c: 0 for c in ("JPY", "KRW", "ISK", "CLP", "VND", "XAF", "XOF", "PYG", "UGX", "HUF")},
          **{c: 3 for c in ("BHD", "KWD", "OMR", "JOD", "TND", "LYD", "IQD")}}
_DEAD = frozenset({"cancelled", "entered-in-error"})
ZERO = Decimal(0)


def quantum(currency: str) -> Decimal:
    return Decimal(1).scaleb(-_MINOR.get(currency, 2))


def money(value: Decimal | int | str, currency: str) -> Decimal:
    """``value`` rounded to the currency's minor unit, half up."""
    return Decimal(value).quantize(quantum(currency), rounding=ROUND_HALF_UP)


def holdback_of(gross: Decimal, factor: Decimal, currency: str) -> Decimal:
    return money(gross * factor, currency)


@dataclass(frozen=True, slots=True)
class Fee:
    """A ChargeItemDefinition reduced to what selection and pricing read."""

    canonical: str
    kind: str
    detail: str | None
    site: str | None
    country: str | None
    start: dt.date | None
    end: dt.date | None
    protocol: str | None
    amount: Decimal
    currency: str
    factor: Decimal
    cap: int | None
    problem: str | None = None        #: why the definition cannot pay (``invalid-fee``), None: valid

    @property
    def rank(self) -> tuple[int, int, int, dt.date, str]:
        scope = 2 if self.site else 1 if self.country else 0
        return (scope, self.detail is not None, self.protocol is not None,
                self.start or dt.date.min, self.canonical)

    def scope_matches(self, site: str, country: str | None) -> bool:
        if self.site is not None:
            return self.site == site
        return self.country is None or self.country == country

    def in_effect(self, day: dt.date) -> bool:
        return (self.start is None or self.start <= day) and (self.end is None or day <= self.end)

    def overlaps(self, start: dt.date | None, end: dt.date | None) -> bool:
        return ((end is None or self.start is None or self.start <= end)
                and (start is None or self.end is None or start <= self.end))


@dataclass(frozen=True, slots=True)
class Event:
    """A payable event, before pricing."""

    key: str
    kind: str
    detail: str | None
    site: str
    on: dt.date
    source: str                       #: the reference it comes from (Encounter/..., ResearchSubject/...)
    subject: str | None = None        #: ResearchSubject id
    patient: str | None = None        #: Patient id
    encounter: str | None = None      #: Encounter id
    protocol: str | None = None       #: the protocol url|version it ran under
    issue: str | None = None          #: why it is not paid (set before pricing)
    note: str | None = None
    codes: tuple[str, ...] = ()       #: a procedure's codes (``system|code``), any of which a fee's detail may name

    def names(self, detail: str | None) -> bool:
        """Whether a fee's detail (None: any) names this event."""
        return detail is None or detail == self.detail or detail in self.codes


@dataclass(slots=True)
class Line:
    event: Event
    status: str                      #: payable | capped | not-paid | release
    fee: Fee | None = None
    gross: Decimal = ZERO
    holdback: Decimal = ZERO
    net: Decimal = ZERO
    invoiced: Decimal = ZERO
    invoice: str | None = None       #: Invoice id that lists its ChargeItem
    charge_item: str | None = None   #: ChargeItem id already stored for its key
    issue: str | None = None
    note: str | None = None

    @property
    def due(self) -> Decimal:
        return self.net - self.invoiced if self.invoice is None else ZERO


@dataclass(slots=True)
class Discrepancy:
    code: str
    note: str
    key: str | None = None
    source: str | None = None
    definitions: tuple[str, ...] = ()


@dataclass(slots=True)
class SiteReport:
    site: str
    title: str | None
    organization: str | None
    currency: str | None
    lines: list[Line] = field(default_factory=list)          #: events dated in the period
    discrepancies: list[Discrepancy] = field(default_factory=list)

    def total(self, what: str) -> Decimal:
        if what == "due":
            return sum((ln.due for ln in self.lines), ZERO)
        return sum((getattr(ln, what) for ln in self.lines), ZERO)


# -- reading resources ---------------------------------------------------------------------------

def ref_id(reference: Any, rtype: str) -> str | None:
    if not isinstance(reference, dict) or not isinstance(reference.get("reference"), str):
        return None
    parts = reference["reference"].split("/_history/")[0].split("/")
    return parts[-1] if len(parts) >= 2 and parts[-2] == rtype and parts[-1] else None


def _ext(resource: dict[str, Any], url: str) -> Any:
    for e in resource.get("extension") or []:
        if isinstance(e, dict) and e.get("url") == url:
            return next((v for k, v in e.items() if k.startswith("value")), None)
    return None


def _code(concept: Any, system: str) -> str | None:
    for c in (concept or {}).get("coding") or [] if isinstance(concept, dict) else []:
        if isinstance(c, dict) and c.get("system") == system and isinstance(c.get("code"), str):
            return c["code"]
    return None


def fee(definition: dict[str, Any], study_id: str) -> Fee | None:
    """The fee a ChargeItemDefinition defines for the study, None when it is not one of the
    study's (not active, no ``program`` context naming the study, no payable-event code). A fee
    whose price is not valid (:func:`_price`) is returned with its ``problem``: it pays nothing."""
    if definition.get("status") != "active":
        return None
    kind = _code(definition.get("code"), EVENT_CS)
    site = country = None
    study_ok = False
    for uc in definition.get("useContext") or []:
        code = (uc.get("code") or {}) if isinstance(uc, dict) else {}
        if code.get("system") != USAGE:
            continue
        if code.get("code") == "program" and ref_id(uc.get("valueReference"), "ResearchStudy") == study_id:
            study_ok = True
        elif code.get("code") == "venue":
            site = ref_id(uc.get("valueReference"), "ResearchStudy") or site
            country = _code(uc.get("valueCodeableConcept"), ISO3166) or country
    if kind is None or not study_ok:
        return None
    app = next(iter(definition.get("applicability") or []), None) or {}
    period = app.get("effectivePeriod") or {}
    art = app.get("relatedArtifact") or {}
    protocol = art.get("resource") if art.get("type") == "depends-on" else None
    amount, currency, factor, problem = _price(definition)
    cap = _ext(definition, CAP_EXT)
    version = definition.get("version")
    url = definition.get("url") or f"ChargeItemDefinition/{definition.get('id')}"
    return Fee(f"{url}|{version}" if version else url, kind, _ext(definition, DETAIL_EXT), site, country,
               subj.parse_date(period.get("start")), subj.parse_date(period.get("end")), protocol,
               money(amount, currency), currency, factor, cap if isinstance(cap, int) else None, problem)


def _number(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        return None
    try:
        number = Decimal(str(value))
    except ArithmeticError:
        return None
    return number if number.is_finite() else None


def _price(definition: dict[str, Any]) -> tuple[Decimal, str, Decimal, str | None]:
    """(base amount, currency, holdback factor, problem) of a fee. A fee pays only when its
    ``propertyGroup`` has exactly one ``base`` component whose amount is above 0 with a currency,
    and its holdback factor (if any: one) is at least 0 and below 1 (the ``ctms-fee``
    invariants); otherwise ``problem`` says why (``invalid-fee``) and amount and factor are 0."""
    bases, holdbacks = [], []
    for group in definition.get("propertyGroup") or []:
        for pc in (group.get("priceComponent") or []) if isinstance(group, dict) else []:
            if isinstance(pc, dict) and pc.get("type") == "base":
                bases.append(pc)
            elif isinstance(pc, dict) and pc.get("type") == "deduction" and _code(pc.get("code"), EVENT_CS) == HOLDBACK:
                holdbacks.append(pc)
    problems = []
    amount = currency = None
    if len(bases) != 1:
        problems.append(f"{len(bases)} base price components, not exactly one")
    else:
        money_ = bases[0].get("amount") if isinstance(bases[0].get("amount"), dict) else {}
        amount, currency = _number(money_.get("value")), money_.get("currency")
        if amount is None or amount <= 0:
            problems.append(f"the base amount {money_.get('value')} is not above 0")
        if not isinstance(currency, str) or not currency:
            problems.append("the base amount has no currency")
    factor = ZERO
    if len(holdbacks) > 1:
        problems.append(f"{len(holdbacks)} holdback deductions, not at most one")
    elif holdbacks:
        raw = holdbacks[0].get("factor")
        got = _number(raw) if raw is not None else ZERO
        if got is None or not ZERO <= got < 1:
            problems.append(f"the holdback factor {raw} is not at least 0 and below 1")
        else:
            factor = got
    cur = currency if isinstance(currency, str) else ""
    if problems:
        return ZERO, cur, ZERO, "; ".join(problems)
    assert amount is not None
    return amount, cur, factor, None


def site_country(site: dict[str, Any]) -> str | None:
    for concept in site.get("region") or []:
        code = _code(concept, ISO3166)
        if code:
            return code
    return None


def site_organization(site: dict[str, Any]) -> str | None:
    return next((o for o in (ref_id(r, "Organization") for r in site.get("site") or []) if o), None)


def site_milestone(site: dict[str, Any], code: str) -> dt.date | None:
    """The ``period.start`` of the site's actual ``progressStatus`` entry ``code``."""
    days = [subj.parse_date((p.get("period") or {}).get("start"))
            for p in site.get("progressStatus") or []
            if isinstance(p, dict) and p.get("actual") is True and _code(p.get("state"), SITE_MILESTONE) == code]
    days = [d for d in days if d is not None]
    return min(days) if days else None


def _randomised(subject: dict[str, Any]) -> dt.date | None:
    history = subj.entries(subject)
    entry = next((e for e in history if "Randomized" in e.milestones), None) or \
        next((e for e in history if e.state in subj.ON_STUDY), None)
    return entry.start if entry else None


def _withdrawn(subject: dict[str, Any]) -> dt.date | None:
    return next((e.start for e in subj.entries(subject) if e.state == "withdrawn" and e.start), None)


def _protocol_visit(appointment: dict[str, Any]) -> tuple[str | None, str | None]:
    """(protocol url|version, action id) of a planned visit's ``protocol-visit`` extension."""
    value = _ext(appointment, PROTOCOL_VISIT)
    if not isinstance(value, str):
        return None, None
    canonical, _, action = value.partition("#")
    return canonical or None, action or None


def _visit_key(appointment: dict[str, Any]) -> str | None:
    for i in appointment.get("identifier") or []:
        if isinstance(i, dict) and i.get("system") == VISIT_SYSTEM and isinstance(i.get("value"), str):
            return i["value"]
    return None


def protocol_on(site: dict[str, Any], day: dt.date) -> str | None:
    """The protocol url|version the site runs on ``day`` (its ``site-protocol`` entries)."""
    return site_protocol(site, day)


# -- consent -------------------------------------------------------------------------------------

def subject_consents(subject: dict[str, Any], consents: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The stored Consents the ResearchSubject's ``consent`` references (R5: 0..*)."""
    refs = subject.get("consent")
    refs = refs if isinstance(refs, list) else [refs]
    ids = [ref_id(r, "Consent") for r in refs]
    return [consents[i] for i in dict.fromkeys(ids) if i is not None and i in consents]


def consent_span(consent: dict[str, Any]) -> tuple[dt.date | None, dt.date | None] | None:
    """The days [start, end] (both inclusive, either open) a Consent is in force, None when it
    never is: ``status`` ``active``, or ``inactive`` with a ``period.end`` (withdrawn on that
    day: in force until then); from ``period.start``, else ``date``; to ``period.end``."""
    period = consent.get("period") if isinstance(consent.get("period"), dict) else {}
    start = subj.parse_date(period.get("start")) or subj.parse_date(consent.get("date"))
    end = subj.parse_date(period.get("end"))
    if consent.get("status") == "active" or (consent.get("status") == "inactive" and end is not None):
        return start, end
    return None


def consent_gap(consents: list[dict[str, Any]], day: dt.date) -> str | None:
    """Why the subject's consents do not cover an event on ``day`` (None: covered). Covered: a
    Consent with ``decision`` ``permit`` (absent: permit) is in force on the day
    (:func:`consent_span`) and no ``deny`` one is."""
    if not consents:
        return "the subject has no Consent"
    spans = [(c, c.get("decision") or "permit", consent_span(c)) for c in consents]
    live = [(c, decision) for c, decision, span in spans if span is not None
            and (span[0] is None or span[0] <= day) and (span[1] is None or day <= span[1])]
    denied = [c for c, decision in live if decision != "permit"]
    if denied:
        return f"Consent/{denied[0].get('id')} ({denied[0].get('decision')}) is in force on {day.isoformat()}"
    if live:
        return None
    why = []
    for c, decision, span in spans:
        if span is None or decision != "permit":
            why.append(f"Consent/{c.get('id')} is {c.get('status')}, {decision}")
        elif span[0] is not None and day < span[0]:
            why.append(f"Consent/{c.get('id')} starts on {span[0].isoformat()}")
        elif span[1] is not None:
            why.append(f"Consent/{c.get('id')} ended on {span[1].isoformat()}")
    return f"no Consent in force on {day.isoformat()}: {'; '.join(why)}"


# -- events --------------------------------------------------------------------------------------

def site_events(site: dict[str, Any], subjects: list[dict[str, Any]], consents: dict[str, dict[str, Any]],
                appointments: list[dict[str, Any]], encounters: list[dict[str, Any]],
                procedures: list[dict[str, Any]] = ()) -> list[Event]:  # type: ignore[assignment]
    """Every payable event of one site (all dates), with the issues known before pricing."""
    sid = site["id"]
    out: list[Event] = []
    by_subject = {s["id"]: s for s in subjects}
    given = {s["id"]: subject_consents(s, consents) for s in subjects}

    def subject_event(s: dict[str, Any], key: str, kind: str, detail: str | None, on: dt.date,
                      **kw: Any) -> Event:
        note = consent_gap(given[s["id"]], on)
        issue = None if note is None else "no-consent"
        return Event(key, kind, detail, sid, on, kw.pop("source", f"ResearchSubject/{s['id']}"), s["id"],
                     ref_id(s.get("subject"), "Patient"), issue=issue, note=note,
                     protocol=kw.pop("protocol", None) or protocol_on(site, on), **kw)

    for s in sorted(subjects, key=lambda r: r["id"]):
        status = subj.classify(s)
        rand = _randomised(s)
        if rand is not None:
            out.append(subject_event(s, f"subject-milestone/{s['id']}/randomised", "subject-milestone",
                                     "randomised", rand))
        if status.completed and status.completed_on is not None:
            out.append(subject_event(s, f"subject-milestone/{s['id']}/completed", "subject-milestone",
                                     "completed", status.completed_on))
        if status.screen_failure and status.screen_failed_on is not None:
            out.append(subject_event(s, f"screen-failure/{s['id']}", "screen-failure", None,
                                     status.screen_failed_on))

    appts = {a["id"]: a for a in appointments}
    seen: set[str] = set()
    done = [e for e in encounters if e.get("status") == "completed"]
    done.sort(key=lambda e: ((e.get("actualPeriod") or {}).get("start") or "", e.get("id") or ""))
    for enc in done:
        appt = appts.get(ref_id(next(iter(enc.get("appointment") or []), None), "Appointment") or "")
        key = _visit_key(appt) if appt else None
        if appt is None or key is None:
            continue
        subject_id, _, action = key.partition("/")
        s = by_subject.get(subject_id)
        day = subj.parse_date((enc.get("actualPeriod") or {}).get("start"))
        if s is None or day is None or key in seen:
            continue
        seen.add(key)
        protocol, pv_action = _protocol_visit(appt)
        action = pv_action or action
        ev = subject_event(s, f"visit/{subject_id}/{action}", "visit-completed", action, day,
                           source=f"Encounter/{enc['id']}", encounter=enc["id"], protocol=protocol)
        window = (appt.get("requestedPeriod") or [{}])[0] or {}
        low, high = subj.parse_date(window.get("start")), subj.parse_date(window.get("end"))
        withdrawn = _withdrawn(s)
        if ev.issue is None and ((low and day < low) or (high and day > high)):
            ev = _issue(ev, "out-of-window", f"done {day.isoformat()}, window "
                        f"{low.isoformat() if low else '...'}..{high.isoformat() if high else '...'}")
        elif ev.issue is None and withdrawn is not None and day > withdrawn:
            ev = _issue(ev, "after-withdrawal", f"done {day.isoformat()}, after the withdrawal on "
                        f"{withdrawn.isoformat()}")
        out.append(ev)

    out += procedure_events(site, subjects, appts, encounters, procedures, subject_event)

    for code in ("activated", "closed"):
        day = site_milestone(site, code)
        if day is not None:
            out.append(Event(f"site-milestone/{sid}/{code}", "site-milestone", code, sid, day,
                             f"ResearchStudy/{sid}", protocol=protocol_on(site, day)))
    closed = site_milestone(site, "closed")
    if closed is not None:
        out.append(Event(f"holdback-release/{sid}", "holdback-release", None, sid, closed, f"ResearchStudy/{sid}"))
    out.sort(key=lambda e: (e.on, e.key))
    return out


def _issue(ev: Event, code: str, note: str) -> Event:
    return replace(ev, issue=code, note=note)


def procedure_code(concept: Any) -> tuple[str, ...]:
    """A Procedure's ``code`` as ``system|code`` strings (the codings with both), in order."""
    codings = concept.get("coding") if isinstance(concept, dict) else None
    return tuple(f"{c['system']}|{c['code']}" for c in codings or [] if isinstance(c, dict)
                 and isinstance(c.get("system"), str) and c["system"] and isinstance(c.get("code"), str) and c["code"])


def is_code(detail: str | None) -> bool:
    """Whether a procedure fee's detail names a code (``system|code``, both non-empty)."""
    system, bar, code = (detail or "").partition("|")
    return bool(bar and system and code and "|" not in code)


def procedure_events(site: dict[str, Any], subjects: list[dict[str, Any]], appts: dict[str, dict[str, Any]],
                     encounters: list[dict[str, Any]], procedures: list[dict[str, Any]], subject_event: Any
                     ) -> list[Event]:
    """``procedure/<Procedure id>``: a ``completed`` Procedure of a subject of the site (its
    ``subject`` the subject's Patient) done during one of that subject's study visits
    (``encounter``: an Encounter, not cancelled or entered in error, whose ``appointment`` is a
    planned visit of the subject); dated ``occurrenceDateTime``, else ``occurrencePeriod.start``,
    else the visit's ``actualPeriod.start``; its detail the first coding of ``code`` as
    ``system|code`` (a fee's detail may name any of its codings); its protocol the visit's.
    Issues: ``no-consent`` and ``after-withdrawal`` as for visits. Procedures of no study visit
    are not study work and are not listed."""
    by_patient = {ref_id(s.get("subject"), "Patient"): s for s in subjects}
    visits = {e["id"]: e for e in encounters if e.get("status") not in ("cancelled", "entered-in-error")}
    out = []
    for proc in sorted(procedures, key=lambda p: p.get("id") or ""):
        if proc.get("status") != "completed":
            continue
        patient = ref_id(proc.get("subject"), "Patient")
        s = by_patient.get(patient)
        enc = visits.get(ref_id(proc.get("encounter"), "Encounter") or "")
        if s is None or enc is None or ref_id(enc.get("subject"), "Patient") != patient:
            continue
        appt = appts.get(ref_id(next(iter(enc.get("appointment") or []), None), "Appointment") or "")
        key = _visit_key(appt) if appt else None
        if appt is None or key is None or key.partition("/")[0] != s["id"]:
            continue
        period = proc.get("occurrencePeriod") if isinstance(proc.get("occurrencePeriod"), dict) else {}
        day = (subj.parse_date(proc.get("occurrenceDateTime")) or subj.parse_date(period.get("start"))
               or subj.parse_date((enc.get("actualPeriod") or {}).get("start")))
        codes = procedure_code(proc.get("code"))
        if day is None:
            continue
        ev = subject_event(s, f"procedure/{proc['id']}", "procedure", codes[0] if codes else None, day,
                           source=f"Procedure/{proc['id']}", encounter=enc["id"],
                           protocol=_protocol_visit(appt)[0], codes=codes)
        withdrawn = _withdrawn(s)
        if ev.issue is None and withdrawn is not None and day > withdrawn:
            ev = _issue(ev, "after-withdrawal", f"done {day.isoformat()}, after the withdrawal on "
                        f"{withdrawn.isoformat()}")
        out.append(ev)
    return out


# -- pricing -------------------------------------------------------------------------------------

def select(fees: list[Fee], ev: Event, country: str | None) -> Fee | None:
    """The most specific fee that applies to the event (see the module docstring)."""
    applicable = [f for f in fees if f.kind == ev.kind and ev.names(f.detail)
                  and f.in_effect(ev.on) and (f.protocol is None or f.protocol == ev.protocol)
                  and f.scope_matches(ev.site, country)]
    return max(applicable, key=lambda f: f.rank, default=None)


def price_site(site: dict[str, Any], events: list[Event], fees: list[Fee],
               invoiced: frozenset[str] | set[str] = frozenset(), *, withheld: Decimal = ZERO,
               unheld: frozenset[str] | set[str] = frozenset(), start: dt.date | None = None,
               end: dt.date | None = None) -> list[Line]:
    """Every event of the site priced (all dates), caps applied, the holdback release computed.

    ``invoiced``: the keys of the events already on a live invoice. Under a ``per-site-cap`` they
    count first and keep their payment, whatever their date; the others are paid, in date then
    key order, while the cap has room (an event dated earlier but reported late never displaces
    one already invoiced).

    The holdback release (the ``closed`` date) pays what was withheld: ``withheld`` (the
    holdbacks on the site's live invoices, :func:`invoice_holdbacks`) plus the holdbacks of the
    payable events on no live invoice dated in [``start``, ``end``] (the run of that period puts
    them on the release's invoice). Once the release is on a live invoice (its key in
    ``invoiced``), nothing releases a later holdback, so an event on no live invoice is paid
    without holdback, and so is an invoiced one in ``unheld`` (its invoice line has no holdback:
    it was invoiced so, after the release)."""
    release = next((ev for ev in events if ev.kind == "holdback-release"), None)
    released = release is not None and release.key in invoiced
    country = site_country(site)
    currency = site_currency(site, fees)[0]
    lines: list[Line] = []
    counted: dict[str, int] = {}
    for ev in events:
        if ev.key in invoiced and ev.issue is None and ev.kind != "holdback-release":
            f = select(fees, ev, country)
            if f is not None and f.cap is not None:
                counted[f.kind] = counted.get(f.kind, 0) + 1
    for ev in events:
        if ev.kind == "holdback-release":
            continue
        if ev.issue is not None:
            lines.append(Line(ev, "not-paid", issue=ev.issue, note=ev.note))
            continue
        f = select(fees, ev, country)
        if f is None:
            lines.append(Line(ev, "not-paid", issue="no-fee",
                              note=f"no fee for {ev.kind}{' ' + ev.detail if ev.detail else ''} on {ev.on.isoformat()}"))
            continue
        if f.problem is not None:
            lines.append(Line(ev, "not-paid", f, issue="invalid-fee",
                              note=f"the fee {f.canonical} cannot pay: {f.problem}"))
            continue
        if f.currency != currency:
            lines.append(Line(ev, "not-paid", f, issue="currency",
                              note=f"the fee {f.canonical} is in {f.currency}, " + (
                                  f"the site is paid in {currency}" if currency else
                                  "and the site's currency is not defined (its fees disagree)")))
            continue
        if f.cap is not None and ev.key not in invoiced:
            n = counted[f.kind] = counted.get(f.kind, 0) + 1
            if n > f.cap:
                lines.append(Line(ev, "capped", f, issue="capped",
                                  note=f"number {n} beyond the per-site cap of {f.cap} ({f.canonical})"))
                continue
        hb = holdback_of(f.amount, f.factor, f.currency)
        note = None
        if released and hb and (ev.key not in invoiced or ev.key in unheld):
            hb, note = ZERO, "paid without holdback: the site's holdback release is invoiced already"
        lines.append(Line(ev, "payable", f, f.amount, hb, f.amount - hb, note=note))
    if release is not None and currency is not None:
        due = sum((ln.holdback for ln in lines if ln.status == "payable" and ln.event.key not in invoiced
                   and (start is None or ln.event.on >= start) and (end is None or ln.event.on <= end)), ZERO)
        lines.append(Line(release, "release", None, withheld + due, ZERO, withheld + due,
                          note="release of the holdback withheld on the site's invoices"
                               + (" and on this period's events invoiced with it" if due else "")))
    lines.sort(key=lambda ln: (ln.event.on, ln.event.key))
    return lines


def site_currency(site: dict[str, Any], fees: list[Fee]) -> tuple[str | None, list[Discrepancy]]:
    """The currency a site is paid in, and the ``currency`` discrepancies of its fee schedule.

    The site's currency is that of the valid fees for its country (``venue`` its ISO 3166 code)
    if there are any, else of the study-wide fees, else of the fees for the site itself: a site
    is paid in its country's currency, and a fee for one site is an exception to the schedule,
    never what sets the currency (a JPY start-up fee for a German site is reported, it does not
    move the site to JPY). When that level's fees use more than one currency the site has no
    currency: one ``currency`` discrepancy naming them, and nothing is paid. Each fee for the
    site or its country in another currency than the site's is a ``currency`` discrepancy
    (events it prices are not paid); a study-wide fee in another currency is reported only
    when it prices one of the site's events (multi-country studies have study-wide rates in one
    currency that countries in another override)."""
    country = site_country(site)
    valid = sorted((f for f in fees if f.problem is None and f.scope_matches(site["id"], country)),
                   key=lambda f: f.canonical)
    tiers = ([f for f in valid if f.site is None and f.country is not None],
             [f for f in valid if f.site is None and f.country is None],
             [f for f in valid if f.site is not None])
    level = next((t for t in tiers if t), [])
    found = sorted({f.currency for f in level})
    if len(found) > 1:
        return None, [Discrepancy("currency", f"the site's currency is not defined: its "
                                  f"{'country' if level is tiers[0] else 'study' if level is tiers[1] else 'site'}"
                                  f"-level fees use {', '.join(found)}; nothing is paid until they agree",
                                  source=f"ResearchStudy/{site['id']}",
                                  definitions=tuple(f.canonical for f in level))]
    currency = found[0] if found else None
    return currency, [Discrepancy("currency", f"the fee {f.canonical} ({'site' if f.site else 'country'} "
                                  f"level) is in {f.currency}, the site is paid in {currency}: it pays nothing",
                                  source=f"ResearchStudy/{site['id']}", definitions=(f.canonical,))
                      for f in tiers[0] + tiers[2] if currency is not None and f.currency != currency]


def invalid_fees(site: dict[str, Any], fees: list[Fee], start: dt.date | None,
                 end: dt.date | None) -> list[Discrepancy]:
    """``invalid-fee``: each fee whose scope includes the site, in effect at some point of the
    period, whose price cannot pay (:func:`_price`): it pays nothing."""
    country = site_country(site)
    return [Discrepancy("invalid-fee", f"the fee {f.canonical} ({f.kind}{' ' + f.detail if f.detail else ''}) "
                        f"cannot pay: {f.problem}; no event is paid under it", definitions=(f.canonical,))
            for f in sorted(fees, key=lambda f: f.canonical)
            if f.problem is not None and f.scope_matches(site["id"], country) and f.overlaps(start, end)]


def rate_changes(site: dict[str, Any], fees: list[Fee], lines: list[Line], start: dt.date | None,
                 end: dt.date | None) -> list[Discrepancy]:
    """``rate-changed``: per (code, detail) the site had events of in the period, its most
    specific definitions in effect at some point of the period (for any protocol, or for a
    version the site ran in the period) with different amounts."""
    country = site_country(site)
    ran = site_protocols(site, start, end)
    out: list[Discrepancy] = []
    kinds = sorted({(ln.event.kind, ln.event.detail) for ln in lines if ln.fee is not None},
                   key=lambda k: (k[0], k[1] or ""))
    for kind, detail in kinds:
        cands = [f for f in fees if f.kind == kind and (f.detail is None or f.detail == detail)
                 and f.problem is None and f.scope_matches(site["id"], country) and f.overlaps(start, end)
                 and (f.protocol is None or f.protocol in ran)]
        if not cands:
            continue
        best = max(f.rank[:2] for f in cands)
        cands = sorted((f for f in cands if f.rank[:2] == best), key=lambda f: f.rank)
        if len({f.amount for f in cands}) > 1:
            rates = ", ".join(f"{f.amount} {f.currency} ({f.canonical}"
                              f"{', from ' + f.start.isoformat() if f.start else ''}"
                              f"{', protocol ' + f.protocol if f.protocol else ''})" for f in cands)
            out.append(Discrepancy("rate-changed", f"{kind}{' ' + detail if detail else ''}: the rate "
                                   f"changed in the period: {rates}; each event is paid at the rate of its date",
                                   definitions=tuple(f.canonical for f in cands)))
    return out


def not_derived(site: dict[str, Any], fees: list[Fee], start: dt.date | None,
                end: dt.date | None) -> list[Discrepancy]:
    """``not-derived``: each ``procedure`` fee whose detail names no code (not ``system|code``:
    procedure events are matched by their codes, so it never applies) whose scope includes the
    site and that is in effect at some point of the period."""
    country = site_country(site)
    return [Discrepancy("not-derived", f"{f.kind}{' ' + f.detail if f.detail else ''}: the detail names no "
                        f"code (system|code), so the fee {f.canonical} ({f.amount} {f.currency}) matches no "
                        "procedure and is never paid by $payments", definitions=(f.canonical,))
            for f in sorted(fees, key=lambda f: f.canonical)
            if f.kind == "procedure" and f.detail is not None and not is_code(f.detail)
            and f.scope_matches(site["id"], country) and f.overlaps(start, end)]


def site_protocols(site: dict[str, Any], start: dt.date | None, end: dt.date | None) -> set[str]:
    """The protocol versions (url|version) the site ran at some point of [start, end]."""
    out = {p for p in [site_protocol(site, start)] if p} if start else set()
    for e in site.get("extension") or []:
        if not isinstance(e, dict) or e.get("url") != SITE_PROTOCOL:
            continue
        parts = {x.get("url"): x for x in e.get("extension") or [] if isinstance(x, dict)}
        protocol = (parts.get("protocol") or {}).get("valueCanonical")
        effective = subj.parse_date((parts.get("effective") or {}).get("valueDate"))
        if protocol and effective and (start is None or effective > start) and (end is None or effective <= end):
            out.add(protocol)
    return out


def invoiced_lines(charge_items: dict[str, dict[str, Any]], invoices: list[dict[str, Any]]
                   ) -> tuple[dict[str, str], dict[str, tuple[str, Decimal]]]:
    """(event key -> ChargeItem id, ChargeItem id -> (Invoice id, the line's net)) of live invoices."""
    keys: dict[str, str] = {}
    for cid, ci in charge_items.items():
        if ci.get("status") in ("entered-in-error", "aborted", "not-billable"):
            continue
        for i in ci.get("identifier") or []:
            if isinstance(i, dict) and i.get("system") == EVENT_SYSTEM and isinstance(i.get("value"), str):
                keys[i["value"]] = cid
    lines: dict[str, tuple[str, Decimal]] = {}
    for inv in invoices:
        if inv.get("status") in _DEAD:
            continue
        for li in inv.get("lineItem") or []:
            cid = ref_id(li.get("chargeItemReference"), "ChargeItem")
            if cid:
                lines[cid] = (inv["id"], line_net(li))
    return keys, lines


def line_holdback(line_item: dict[str, Any]) -> Decimal | None:
    """The holdback withheld on an Invoice line: its ``deduction`` components coded ``holdback``
    (None: it has none)."""
    amounts = [Decimal(str(((pc.get("amount") or {}).get("value")) or 0)) for pc in line_item.get("priceComponent") or []
               if isinstance(pc, dict) and pc.get("type") == "deduction" and _code(pc.get("code"), EVENT_CS) == HOLDBACK]
    return sum(amounts, ZERO) if amounts else None


def invoice_holdbacks(invoices: list[dict[str, Any]], site_id: str, keys: dict[str, str],
                      invoiced: dict[str, tuple[str, Decimal]]) -> tuple[Decimal, set[str]]:
    """(the holdback withheld on the site's live invoices: the sum of their lines'
    :func:`line_holdback`; the keys of the events listed without holdback on a live invoice
    other than the one that lists the site's release), from :func:`invoiced_lines`' ``keys``
    and ``invoiced``."""
    release = invoiced.get(keys.get(f"holdback-release/{site_id}", ""))
    by_cid = {cid: key for key, cid in keys.items()}
    total, unheld = ZERO, set()
    for inv in invoices:
        if inv.get("status") in _DEAD or invoice_site(inv) != site_id:
            continue
        for li in inv.get("lineItem") or []:
            if not isinstance(li, dict):
                continue
            hb = line_holdback(li)
            total += hb or ZERO
            cid = ref_id(li.get("chargeItemReference"), "ChargeItem")
            if hb is None and (release is None or inv.get("id") != release[0]) and cid in by_cid:
                unheld.add(by_cid[cid])
    return total, unheld


def line_net(line_item: dict[str, Any]) -> Decimal:
    """base and surcharge amounts minus deduction and discount amounts of an Invoice line."""
    total = ZERO
    for pc in line_item.get("priceComponent") or []:
        value = Decimal(str(((pc.get("amount") or {}).get("value")) or 0))
        total += -value if pc.get("type") in ("deduction", "discount") else \
            value if pc.get("type") in ("base", "surcharge") else ZERO
    return total


def report(study: dict[str, Any], sites: list[dict[str, Any]], subjects: list[dict[str, Any]],
           consents: list[dict[str, Any]], appointments: list[dict[str, Any]],
           encounters: list[dict[str, Any]], definitions: list[dict[str, Any]],
           charge_items: dict[str, dict[str, Any]], invoices: list[dict[str, Any]],
           start: dt.date | None = None, end: dt.date | None = None,
           procedures: list[dict[str, Any]] = ()) -> list[SiteReport]:  # type: ignore[assignment]
    """Per site (in id order): the events dated in [start, end] priced, with what is invoiced."""
    fees = [f for f in (fee(d, study["id"]) for d in definitions) if f is not None]
    by_id = {c["id"]: c for c in consents}
    keys, invoiced = invoiced_lines(charge_items, invoices)
    visit_subject = {}
    for a in appointments:
        key = _visit_key(a)
        if key:
            visit_subject[a["id"]] = key.partition("/")[0]
    out: list[SiteReport] = []
    for site in sorted(sites, key=lambda s: s["id"]):
        subs = [s for s in subjects if ref_id(s.get("study"), "ResearchStudy") == site["id"]]
        ids = {s["id"] for s in subs}
        appts = [a for a in appointments if visit_subject.get(a["id"]) in ids]
        appt_ids = {a["id"] for a in appts}
        encs = [e for e in encounters
                if ref_id(next(iter(e.get("appointment") or []), None), "Appointment") in appt_ids]
        patients = {ref_id(x.get("subject"), "Patient") for x in subs} - {None}
        procs = [p for p in procedures if ref_id(p.get("subject"), "Patient") in patients]
        events = site_events(site, subs, by_id, appts, encs, procs)
        withheld, unheld = invoice_holdbacks(invoices, site["id"], keys, invoiced)
        lines = price_site(site, events, fees, {k for k, cid in keys.items() if cid in invoiced},
                           withheld=withheld, unheld=unheld, start=start, end=end)
        for ln in lines:
            cid = keys.get(ln.event.key)
            if cid is not None:
                ln.charge_item = cid
                if cid in invoiced:
                    ln.invoice, ln.invoiced = invoiced[cid]
        in_period = [ln for ln in lines if (start is None or ln.event.on >= start)
                     and (end is None or ln.event.on <= end)]
        currency, currency_problems = site_currency(site, fees)
        rep = SiteReport(site["id"], site.get("title"), site_organization(site), currency, in_period)
        rep.discrepancies = [Discrepancy(ln.issue, ln.note or ln.issue, ln.event.key, ln.event.source,
                                         (ln.fee.canonical,) if ln.fee else ())
                             for ln in in_period if ln.issue is not None]
        rep.discrepancies += [
            Discrepancy("invoice-mismatch", f"Invoice/{ln.invoice} lists it for a net of {ln.invoiced}; "
                        f"its net is {ln.net}", ln.event.key, ln.event.source,
                        (ln.fee.canonical,) if ln.fee else ())
            for ln in in_period if ln.invoice is not None and ln.invoiced != ln.net]
        for inv in invoices:  # the site's live invoices (any period) whose figures do not add up
            if inv.get("status") not in _DEAD and invoice_site(inv) == site["id"]:
                problems = invoice_problems(inv, charge_items)
                if problems:
                    rep.discrepancies.append(Discrepancy(
                        "invoice-mismatch", f"Invoice/{inv['id']} does not add up: {'; '.join(problems)}",
                        source=f"Invoice/{inv['id']}"))
        rep.discrepancies += rate_changes(site, fees, in_period, start, end)
        rep.discrepancies += not_derived(site, fees, start, end)
        rep.discrepancies += invalid_fees(site, fees, start, end)
        rep.discrepancies += currency_problems
        out.append(rep)
    return out


def invoice_site(invoice: dict[str, Any]) -> str | None:
    """The site id of an Invoice identifier ``sid/site-invoice|<site>/<hash>``."""
    value = next((i.get("value") for i in invoice.get("identifier") or []
                  if isinstance(i, dict) and i.get("system") == INVOICE_SYSTEM), None)
    return value.partition("/")[0] if isinstance(value, str) else None


def settled(invoice: dict[str, Any], notices: list[dict[str, Any]]) -> bool:
    """Whether an ``issued`` Invoice is paid in full: the ``active`` PaymentNotices whose
    ``request`` is it, in its currency, sum to at least its ``totalNet``."""
    if invoice.get("status") != "issued" or not isinstance(invoice.get("totalNet"), dict):
        return False
    total = Decimal(str(invoice["totalNet"].get("value") or 0))
    currency = invoice["totalNet"].get("currency")
    paid = sum((Decimal(str((n.get("amount") or {}).get("value") or 0)) for n in notices
                if n.get("status") == "active" and ref_id(n.get("request"), "Invoice") == invoice.get("id")
                and (n.get("amount") or {}).get("currency") == currency), ZERO)
    return paid >= total


def notice_problem(notice: dict[str, Any], invoice: dict[str, Any]) -> str | None:
    """Why an ``active`` PaymentNotice cannot pay the Invoice its ``request`` names (None: it
    can): its ``amount`` is not in the invoice's currency (``totalNet``). A notice of another
    status pays nothing and is not checked (so a wrong one can be set ``cancelled``)."""
    currency = (invoice.get("totalNet") or {}).get("currency") if isinstance(invoice.get("totalNet"), dict) else None
    if notice.get("status") != "active" or not isinstance(currency, str):
        return None
    amount = notice.get("amount") if isinstance(notice.get("amount"), dict) else {}
    if amount.get("currency") != currency:
        return (f"PaymentNotice/{notice.get('id')} pays {amount.get('value')} "
                f"{amount.get('currency') or '(no currency)'} but Invoice/{invoice.get('id')} is in {currency}: "
                "a payment is confirmed in the invoice's currency")
    return None


def _amount(money_: Any) -> tuple[Decimal, Any]:
    money_ = money_ if isinstance(money_, dict) else {}
    return Decimal(str(money_.get("value") or 0)), money_.get("currency")


def invoice_problems(invoice: dict[str, Any], charge_items: dict[str, dict[str, Any]]) -> list[str]:
    """Why an Invoice's figures do not add up (empty: they do). Each line in the invoice's
    currency; its gross (base and surcharges) the ``totalPriceComponent`` of its ChargeItem
    (``charge_items``: by id); a deduction with a ``factor`` equal to round(gross x factor); the
    lines' gross summing to ``totalGross`` and their nets (:func:`line_net`) to ``totalNet``.
    What ``$payments`` writes always adds up; an invoice edited afterwards by a plain update
    (nothing in the write path stops it) may not: ``$payment-file`` refuses it, ``$payments``
    reports it (``invoice-mismatch``) and does not set it ``balanced``."""
    total_net, currency = _amount(invoice.get("totalNet"))
    if not isinstance(currency, str):
        return ["it has no totalNet with a currency"]
    total_gross, gross_currency = _amount(invoice.get("totalGross"))
    has_gross = isinstance(invoice.get("totalGross"), dict)
    out = []
    if has_gross and gross_currency != currency:
        out.append(f"totalGross is in {gross_currency}, totalNet in {currency}")
    gross_sum = net_sum = ZERO
    for n, li in enumerate(invoice.get("lineItem") or []):
        at = f"lineItem[{n}] (sequence {li.get('sequence', '?')})"
        comps = [pc for pc in li.get("priceComponent") or [] if isinstance(pc, dict)]
        gross = sum((_amount(pc.get("amount"))[0] for pc in comps if pc.get("type") in ("base", "surcharge")), ZERO)
        net = line_net(li)
        gross_sum, net_sum = gross_sum + gross, net_sum + net
        others = sorted({str(_amount(pc.get("amount"))[1]) for pc in comps if "amount" in pc} - {currency})
        if others:
            out.append(f"{at} has amounts in {', '.join(others)}, not {currency}")
        for pc in comps:
            if pc.get("type") == "deduction" and pc.get("factor") is not None:
                want = holdback_of(gross, Decimal(str(pc["factor"])), currency)
                if _amount(pc.get("amount"))[0] != want:
                    out.append(f"{at}: the deduction of factor {pc['factor']} is {_amount(pc.get('amount'))[0]}, "
                               f"not {want}")
        cid = ref_id(li.get("chargeItemReference"), "ChargeItem")
        ci = charge_items.get(cid or "")
        if not ci:
            out.append(f"{at} names no stored ChargeItem")
            continue
        ci_gross, ci_currency = _amount((ci.get("totalPriceComponent") or {}).get("amount"))
        if (ci_gross, ci_currency) != (gross, currency):
            out.append(f"{at}: its gross {gross} {currency} is not ChargeItem/{cid}'s {ci_gross} {ci_currency}")
    if net_sum != total_net:
        out.append(f"the lines' nets sum to {net_sum}, totalNet is {total_net}")
    if has_gross and gross_sum != total_gross:
        out.append(f"the lines' gross sum to {gross_sum}, totalGross is {total_gross}")
    return out
