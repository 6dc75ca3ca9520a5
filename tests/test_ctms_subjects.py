"""fhir_ctms.ctms.subjects: a ResearchSubject's state and dates (profiles/README.md, "Subjects")."""

from __future__ import annotations

import datetime as dt

from fhir_ctms.ctms.subjects import classify, current_state, enrolment_date, parse_date

D = dt.date
REASON = "http://fhir-ctms.org/fhir/CodeSystem/subject-progress-reason"


def entry(state: str, start: str, end: str | None = None, reason: str | None = None,
          milestone: str | None = None) -> dict:
    e: dict = {"type": {"coding": [{"system": "http://hl7.org/fhir/research-subject-progress",
                                    "code": "state"}]},
               "subjectState": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/research-subject-state",
                                            "code": state}]},
               "startDate": start}
    if end:
        e["endDate"] = end
    if reason:
        e["reason"] = {"coding": [{"system": REASON, "code": reason}]}
    if milestone:
        e["milestone"] = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/research-subject-milestone",
                                      "code": milestone}]}
    return e


def subject(*progress: dict) -> dict:
    return {"resourceType": "ResearchSubject", "status": "active", "progress": list(progress)}


SCREENING = entry("screening", "2026-01-05", "2026-01-20", milestone="Screened")
ON_STUDY = entry("on-study", "2026-01-20", "2026-06-01", milestone="Randomized")


def test_screening_only():
    s = subject(entry("screening", "2026-01-05", milestone="Screened"))
    st = classify(s)
    assert current_state(s) == "screening"
    assert (st.screened, st.screened_on) == (True, D(2026, 1, 5))
    assert not (st.enrolled or st.active or st.screen_failure or st.withdrawn or st.completed)
    assert enrolment_date(s) is None


def test_screen_failure():
    s = subject(SCREENING, entry("ineligible", "2026-01-20", reason="screen-failure"))
    st = classify(s)
    assert (st.screened, st.screen_failure, st.screen_failed_on) == (True, True, D(2026, 1, 20))
    assert not (st.enrolled or st.active or st.withdrawn or st.completed)
    assert st.state == "ineligible"


def test_on_study_is_enrolled_and_active():
    s = subject(SCREENING, entry("on-study", "2026-01-20", milestone="Randomized"))
    st = classify(s)
    assert (st.screened, st.enrolled, st.active) == (True, True, True)
    assert st.enrolled_on == D(2026, 1, 20) == enrolment_date(s)
    assert not (st.screen_failure or st.withdrawn or st.completed)


def test_follow_up_is_active_and_keeps_first_enrolment_date():
    s = subject(SCREENING, ON_STUDY, entry("follow-up", "2026-06-01"))
    st = classify(s)
    assert current_state(s) == "follow-up"
    assert (st.enrolled, st.active, st.enrolled_on) == (True, True, D(2026, 1, 20))


def test_completed():
    s = subject(SCREENING, ON_STUDY, entry("off-study", "2026-06-01", reason="completed"))
    st = classify(s)
    assert (st.enrolled, st.completed, st.completed_on) == (True, True, D(2026, 6, 1))
    assert not (st.active or st.withdrawn or st.screen_failure)


def test_withdrawn_after_enrolment():
    s = subject(SCREENING, ON_STUDY,
                entry("withdrawn", "2026-03-03", reason="withdrawn-adverse-event"))
    st = classify(s)
    assert (st.enrolled, st.withdrawn, st.withdrawn_on) == (True, True, D(2026, 3, 3))
    assert not (st.active or st.completed)


def test_withdrawn_during_screening_is_not_enrolled():
    s = subject(entry("screening", "2026-01-05", "2026-01-10"),
                entry("withdrawn", "2026-01-10", reason="consent-withdrawn"))
    st = classify(s)
    assert (st.screened, st.withdrawn, st.enrolled, st.screen_failure) == (True, True, False, False)


def test_off_study_with_withdrawal_reason_is_withdrawn():
    s = subject(SCREENING, ON_STUDY, entry("off-study", "2026-04-01", reason="lost-to-follow-up"))
    st = classify(s)
    assert (st.withdrawn, st.completed, st.enrolled) == (True, False, True)


def test_order_is_by_start_date_not_list_order():
    s = subject(entry("on-study", "2026-01-20", milestone="Randomized"),
                entry("screening", "2026-01-05", "2026-01-20"))
    assert current_state(s) == "on-study"
    assert classify(s).screened_on == D(2026, 1, 5)


def test_as_of_ignores_later_entries():
    s = subject(SCREENING, ON_STUDY, entry("off-study", "2026-06-01", reason="completed"))
    before = classify(s, as_of=D(2026, 1, 10))
    assert (before.state, before.screened, before.enrolled) == ("screening", True, False)
    mid = classify(s, as_of=D(2026, 3, 1))
    assert (mid.state, mid.active, mid.completed) == ("on-study", True, False)
    assert enrolment_date(s, as_of=D(2026, 1, 19)) is None
    assert classify(s, as_of=D(2025, 12, 31)).state is None


def test_randomized_milestone_without_on_study_state():
    s = subject(SCREENING, entry("on-study-intervention", "2026-02-02"))
    assert enrolment_date(s) == D(2026, 2, 2)
    s2 = subject(entry("eligible", "2026-02-01", milestone="Randomized"))
    st = classify(s2)
    assert (st.enrolled, st.enrolled_on, st.active) == (True, D(2026, 2, 1), False)


def test_pre_screening_and_empty():
    assert classify(subject(entry("candidate", "2026-01-01"))).screened is False
    empty = classify({"resourceType": "ResearchSubject"})
    assert empty.state is None and not empty.screened


def test_parse_date():
    assert parse_date("2026-02-03T10:00:00+01:00") == D(2026, 2, 3)
    assert parse_date("2026-02") == D(2026, 2, 1)
    assert parse_date("2026") == D(2026, 1, 1)
    assert parse_date("2026-13-01") is None
    assert parse_date(None) is None


def test_state_codes_in_either_spelling_of_the_system_or_none():
    for system in ("http://terminology.hl7.org/CodeSystem/research-subject-state",
                   "http://hl7.org/fhir/research-subject-state", None):
        coding = {"code": "on-study"} | ({"system": system} if system else {})
        s = {"progress": [{"subjectState": {"coding": [coding]}, "startDate": "2026-01-02"}]}
        assert current_state(s) == "on-study" and enrolment_date(s) == D(2026, 1, 2)
    other = {"progress": [{"subjectState": {"coding": [{"system": "http://example.org/x",
                                                        "code": "on-study"}]},
                           "startDate": "2026-01-02"}]}
    assert current_state(other) is None
