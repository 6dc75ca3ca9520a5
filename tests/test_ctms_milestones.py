"""The pure milestone computation (fhir_ctms/ctms/milestones.py), from resource dicts: entries,
k-th enrolment, states and variances, derivations (last subject in once enrolment closes, a
country's own milestones), discrepancies, and the forecast against ``$enrollment``'s."""

from __future__ import annotations

import datetime as dt

import pytest

from fhir_ctms.ctms import enrollment as en
from fhir_ctms.ctms import milestones as ms
from tests.test_milestones import STUDY_MS, study, subject

D = dt.date(2026, 7, 1)


def day(text: str) -> dt.date:
    return dt.date.fromisoformat(text)


def by_key(found: list[ms.Milestone]) -> dict[tuple[str, str], ms.Milestone]:
    return {(m.study, m.code): m for m in found}


def test_entries_take_the_last_plan_and_the_earliest_actual_up_to_the_date():
    s = study("x", "study", 10, milestones=[
        ("database-lock", False, "2027-01-01"), ("database-lock", False, "2027-03-01"),  # re-planned
        ("protocol-approved", True, "2026-02-01"), ("protocol-approved", True, "2026-01-20"),
        ("study-closed", True, "2026-08-01")])  # after D: not happened yet
    s["progressStatus"].append({"state": {"coding": [{"system": "http://example.org/other", "code": "x"}]},
                                "actual": True, "period": {"start": "2026-01-01"}})
    got = ms.entries(s, D)
    assert got["database-lock"].planned == day("2027-03-01")
    assert got["database-lock"].recorded is None
    assert got["protocol-approved"].recorded == day("2026-01-20")
    assert got["study-closed"].recorded is None and got["study-closed"].planned is None
    assert "x" not in got  # a code of another system is not a milestone


@pytest.mark.parametrize("code,target,k", [
    ("first-subject-in", None, 1), ("enrolled-25", 90, 23), ("enrolled-50", 90, 45),
    ("enrolled-75", 90, 68), ("last-subject-in", 90, 90), ("enrolled-25", 12, 3),
    ("enrolled-50", 12, 6), ("enrolled-75", 10, 8), ("enrolled-25", None, None),
    ("enrolled-25", 0, None)])
def test_needed_is_the_ceiling_of_the_fraction_of_the_target(code, target, k):
    assert ms.needed(code, target) == k


def test_kth():
    dates = [day("2026-03-05"), day("2026-01-02"), day("2026-02-03")]
    assert ms.kth(dates, 1) == day("2026-01-02")
    assert ms.kth(dates, 3) == day("2026-03-05")
    assert ms.kth(dates, 4) is None and ms.kth(dates, 0) is None


@pytest.mark.parametrize("planned,actual,forecast,beyond,state,variance", [
    ("2026-03-01", "2026-02-25", None, False, "met", -4),
    ("2026-03-01", "2026-03-01", None, False, "met", 0),
    ("2026-03-01", "2026-03-04", None, False, "met-late", 3),
    (None, "2026-03-04", None, False, "met", None),          # reached without a plan
    ("2026-06-21", None, None, False, "overdue", 10),        # D - plan
    ("2026-06-21", None, "2026-07-11", False, "overdue", 20),  # forecast - plan
    ("2026-07-01", None, None, False, "upcoming", None),     # due today: not passed yet
    ("2026-07-10", None, "2026-07-12", False, "at-risk", 2),
    ("2026-07-10", None, "2026-07-10", False, "upcoming", 0),
    ("2026-07-10", None, "2026-07-05", False, "upcoming", -5),
    ("2026-07-10", None, None, True, "at-risk", None),       # beyond the forecast horizon
])
def test_states_and_variances(planned, actual, forecast, beyond, state, variance):
    got = ms._state(day(planned) if planned else None, day(actual) if actual else None,
                    day(forecast) if forecast else None, beyond, D)
    assert got == (state, variance)


SUBJECTS = [subject("a", "s1", ("screening", "2026-02-01"), ("on-study", "2026-02-10")),
            subject("b", "s2", ("screening", "2026-02-10"), ("on-study", "2026-03-01")),
            subject("c", "s1", ("screening", "2026-03-01"), ("on-study", "2026-04-15"))]


def test_last_subject_in_is_derived_once_every_site_closed_enrolment():
    top = study("t", "study", 3, milestones=[("last-subject-in", False, "2026-04-01")])
    open_site = study("s2", "site", 1, "t", [("activated", True, "2026-02-01")])
    closed = study("s1", "site", 2, "t", [("activated", True, "2026-01-15"),
                                          ("enrolment-closed", True, "2026-05-01")])
    got = by_key(ms.milestones(top, [closed, open_site], SUBJECTS, D))
    lsi = got[("t", "last-subject-in")]
    # s2 still open: enrolment not closed, nothing derived; 3 of 3 enrolled, so the "forecast"
    # is the date it was reached (the 3rd enrolment, 04-15): past the plan, overdue by 14
    assert (lsi.actual, lsi.forecast, lsi.state, lsi.variance) == (None, day("2026-04-15"), "overdue", 14)
    open_site["progressStatus"].append({"state": {"coding": [{"code": "closed"}]}, "actual": True,
                                        "period": {"start": "2026-06-01"}})
    lsi = by_key(ms.milestones(top, [closed, open_site], SUBJECTS, D))[("t", "last-subject-in")]
    # every site closed: the latest enrolment, 04-15, plan 04-01 -> met-late +14
    assert (lsi.actual, lsi.source, lsi.state, lsi.variance) == (day("2026-04-15"), "derived", "met-late", 14)


