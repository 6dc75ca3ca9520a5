"""A subject's planned visits from the protocol (``profiles/README.md``, "The schedule of activities").

Pure functions over resource JSON: the protocol PlanDefinition, the anchor date and the subject's
existing CarePlan, Appointments and Encounters in; the desired resources and what changes out.
``operations/schedule.py`` reads the resources and writes the changes as one transaction.

Timing (the HL7 Vulcan SoA pattern). The anchor action (the one without ``relatedAction``) is
Day 1 = the anchor date. Every other action has one ``relatedAction``: ``targetId`` (the anchor,
or another action: offsets add up along the chain), ``relationship`` (``after-start``,
``after``, ``after-end``: later; ``before-start``, ``before``, ``before-end``: earlier; a visit is
one day, so start and end coincide; ``concurrent-with-start``, ``concurrent``: the same day),
``offsetDuration`` in days (UCUM ``d``; ``wk`` is 7 days) and the window as the extension
``AcceptableOffsetRangeSoa`` (``valueRange.low``/``high``, the earliest and latest acceptable
offset, in the same direction as the offset: Day 15 +/- 3 is 14 d ``after-start``, range 11-17 d;
a screening window of 28 to 1 days before Day 1 is ``before-start`` 14 d, range 1-28 d, or written
signed, -28 to -1 d). Without the extension the window is the target day. The target day is
the target action's day plus the offset: enrolment 2026-03-10, Day 15 +/- 3 is 2026-03-24 in
2026-03-21..2026-03-27.

What ``$schedule`` changes (decided here, documented in the OperationDefinition):

- A visit is **done** when its Appointment is ``fulfilled``, ``noshow``, ``cancelled`` or
  ``entered-in-error`` (or ``arrived``/``checked-in``), or an Encounter that is not ``planned``,
  ``cancelled``, ``entered-in-error`` or ``unknown`` points at it (``Encounter.appointment``). A
  visit whose window ended before the evaluation date and is not done is **past** (overdue: the
  site records it, as an Encounter or ``noshow``). Done and past visits are never moved or
  cancelled. The one change made to a done visit: an Appointment with a ``completed`` Encounter
  and a status still open (``proposed``, ``pending``, ``booked``, ``waitlist``, ``arrived``,
  ``checked-in``) is set to ``fulfilled``, as the contract says a done visit is; nothing else of it
  changes.
- An **open** visit (neither) of an action of the protocol version is set to the version's timing:
  ``requestedPeriod`` the window, ``start``/``end`` the target day (``T00:00:00Z`` to the next
  day's), the ``protocol-visit`` extension, ``description`` the action's title, ``basedOn`` the
  plan; except that a ``booked`` Appointment whose start lies in the new window keeps its start
  and end (the time the site booked). Its status is the site's and is not changed.
- An open visit of an action the version does not have (removed by an amendment) is
  **cancelled** (status ``cancelled``, ``cancellationReason.text`` why; never deleted).
- A visit of the version that the subject has no Appointment for is **created** (status
  ``proposed``, participant the Patient ``needs-action``), unless the subject already had a plan
  (this is a rescheduling) and the visit's window ended before the evaluation date: an amendment
  does not add a visit that could no longer be done (**skipped**).
- A subject that is withdrawn or a screen failure (``ctms.subjects.classify``) gets nothing new:
  its open visits are cancelled.
- The CarePlan follows the version (``instantiatesCanonical``) while the subject has a visit
  open or new under it; a subject whose visits are all done, past or cancelled keeps its plan
  as it is (the version it was followed under).
- Resources whose content would not change are left alone (no version): running twice writes
  nothing the second time.
"""

from __future__ import annotations

import copy
import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ..errors import Issue, Unprocessable

CTMS = "http://fhir-ctms.org/fhir"
PLAN_SYSTEM = f"{CTMS}/sid/visit-plan"
VISIT_SYSTEM = f"{CTMS}/sid/planned-visit"
PROTOCOL_VISIT = f"{CTMS}/StructureDefinition/protocol-visit"
SITE_PROTOCOL = f"{CTMS}/StructureDefinition/site-protocol"
PLAN_PROFILE = f"{CTMS}/StructureDefinition/ctms-visit-plan"
VISIT_PROFILE = f"{CTMS}/StructureDefinition/ctms-planned-visit"
OFFSET_RANGE = "http://hl7.org/fhir/uv/vulcan-schedule/StructureDefinition/AcceptableOffsetRangeSoa"

