"""fhir_ctms.ctms.schedule: visit timing and the changes $schedule makes, without a server.

Every date below is worked out by hand from enrolment (Day 1) 2026-03-10 (2026 is not a leap
year; March has 31 days):
  screening  14 d before, window 28..1 d before: 2026-02-24 in 2026-02-10..2026-03-09
  day 1                                          2026-03-10
  day 15     14 d after, window 11..17 d:         2026-03-24 in 2026-03-21..2026-03-27
  day 29     28 d after, window 25..31 d:         2026-04-07 in 2026-04-04..2026-04-10
  day 57     56 d after, window 49..63 d:         2026-05-05 in 2026-04-28..2026-05-12
Amendment 2.0: day 15 window 12..16 d (2026-03-22..2026-03-26); day 29 becomes Day 31 (30 d,
27..33 d: 2026-04-09 in 2026-04-06..2026-04-12); day 57 removed; day 85 added (84 d, 77..91 d:
2026-06-02 in 2026-05-26..2026-06-09).
"""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import pytest

from fhir_ctms.ctms import schedule as soa
from fhir_ctms.errors import Unprocessable

D = dt.date
URL = "http://example.org/fhir/PlanDefinition/test-protocol"
ANCHOR = D(2026, 3, 10)


def days(n: int) -> dict[str, Any]:
    return {"value": n, "unit": "d", "system": "http://unitsofmeasure.org", "code": "d"}


def action(aid: str, title: str, offset: int | None = None, low: int | None = None,
           high: int | None = None, rel: str = "after-start", target: str = "day1") -> dict[str, Any]:
    a: dict[str, Any] = {"id": aid, "title": title}
    if offset is not None:
        ra: dict[str, Any] = {"targetId": target, "relationship": rel, "offsetDuration": days(offset)}
        if low is not None:
            ra["extension"] = [{"url": soa.OFFSET_RANGE, "valueRange": {"low": days(low), "high": days(high)}}]
        a["relatedAction"] = [ra]
    return a


def protocol_v1() -> dict[str, Any]:
    return {"resourceType": "PlanDefinition", "url": URL, "version": "1.0", "title": "Test protocol",
            "action": [action("scr", "Screening", 14, 1, 28, rel="before-start"),
                       action("day1", "Day 1 (randomisation)"),
                       action("d15", "Day 15", 14, 11, 17),
                       action("d29", "Day 29", 28, 25, 31),
                       action("d57", "Day 57", 56, 49, 63)]}


def protocol_v2() -> dict[str, Any]:
    return {"resourceType": "PlanDefinition", "url": URL, "version": "2.0", "title": "Test protocol",
            "action": [action("scr", "Screening", 14, 1, 28, rel="before-start"),
                       action("day1", "Day 1 (randomisation)"),
                       action("d15", "Day 15", 14, 12, 16),
                       action("d29", "Day 31", 30, 27, 33),
                       action("d85", "Day 85", 84, 77, 91)]}


def windows(vs: list[soa.Visit]) -> dict[str, tuple[D, D, D]]:
    return {v.action_id: (v.target, v.low, v.high) for v in vs}


def test_visit_dates_worked_out_by_hand():
    assert windows(soa.visits(protocol_v1(), ANCHOR)) == {
        "scr": (D(2026, 2, 24), D(2026, 2, 10), D(2026, 3, 9)),
        "day1": (D(2026, 3, 10), D(2026, 3, 10), D(2026, 3, 10)),
        "d15": (D(2026, 3, 24), D(2026, 3, 21), D(2026, 3, 27)),
        "d29": (D(2026, 4, 7), D(2026, 4, 4), D(2026, 4, 10)),
        "d57": (D(2026, 5, 5), D(2026, 4, 28), D(2026, 5, 12)),
    }
    assert windows(soa.visits(protocol_v2(), ANCHOR))["d85"] == (D(2026, 6, 2), D(2026, 5, 26), D(2026, 6, 9))


def test_signed_before_range_weeks_chains_and_no_window():
    p = {"url": URL, "version": "1", "action": [
        action("day1", "Day 1"),
        # the screening window written signed: -28..-1 days, same as 1..28 before
        action("scr", "Screening", 14, -28, -1, rel="before-start"),
        {"id": "w4", "relatedAction": [{"targetId": "day1", "relationship": "after-start",
                                        "offsetDuration": {"value": 4, "code": "wk"}}]},
        # chained: 7 days after the week-4 visit (no window: the target day only)
        action("fu", "Follow-up", 7, target="w4"),
    ]}
    got = windows(soa.visits(p, ANCHOR))
    assert got["scr"] == (D(2026, 2, 24), D(2026, 2, 10), D(2026, 3, 9))
    assert got["w4"] == (D(2026, 4, 7), D(2026, 4, 7), D(2026, 4, 7))
    assert got["fu"] == (D(2026, 4, 14), D(2026, 4, 14), D(2026, 4, 14))