def test_last_subject_in_derived_when_the_study_closed_to_accrual():
    top = study("t", "study", 5, milestones=[("closed-to-accrual", True, "2026-06-01")])
    top["progressStatus"][0]["state"]["coding"][0]["system"] = "http://hl7.org/fhir/research-study-status"
    site = study("s1", "site", 5, "t", [("activated", True, "2026-01-15")])
    got = by_key(ms.milestones(top, [site], SUBJECTS, D))
    assert got[("t", "last-subject-in")].actual == day("2026-04-15")  # a and c at s1 (b is elsewhere)
    assert got[("t", "last-subject-in")].planned is None and got[("t", "last-subject-in")].state == "met"
    assert got[("t", "closed-to-accrual")].display == "Closed to Accrual"  # R5's display


def test_a_recorded_date_the_data_contradict_is_reported():
    top = study("t", "study", 4, milestones=[("enrolled-75", True, "2026-04-20"),
                                             ("enrolled-25", True, "2026-02-10")])
    site = study("s1", "site", 4, "t", [("activated", True, "2026-01-15"),
                                        ("first-subject-in", True, "2026-02-11")])
    got = by_key(ms.milestones(top, [site], SUBJECTS, D))
    # enrolled-75 of 4 is the 3rd enrolment: s1 has only 2 (a, c): not happened
    assert got[("t", "enrolled-75")].discrepancy == ms.Discrepancy(day("2026-04-20"), None)
    assert got[("t", "enrolled-75")].actual == day("2026-04-20")  # the recorded date stays
    # ... but the state follows the data: not reached, no plan -> upcoming, with a forecast
    assert got[("t", "enrolled-75")].state == "upcoming" and got[("t", "enrolled-75")].variance is None
    assert got[("t", "enrolled-75")].forecast is not None
    assert got[("t", "enrolled-25")].discrepancy is None  # 1st enrolment, 02-10: agrees
    assert got[("s1", "first-subject-in")].discrepancy == ms.Discrepancy(day("2026-02-11"), day("2026-02-10"))


def test_a_country_lists_its_own_milestones_with_the_derived_first_subject():
    top = study("t", "study", 4)
    country = study("c", "country", 4, "t", [("first-subject-in", False, "2026-02-01")])
    country["progressStatus"][0]["state"]["coding"][0]["system"] = STUDY_MS
    site = study("s1", "site", 4, "c", [("activated", True, "2026-01-15")])
    got = by_key(ms.milestones(top, [country, site], SUBJECTS, D))
    fsi = got[("c", "first-subject-in")]
    assert (fsi.level, fsi.actual, fsi.source, fsi.variance, fsi.state) == (
        "country", day("2026-02-10"), "derived", 9, "met-late")
    assert got[("t", "first-subject-in")].actual == day("2026-02-10")  # derived, no plan: met
    assert got[("t", "first-subject-in")].state == "met"
    assert ("t", "enrolled-75") not in got  # not reached, not planned: not listed


def test_the_full_target_forecast_is_enrollments():
    top = study("t", "study", 20, milestones=[("last-subject-in", False, "2026-08-01")])
    sites = [study(f"s{i}", "site", 5, "t", [("activated", True, f"2026-0{i}-01")]) for i in (1, 2, 3)]
    subjects = [subject(f"p{i}", f"s{1 + i % 3}", ("on-study", f"2026-0{2 + i % 4}-1{i % 10}"))
                for i in range(8)]
    got = by_key(ms.milestones(top, sites, subjects, D, draws=500))
    rep = en.report(top, sites, subjects, D, draws=500)
    assert got[("t", "last-subject-in")].forecast == rep.levels[0].forecast_median
    assert got[("t", "last-subject-in")].state == "at-risk"  # 12 more in a month: no
    assert got[("t", "last-subject-in")].variance == (rep.levels[0].forecast_median - day("2026-08-01")).days


def test_no_rate_means_no_forecast_and_no_risk():
    top = study("t", "study", 10, milestones=[("first-subject-in", False, "2026-09-01")])
    site = study("s1", "site", 10, "t", [("activated", False, "2026-08-01")])
    m = by_key(ms.milestones(top, [site], [], D))[("t", "first-subject-in")]
    assert (m.forecast, m.state, m.variance) == (None, "upcoming", None)
    assert m.forecast_note and "no activated site" in m.forecast_note