LATER = frozenset({"after-start", "after", "after-end"})
EARLIER = frozenset({"before-start", "before", "before-end"})
SAME = frozenset({"concurrent-with-start", "concurrent"})
_UNIT_DAYS = {"d": 1, "day": 1, "days": 1, "wk": 7, "week": 7, "weeks": 7}
#: the days from the first to the last date a visit may have (0001-01-01 .. 9999-12-30: the day
#: after a visit, its Appointment's ``end``, must be a date too): no offset can be longer
_SPAN = (dt.date.max - dt.date.min).days - 1

DONE_STATUSES = frozenset({"fulfilled", "noshow", "cancelled", "entered-in-error", "arrived",
                           "checked-in"})
_NOT_HELD = frozenset({"planned", "cancelled", "entered-in-error", "unknown"})
_FULFILLABLE = frozenset({"proposed", "pending", "booked", "waitlist", "arrived", "checked-in"})


@dataclass(frozen=True, slots=True)
class Visit:
    """One visit of the protocol for one anchor date."""

    action_id: str
    title: str | None
    target: dt.date
    low: dt.date
    high: dt.date


@dataclass(slots=True)
class Change:
    """What happens to one resource: ``created``, ``updated``, ``fulfilled``, ``cancelled``,
    ``unchanged``, ``kept`` (done or past: left as it is) or ``skipped`` (not created)."""

    kind: str
    resource_type: str
    resource: dict[str, Any] | None
    #: the stored resource's id and version (None: new)
    id: str | None = None
    version: int | None = None
    action_id: str | None = None
    why: str | None = None

    @property
    def writes(self) -> bool:
        return self.kind in ("created", "updated", "fulfilled", "cancelled")


@dataclass(slots=True)
class Plan:
    protocol: str
    care_plan: Change
    visits: list[Change] = field(default_factory=list)


# -- timing ------------------------------------------------------------------------------------


def _fail(message: str, expression: str | None = None) -> Unprocessable:
    where = (expression,) if expression else ()
    return Unprocessable(message, issues=[Issue("processing", message, expression=where)])


def _days(quantity: Any, what: str) -> int:
    """A Duration or Quantity in whole days."""
    if not isinstance(quantity, dict) or not isinstance(quantity.get("value"), (int, float, Decimal)) \
            or isinstance(quantity.get("value"), bool):
        raise _fail(f"{what}: a duration with a numeric value is required")
    unit = quantity.get("code") or quantity.get("unit") or "d"
    factor = _UNIT_DAYS.get(str(unit))
    if factor is None:
        raise _fail(f"{what}: unit {unit!r} is not supported (days 'd' or weeks 'wk')")
    days = quantity["value"] * factor
    if not -_SPAN <= days <= _SPAN:  # (NaN and infinities too) no date is that far from another
        raise _fail(f"{what}: {quantity['value']} {unit} is more days than the calendar holds "
                    f"(at most {_SPAN})", what if what.startswith("PlanDefinition") else None)
    if days != int(days):  # fractions are not rounded: a visit is on a day
        raise _fail(f"{what}: {quantity['value']} {unit} is not a whole number of days (durations "
                    f"in a schedule of activities are whole days)",
                    what if what.startswith("PlanDefinition") else None)
    return int(days)