@pytest.mark.parametrize("mutate, message", [
    (lambda p: p.update(action=[]), "no action"),
    (lambda p: p["action"][2].pop("relatedAction"), "exactly one anchor"),
    (lambda p: p["action"][1].update(relatedAction=copy.deepcopy(p["action"][2]["relatedAction"])),
     "exactly one anchor"),
    (lambda p: p["action"][2]["relatedAction"][0].update(targetId="nope"), "names no action"),
    (lambda p: p["action"][2]["relatedAction"][0].update(relationship="starts-with"), "not a visit timing"),
    (lambda p: p["action"][2]["relatedAction"][0]["offsetDuration"].update(code="mo"), "not supported"),
    (lambda p: p["action"][2]["relatedAction"][0]["offsetDuration"].update(value=1.5), "whole number"),
    (lambda p: p["action"][2]["relatedAction"][0].pop("offsetDuration"), "offsetDuration"),
    (lambda p: p["action"][2]["relatedAction"][0]["extension"][0]["valueRange"]["low"].update(value=15),
     "does not contain the offset"),
    (lambda p: p["action"][3].pop("id"), "needs an id"),
    (lambda p: p["action"][3].update(id="d15"), "used twice"),
    (lambda p: p["action"][1].update(relatedAction=[{"targetId": "d15", "relationship": "before-start",
                                                      "offsetDuration": days(14)}]), "anchor"),
])
def test_protocol_errors_are_422(mutate, message):
    p = protocol_v1()
    mutate(p)
    with pytest.raises(Unprocessable) as exc:
        soa.visits(p, ANCHOR)
    assert message in exc.value.diagnostics


def test_circular_timing_is_422():
    p = {"url": URL, "version": "1", "action": [
        action("day1", "Day 1"), action("a", "A", 7, target="b"), action("b", "B", 7, target="a")]}
    with pytest.raises(Unprocessable, match="circular"):
        soa.visits(p, ANCHOR)


def site(*entries: tuple[str, str]) -> dict[str, Any]:
    return {"resourceType": "ResearchStudy", "extension": [
        {"url": soa.SITE_PROTOCOL, "extension": [{"url": "protocol", "valueCanonical": c},
                                                  {"url": "effective", "valueDate": d}]}
        for c, d in entries]}


def test_site_protocol_latest_effective_not_after_the_date():
    s = site((f"{URL}|2.0", "2026-04-01"), (f"{URL}|1.0", "2026-01-01"))
    assert soa.site_protocol(s, D(2025, 12, 31)) is None
    assert soa.site_protocol(s, D(2026, 1, 1)) == f"{URL}|1.0"
    assert soa.site_protocol(s, D(2026, 3, 31)) == f"{URL}|1.0"
    assert soa.site_protocol(s, D(2026, 4, 1)) == f"{URL}|2.0"
    assert soa.site_protocol({"resourceType": "ResearchStudy"}, D(2026, 4, 1)) is None


# -- plan: what changes ---------------------------------------------------------------------------

RS, PAT = "rs-1", "Patient/p-1"


def first(**kw: Any) -> soa.Plan:
    args = dict(subject_id=RS, patient=PAT, protocol=protocol_v1(), anchor=ANCHOR, on=D(2026, 2, 20),
                existing_plan=None, appointments=[], encounters=[])
    args.update(kw)
    return soa.plan(**args)


def stored(p: soa.Plan) -> tuple[soa.Stored, list[soa.Stored]]:
    """What the first plan's resources look like once written (ids given, version 1)."""
    res = p.care_plan.resource
    cp = soa.Stored({**res, "id": "cp-1", "meta": {**res["meta"], "versionId": "1"}}, "cp-1", 1)
    appts = []
    for ch in p.visits:
        res = copy.deepcopy(ch.resource)
        res["id"] = f"ap-{ch.action_id}"
        res["basedOn"] = [{"reference": "CarePlan/cp-1"}]
        appts.append(soa.Stored(res, res["id"], 1))
    return cp, appts