def test_last_subject_last_visit_needs_closed_enrolment_and_everyone_off_study():
    top = study("t", "study", 2, milestones=[("last-subject-last-visit", True, "2026-06-01")])
    site = study("s1", "site", 2, "t", [("activated", True, "2026-01-15"),
                                        ("enrolment-closed", True, "2026-04-30")])
    done = [subject("a", "s1", ("on-study", "2026-02-10"), ("off-study", "2026-05-01", "completed")),
            subject("c", "s1", ("on-study", "2026-04-15"), ("withdrawn", "2026-05-10", "death")),
            subject("f", "s1", ("screening", "2026-04-01"), ("ineligible", "2026-04-05", "screen-failure"))]
    assert ms.visit_subjects(top, [site], done, D) == ["a", "c"]  # the enrolled ones
    assert ms.visit_subjects(top, [site], done, day("2026-05-05")) is None  # c still on study
    open_site = study("s1", "site", 2, "t", [("activated", True, "2026-01-15")])
    assert ms.visit_subjects(top, [open_site], done, D) is None  # enrolment not closed
    visits = {"a": [day("2026-02-10"), day("2026-04-28")], "c": [day("2026-05-08"), day("2026-07-09")]}
    m = by_key(ms.milestones(top, [site], done, D, visits=visits))[("t", "last-subject-last-visit")]
    # the latest visit on or before D is c's 05-08 (07-09 is after D); recorded 06-01: contradicted
    assert (m.actual, m.source, m.derived) == (day("2026-06-01"), "recorded", day("2026-05-08"))
    assert m.discrepancy == ms.Discrepancy(day("2026-06-01"), day("2026-05-08"))
    # without the visits (None), nothing is derived and nothing is contradicted
    m = by_key(ms.milestones(top, [site], done, D))[("t", "last-subject-last-visit")]
    assert (m.derived, m.discrepancy) == (None, None)


# -- X-Provenance, the header that records a milestone with its reason (audit.records) ---------


def test_x_provenance_reason_and_activity():
    import json

    from fhir_ctms.audit.records import x_provenance
    from fhir_ctms.errors import BadRequest

    r5 = {"resourceType": "Provenance", "authorization": [{"concept": {"text": " CRA visit "}}],
          "activity": {"coding": [{"system": "http://s", "code": "x", "bad": 1}, {"code": 5}],
                       "text": "recorded"}}
    reason, activity = x_provenance(json.dumps(r5))
    assert reason == "CRA visit"
    assert json.loads(activity) == {"coding": [{"system": "http://s", "code": "x"}], "text": "recorded"}
    coded = {"resourceType": "Provenance",
             "authorization": [{"concept": {"coding": [{"code": "TREAT", "display": "treatment"}]}}]}
    assert x_provenance(json.dumps(coded)) == ("treatment", None)
    r4 = {"resourceType": "Provenance", "reason": [{"text": "R4 style"}]}
    assert x_provenance(json.dumps(r4)) == ("R4 style", None)
    assert x_provenance('{"resourceType": "Provenance"}') == (None, None)
    for bad in ("nope", "[]", '{"resourceType": "Patient"}',
                '{"resourceType": "Provenance", "activity": []}',
                '{"resourceType": "Provenance", "authorization": [{"concept": "x"}]}',
                json.dumps({"resourceType": "Provenance", "reason": [{"text": "r" * 1025}]})):
        with pytest.raises(BadRequest):
            x_provenance(bad)


def test_a_milestone_recorded_but_not_happened_is_overdue_by_the_data():
    """first-subject-in planned 03-01 and recorded 03-05 at a site with no subject: the data say
    it has not happened: overdue (D - plan with no rate to forecast from), the recorded date shown
    and the discrepancy kept; first-site-activated recorded at the study while no site is
    activated: overdue as well (no forecast: D - plan)."""
    top = study("t", "study", 4, milestones=[("first-site-activated", False, "2026-02-01"),
                                             ("first-site-activated", True, "2026-02-03")])
    site = study("s1", "site", 4, "t", [("first-subject-in", False, "2026-03-01"),
                                        ("first-subject-in", True, "2026-03-05")])
    got = by_key(ms.milestones(top, [site], [], D))
    fsi = got[("s1", "first-subject-in")]
    assert (fsi.actual, fsi.source, fsi.derived, fsi.state) == (day("2026-03-05"), "recorded", None, "overdue")
    assert fsi.discrepancy == ms.Discrepancy(day("2026-03-05"), None)
    assert fsi.forecast is None and fsi.variance == 122  # 03-01 -> 07-01
    fsa = got[("t", "first-site-activated")]
    assert (fsa.actual, fsa.state, fsa.variance) == (day("2026-02-03"), "overdue", 150)  # 02-01 -> 07-01
    assert fsa.discrepancy == ms.Discrepancy(day("2026-02-03"), None)
    # once the data agree (a subject enrolled on 03-05), it is met-late, without discrepancy
    got = by_key(ms.milestones(top, [site], [subject("x", "s1", ("on-study", "2026-03-05"))], D))
    fsi = got[("s1", "first-subject-in")]
    assert (fsi.state, fsi.variance, fsi.discrepancy) == ("met-late", 4, None)