def _timing(action: dict[str, Any], where: str) -> tuple[str, int, int, int] | None:
    """(target action id, signed offset, signed window low, high) of an action; None: the anchor."""
    related = action.get("relatedAction") or []
    if not related:
        return None
    if len(related) != 1:
        raise _fail(f"{where}: one relatedAction (the visit's timing) is expected, found {len(related)}",
                    f"{where}.relatedAction")
    ra = related[0]
    target, rel = ra.get("targetId"), ra.get("relationship")
    if not isinstance(target, str):
        raise _fail(f"{where}.relatedAction: targetId is required", f"{where}.relatedAction")
    if rel in LATER:
        sign = 1
    elif rel in EARLIER:
        sign = -1
    elif rel in SAME:
        sign = 0
    else:
        raise _fail(f"{where}.relatedAction: relationship {rel!r} is not a visit timing "
                    "(after-start, before-start, ...)", f"{where}.relatedAction.relationship")
    if "offsetDuration" not in ra and sign != 0:
        raise _fail(f"{where}.relatedAction: offsetDuration (days) is required",
                    f"{where}.relatedAction.offsetDuration")
    magnitude = _days(ra["offsetDuration"], f"{where}.relatedAction.offsetDuration") if sign else 0
    if magnitude < 0:
        raise _fail(f"{where}.relatedAction.offsetDuration: negative; use relationship before-start",
                    f"{where}.relatedAction.offsetDuration")
    offset = sign * magnitude
    ranges = [e for e in ra.get("extension") or [] if isinstance(e, dict) and e.get("url") == OFFSET_RANGE]
    if not ranges:
        return target, offset, offset, offset
    rng = ranges[0].get("valueRange")
    if not isinstance(rng, dict) or "low" not in rng or "high" not in rng:
        raise _fail(f"{where}.relatedAction: AcceptableOffsetRangeSoa needs valueRange.low and high",
                    f"{where}.relatedAction.extension")
    low = _days(rng["low"], f"{where}.relatedAction AcceptableOffsetRangeSoa low")
    high = _days(rng["high"], f"{where}.relatedAction AcceptableOffsetRangeSoa high")
    if sign < 0 and low >= 0 and high >= 0:  # magnitudes before the target: flip
        low, high = -high, -low
    if not low <= offset <= high:
        raise _fail(f"{where}: the window {low}..{high} days does not contain the offset {offset} days",
                    f"{where}.relatedAction.extension")
    return target, offset, low, high


def visits(protocol: dict[str, Any], anchor: dt.date) -> list[Visit]:
    """The protocol's visits for an anchor date (Day 1), in the order of its actions."""
    actions = protocol.get("action") or []
    if not isinstance(actions, list) or not actions:
        raise _fail("The protocol has no action (visit)", "PlanDefinition.action")
    timing: dict[str, tuple[str, int, int, int] | None] = {}
    titles: dict[str, str | None] = {}
    order: list[str] = []
    for i, a in enumerate(actions):
        where = f"PlanDefinition.action[{i}]"
        aid = a.get("id") if isinstance(a, dict) else None
        if not isinstance(aid, str) or not aid:
            raise _fail(f"{where}: every visit needs an id (the visit's key)", where)
        if aid in timing:
            raise _fail(f"{where}: the action id {aid!r} is used twice", f"{where}.id")
        timing[aid] = _timing(a, where)
        titles[aid] = a.get("title") if isinstance(a.get("title"), str) else None
        order.append(aid)
    anchors = [aid for aid in order if timing[aid] is None]
    if len(anchors) != 1:
        raise _fail("The protocol needs exactly one anchor visit (Day 1: the action without "
                    f"relatedAction); it has {len(anchors)}"
                    + (f": {', '.join(anchors)}" if anchors else " (no timing at all)"),
                    "PlanDefinition.action")
    base: dict[str, dt.date] = {}
    last = dt.date.max - dt.timedelta(days=1)  # the day after a visit is its Appointment's end

    def shifted(day: dt.date, days: int, aid: str) -> dt.date:
        """``day`` + ``days``, or a 422 when that is outside 0001-01-01 .. 9999-12-30."""
        try:
            out = day + dt.timedelta(days=days)
        except OverflowError:
            out = None
        if out is None or out > last:
            raise _fail(f"Visit {aid!r}: {days:+d} days from {day.isoformat()} falls outside the "
                        f"dates this server can represent (0001-01-01 to {last.isoformat()}); "
                        f"the anchor (Day 1) is {anchor.isoformat()}")
        return out

    def target_day(aid: str, seen: tuple[str, ...]) -> dt.date:
        if aid in base:
            return base[aid]
        t = timing.get(aid, ...)
        if t is ...:
            raise _fail(f"Action {seen[-1]!r}: relatedAction.targetId {aid!r} names no action")
        if aid in seen:
            raise _fail(f"The timing of action {aid!r} is circular: {' -> '.join((*seen, aid))}")
        day = shifted(anchor, 0, aid) if t is None else shifted(target_day(t[0], (*seen, aid)),
                                                                 t[1], aid)
        base[aid] = day
        return day

    out = []
    for aid in order:
        t = timing[aid]
        day = target_day(aid, ())
        if t is None:
            out.append(Visit(aid, titles[aid], day, day, day))
        else:
            origin = target_day(t[0], (aid,))
            out.append(Visit(aid, titles[aid], day, shifted(origin, t[2], aid),
                             shifted(origin, t[3], aid)))
    return out