def by_action(p: soa.Plan) -> dict[str, soa.Change]:
    return {c.action_id: c for c in p.visits}


def test_first_plan_creates_the_plan_and_every_visit():
    p = first()
    assert p.protocol == f"{URL}|1.0"
    cp = p.care_plan
    assert cp.kind == "created"
    assert cp.resource["identifier"] == [{"system": soa.PLAN_SYSTEM, "value": RS}]
    assert cp.resource["instantiatesCanonical"] == [f"{URL}|1.0"]
    assert cp.resource["subject"] == {"reference": PAT}
    assert cp.resource["supportingInfo"] == [{"reference": f"ResearchSubject/{RS}"}]
    assert (cp.resource["status"], cp.resource["intent"]) == ("active", "plan")
    assert cp.resource["meta"]["profile"] == [soa.PLAN_PROFILE]
    assert [c.kind for c in p.visits] == ["created"] * 5
    d15 = by_action(p)["d15"].resource
    assert d15["identifier"] == [{"system": soa.VISIT_SYSTEM, "value": f"{RS}/d15"}]
    assert d15["requestedPeriod"] == [{"start": "2026-03-21", "end": "2026-03-27"}]
    assert (d15["start"], d15["end"]) == ("2026-03-24T00:00:00Z", "2026-03-25T00:00:00Z")
    assert d15["extension"] == [{"url": soa.PROTOCOL_VISIT, "valueCanonical": f"{URL}|1.0#d15"}]
    assert d15["basedOn"] == [{"reference": soa.PLAN_PLACEHOLDER}]
    assert d15["subject"] == {"reference": PAT}
    assert d15["participant"] == [{"actor": {"reference": PAT}, "status": "needs-action"}]
    assert (d15["status"], d15["description"]) == ("proposed", "Day 15")
    assert d15["meta"]["profile"] == [soa.VISIT_PROFILE]


def test_second_plan_changes_nothing():
    cp, appts = stored(first())
    again = first(existing_plan=cp, appointments=appts)
    assert again.care_plan.kind == "unchanged"
    assert [c.kind for c in again.visits] == ["unchanged"] * 5
    assert not any(c.writes for c in again.visits)


def completed(appt_id: str, status: str = "completed") -> dict[str, Any]:
    return {"resourceType": "Encounter", "status": status,
            "appointment": [{"reference": f"Appointment/{appt_id}"}]}


def test_amendment_moves_open_visits_only():
    cp, appts = stored(first())
    encounters = [completed("ap-scr"), completed("ap-day1"), completed("ap-d15")]
    p = first(protocol=protocol_v2(), on=D(2026, 4, 2), existing_plan=cp, appointments=appts,
              encounters=encounters)
    got = by_action(p)
    assert p.care_plan.kind == "updated"
    assert p.care_plan.resource["instantiatesCanonical"] == [f"{URL}|2.0"]
    # done: only their status becomes fulfilled; window and protocol version stay 1.0's
    for aid in ("scr", "day1", "d15"):
        assert got[aid].kind == "fulfilled"
        old = next(a.resource for a in appts if a.id == f"ap-{aid}")
        assert got[aid].resource == {**old, "status": "fulfilled"}
    assert got["d15"].resource["requestedPeriod"] == [{"start": "2026-03-21", "end": "2026-03-27"}]
    # open: moved to Day 31
    d29 = got["d29"]
    assert d29.kind == "updated"
    assert d29.resource["requestedPeriod"] == [{"start": "2026-04-06", "end": "2026-04-12"}]
    assert d29.resource["start"] == "2026-04-09T00:00:00Z"
    assert d29.resource["extension"][0]["valueCanonical"] == f"{URL}|2.0#d29"
    assert d29.resource["description"] == "Day 31"
    assert d29.resource["basedOn"] == [{"reference": "CarePlan/cp-1"}]
    assert (d29.id, d29.version) == ("ap-d29", 1)
    # removed: cancelled; added: created
    assert got["d57"].kind == "cancelled"
    d57 = next(a.resource for a in appts if a.id == "ap-d57")
    assert got["d57"].resource == {**d57, "status": "cancelled",
                                   "cancellationReason": {"text": "not a visit of this protocol version"}}
    assert got["d85"].kind == "created"
    assert got["d85"].resource["requestedPeriod"] == [{"start": "2026-05-26", "end": "2026-06-09"}]
    assert got["d85"].resource["basedOn"] == [{"reference": "CarePlan/cp-1"}]


