"""A ResearchSubject's state and dates, per the state table of ``profiles/README.md`` ("Subjects").

The subject's history is its ``progress`` list in time order (sorted here by ``startDate``;
entries with the same date keep their order). The current state is the last entry without
``endDate`` (else the last entry). What each state counts as:

========================  =============================================  ==============================
CTMS state                progress entry                                  counted as
========================  =============================================  ==============================
screening                 ``screening`` (milestone ``Screened``)          screened
screen failure            ``ineligible``, reason ``screen-failure``       screened, screen failure
randomised / on study     ``on-study`` / ``-intervention`` /              screened, enrolled, active
                          ``-observation`` (milestone ``Randomized``)
follow-up                 ``follow-up``                                   screened, enrolled, active
withdrawn                 ``withdrawn`` (reason ``withdrawn-*``,          screened, withdrawn; enrolled
                          ``consent-withdrawn``, ``lost-to-follow-up``,   when it had been on study
                          ``death``, ``sponsor-terminated``)
completed                 ``off-study``, reason ``completed``             screened, enrolled, completed
========================  =============================================  ==============================

Decisions where the table is silent (documented so that $enrollment's figures can be checked):

- screened: any entry at or past screening (``screening``, ``eligible``, ``ineligible``,
  ``pending-on-study``, on study, ``follow-up``, ``off-study``, ``withdrawn``) or a milestone
  ``Screened``/``Randomized``; the pre-screening states (``potential-candidate``, ``candidate``,
  ``not-registered``) are not. Screening date: the first such entry's ``startDate``.
- screen failure: an ``ineligible`` entry (reason ``screen-failure``, or no reason) of a subject
  never on study; its date is that entry's start.
- enrolled: an on-study or ``follow-up`` entry, or a ``Randomized`` milestone, or a current
  ``off-study`` with reason ``completed``. The enrolment date is the ``startDate`` of the first
  on-study entry (``on-study``, ``on-study-intervention``, ``on-study-observation``), else of
  the ``Randomized`` entry, else of the first ``follow-up`` entry (the visit-schedule anchor).
- withdrawn: the current state is ``withdrawn``, or ``off-study`` with a reason other than
  ``completed`` (a withdrawal reason on an off-study entry); dated by that entry.
- completed: the current state is ``off-study`` with reason ``completed`` (or ``off-study`` with
  no reason at all, after having been on study).

``as_of`` limits the history to entries started on or before that day (``endDate`` after it is
ignored), so counts at a past evaluation date are what they were then.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

REASON_SYSTEM = "http://fhir-ctms.org/fhir/CodeSystem/subject-progress-reason"
#: the R5 value sets' code systems (terminology.hl7.org); the hl7.org/fhir spellings and codings
#: without a system are read too
STATE_SYSTEMS = ("http://terminology.hl7.org/CodeSystem/research-subject-state",
                 "http://hl7.org/fhir/research-subject-state", None)
MILESTONE_SYSTEMS = ("http://terminology.hl7.org/CodeSystem/research-subject-milestone",
                     "http://hl7.org/fhir/research-subject-milestone", None)

ON_STUDY = frozenset({"on-study", "on-study-intervention", "on-study-observation"})
ACTIVE = ON_STUDY | {"follow-up"}
SCREENED = ACTIVE | {"screening", "eligible", "ineligible", "pending-on-study", "off-study",
                     "withdrawn"}
WITHDRAWAL_REASONS = frozenset({"consent-withdrawn", "withdrawn-by-subject",
                                "withdrawn-adverse-event", "withdrawn-by-investigator",
                                "lost-to-follow-up", "death", "sponsor-terminated"})


@dataclass(frozen=True, slots=True)
class Entry:
    """One ``progress`` entry reduced to what the CTMS reads."""

    state: str | None
    start: dt.date | None
    end: dt.date | None
    reasons: frozenset[str]
    milestones: frozenset[str]


@dataclass(frozen=True, slots=True)
class SubjectStatus:
    """What a subject counts as, and when each thing happened (None: not, or not dated)."""

    state: str | None
    screened: bool = False
    screened_on: dt.date | None = None
    screen_failure: bool = False
    screen_failed_on: dt.date | None = None
    enrolled: bool = False
    enrolled_on: dt.date | None = None
    active: bool = False
    withdrawn: bool = False
    withdrawn_on: dt.date | None = None
    completed: bool = False
    completed_on: dt.date | None = None


def parse_date(value: Any) -> dt.date | None:
    """The calendar day of a FHIR date or dateTime (a partial date: its first day), else None."""
    if not isinstance(value, str) or len(value) < 4:
        return None
    try:
        year = int(value[0:4])
        month = int(value[5:7]) if len(value) >= 7 else 1
        day = int(value[8:10]) if len(value) >= 10 else 1
        return dt.date(year, month, day)
    except ValueError:
        return None


def _codes(concept: Any, systems: tuple[str | None, ...]) -> set[str]:
    """The codes of a CodeableConcept in one of ``systems`` (None: a coding without system)."""
    out: set[str] = set()
    if not isinstance(concept, dict):
        return out
    for c in concept.get("coding") or []:
        if isinstance(c, dict) and isinstance(c.get("code"), str) and c.get("system") in systems:
            out.add(c["code"])
    return out


def entries(subject: dict[str, Any], as_of: dt.date | None = None) -> list[Entry]:
    """The ``progress`` entries in time order (stable on equal or missing dates)."""
    out: list[Entry] = []
    for p in subject.get("progress") or []:
        if not isinstance(p, dict):
            continue
        states = sorted(_codes(p.get("subjectState"), STATE_SYSTEMS))
        start, end = parse_date(p.get("startDate")), parse_date(p.get("endDate"))
        if as_of is not None:
            if start is not None and start > as_of:
                continue
            if end is not None and end > as_of:
                end = None
        out.append(Entry(states[0] if states else None, start, end,
                         frozenset(_codes(p.get("reason"), (REASON_SYSTEM, None))),
                         frozenset(_codes(p.get("milestone"), MILESTONE_SYSTEMS))))
    return sorted(out, key=lambda e: e.start or dt.date.min)


def _current(history: list[Entry]) -> Entry | None:
    open_ = [e for e in history if e.end is None]
    return open_[-1] if open_ else (history[-1] if history else None)


def current_state(subject: dict[str, Any], as_of: dt.date | None = None) -> str | None:
    """The ``subjectState`` code of the current progress entry (None without progress)."""
    e = _current(entries(subject, as_of))
    return e.state if e else None


def enrolment_date(subject: dict[str, Any], as_of: dt.date | None = None) -> dt.date | None:
    """The day the subject went on study (Day 1 of the visit schedule), else None."""
    return _enrolment(entries(subject, as_of))


def _enrolment(history: list[Entry]) -> dt.date | None:
    for pick in (lambda e: e.state in ON_STUDY, lambda e: "Randomized" in e.milestones,
                 lambda e: e.state == "follow-up"):
        found = next((e for e in history if pick(e)), None)
        if found is not None:
            return found.start
    return None


def classify(subject: dict[str, Any], as_of: dt.date | None = None) -> SubjectStatus:
    """What the subject counts as (screened, screen failure, enrolled, active, withdrawn,
    completed), with the dates, from its progress as of ``as_of`` (default: all of it)."""
    history = entries(subject, as_of)
    cur = _current(history)
    if cur is None:
        return SubjectStatus(state=None)
    screened_entry = next((e for e in history if e.state in SCREENED
                           or e.milestones & {"Screened", "Randomized"}), None)
    on_study = any(e.state in ACTIVE or "Randomized" in e.milestones for e in history)
    off = cur.state == "off-study"
    completed = off and ("completed" in cur.reasons or (not cur.reasons and on_study))
    withdrawn = cur.state == "withdrawn" or (off and not completed and bool(cur.reasons))
    enrolled = on_study or completed
    failed = None
    if not enrolled:
        failed = next((e for e in history if e.state == "ineligible"
                       and (not e.reasons or "screen-failure" in e.reasons)), None)
    return SubjectStatus(
        state=cur.state,
        screened=screened_entry is not None,
        screened_on=screened_entry.start if screened_entry else None,
        screen_failure=failed is not None,
        screen_failed_on=failed.start if failed else None,
        enrolled=enrolled,
        enrolled_on=_enrolment(history) if enrolled else None,
        active=cur.state in ACTIVE,
        withdrawn=withdrawn,
        withdrawn_on=cur.start if withdrawn else None,
        completed=completed,
        completed_on=cur.start if completed else None,
    )