def site_protocol(site: dict[str, Any], on: dt.date) -> str | None:
    """The canonical (``url|version``) of the protocol a site runs on a day: its ``site-protocol``
    entry with the latest ``effective`` date not after ``on`` (None: no such entry)."""
    best: tuple[dt.date, int, str] | None = None
    for i, ext in enumerate(site.get("extension") or []):
        if not isinstance(ext, dict) or ext.get("url") != SITE_PROTOCOL:
            continue
        parts = {e.get("url"): e for e in ext.get("extension") or [] if isinstance(e, dict)}
        canonical = (parts.get("protocol") or {}).get("valueCanonical")
        effective = _date((parts.get("effective") or {}).get("valueDate"))
        if not isinstance(canonical, str) or effective is None or effective > on:
            continue
        if best is None or (effective, i) >= best[:2]:
            best = (effective, i, canonical)
    return best[2] if best else None


def _date(value: Any) -> dt.date | None:
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        return dt.date.fromisoformat(value[:10])
    except ValueError:
        return None


def canonical(protocol: dict[str, Any]) -> str:
    url, version = protocol.get("url"), protocol.get("version")
    if not isinstance(url, str) or not isinstance(version, str):
        raise _fail("The protocol PlanDefinition needs url and version (ctms-protocol)")
    return f"{url}|{version}"


# -- the resources -----------------------------------------------------------------------------


def visit_key(subject_id: str, action_id: str) -> str:
    return f"{subject_id}/{action_id}"


def _identifier_value(resource: dict[str, Any], system: str) -> str | None:
    for ident in resource.get("identifier") or []:
        if isinstance(ident, dict) and ident.get("system") == system and isinstance(ident.get("value"), str):
            return ident["value"]
    return None


def action_of(appointment: dict[str, Any], subject_id: str) -> str | None:
    """The action id of one of the subject's planned-visit Appointments (None: not one)."""
    value = _identifier_value(appointment, VISIT_SYSTEM)
    prefix = subject_id + "/"
    return value[len(prefix):] if value and value.startswith(prefix) else None


def _instant(day: dt.date) -> str:
    return f"{day.isoformat()}T00:00:00Z"


def _with(items: list[Any] | None, item: dict[str, Any], same: Any) -> list[Any]:
    """``items`` with ``item`` in place of the first one ``same`` matches (else appended)."""
    out = list(items or [])
    for i, x in enumerate(out):
        if same(x):
            out[i] = item
            return out
    return out + [item]


def _profiled(resource: dict[str, Any], profile: str) -> None:
    meta = resource.setdefault("meta", {})
    profiles = meta.get("profile") or []
    if profile not in profiles:
        meta["profile"] = [*profiles, profile]


def care_plan(existing: dict[str, Any] | None, subject_id: str, patient: str, protocol: str,
              title: str | None) -> dict[str, Any]:
    """The subject's ``ctms-visit-plan`` CarePlan: the existing one brought up to date, or new."""
    out = copy.deepcopy(existing) if existing else {"resourceType": "CarePlan", "status": "active"}
    _profiled(out, PLAN_PROFILE)
    out["identifier"] = _with(out.get("identifier"), {"system": PLAN_SYSTEM, "value": subject_id},
                              lambda i: isinstance(i, dict) and i.get("system") == PLAN_SYSTEM)
    out["instantiatesCanonical"] = [protocol]
    out["intent"] = "plan"
    if title and "title" not in out:
        out["title"] = f"Visit plan: {title}"
    out["subject"] = {"reference": patient}
    ref = f"ResearchSubject/{subject_id}"
    info = out.get("supportingInfo") or []
    if not any(isinstance(r, dict) and r.get("reference") == ref for r in info):
        out["supportingInfo"] = [*info, {"reference": ref}]
    return out