def test_done_and_past_visits_are_never_changed():
    cp, appts = stored(first())
    appts = [soa.Stored({**a.resource, "status": "noshow"}, a.id, 1) if a.id == "ap-scr" else a for a in appts]
    # on 2026-04-20: day 1 and day 15 windows have ended (no Encounter): past; day 29's too
    p = first(protocol=protocol_v2(), on=D(2026, 4, 20), existing_plan=cp, appointments=appts,
              encounters=[completed("ap-day1", "in-progress")])
    got = by_action(p)
    old = ("scr", "day1", "d15", "d29")
    assert {a: got[a].kind for a in old} == dict.fromkeys(old, "kept")
    assert got["d57"].kind == "cancelled"   # open (window 04-28..05-12 not ended): removed by 2.0
    assert got["d85"].kind == "created"
    # a visit new in the amendment whose window has already ended is not created
    late = first(protocol=protocol_v2(), on=D(2026, 6, 10), existing_plan=cp, appointments=appts)
    assert by_action(late)["d85"].kind == "skipped"
    assert by_action(late)["d57"].kind == "kept"


def test_an_encounter_that_did_not_happen_leaves_the_visit_open():
    cp, appts = stored(first())
    p = first(on=D(2026, 3, 1), existing_plan=cp, appointments=appts,
              encounters=[completed("ap-scr", "cancelled"), completed("ap-day1", "planned")])
    assert {c.kind for c in p.visits} == {"unchanged"}


def test_booked_time_inside_the_window_is_kept():
    cp, appts = stored(first())
    d29 = next(a for a in appts if a.id == "ap-d29")
    booked = soa.Stored({**d29.resource, "status": "booked", "start": "2026-04-08T09:30:00Z",
                         "end": "2026-04-08T10:30:00Z"}, d29.id, 2)
    others = [a for a in appts if a.id != "ap-d29"]
    p = first(protocol=protocol_v2(), on=D(2026, 3, 1), existing_plan=cp, appointments=[*others, booked])
    ch = by_action(p)["d29"]
    assert ch.kind == "updated" and ch.version == 2
    assert ch.resource["start"] == "2026-04-08T09:30:00Z"   # in 04-06..04-12: the site's booking stays
    assert ch.resource["status"] == "booked"
    booked_out = soa.Stored({**booked.resource, "start": "2026-04-05T09:30:00Z"}, d29.id, 2)
    p = first(protocol=protocol_v2(), on=D(2026, 3, 1), existing_plan=cp, appointments=[*others, booked_out])
    assert by_action(p)["d29"].resource["start"] == "2026-04-09T00:00:00Z"


def test_withdrawn_subject_gets_its_open_visits_cancelled():
    cp, appts = stored(first())
    p = first(anchor=None, stopped=True, on=D(2026, 3, 15), existing_plan=cp, appointments=appts,
              encounters=[completed("ap-scr"), completed("ap-day1")])
    got = by_action(p)
    assert p.care_plan.kind == "unchanged"
    assert got["scr"].kind == got["day1"].kind == "fulfilled"
    assert {got[a].kind for a in ("d15", "d29", "d57")} == {"cancelled"}
    nothing = first(anchor=None, stopped=True)
    assert nothing.care_plan.kind == "skipped" and nothing.visits == []


def test_other_subjects_appointments_are_ignored():
    cp, appts = stored(first())
    foreign = soa.Stored({"resourceType": "Appointment", "status": "proposed",
                          "identifier": [{"system": soa.VISIT_SYSTEM, "value": "rs-10/d15"}]}, "x", 1)
    assert soa.action_of(foreign.resource, RS) is None
    assert soa.action_of(appts[2].resource, RS) == "d15"


def test_planned_resources_conform_to_their_profiles():
    from fhir_ctms.validation import validate
    p = first()
    cp = {**p.care_plan.resource, "id": "cp-1"}
    assert [i for i in validate(cp, require=True) if i.severity == "error"] == []
    for ch in p.visits:
        appt = {**ch.resource, "id": f"ap-{ch.action_id}", "basedOn": [{"reference": "CarePlan/cp-1"}]}
        assert [i for i in validate(appt, require=True) if i.severity == "error"] == [], ch.action_id
    broken = {**p.visits[0].resource, "id": "x", "extension": []}   # the check can fail
    assert [i for i in validate(broken, require=True) if i.severity == "error"]