def appointment(existing: dict[str, Any] | None, subject_id: str, patient: str, plan_ref: str,
                protocol: str, v: Visit) -> dict[str, Any]:
    """A ``ctms-planned-visit`` Appointment at the visit's timing: the existing (open) one moved, or new."""
    out = copy.deepcopy(existing) if existing else {"resourceType": "Appointment", "status": "proposed"}
    _profiled(out, VISIT_PROFILE)
    out["extension"] = _with(out.get("extension"),
                             {"url": PROTOCOL_VISIT, "valueCanonical": f"{protocol}#{v.action_id}"},
                             lambda e: isinstance(e, dict) and e.get("url") == PROTOCOL_VISIT)
    out["identifier"] = _with(out.get("identifier"),
                              {"system": VISIT_SYSTEM, "value": visit_key(subject_id, v.action_id)},
                              lambda i: isinstance(i, dict) and i.get("system") == VISIT_SYSTEM)
    if v.title:
        out["description"] = v.title
    out["basedOn"] = [{"reference": plan_ref}]
    out["subject"] = {"reference": patient}
    out["requestedPeriod"] = [{"start": v.low.isoformat(), "end": v.high.isoformat()}]
    booked = _date(out.get("start"))
    if not (out.get("status") == "booked" and booked is not None and v.low <= booked <= v.high):
        out["start"] = _instant(v.target)
        out["end"] = _instant(v.target + dt.timedelta(days=1))
    participants = out.get("participant") or []
    if not any(isinstance(p, dict) and (p.get("actor") or {}).get("reference") == patient
               for p in participants):
        out["participant"] = [*participants, {"actor": {"reference": patient}, "status": "needs-action"}]
    return out


def same_content(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Equal apart from ``meta.versionId`` and ``meta.lastUpdated`` (what a no-op update ignores)."""
    def strip(r: dict[str, Any] | None) -> Any:
        if r is None:
            return None
        r = dict(r)
        meta = {k: v for k, v in (r.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")}
        r.pop("meta", None)
        if meta:
            r["meta"] = meta
        return r
    return strip(a) == strip(b)


def _ref_id(ref: Any, rtype: str) -> str | None:
    """The id of a ``Type/id`` reference (relative or absolute, version dropped)."""
    value = ref.get("reference") if isinstance(ref, dict) else None
    if not isinstance(value, str):
        return None
    parts = value.split("/_history/")[0].rstrip("/").split("/")
    return parts[-1] if len(parts) >= 2 and parts[-2] == rtype else None


def encounter_states(encounters: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Appointment id -> the statuses of the Encounters that point at it."""
    out: dict[str, set[str]] = {}
    for enc in encounters:
        for ref in enc.get("appointment") or []:
            aid = _ref_id(ref, "Appointment")
            if aid:
                out.setdefault(aid, set()).add(str(enc.get("status")))
    return out


def is_done(appt: dict[str, Any], encounter_statuses: set[str]) -> bool:
    return appt.get("status") in DONE_STATUSES or bool(encounter_statuses - _NOT_HELD)


def is_past(appt: dict[str, Any], on: dt.date) -> bool:
    periods = appt.get("requestedPeriod") or []
    ends = [_date(p.get("end")) for p in periods if isinstance(p, dict)]
    ends = [e for e in ends if e is not None] or [d for d in (_date(appt.get("start")),) if d]
    return bool(ends) and max(ends) < on


@dataclass(frozen=True, slots=True)
class Stored:
    """An existing resource: its JSON, id and version."""

    resource: dict[str, Any]
    id: str
    version: int


def plan(*, subject_id: str, patient: str, protocol: dict[str, Any], anchor: dt.date | None,
         on: dt.date, existing_plan: Stored | None, appointments: list[Stored],
         encounters: list[dict[str, Any]], stopped: bool = False) -> Plan:
    """What the subject's visits should be, and the change to each resource.

    ``anchor`` may be None only when ``stopped`` (a withdrawn subject: nothing is scheduled, open
    visits are cancelled). Appointments are ``basedOn`` the existing CarePlan, else
    ``PLAN_PLACEHOLDER``: the ``fullUrl`` of the new CarePlan in the caller's transaction Bundle.
    """
    proto = canonical(protocol)
    wanted = [] if stopped else visits(protocol, anchor) if anchor else None
    if wanted is None:
        raise _fail("An anchor date is required")
    title = protocol.get("title") if isinstance(protocol.get("title"), str) else None
    plan_ref = f"CarePlan/{existing_plan.id}" if existing_plan else PLAN_PLACEHOLDER
    out = Plan(proto, Change("skipped", "CarePlan", None))
    if stopped and existing_plan is None and not appointments:
        out.care_plan.why = "the subject is off study: nothing to schedule"
        return out

    held = encounter_states(encounters)
    by_action: dict[str, Stored] = {}
    for st in appointments:
        aid = action_of(st.resource, subject_id)
        if aid is not None and (aid not in by_action or st.resource.get("status") != "cancelled"):
            by_action[aid] = st  # one per action; a live one wins over a cancelled duplicate
    rescheduling = existing_plan is not None or bool(by_action)

    def frozen(st: Stored) -> Change | None:
        statuses = held.get(st.id, set())
        if is_done(st.resource, statuses):
            if "completed" in statuses and st.resource.get("status") in _FULFILLABLE:
                return Change("fulfilled", "Appointment", {**st.resource, "status": "fulfilled"},
                              st.id, st.version, why="a completed Encounter points at it")
            return Change("kept", "Appointment", st.resource, st.id, st.version, why="done")
        if is_past(st.resource, on):
            return Change("kept", "Appointment", st.resource, st.id, st.version,
                          why="its window ended before the evaluation date")
        return None

    seen: set[str] = set()
    for v in wanted:
        seen.add(v.action_id)
        st = by_action.get(v.action_id)
        if st is None:
            if rescheduling and v.high < on:
                out.visits.append(Change("skipped", "Appointment", None, action_id=v.action_id,
                                         why="new in this protocol version, its window has ended"))
                continue
            res = appointment(None, subject_id, patient, plan_ref, proto, v)
            out.visits.append(Change("created", "Appointment", res, action_id=v.action_id))
            continue
        ch = frozen(st)
        if ch is None:
            res = appointment(st.resource, subject_id, patient, plan_ref, proto, v)
            kind = "unchanged" if same_content(st.resource, res) else "updated"
            ch = Change(kind, "Appointment", res if kind == "updated" else st.resource, st.id, st.version)
        ch.action_id = v.action_id
        out.visits.append(ch)
    for aid, st in by_action.items():
        if aid in seen:
            continue
        ch = frozen(st)
        if ch is None:
            why = "the subject is off study" if stopped else "not a visit of this protocol version"
            ch = Change("cancelled", "Appointment", {**st.resource, "status": "cancelled",
                                                     "cancellationReason": {"text": why}},
                        st.id, st.version, why=why)
        ch.action_id = aid
        out.visits.append(ch)
    out.care_plan = _plan_change(out, existing_plan, subject_id, patient, title, stopped)
    return out


def _plan_change(out: Plan, existing: Stored | None, subject_id: str, patient: str,
                 title: str | None, stopped: bool) -> Change:
    """The CarePlan follows the protocol version while the subject has visits planned under it
    (open, or new); a subject whose visits are all done, past or cancelled keeps its plan as it
    is (the version it was followed under), as does a subject off study."""
    if existing is None:
        if stopped:
            return Change("skipped", "CarePlan", None, why="the subject is off study")
        return Change("created", "CarePlan", care_plan(None, subject_id, patient, out.protocol, title))
    live = any(ch.kind in ("created", "updated", "unchanged") for ch in out.visits)
    if stopped or not live:
        return Change("unchanged", "CarePlan", existing.resource, existing.id, existing.version)
    new = care_plan(existing.resource, subject_id, patient, out.protocol, title)
    if same_content(existing.resource, new):
        return Change("unchanged", "CarePlan", existing.resource, existing.id, existing.version)
    return Change("updated", "CarePlan", new, existing.id, existing.version)


#: the reference new Appointments carry to a CarePlan created in the same transaction
PLAN_PLACEHOLDER = "urn:uuid:00000000-0000-4000-8000-000000000001"
