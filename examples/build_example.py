#!/usr/bin/env python3
"""Build the ACME-101 example study: ``python examples/build_example.py``.

A fictional phase 2 asthma study in three countries, eight sites, 64 subjects, following the CTMS
model of ``profiles/README.md``. Everything comes from the explicit tables below (no randomness),
so the output is the same on every run. It writes:

- ``acme-101-1-study.json``: a transaction of PUTs, the study as it ran under protocol 1.0;
- ``acme-101-2-amendment.json``: a transaction of PUTs, protocol amendment 2.0: the new
  PlanDefinition, the study pointing at it, the adopting sites' new ``site-protocol`` entries,
  the subjects screened at those sites since, and the visits of their subjects rescheduled;
- ``README.md``: what the study contains and the table of the numbers, computed here.

Standard library only. ``--check`` compares the files with what would be written (exit 1 if
they differ), so the committed files cannot drift from this script.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TODAY = dt.date(2026, 11, 23)  # the example's "today": later visits are planned only

CTMS = "http://fhir-ctms.org/fhir"
SD = f"{CTMS}/StructureDefinition"
CS = f"{CTMS}/CodeSystem"
PROTOCOL_URL = f"{CTMS}/PlanDefinition/acme-101-protocol"
OFFSET_RANGE = "http://hl7.org/fhir/uv/vulcan-schedule/StructureDefinition/AcceptableOffsetRangeSoa"
UCUM = "http://unitsofmeasure.org"
ISO3166 = "urn:iso:std:iso:3166"
SUBJECT_STATE = "http://terminology.hl7.org/CodeSystem/research-subject-state"
SUBJECT_MILESTONE = "http://terminology.hl7.org/CodeSystem/research-subject-milestone"
PARTY_ROLE = "http://hl7.org/fhir/research-study-party-role"
SUBJECT_NUMBER = "http://acme-therapeutics.example.org/acme-101/subject-number"
STUDY_DESIGN = "http://hl7.org/fhir/study-design"  # SEVCO codes (R5 ValueSet study-design)
DESIGN = (("SEVCO:01001", "Interventional research"), ("SEVCO:01003", "randomized assignment"),
          ("SEVCO:01011", "Parallel cohort design"), ("SEVCO:01060", "Blinding of study participants"),
          ("SEVCO:01061", "Blinding of intervention providers"), ("SEVCO:01062", "Blinding of outcome assessors"),
          ("SEVCO:01043", "Multicentric"))

STUDY_ID = "acme-101"
STUDY_TARGET = 90
STUDY_TITLE = ("A randomised, double-blind, placebo-controlled phase 2 study of ACM-4401 in adults "
               "with moderate to severe asthma")

# -- the protocol: visits per version ------------------------------------------------------------
# (action id, title, relationship to Day 1, offset days, window low, window high); the anchor
# (Day 1, randomisation) has no timing. Before-start windows are magnitudes before Day 1.

Visit = tuple[str, str, str | None, int, int, int]
PROTOCOL: dict[str, list[Visit]] = {
    "1.0": [
        ("scr", "Screening", "before-start", 14, 1, 28),
        ("d1", "Day 1: randomisation", None, 0, 0, 0),
        ("w2", "Week 2 (Day 15)", "after-start", 14, 11, 17),
        ("w4", "Week 4 (Day 29)", "after-start", 28, 25, 31),
        ("w8", "Week 8 (Day 57)", "after-start", 56, 51, 61),
        ("w12", "Week 12 (Day 85)", "after-start", 84, 77, 91),
        ("w16", "Week 16 (Day 113)", "after-start", 112, 105, 119),
        ("eot", "End of treatment, week 24 (Day 169)", "after-start", 168, 161, 175),
        ("fu", "Safety follow-up, week 28 (Day 197)", "after-start", 196, 189, 203),
    ],
    # Amendment 2.0: the week 8 window widened to +/- 7 days, week 16 removed, week 20 added.
    "2.0": [
        ("scr", "Screening", "before-start", 14, 1, 28),
        ("d1", "Day 1: randomisation", None, 0, 0, 0),
        ("w2", "Week 2 (Day 15)", "after-start", 14, 11, 17),
        ("w4", "Week 4 (Day 29)", "after-start", 28, 25, 31),
        ("w8", "Week 8 (Day 57)", "after-start", 56, 49, 63),
        ("w12", "Week 12 (Day 85)", "after-start", 84, 77, 91),
        ("w20", "Week 20 (Day 141)", "after-start", 140, 133, 147),
        ("eot", "End of treatment, week 24 (Day 169)", "after-start", 168, 161, 175),
        ("fu", "Safety follow-up, week 28 (Day 197)", "after-start", 196, 189, 203),
    ],
}
PROTOCOL_DATE = {"1.0": "2025-01-20", "2.0": "2026-06-15"}
PROTOCOL_ID = {"1.0": "acme-101-protocol-1-0", "2.0": "acme-101-protocol-2-0"}

# -- countries and sites ---------------------------------------------------------------------------

COUNTRIES = [  # (code, name, target)
    ("GB", "the United Kingdom", 36),
    ("DE", "Germany", 26),
    ("FR", "France", 30),
]


@dataclass(frozen=True)
class Site:
    id: str
    country: str
    institution: str
    unit: str
    city: str
    target: int
    state: str  # the activation state, in words, for the README
    milestones: tuple[tuple[str, str | None, str | None], ...]  # (code, planned, actual)
    protocols: tuple[tuple[str, str], ...] = ()  # (version, effective): site-protocol entries
    pi: tuple[str, str, str] = ("", "", "")  # (given, family, gender)
    staff: tuple[tuple[str, str, str, str], ...] = ()  # (role key, given, family, gender)

    @property
    def num(self) -> str:
        return self.id.removeprefix("site-")

    def milestone(self, code: str, actual: bool = True) -> str | None:
        for c, planned, done in self.milestones:
            if c == code:
                return done if actual else planned
        return None

    def protocol_on(self, day: dt.date) -> str | None:
        """The protocol version the site runs on ``day`` (the latest entry not after it)."""
        runs = [(e, v) for v, e in self.protocols if dt.date.fromisoformat(e) <= day]
        return max(runs)[1] if runs else None

    def adoption(self, version: str) -> dt.date | None:
        return next((dt.date.fromisoformat(e) for v, e in self.protocols if v == version), None)


SITES = [
    Site("site-gb-01", "GB", "Thameside University Hospital", "Respiratory Clinical Research Facility",
         "London", 16, "activated, recruiting (protocol 2.0 since 2026-07-01)",
         (("selected", "2024-12-15", "2024-12-12"), ("irb-approved", "2025-02-15", "2025-02-20"),
          ("contract-executed", "2025-02-28", "2025-02-27"), ("siv-done", "2025-03-03", "2025-03-05"),
          ("activated", "2025-03-01", "2025-03-10"), ("first-subject-in", "2025-04-01", None)),
         (("1.0", "2025-02-20"), ("2.0", "2026-07-01")),
         ("Helen", "Ashworth", "female"),
         (("sub-investigator", "Rajesh", "Menon", "male"), ("study-coordinator", "Chloe", "Barrett", "female"),
          ("pharmacist", "Owen", "Pritchard", "male"))),
    Site("site-gb-02", "GB", "Northgate General Infirmary", "Clinical Trials Unit", "Leeds", 12,
         "activated long ago, enrolment closed (target met; protocol 2.0 since 2026-08-01)",
         (("selected", "2025-01-10", "2025-01-08"), ("irb-approved", "2025-03-10", "2025-03-21"),
          ("contract-executed", "2025-03-31", "2025-04-02"), ("siv-done", "2025-04-07", "2025-04-09"),
          ("activated", "2025-04-07", "2025-04-14"), ("first-subject-in", "2025-05-05", None),
          ("enrolment-closed", "2026-09-30", "2026-06-30")),
         (("1.0", "2025-03-21"), ("2.0", "2026-08-01")),
         ("Martin", "Kerridge", "male"),
         (("study-coordinator", "Priya", "Sandhu", "female"),)),
    Site("site-gb-03", "GB", "Severn Valley Hospital", "Research and Innovation Unit", "Gloucester", 8,
         "selected only (IRB and activation planned)",
         (("selected", "2026-09-01", "2026-09-15"), ("irb-approved", "2026-12-10", None),
          ("activated", "2027-01-20", None)),
         (),
         ("Fiona", "Lockhart", "female")),
    Site("site-de-01", "DE", "Universitätsklinikum Rheinau", "Studienzentrum Pneumologie", "Köln", 16,
         "activated, recruiting (still on protocol 1.0)",
         (("selected", "2024-12-20", "2024-12-19"), ("irb-approved", "2025-03-01", "2025-03-03"),
          ("contract-executed", "2025-03-10", "2025-03-12"), ("siv-done", "2025-03-17", "2025-03-19"),
          ("activated", "2025-03-17", "2025-03-24"), ("first-subject-in", "2025-04-15", None)),
         (("1.0", "2025-03-03"),),
         ("Katrin", "Albrecht", "female"),
         (("study-coordinator", "Jonas", "Weidmann", "male"), ("pharmacist", "Sabine", "Vogt", "female"))),
    Site("site-de-02", "DE", "Klinikum Elbhafen", "Klinische Forschung Innere Medizin", "Hamburg", 10,
         "activated, no subject yet (protocol 1.0)",
         (("selected", "2026-03-01", "2026-03-02"), ("irb-approved", "2026-07-15", "2026-09-04"),
          ("contract-executed", "2026-08-01", "2026-09-25"), ("siv-done", "2026-08-15", "2026-10-14"),
          ("activated", "2026-08-20", "2026-10-20"), ("first-subject-in", "2026-09-20", None)),
         (("1.0", "2026-09-04"),),
         ("Florian", "Brandt", "male"),
         (("study-coordinator", "Lea", "Hoffmeister", "female"),)),
    Site("site-fr-01", "FR", "Centre Hospitalier Universitaire de Val-de-Loire", "Centre d'investigation clinique",
         "Tours", 14, "activated, recruiting (protocol 2.0 since 2026-08-15)",
         (("selected", "2025-01-20", "2025-01-20"), ("irb-approved", "2025-04-01", "2025-04-10"),
          ("contract-executed", "2025-04-15", "2025-04-22"), ("siv-done", "2025-04-28", "2025-04-30"),
          ("activated", "2025-04-28", "2025-05-05"), ("first-subject-in", "2025-06-01", None)),
         (("1.0", "2025-04-10"), ("2.0", "2026-08-15")),
         ("Isabelle", "Marchand", "female"),
         (("study-coordinator", "Thomas", "Girard", "male"),)),
    Site("site-fr-02", "FR", "Hôpital Saint-Aubin", "Unité de recherche clinique", "Rennes", 10,
         "IRB approved (on protocol 2.0), activation planned for 2026-12-15",
         (("selected", "2026-05-01", "2026-05-06"), ("irb-approved", "2026-09-15", "2026-10-01"),
          ("contract-executed", "2026-10-15", "2026-11-05"), ("siv-done", "2026-12-01", None),
          ("activated", "2026-12-15", None)),
         (("2.0", "2026-10-01"),),
         ("Nicolas", "Perrin", "male"),
         (("study-coordinator", "Camille", "Roux", "female"),)),
    Site("site-fr-03", "FR", "Clinique du Littoral", "Service de pneumologie", "La Rochelle", 6,
         "closed (enrolment closed early for slow recruitment)",
         (("selected", "2025-02-01", "2025-02-03"), ("irb-approved", "2025-04-15", "2025-05-02"),
          ("contract-executed", "2025-05-10", "2025-05-16"), ("siv-done", "2025-05-26", "2025-05-28"),
          ("activated", "2025-05-26", "2025-06-02"), ("first-subject-in", "2025-07-01", None),
          ("enrolment-closed", "2026-06-30", "2026-03-02"), ("close-out-visit", "2026-04-20", "2026-04-22"),
          ("closed", "2026-04-30", "2026-04-30")),
         (("1.0", "2025-05-02"),),
         ("Bernard", "Lemoine", "male")),
]
SITE = {s.id: s for s in SITES}

# The CRO's staff: (id, given, family, gender, role, the sites they work on)
CRO_STAFF = [
    ("cra-gb", "Daniel", "Okafor", "male", "monitor", ("site-gb-01", "site-gb-02", "site-gb-03")),
    ("cra-eu", "Marta", "Kowalczyk", "female", "monitor",
     ("site-de-01", "site-de-02", "site-fr-01", "site-fr-02", "site-fr-03")),
    ("dm-01", "Aisha", "Rahman", "female", "data-manager",
     tuple(s.id for s in SITES if s.milestone("irb-approved"))),
]
EXPIRED_GCP = "prac-fr-01-pi"  # this investigator's GCP training expired on 2026-10-31

# -- subjects --------------------------------------------------------------------------------------
# Per site: (number, screening date, outcome, withdrawal reason, withdrawal study day).
# Outcomes: SCR still screening, SF screen failure (12 days after screening), CW consent withdrawn
# during screening (7 days after), ON on study, FU follow-up, CO completed, WD withdrawn on study
# (on Day N). Day 1 (randomisation, the enrolment date) is 14 days after screening.

SUBJECTS: dict[str, list[tuple[int, str, str, str | None, int | None]]] = {
    "site-gb-01": [
        (1, "2025-03-17", "CO", None, None), (2, "2025-04-07", "CO", None, None),
        (3, "2025-05-12", "SF", None, None), (4, "2025-06-16", "WD", "withdrawn-adverse-event", 45),
        (5, "2025-08-04", "CO", None, None), (6, "2025-10-06", "CO", None, None),
        (7, "2025-12-01", "WD", "lost-to-follow-up", 180), (8, "2026-02-09", "CO", None, None),
        (9, "2026-03-09", "SF", None, None), (10, "2026-05-04", "FU", None, None),
        (11, "2026-05-11", "FU", None, None), (12, "2026-06-22", "ON", None, None),
        (13, "2026-07-20", "ON", None, None), (14, "2026-08-31", "ON", None, None),
        (15, "2026-09-14", "SF", None, None), (16, "2026-10-12", "ON", None, None),
        (17, "2026-11-16", "SCR", None, None), (18, "2026-11-20", "SCR", None, None),
    ],
    "site-gb-02": [
        (1, "2025-04-22", "CO", None, None), (2, "2025-05-19", "CO", None, None),
        (3, "2025-06-09", "SF", None, None), (4, "2025-07-07", "CO", None, None),
        (5, "2025-09-01", "WD", "withdrawn-by-subject", 30), (6, "2025-10-13", "CO", None, None),
        (7, "2025-11-17", "CO", None, None), (8, "2026-01-12", "WD", "withdrawn-by-investigator", 100),
        (9, "2026-02-16", "CO", None, None), (10, "2026-05-04", "FU", None, None),
        (11, "2026-05-11", "SF", None, None), (12, "2026-05-18", "FU", None, None),
        (13, "2026-06-01", "ON", None, None), (14, "2026-06-15", "ON", None, None),
    ],
    "site-de-01": [
        (1, "2025-04-01", "CO", None, None), (2, "2025-04-28", "CO", None, None),
        (3, "2025-06-02", "CO", None, None), (4, "2025-07-14", "SF", None, None),
        (5, "2025-09-08", "WD", "lost-to-follow-up", 185), (6, "2025-11-03", "CO", None, None),
        (7, "2026-01-19", "WD", "withdrawn-adverse-event", 70), (8, "2026-03-02", "CO", None, None),
        (9, "2026-05-11", "FU", None, None), (10, "2026-05-18", "FU", None, None),
        (11, "2026-07-06", "ON", None, None), (12, "2026-08-17", "SF", None, None),
        (13, "2026-09-07", "ON", None, None), (14, "2026-10-19", "ON", None, None),
        (15, "2026-11-11", "SCR", None, None),
    ],
    "site-fr-01": [
        (1, "2025-05-12", "CO", None, None), (2, "2025-06-23", "SF", None, None),
        (3, "2025-08-25", "CO", None, None), (4, "2025-10-20", "CW", "consent-withdrawn", None),
        (5, "2025-12-08", "CO", None, None), (6, "2026-01-26", "WD", "withdrawn-by-investigator", 120),
        (7, "2026-03-16", "CO", None, None), (8, "2026-05-04", "FU", None, None),
        (9, "2026-05-25", "SF", None, None), (10, "2026-06-15", "ON", None, None),
        (11, "2026-08-24", "ON", None, None), (12, "2026-10-05", "ON", None, None),
        (13, "2026-11-02", "SF", None, None), (14, "2026-11-18", "SCR", None, None),
    ],
    # slow: three subjects in the nine months it was open (2025-06-02 to 2026-03-02)
    "site-fr-03": [
        (1, "2025-06-16", "CO", None, None), (2, "2025-10-20", "SF", None, None),
        (3, "2026-02-09", "WD", "withdrawn-adverse-event", 30),
    ],
}
# Visits done late (days after the target day; beyond the window) and visits missed (noshow).
LATE = {("subj-gb-01-002", "w8"): 9, ("subj-de-01-003", "w4"): 6, ("subj-fr-01-001", "w12"): 10,
        ("subj-gb-01-014", "w8"): 8}
MISSED = {("subj-gb-02-004", "w2"), ("subj-de-01-002", "w16"), ("subj-gb-01-006", "w12"),
          ("subj-de-01-011", "w2")}
DEVIATION = (0, 1, -1, 2, -2, 0, 1, -1)  # days from the target day of an on-time visit


def d(s: str) -> dt.date:
    return dt.date.fromisoformat(s)


def days(n: int) -> dt.timedelta:
    return dt.timedelta(days=n)


# -- the subjects' stories, computed ------------------------------------------------------------


@dataclass
class Appt:
    """One planned visit: what its Appointment (and Encounter) say."""

    action: str
    title: str
    version: str
    low: dt.date
    high: dt.date
    target: dt.date
    status: str  # fulfilled | noshow | cancelled | booked | proposed
    actual: dt.date | None = None  # the Encounter's day (fulfilled only)
    reason: str | None = None  # cancellation reason (text)
    bundle: int = 1

    @property
    def late(self) -> bool:
        return self.actual is not None and self.actual > self.high


@dataclass
class Subject:
    id: str
    site: Site
    number: int
    outcome: str
    screened: dt.date
    day1: dt.date | None = None
    progress: list[tuple[str, dt.date, str | None, str | None]] = field(default_factory=list)
    # (state, start, reason, milestone)
    end: dt.date | None = None
    bundle: int = 1
    visits_1: list[Appt] = field(default_factory=list)  # bundle 1 Appointments
    visits_2: list[Appt] = field(default_factory=list)  # bundle 2 Appointments (new or rescheduled)
    plan_version: dict[int, str] = field(default_factory=dict)  # bundle -> CarePlan's protocol

    @property
    def key(self) -> str:
        return self.id.removeprefix("subj-")

    @property
    def state(self) -> str:
        return self.progress[-1][0]

    @property
    def gender(self) -> str:
        return "female" if (self.number + len(self.site.id)) % 2 else "male"


def window(version: str, action: str, day1: dt.date) -> tuple[dt.date, dt.date, dt.date, str]:
    for aid, title, rel, offset, low, high in PROTOCOL[version]:
        if aid == action:
            if rel is None:
                return day1, day1, day1, title
            if rel == "before-start":
                return day1 - days(high), day1 - days(low), day1 - days(offset), title
            return day1 + days(low), day1 + days(high), day1 + days(offset), title
    raise KeyError(action)


def visit(subj: Subject, version: str, action: str, k: int) -> Appt:
    """The visit as it went (or will go) under ``version``."""
    assert subj.day1 is not None
    low, high, target, title = window(version, action, subj.day1)
    a = Appt(action, title, version, low, high, target, "proposed")
    if action == "scr":
        when = subj.screened
    elif action == "d1":
        when = subj.day1
    else:
        when = target + days(LATE.get((subj.id, action), DEVIATION[(subj.number + k) % len(DEVIATION)]))
    if subj.end is not None and when > subj.end:
        a.status, a.reason = "cancelled", "The subject left the study"
    elif (subj.id, action) in MISSED:
        assert high < TODAY
        a.status = "noshow"
    elif when <= TODAY:
        a.status, a.actual = "fulfilled", when
    else:
        a.status = "booked" if target <= TODAY + days(28) else "proposed"
    return a


def event_day(a: Appt, subj: Subject) -> dt.date:
    """When the visit's outcome was settled: done, missed (window end), cancelled, or planned."""
    if a.status == "fulfilled":
        assert a.actual is not None
        return a.actual
    if a.status == "noshow":
        return a.high
    if a.status == "cancelled":
        assert subj.end is not None
        return subj.end
    return a.target


def build_subject(site: Site, row: tuple[int, str, str, str | None, int | None]) -> Subject:
    number, screened, outcome, reason, wd_day = row
    s = Subject(f"subj-{site.num}-{number:03d}", site, number, outcome, d(screened))
    s.progress.append(("screening", s.screened, None, "Screened"))
    if outcome == "SCR":
        assert s.screened + days(14) > TODAY
        return s
    if outcome == "SF":
        s.end = s.screened + days(12)
        s.progress.append(("ineligible", s.end, "screen-failure", None))
        assert s.end <= TODAY
        return s
    if outcome == "CW":
        s.end = s.screened + days(7)
        s.progress.append(("withdrawn", s.end, reason, None))
        return s
    s.day1 = s.screened + days(14)
    assert s.day1 <= TODAY
    if outcome == "WD":
        assert wd_day is not None
        s.end = s.day1 + days(wd_day - 1)
    s.progress.append(("on-study", s.day1, None, "Randomized"))

    adopt = site.adoption("2.0")
    first = "2.0" if adopt is not None and s.screened >= adopt else "1.0"
    actions = [v[0] for v in PROTOCOL[first]]
    plan = [visit(s, first, a, k) for k, a in enumerate(actions)]
    if first == "2.0":  # screened after the site adopted 2.0: everything in the amendment bundle
        s.bundle = 2
        for a in plan:
            a.bundle = 2
        s.visits_2 = plan
        s.plan_version = {2: "2.0"}
    else:
        s.plan_version = {1: "1.0"}
        superseded = [a for a in plan if adopt is not None and event_day(a, s) >= adopt]
        for a in plan:
            if a in superseded:  # as the plan stood before the amendment
                s.visits_1.append(Appt(a.action, a.title, "1.0", a.low, a.high, a.target,
                                       "booked" if a.target <= adopt + days(28) else "proposed"))
            else:
                s.visits_1.append(a)
        if superseded:
            assert adopt is not None
            s.plan_version[2] = "2.0"
            done = {a.action for a in plan if a not in superseded}
            new = [v[0] for v in PROTOCOL["2.0"]]
            for k, action in enumerate(new):
                if action in done:
                    continue
                a = visit(s, "2.0", action, k)
                if action not in actions and a.target < adopt:
                    continue  # new in 2.0, due before the site adopted it: never planned
                a.bundle = 2
                s.visits_2.append(a)
            for a in superseded:
                if a.action not in new:  # removed by the amendment
                    s.visits_2.append(Appt(a.action, a.title, "1.0", a.low, a.high, a.target, "cancelled",
                                           reason="Removed by protocol amendment 2.0", bundle=2))

    final = {a.action: a for a in s.visits_1}
    final.update({a.action: a for a in s.visits_2})
    eot, fu = final["eot"], final["fu"]
    if outcome == "WD":
        assert s.end is not None and s.end <= TODAY
        if eot.actual is not None and eot.actual <= s.end:
            s.progress.append(("follow-up", eot.actual, None, None))
        s.progress.append(("withdrawn", s.end, reason, None))
    else:
        if eot.actual is not None:
            s.progress.append(("follow-up", eot.actual, None, None))
        if fu.actual is not None:
            s.progress.append(("off-study", fu.actual, "completed", None))
            s.end = fu.actual
    expected = {"ON": "on-study", "FU": "follow-up", "CO": "off-study", "WD": "withdrawn"}[outcome]
    assert s.state == expected, (s.id, s.state, outcome)
    return s


def subjects() -> list[Subject]:
    out = []
    for site in SITES:
        for row in SUBJECTS.get(site.id, []):
            s = build_subject(site, row)
            if s.bundle == 1 and site.adoption("2.0") and s.screened >= site.adoption("2.0"):
                s.bundle = 2  # screened under 2.0 (not enrolled): the amendment bundle too
            out.append(s)
    return out


# -- the numbers ----------------------------------------------------------------------------------

COLUMNS = ("target", "screened", "screen_failures", "enrolled", "active", "withdrawn", "completed")


def counts(subs: list[Subject]) -> dict[str, int]:
    return {
        "screened": len(subs),
        "screen_failures": sum(s.state == "ineligible" for s in subs),
        "enrolled": sum(s.day1 is not None for s in subs),
        "active": sum(s.state in ("on-study", "follow-up") for s in subs),
        "withdrawn": sum(s.state == "withdrawn" for s in subs),
        "completed": sum(s.state == "off-study" for s in subs),
    }


def first_subject_in(subs: list[Subject]) -> dt.date | None:
    days1 = [s.day1 for s in subs if s.day1 is not None]
    return min(days1) if days1 else None


def nth_enrolment(subs: list[Subject], n: int) -> dt.date | None:
    days1 = sorted(s.day1 for s in subs if s.day1 is not None)
    return days1[n - 1] if len(days1) >= n else None


def site_rows(subs: list[Subject]) -> list[dict[str, Any]]:
    rows = []
    for site in SITES:
        mine = [s for s in subs if s.site is site]
        act, planned = site.milestone("activated"), site.milestone("activated", actual=False)
        fsi = first_subject_in(mine)
        rows.append({"id": site.id, "country": site.country, "target": site.target, **counts(mine),
                     "activation": act or f"{planned} (planned)", "first_subject_in": fsi.isoformat() if fsi else "",
                     "protocol": site.protocol_on(TODAY) or "", "state": site.state})
    return rows


def country_rows(subs: list[Subject]) -> list[dict[str, Any]]:
    rows = []
    for code, _name, target in COUNTRIES:
        mine = [s for s in subs if s.site.country == code]
        acts = [site.milestone("activated") for site in SITES if site.country == code and site.milestone("activated")]
        fsi = first_subject_in(mine)
        rows.append({"id": f"{STUDY_ID}-{code.lower()}", "country": code, "target": target, **counts(mine),
                     "activation": min(acts) if acts else "", "first_subject_in": fsi.isoformat() if fsi else ""})
    return rows


def study_row(subs: list[Subject]) -> dict[str, Any]:
    acts = [s.milestone("activated") for s in SITES if s.milestone("activated")]
    fsi = first_subject_in(subs)
    return {"id": STUDY_ID, "country": "", "target": STUDY_TARGET, **counts(subs),
            "activation": min(acts), "first_subject_in": fsi.isoformat() if fsi else ""}


# -- FHIR building blocks -------------------------------------------------------------------------


def coding(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    c = {"system": system, "code": code}
    if display:
        c["display"] = display
    return c


def concept(system: str, code: str, display: str | None = None, text: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"coding": [coding(system, code, display)]}
    if text:
        out["text"] = text
    return out


def ref(rtype: str, rid: str, display: str | None = None) -> dict[str, Any]:
    out = {"reference": f"{rtype}/{rid}"}
    if display:
        out["display"] = display
    return out


def profiled(rtype: str, rid: str, profile: str | None, **body: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": rtype, "id": rid}
    if profile:
        out["meta"] = {"profile": [f"{SD}/{profile}"]}
    out.update(body)
    return out


def days_q(n: int) -> dict[str, Any]:
    return {"value": n, "unit": "days", "system": UCUM, "code": "d"}


def level(code: str) -> list[dict[str, Any]]:
    return [concept(f"{CS}/study-level", code)]


def milestone(system_id: str, code: str, actual: bool, start: str) -> dict[str, Any]:
    return {"state": concept(f"{CS}/{system_id}", code), "actual": actual, "period": {"start": start}}


def site_protocol(version: str, effective: str) -> dict[str, Any]:
    return {"url": f"{SD}/site-protocol", "extension": [
        {"url": "protocol", "valueCanonical": f"{PROTOCOL_URL}|{version}"},
        {"url": "effective", "valueDate": effective}]}


def protocol(version: str) -> dict[str, Any]:
    actions = []
    for aid, title, rel, offset, low, high in PROTOCOL[version]:
        action: dict[str, Any] = {"id": aid, "title": title, "code": {"text": title}}
        if rel is not None:
            action["relatedAction"] = [{
                "extension": [{"url": OFFSET_RANGE, "valueRange": {"low": days_q(low), "high": days_q(high)}}],
                "targetId": "d1", "relationship": rel, "offsetDuration": days_q(offset)}]
        actions.append(action)
    out = profiled("PlanDefinition", PROTOCOL_ID[version], "ctms-protocol",
                   url=PROTOCOL_URL, version=version, name="ACME101Protocol",
                   title="ACME-101 schedule of activities",
                   type=concept("http://terminology.hl7.org/CodeSystem/plan-definition-type", "clinical-protocol"),
                   status="active", date=PROTOCOL_DATE[version], publisher="Acme Therapeutics plc",
                   approvalDate=PROTOCOL_DATE[version])
    if version == "2.0":
        out["description"] = ("Amendment 2.0: the week 8 window widened to Day 50-64 (+/- 7 days), the week 16 "
                              "visit removed, a week 20 visit (Day 141 +/- 7) added.")
        out["relatedArtifact"] = [{"type": "predecessor", "resource": f"{PROTOCOL_URL}|1.0"}]
    else:
        out["description"] = "The original protocol: nine visits from screening to the safety follow-up."
    out["action"] = actions
    return out


VENDOR = f"{CTMS}/sid/vendor"  # the sponsor's accounts-payable vendor number of a site's institution


def organization(oid: str, name: str, kind: str, city: str | None = None, country: str | None = None,
                 vendor: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "Organization", "id": oid}
    if vendor:
        out["identifier"] = [{"system": VENDOR, "value": vendor}]
    out.update(active=True, type=[concept("http://terminology.hl7.org/CodeSystem/organization-type", kind)], name=name)
    if city:
        out["contact"] = [{"address": {"city": city, "country": country}}]
    return out


def study(subs: list[Subject], version: str) -> dict[str, Any]:
    enrolled = sorted(s.day1 for s in subs if s.day1)
    first_act = min(s.milestone("activated") for s in SITES if s.milestone("activated"))
    ms = [milestone("study-milestone", "protocol-approved", True, PROTOCOL_DATE["1.0"]),
          milestone("study-milestone", "first-site-activated", False, "2025-03-01"),
          milestone("study-milestone", "first-site-activated", True, first_act),
          milestone("study-milestone", "first-subject-in", False, "2025-04-01"),
          milestone("study-milestone", "first-subject-in", True, enrolled[0].isoformat())]
    for pct, planned in ((25, "2025-12-31"), (50, "2026-08-31"), (75, "2027-03-31")):
        ms.append(milestone("study-milestone", f"enrolled-{pct}", False, planned))
        reached = nth_enrolment(subs, math.ceil(STUDY_TARGET * pct / 100))
        if reached:
            ms.append(milestone("study-milestone", f"enrolled-{pct}", True, reached.isoformat()))
    ms += [milestone("study-milestone", "last-subject-in", False, "2027-06-30"),
           milestone("study-milestone", "last-subject-last-visit", False, "2028-01-15"),
           milestone("study-milestone", "database-lock", False, "2028-03-15"),
           milestone("study-milestone", "study-closed", False, "2028-06-30")]
    return profiled(
        "ResearchStudy", STUDY_ID, "ctms-study",
        identifier=[
            {"system": "https://clinicaltrials.gov", "value": "NCT09990101"},
            {"system": "https://euclinicaltrials.eu/clinicalTrialId", "value": "2024-519901-27-00"},
            {"type": concept(f"{CS}/identifier-type", "sponsor-protocol", text="Sponsor protocol number"),
             "system": "http://acme-therapeutics.example.org/protocols", "value": "ACME-101"}],
        name="ACME101", title=STUDY_TITLE,
        label=[{"type": concept("http://hl7.org/fhir/title-type", "acronym"), "value": "ACME-101"}],
        status="active",
        primaryPurposeType=concept("http://hl7.org/fhir/research-study-prim-purp-type", "treatment"),
        phase=concept("http://hl7.org/fhir/research-study-phase", "phase-2"),
        condition=[concept("http://snomed.info/sct", "195967001", "Asthma", text="Moderate to severe asthma")],
        studyDesign=[concept(STUDY_DESIGN, code, display) for code, display in DESIGN],
        keyword=[{"text": "asthma"}, {"text": "biologic"}],
        region=[concept(ISO3166, c) for c, _n, _t in COUNTRIES],
        classifier=level("study"),
        protocol=[ref("PlanDefinition", PROTOCOL_ID[version])],
        descriptionSummary="ACM-4401 200 mg or placebo every 4 weeks for 24 weeks, then 4 weeks of follow-up.",
        period={"start": PROTOCOL_DATE["1.0"]},
        associatedParty=[
            {"name": "Acme Therapeutics plc", "role": concept(PARTY_ROLE, "sponsor"), "party": ref("Organization", "sponsor-acme")},
            {"name": "Northwind Clinical Research Ltd",
             "role": concept(PARTY_ROLE, "collaborator", text="Contract research organisation (CRO)"),
             "party": ref("Organization", "cro-northwind")}],
        progressStatus=ms,
        recruitment={"targetNumber": STUDY_TARGET},
        comparisonGroup=[
            {"linkId": "arm-a", "name": "ACM-4401 200 mg",
             "type": concept("http://hl7.org/fhir/research-study-arm-type", "experimental")},
            {"linkId": "arm-p", "name": "Placebo",
             "type": concept("http://hl7.org/fhir/research-study-arm-type", "placebo-comparator")}])


def country(code: str, name: str, target: int) -> dict[str, Any]:
    return profiled("ResearchStudy", f"{STUDY_ID}-{code.lower()}", "ctms-country",
                    title=f"ACME-101 in {name}", status="active", classifier=level("country"),
                    partOf=[ref("ResearchStudy", STUDY_ID)], region=[concept(ISO3166, code)],
                    recruitment={"targetNumber": target})


def site_study(site: Site, subs: list[Subject], up_to: int) -> dict[str, Any]:
    """The site ResearchStudy, with the site-protocol entries of bundles 1..``up_to``."""
    mine = [s for s in subs if s.site is site]
    ms = []
    for code, planned, actual in site.milestones:
        if code == "first-subject-in":
            actual = first_subject_in(mine).isoformat() if first_subject_in(mine) else None
        if planned:
            ms.append(milestone("site-milestone", code, False, planned))
        if actual:
            ms.append(milestone("site-milestone", code, True, actual))
    included = [(v, e) for v, e in site.protocols if v == "1.0" or up_to >= 2]
    entries = [site_protocol(v, e) for v, e in included]
    runs = max(((e, v) for v, e in included if d(e) <= TODAY), default=None)  # the version it runs today
    parties = [{"name": f"Dr {site.pi[0]} {site.pi[1]}", "role": concept(PARTY_ROLE, "primary-investigator"),
                "party": ref("PractitionerRole", f"role-{site.num}-pi")}]
    for key, given, family, _g in site.staff:
        if key == "sub-investigator":
            parties.append({"name": f"Dr {given} {family}", "role": concept(PARTY_ROLE, "sub-investigator"),
                            "party": ref("PractitionerRole", f"role-{site.num}-{key}")})
    out = profiled("ResearchStudy", site.id, "ctms-site")
    if entries:
        out["extension"] = entries
    out.update(title=f"ACME-101 at {site.institution}", status="active", classifier=level("site"),
               partOf=[ref("ResearchStudy", f"{STUDY_ID}-{site.country.lower()}"), ref("ResearchStudy", STUDY_ID)],
               region=[concept(ISO3166, site.country)])
    if runs:
        out["protocol"] = [ref("PlanDefinition", PROTOCOL_ID[runs[1]])]
    out.update(site=[ref("Organization", f"org-{site.num}", site.institution), ref("Location", f"loc-{site.num}", site.unit)],
               associatedParty=parties, progressStatus=ms, recruitment={"targetNumber": site.target})
    return out


def qualification(code: str, text: str, start: str, end: str, ident: tuple[str, str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if ident:
        out["identifier"] = [{"system": ident[0], "value": ident[1]}]
    out.update(code=concept(f"{CS}/qualification-type", code, text=text), period={"start": start, "end": end})
    return out


LICENCE = {"GB": ("https://www.gmc-uk.org/doctors", "General Medical Council registration"),
           "DE": ("http://fhir-ctms.org/fhir/sid/example-approbation", "Approbation als Arzt"),
           "FR": ("http://fhir-ctms.org/fhir/sid/example-rpps", "Inscription au RPPS")}


def practitioner(pid: str, given: str, family: str, gender: str, country_code: str, doctor: bool,
                 gcp_start: str, n: int) -> dict[str, Any]:
    gcp_end = (d(gcp_start) + days(3 * 365)).isoformat()
    if pid == EXPIRED_GCP:
        gcp_start, gcp_end = "2023-10-31", "2026-10-31"
    quals = [qualification("gcp-training", "ICH E6 Good Clinical Practice training", gcp_start, gcp_end)]
    if doctor:
        system, text = LICENCE[country_code]
        quals.append(qualification("medical-licence", text, "2010-09-01", f"{2027 + n % 3}-08-31",
                                   (system, f"{country_code}{7100000 + n * 137}")))
    return profiled("Practitioner", pid, "ctms-investigator", active=True,
                    name=[{"use": "official", "family": family, "given": [given],
                           **({"prefix": ["Dr"]} if doctor else {})}],
                    gender=gender, qualification=quals)


ROLE_DISPLAY = {"principal-investigator": "Principal investigator", "sub-investigator": "Sub-investigator",
                "study-coordinator": "Study coordinator", "pharmacist": "Pharmacist",
                "monitor": "Monitor (CRA)", "data-manager": "Data manager"}


def practitioner_role(rid: str, pid: str, org: str, role: str, sites: tuple[str, ...], start: str) -> dict[str, Any]:
    return profiled("PractitionerRole", rid, "ctms-site-staff",
                    extension=[{"url": f"{SD}/research-study", "valueReference": ref("ResearchStudy", s)} for s in sites],
                    active=True, period={"start": start}, practitioner=ref("Practitioner", pid),
                    organization=ref("Organization", org),
                    code=[concept(f"{CS}/staff-role", role, ROLE_DISPLAY[role])])


def staff_resources() -> list[dict[str, Any]]:
    out = []
    n = 0
    for site in SITES:
        start = site.milestone("selected") or ""
        people = [("pi", "principal-investigator", *site.pi)] + [(k, k, g, f, s) for k, g, f, s in site.staff]
        for key, role, given, family, gender in people:
            n += 1
            pid, doctor = f"prac-{site.num}-{key}", role in ("principal-investigator", "sub-investigator")
            out.append(practitioner(pid, given, family, gender, site.country, doctor, start, n))
            out.append(practitioner_role(f"role-{site.num}-{key}", pid, f"org-{site.num}", role, (site.id,), start))
    for key, given, family, gender, role, sites in CRO_STAFF:
        n += 1
        out.append(practitioner(f"prac-{key}", given, family, gender, "GB", False, "2024-11-04", n))
        out.append(practitioner_role(f"role-{key}", f"prac-{key}", "cro-northwind", role, sites, "2024-12-01"))
    return out


def patient(s: Subject) -> dict[str, Any]:
    """Pseudonymised, as a CTMS holds a subject: the study's subject number, gender and year of
    birth; no name, no hospital record number."""
    born = 1952 + (s.number * 7 + int(s.site.num[-2:]) * 5) % 48
    return {"resourceType": "Patient", "id": f"pat-{s.key}",
            "identifier": [{"system": SUBJECT_NUMBER, "value": s.key.upper()}],
            "active": True, "gender": s.gender, "birthDate": str(born),
            "managingOrganization": ref("Organization", f"org-{s.site.num}")}


def consent(s: Subject) -> dict[str, Any]:
    withdrawn = s.state == "withdrawn" and s.progress[-1][2] == "consent-withdrawn"
    out: dict[str, Any] = {
        "resourceType": "Consent", "id": f"consent-{s.key}", "status": "inactive" if withdrawn else "active",
        "category": [concept("http://loinc.org", "59284-0", "Consent Document", text="Informed consent to take part in ACME-101")],
        "subject": ref("Patient", f"pat-{s.key}"), "date": s.screened.isoformat(),
        "period": {"start": s.screened.isoformat(), **({"end": s.end.isoformat()} if withdrawn and s.end else {})},
        "grantor": [ref("Patient", f"pat-{s.key}")], "grantee": [ref("Organization", f"org-{s.site.num}")],
        "decision": "permit"}
    return out


def research_subject(s: Subject) -> dict[str, Any]:
    progress = []
    for i, (state, start, reason, ms) in enumerate(s.progress):
        p: dict[str, Any] = {"subjectState": concept(SUBJECT_STATE, state)}
        if ms:
            p["milestone"] = concept(SUBJECT_MILESTONE, ms)
        if reason:
            p["reason"] = concept(f"{CS}/subject-progress-reason", reason)
        p["startDate"] = start.isoformat()
        if i + 1 < len(s.progress):
            p["endDate"] = s.progress[i + 1][1].isoformat()
        progress.append(p)
    out = profiled("ResearchSubject", s.id, "ctms-subject",
                   identifier=[{"system": SUBJECT_NUMBER, "value": s.key.upper()}], status="active",
                   progress=progress,
                   period={"start": s.screened.isoformat(), **({"end": s.end.isoformat()} if s.end else {})},
                   study=ref("ResearchStudy", s.site.id), subject=ref("Patient", f"pat-{s.key}"))
    out["consent"] = [ref("Consent", f"consent-{s.key}")]
    return out


def care_plan(s: Subject, version: str) -> dict[str, Any]:
    status = {"off-study": "completed", "withdrawn": "revoked"}.get(s.state, "active")
    return profiled("CarePlan", f"plan-{s.key}", "ctms-visit-plan",
                    identifier=[{"system": f"{CTMS}/sid/visit-plan", "value": s.id}],
                    instantiatesCanonical=[f"{PROTOCOL_URL}|{version}"], status=status,
                    intent="plan", title="Visit plan: ACME-101 schedule of activities",
                    subject=ref("Patient", f"pat-{s.key}"),
                    period={"start": s.day1.isoformat() if s.day1 else None},
                    supportingInfo=[ref("ResearchSubject", s.id)])


def instant(day: dt.date) -> str:
    return f"{day.isoformat()}T00:00:00Z"


def appointment(s: Subject, a: Appt) -> dict[str, Any]:
    out = profiled("Appointment", f"appt-{s.key}-{a.action}", "ctms-planned-visit",
                   extension=[{"url": f"{SD}/protocol-visit", "valueCanonical": f"{PROTOCOL_URL}|{a.version}#{a.action}"}],
                   identifier=[{"system": f"{CTMS}/sid/planned-visit", "value": f"{s.id}/{a.action}"}],
                   status=a.status)
    if a.reason:
        out["cancellationReason"] = {"text": a.reason}
    out.update(description=a.title, start=instant(a.target), end=instant(a.target + days(1)),
               requestedPeriod=[{"start": a.low.isoformat(), "end": a.high.isoformat()}],
               subject=ref("Patient", f"pat-{s.key}"), basedOn=[ref("CarePlan", f"plan-{s.key}")],
               participant=[{"actor": ref("Patient", f"pat-{s.key}"),
                             "status": "accepted" if a.status in ("fulfilled", "booked", "noshow") else
                             "declined" if a.status == "cancelled" else "needs-action"}])
    return out


def encounter(s: Subject, a: Appt) -> dict[str, Any]:
    assert a.actual is not None
    return profiled("Encounter", f"enc-{s.key}-{a.action}", "ctms-study-visit", status="completed",
                    **{"class": [concept("http://terminology.hl7.org/CodeSystem/v3-ActCode", "AMB", "ambulatory")]},
                    type=[{"text": a.title}], subject=ref("Patient", f"pat-{s.key}"),
                    basedOn=[ref("CarePlan", f"plan-{s.key}")], appointment=[ref("Appointment", f"appt-{s.key}-{a.action}")],
                    actualPeriod={"start": f"{a.actual.isoformat()}T09:00:00Z", "end": f"{a.actual.isoformat()}T11:30:00Z"},
                    serviceProvider=ref("Organization", f"org-{s.site.num}"))


SCT = "http://snomed.info/sct"
CT_SCAN = (SCT, "77477000", "Computerized axial tomography")
CT_CODE = f"{SCT}|{CT_SCAN[1]}"  # how a procedure fee names it (payable-event-detail: system|code)
CT_VISIT = "w12"  # the protocol's chest CT, done at the week 12 visit


def procedure(s: Subject, a: Appt) -> dict[str, Any]:
    """The chest CT scan done at a week 12 visit (a payable procedure)."""
    assert a.actual is not None
    return {"resourceType": "Procedure", "id": f"proc-{s.key}-{a.action}-ct", "status": "completed",
            "code": concept(*CT_SCAN, text="CT scan of the chest"), "subject": ref("Patient", f"pat-{s.key}"),
            "encounter": ref("Encounter", f"enc-{s.key}-{a.action}"),
            "occurrenceDateTime": f"{a.actual.isoformat()}T10:00:00Z"}


def visit_resources(s: Subject, bundle: int) -> list[dict[str, Any]]:
    if bundle not in s.plan_version:
        return []
    out = [care_plan(s, s.plan_version[bundle])]
    for a in (s.visits_1 if bundle == 1 else s.visits_2):
        out.append(appointment(s, a))
        if a.status == "fulfilled":
            out.append(encounter(s, a))
            if a.action == CT_VISIT:
                out.append(procedure(s, a))
    return out


def transaction(bid: str, resources: list[dict[str, Any]]) -> dict[str, Any]:
    ids = [(r["resourceType"], r["id"]) for r in resources]
    assert len(ids) == len(set(ids)), [i for i, n in Counter(ids).items() if n > 1]
    return {"resourceType": "Bundle", "id": bid, "type": "transaction", "entry": [
        {"fullUrl": f"http://fhir-ctms.org/fhir/{r['resourceType']}/{r['id']}", "resource": r,
         "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}} for r in resources]}


def bundles() -> tuple[dict[str, Any], dict[str, Any]]:
    subs = subjects()
    first: list[dict[str, Any]] = [
        organization("sponsor-acme", "Acme Therapeutics plc", "bus", "Cambridge", "GB"),
        organization("cro-northwind", "Northwind Clinical Research Ltd", "bus", "Reading", "GB"),
        protocol("1.0"), study(subs, "1.0"), *[country(*c) for c in COUNTRIES]]
    for site in SITES:
        first.append(organization(f"org-{site.num}", site.institution, "prov", site.city, site.country,
                                  f"V-{site.num.upper()}"))
        first.append({"resourceType": "Location", "id": f"loc-{site.num}", "status": "active", "name": site.unit,
                      "mode": "instance", "address": {"city": site.city, "country": site.country},
                      "managingOrganization": ref("Organization", f"org-{site.num}")})
        first.append(site_study(site, subs, 1))
    first += staff_resources()
    first += [charge_item_definition(f) for f in FEES if f[10] == 1]
    second: list[dict[str, Any]] = [protocol("2.0"), study(subs, "2.0")]
    second += [site_study(site, subs, 2) for site in SITES if site.adoption("2.0")]
    second += [charge_item_definition(f) for f in FEES if f[10] == 2]
    for s in subs:
        target = first if s.bundle == 1 else second
        target += [patient(s), consent(s), research_subject(s)]
        first += visit_resources(s, 1)
        second += visit_resources(s, 2)
    return transaction("acme-101-1-study", first), transaction("acme-101-2-amendment", second)


# -- the fee schedule and what the sites earned (profiles/README.md "Fee schedules and payments") --
# (id, payable-event code, detail, scope: "study", a country or a site id, currency, amount,
#  holdback factor, protocol version or None, per-site cap or None, effective from, bundle)
USAGE = "http://terminology.hl7.org/CodeSystem/usage-context-type"
FEE_BASE = f"{CTMS}/ChargeItemDefinition"
Fee = tuple[str, str, str | None, str, str, str, str, str | None, int | None, str, int]
_VISIT_EUR = (("scr", "250.00"), ("d1", "450.00"), ("w2", "300.00"), ("w4", "300.00"), ("w12", "380.00"),
              ("w16", "380.00"), ("eot", "520.00"), ("fu", "220.00"))
_VISIT_GBP = (("scr", "200.00"), ("d1", "400.00"), ("w2", "260.00"), ("w4", "260.00"), ("w12", "320.00"),
              ("w16", "320.00"), ("eot", "450.00"), ("fu", "190.00"))
FEES: list[Fee] = [
    *[(f"eur-visit-{v}", "visit-completed", v, "study", "EUR", a, "0.10", None, None, "2025-01-01", 1)
      for v, a in _VISIT_EUR],
    ("eur-visit-w8-v1", "visit-completed", "w8", "study", "EUR", "380.00", "0.10", "1.0", None, "2025-01-01", 1),
    ("eur-randomised", "subject-milestone", "randomised", "study", "EUR", "1200.00", "0.10", None, None, "2025-01-01", 1),
    ("eur-completed", "subject-milestone", "completed", "study", "EUR", "600.00", "0.10", None, None, "2025-01-01", 1),
    ("eur-screen-failure", "screen-failure", None, "study", "EUR", "180.00", "0", None, 2, "2025-01-01", 1),
    ("eur-start-up", "site-milestone", "activated", "study", "EUR", "6000.00", "0", None, None, "2025-01-01", 1),
    ("eur-close-out", "site-milestone", "closed", "study", "EUR", "2500.00", "0", None, None, "2025-01-01", 1),
    # a country-specific rate: the French end-of-treatment visit
    ("fr-visit-eot", "visit-completed", "eot", "FR", "EUR", "560.00", "0.10", None, None, "2025-01-01", 1),
    *[(f"gb-visit-{v}", "visit-completed", v, "GB", "GBP", a, "0.10", None, None, "2025-01-01", 1)
      for v, a in _VISIT_GBP],
    ("gb-visit-w8-v1", "visit-completed", "w8", "GB", "GBP", "320.00", "0.10", "1.0", None, "2025-01-01", 1),
    ("gb-randomised", "subject-milestone", "randomised", "GB", "GBP", "1000.00", "0.10", None, None, "2025-01-01", 1),
    ("gb-completed", "subject-milestone", "completed", "GB", "GBP", "500.00", "0.10", None, None, "2025-01-01", 1),
    ("gb-screen-failure", "screen-failure", None, "GB", "GBP", "150.00", "0", None, 2, "2025-01-01", 1),
    ("gb-start-up", "site-milestone", "activated", "GB", "GBP", "5000.00", "0", None, None, "2025-01-01", 1),
    ("gb-close-out", "site-milestone", "closed", "GB", "GBP", "2000.00", "0", None, None, "2025-01-01", 1),
    # a procedure: the chest CT scan of the week 12 visit, by its SNOMED CT code
    ("eur-ct-scan", "procedure", CT_CODE, "study", "EUR", "320.00", "0.10", None, None, "2025-01-01", 1),
    ("gb-ct-scan", "procedure", CT_CODE, "GB", "GBP", "280.00", "0.10", None, None, "2025-01-01", 1),
    # amendment 2.0: the wider week 8 window pays more, the new week 20 visit is paid
    ("eur-visit-w8-v2", "visit-completed", "w8", "study", "EUR", "420.00", "0.10", "2.0", None, "2026-06-15", 2),
    ("eur-visit-w20", "visit-completed", "w20", "study", "EUR", "400.00", "0.10", "2.0", None, "2026-06-15", 2),
    ("gb-visit-w8-v2", "visit-completed", "w8", "GB", "GBP", "350.00", "0.10", "2.0", None, "2026-06-15", 2),
    ("gb-visit-w20", "visit-completed", "w20", "GB", "GBP", "340.00", "0.10", "2.0", None, "2026-06-15", 2),
]
#: the payment figures the README shows, each checked against $payments by tests/test_payments.py
PAYMENT_EXAMPLES = (("site-fr-03", "2025-01-01", "2026-04-30"), ("site-gb-01", "2026-04-01", "2026-07-31"),
                    ("site-gb-01", "2026-09-01", "2026-11-23"))


def charge_item_definition(f: Fee) -> dict[str, Any]:
    fid, kind, detail, scope, currency, amount, factor, version, cap, start, _b = f
    ctx = [{"code": coding(USAGE, "program"), "valueReference": ref("ResearchStudy", STUDY_ID)}]
    if scope in SITE:
        ctx.append({"code": coding(USAGE, "venue"), "valueReference": ref("ResearchStudy", scope)})
    elif scope != "study":
        ctx.append({"code": coding(USAGE, "venue"), "valueCodeableConcept": concept("urn:iso:std:iso:3166", scope)})
    ext: list[dict[str, Any]] = []
    if detail:
        ext.append({"url": f"{SD}/payable-event-detail", "valueString": detail})
    if cap is not None:
        ext.append({"url": f"{SD}/per-site-cap", "valuePositiveInt": cap})
    applicability: dict[str, Any] = {"effectivePeriod": {"start": start}}
    if version:
        applicability["relatedArtifact"] = {"type": "depends-on", "resource": f"{PROTOCOL_URL}|{version}"}
    comps: list[dict[str, Any]] = [{"type": "base", "amount": {"value": float(amount), "currency": currency}}]
    if factor != "0":
        comps.append({"type": "deduction", "code": concept(f"{CS}/payable-event", "holdback"), "factor": float(factor)})
    where = "the study" if scope == "study" else scope
    out: dict[str, Any] = {"resourceType": "ChargeItemDefinition", "id": f"fee-{fid}",
                           "meta": {"profile": [f"{SD}/ctms-fee"]}}
    if ext:
        out["extension"] = ext
    out.update(url=f"{FEE_BASE}/acme-101-{fid}", version="1", name=f"ACME101Fee{fid.title().replace('-', '')}",
               title=f"ACME-101 fee: {kind}{' ' + detail if detail else ''} ({where}"
                     f"{', protocol ' + version if version else ''})",
               status="active", date=start, publisher="Acme Therapeutics plc", useContext=ctx,
               code=concept(f"{CS}/payable-event", kind), applicability=[applicability],
               propertyGroup=[{"priceComponent": comps}])
    return out


def _round(value: Decimal) -> Decimal:
    return value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def _fee_for(site: Site, kind: str, detail: str | None, day: dt.date, version: str | None) -> Fee | None:
    """The most specific fee: site over country over study, then detail, protocol, latest start."""
    found = [f for f in FEES if f[1] == kind and f[2] in (None, detail) and f[3] in ("study", site.country, site.id)
             and d(f[9]) <= day and f[7] in (None, version)]
    return max(found, key=lambda f: (2 if f[3] == site.id else 1 if f[3] != "study" else 0, f[2] is not None,
                                     f[7] is not None, f[9], f[0]), default=None)


def site_payments(site: Site, subs: list[Subject], start: dt.date, end: dt.date) -> list[list[str]]:
    """Every event of the site (the rules of profiles/README.md), those dated in [start, end] as
    README rows: date, event key, status, fee, gross, holdback, net."""
    events: list[tuple[dt.date, str, str, str | None, str | None, str | None]] = []  # day, key, kind, detail, version, issue
    for code in ("activated", "closed"):
        day = site.milestone(code)
        if day:
            events.append((d(day), f"site-milestone/{site.id}/{code}", "site-milestone", code,
                           site.protocol_on(d(day)), None))
    for s in subs:
        if s.site is not site:
            continue
        no_consent = "no-consent" if s.state == "withdrawn" and s.progress[-1][2] == "consent-withdrawn" else None
        if s.day1:
            events.append((s.day1, f"subject-milestone/{s.id}/randomised", "subject-milestone", "randomised",
                           site.protocol_on(s.day1), no_consent))
        if s.state == "off-study" and s.end:
            events.append((s.end, f"subject-milestone/{s.id}/completed", "subject-milestone", "completed",
                           site.protocol_on(s.end), no_consent))
        if s.outcome == "SF" and s.end:
            events.append((s.end, f"screen-failure/{s.id}", "screen-failure", None, site.protocol_on(s.end), no_consent))
        for a in {x.action: x for x in s.visits_1 + s.visits_2}.values():
            if a.status == "fulfilled" and a.actual:
                issue = no_consent or ("out-of-window" if not a.low <= a.actual <= a.high else None)
                events.append((a.actual, f"visit/{s.id}/{a.action}", "visit-completed", a.action, a.version, issue))
                if a.action == CT_VISIT:  # its CT scan: paid whether or not the visit was in its window
                    events.append((a.actual, f"procedure/proc-{s.key}-{a.action}-ct", "procedure", CT_CODE,
                                   a.version, no_consent))
    events.sort(key=lambda e: (e[0], e[1]))
    rows: list[tuple[dt.date, str, str, str, Decimal, Decimal]] = []
    counted: Counter[str] = Counter()
    withheld = Decimal(0)
    for day, key, kind, detail, version, issue in events:
        f = None if issue else _fee_for(site, kind, detail, day, version)
        if f is None:
            rows.append((day, key, issue or "no-fee", "", Decimal(0), Decimal(0)))
            continue
        if f[8] is not None:
            counted[kind] += 1
            if counted[kind] > f[8]:
                rows.append((day, key, "capped", f"fee-{f[0]}", Decimal(0), Decimal(0)))
                continue
        gross = Decimal(f[5])
        holdback = _round(gross * Decimal(f[6]))
        withheld += holdback
        rows.append((day, key, "payable", f"fee-{f[0]}", gross, holdback))
    closed = site.milestone("closed")
    if closed:
        rows.append((d(closed), f"holdback-release/{site.id}", "release", "", withheld, Decimal(0)))
    rows.sort(key=lambda r: (r[0], r[1]))
    return [[r[0].isoformat(), f"`{r[1]}`", r[2], f"`{r[3]}`" if r[3] else "-", f"{r[4]:.2f}", f"{r[5]:.2f}",
             f"{r[4] - r[5]:.2f}"] for r in rows if start <= r[0] <= end]


def rate_changes(site: Site, rows: list[list[str]], start: dt.date, end: dt.date) -> list[str]:
    """Per visit paid in the period: the site's most specific fees in effect in the period, for
    any protocol or one the site ran in it, when their amounts differ."""
    ran = {v for v, e in site.protocols if start < d(e) <= end} | {site.protocol_on(start)}
    out = []
    for detail in sorted({r[1].strip("`").split("/")[-1] for r in rows if r[1].startswith("`visit/")}):
        cands = [f for f in FEES if f[1] == "visit-completed" and f[2] in (None, detail)
                 and f[3] in ("study", site.country, site.id) and d(f[9]) <= end and f[7] in (None, *ran)]
        if not cands:
            continue
        best = max((2 if f[3] == site.id else 1 if f[3] != "study" else 0, f[2] is not None) for f in cands)
        cands = [f for f in cands if (2 if f[3] == site.id else 1 if f[3] != "study" else 0, f[2] is not None) == best]
        if len({f[5] for f in cands}) > 1:
            out.append(f"visit `{detail}`: " + ", ".join(f"`fee-{f[0]}` {f[5]} {f[4]}" for f in cands))
    return out


def payments_section(subs: list[Subject]) -> str:
    fee_rows = [[f"`fee-{f[0]}`", f[1], (f[2] or "(any)").replace("|", "\\|"), f[3], f"{f[5]} {f[4]}",
                 f"{int(Decimal(f[6]) * 100)} %" if f[6] != "0" else "-", f[7] or "(any)",
                 str(f[8]) if f[8] else "-", f[9], f[10]] for f in FEES]
    out = ["## Fee schedule and payments", "",
           "The fee schedule is a set of ChargeItemDefinitions (`ChargeItemDefinition/fee-<id>`, url "
           f"`{FEE_BASE}/acme-101-<id>|1`), each with `useContext` program = the study and, for a country "
           "or site rate, `venue`; the rules (which definition applies, rounding, holdback, caps, what is "
           "reported and not paid) are in [`profiles/README.md`](../profiles/README.md) (\"Fee schedules and "
           "payments\"). German and French sites are paid in EUR, British sites in GBP (a site's currency is that "
           "of its country's fees, else of the study-wide ones). Every fee claims the profile `ctms-fee`. The "
           "procedure fee pays the chest CT scan done at each week 12 visit (`Procedure/proc-<site>-<n>-w12-ct`, "
           f"`completed`, code SNOMED CT {CT_SCAN[1]}, `encounter` the visit): its detail names the code as "
           f"`{CT_CODE}`. The amendment bundle adds the 2.0 rates (effective from the approval of 2.0).", "",
           md_table(["definition", "event", "detail", "scope", "amount", "holdback", "protocol", "cap per site",
                     "from", "bundle"], fee_rows), ""]
    for sid, start, end in PAYMENT_EXAMPLES:
        site = SITE[sid]
        rows = site_payments(site, subs, d(start), d(end))
        cur = "GBP" if site.country == "GB" else "EUR"
        paid = [r for r in rows if r[2] in ("payable", "release")]
        gross = sum(Decimal(r[4]) for r in paid)
        holdback = sum(Decimal(r[5]) for r in paid)
        out += [f"### `{sid}`, {start} to {end} ({cur})", "",
                f"`GET [base]/ResearchStudy/{STUDY_ID}/$payments?site={sid}&start={start}&end={end}`: every "
                "event dated in the period (gross, holdback = gross x factor rounded half up to the cent, "
                "net = gross - holdback; events not paid show 0.00).", "",
                md_table(["date", "event", "status", "fee", "gross", "holdback", "net"], rows), "",
                f"Totals: gross **{gross:.2f} {cur}**, holdback **{holdback:.2f} {cur}**, net **{gross - holdback:.2f} "
                f"{cur}** ({len(paid)} lines paid, {len(rows) - len(paid)} reported and not paid).", ""]
        changed = rate_changes(site, rows, d(start), d(end))
        if changed:
            out += ["Rates that changed in the period (reported as `rate-changed`; each event is paid at the rate "
                    "of its date and protocol version): " + "; ".join(changed) + ".", ""]
    return "\n".join(out)


# -- the README -----------------------------------------------------------------------------------

README_HEAD = """\
# Examples: the ACME-101 study

<!-- Generated by examples/build_example.py from its tables: edit the script, not this file. -->

ACME-101 is a FICTIONAL randomised, double-blind, placebo-controlled phase 2 study of ACM-4401 in
adults with moderate to severe asthma, sponsored by Acme Therapeutics plc (`Organization/sponsor-acme`)
and run with the CRO Northwind Clinical Research Ltd (`Organization/cro-northwind`). It follows the
CTMS model of [`profiles/README.md`](../profiles/README.md): every ResearchStudy, ResearchSubject,
PlanDefinition, Practitioner, PractitionerRole, CarePlan, Appointment and Encounter claims its
profile in `meta.profile`. Every name, institution and number is invented.

`build_example.py` (standard library only, explicit tables, no randomness) writes the two
transaction Bundles and this file; `python examples/build_example.py --check` fails if they
differ from what it would write. `make run` loads them in order (`fhir-ctms import --quiet
examples/*.json`):

1. `acme-101-1-study.json`: the study as it ran under protocol 1.0: the study, three countries,
   eight sites with their institutions and units, staff, subjects, consents and visits.
2. `acme-101-2-amendment.json`: protocol amendment 2.0 (approved {amend}): the new PlanDefinition
   (same `url`, version 2.0, `relatedArtifact` predecessor 1.0), the study pointing at it, the
   sites that adopted it (a second `site-protocol` entry), the subjects screened at those sites
   since ({amend_subjects}), and the rescheduled visits of their subjects on study at the
   adoption date. The study,
   those sites, those subjects' CarePlans and many Appointments therefore have two versions.

Every entry is a PUT with a fixed, readable id. Loading a file again right after itself writes
nothing (every entry is a no-op update). Loading both files again in order puts protocol 1.0's
content back on the {overlap} resources the amendment changed and then 2.0's (two more versions
each, with their audit records); nothing else changes and nothing is duplicated.

The example's "today" is **{today}**: visits after it are planned only (`booked` when due within
four weeks, else `proposed`).

## What is in it

- Study `ResearchStudy/acme-101` (ctms-study): NCT09990101, EU CT 2024-519901-27-00, sponsor
  protocol ACME-101; design (`studyDesign`, R5 `study-design` SEVCO codes): {design}; arms `arm-a`
  (ACM-4401 200 mg) and `arm-p` (placebo); target {target};
  study milestones planned (`actual` false) and reached (`actual` true): the 25 % and 50 %
  enrolment milestones are the dates of enrolments number {n25} and {n50}.
- Countries (ctms-country): {countries}.
- Sites (ctms-site): eight, each `partOf` its country and the study, with an `Organization`
  (`org-<site>`), a `Location` (`loc-<site>`), site milestones planned and actual, the PI as
  `associatedParty`, one `site-protocol` entry per protocol version adopted, and `protocol` the
  PlanDefinition of the version it runs today (none before its first approval).
- Staff: {staff} Practitioners (ctms-investigator: GCP training and, for doctors, a medical
  licence, each with its expiry; the GCP training of `Practitioner/{expired}` expired on
  2026-10-31) and their PractitionerRoles (ctms-site-staff: staff-role code, `research-study`
  extension): PIs, a sub-investigator, coordinators, pharmacists, and the CRO's two monitors
  (CRAs) and data manager.
- Subjects: {nsub} ResearchSubjects (ctms-subject), each with a Patient (`pat-<site>-<n>`) and a
  Consent (`consent-<site>-<n>`); Day 1 (randomisation, the enrolment date) is 14 days after
  screening. The Patients are pseudonymised: the subject number as identifier, gender and year of
  birth, no name. The study is double-blind: the subjects carry no arm (`assignedComparisonGroup`),
  since the randomisation list is not the CTMS's.
- Visits of every enrolled subject: a CarePlan (`plan-<site>-<n>`, ctms-visit-plan), one
  Appointment per protocol visit (`appt-<site>-<n>-<visit>`, ctms-planned-visit, identifier
  `http://fhir-ctms.org/fhir/sid/planned-visit|<ResearchSubject id>/<visit>`, `requestedPeriod`
  the window, `start` the target day at 00:00Z, `end` the next day) and an Encounter
  (`enc-<site>-<n>-<visit>`, ctms-study-visit) for each visit done. Subjects who never reached
  Day 1 (screening, screen failures, consent withdrawn in screening) have no visit plan. Each
  week 12 visit done has its chest CT scan, a `completed` Procedure (`proc-<site>-<n>-w12-ct`,
  SNOMED CT 77477000, `encounter` the visit), paid under the procedure fee below.
- Institutions (`org-<site>`) carry the sponsor's vendor number (identifier
  `http://fhir-ctms.org/fhir/sid/vendor`, e.g. `V-GB-01`): the payee of `$payment-file`.

## The protocol (`PlanDefinition?url=http://fhir-ctms.org/fhir/PlanDefinition/acme-101-protocol`)

Windows are `relatedAction` offsets from Day 1 with the Vulcan `AcceptableOffsetRangeSoa`
extension (days; for the `before-start` screening visit, days before Day 1).

{protocol_table}

A visit is planned under the protocol version its site ran: subjects screened after their site
adopted 2.0 follow 2.0 from the start. For a subject on study when the site adopted 2.0, the
visits settled before the adoption date (done, missed, or cancelled) keep their 1.0 Appointment;
the others are rescheduled to 2.0 (new `protocol-visit`, window), week 16 is cancelled
("Removed by protocol amendment 2.0") and week 20 is added unless its target day was already
before the adoption date.

Visit outcomes: {nenc} Encounters (visits done); {nlate} done late (after the window: {late});
{nmissed} missed (`noshow`: {missed}); Appointments cancelled after a subject left the study or
removed by the amendment: {ncancelled}; {nfuture} still planned.

## The numbers

Counted as in `profiles/README.md` ("Subjects"): screened = every subject; screen failures =
`ineligible` (reason `screen-failure`); enrolled = reached Day 1 (an `on-study` entry); active =
current state `on-study` or `follow-up`; withdrawn = current state `withdrawn` (including the one
consent withdrawn during screening, who is screened and withdrawn but not enrolled); completed =
current state `off-study` with reason `completed`. Activation: the actual `activated` milestone,
else the planned one; first subject in: the first enrolment (Day 1) at the site (also its actual
`first-subject-in` milestone). Protocol: the version the site runs on {today}.

"""


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def readme(b1: dict[str, Any], b2: dict[str, Any]) -> str:
    subs = subjects()
    every = [e["resource"] for e in b1["entry"] + b2["entry"]]
    appts = {r["id"]: r for r in every if r["resourceType"] == "Appointment"}  # the last version of each
    finals = [a for s in subs for a in {x.action: x for x in s.visits_1 + s.visits_2}.values()]
    late = sorted(f"`{s.id}` {a}" for (s_id, a) in LATE for s in subs if s.id == s_id)
    protocol_rows = []
    for aid, title, rel, offset, low, high in PROTOCOL["2.0"] + [v for v in PROTOCOL["1.0"] if v[0] == "w16"]:
        row = []
        for version in ("1.0", "2.0"):
            found = next((v for v in PROTOCOL[version] if v[0] == aid), None)
            if found is None:
                row.append("(none)")
            elif found[2] is None:
                row.append("Day 1 (anchor)")
            else:
                sign = "-" if found[2] == "before-start" else "+"
                row.append(f"{sign}{found[3]} d, window {found[4]}-{found[5]} d")
        protocol_rows.append([f"`{aid}`", title, *row])
    first = {(r["resourceType"], r["id"]): r for r in (e["resource"] for e in b1["entry"])}
    overlap = sum(first.get((e["resource"]["resourceType"], e["resource"]["id"]), e["resource"]) != e["resource"]
                  for e in b2["entry"])
    head = README_HEAD.format(
        overlap=overlap, amend=PROTOCOL_DATE["2.0"],
        amend_subjects=", ".join(f"`{e['resource']['id']}`" for e in b2["entry"]
                                 if e["resource"]["resourceType"] == "ResearchSubject"), today=TODAY.isoformat(), target=STUDY_TARGET,
        n25=math.ceil(STUDY_TARGET * 0.25), n50=math.ceil(STUDY_TARGET * 0.5),
        countries=", ".join(f"`{STUDY_ID}-{c.lower()}` ({c}, target {t})" for c, _n, t in COUNTRIES),
        staff=sum(r["resourceType"] == "Practitioner" for r in every), expired=EXPIRED_GCP,
        nsub=len(subs), design=", ".join(f"{display} (`{code}`)" for code, display in DESIGN),
        protocol_table=md_table(["visit", "title", "1.0", "2.0"], protocol_rows),
        nenc=sum(r["resourceType"] == "Encounter" for r in every), nlate=sum(a.late for a in finals),
        late=", ".join(late), nmissed=sum(a["status"] == "noshow" for a in appts.values()),
        missed=", ".join(sorted(f"`{s}` {a}" for s, a in MISSED)),
        ncancelled=sum(a["status"] == "cancelled" for a in appts.values()),
        nfuture=sum(a["status"] in ("booked", "proposed") for a in appts.values()))
    cols = ["target", "screened", "screen failures", "enrolled", "active", "withdrawn", "completed"]
    sites = md_table(["site", "country", *cols, "activation", "first subject in", "protocol", "state"],
                     [[f"`{r['id']}`", r["country"], *[r[c] for c in COLUMNS], r["activation"],
                       r["first_subject_in"] or "-", r["protocol"] or "-", r["state"]] for r in site_rows(subs)])
    countries = md_table(["country", "ResearchStudy", *cols, "first activation", "first subject in"],
                         [[r["country"], f"`{r['id']}`", *[r[c] for c in COLUMNS], r["activation"] or "-",
                           r["first_subject_in"] or "-"] for r in country_rows(subs)])
    st = study_row(subs)
    study_t = md_table(["study", *cols, "first activation", "first subject in"],
                       [[f"`{st['id']}`", *[st[c] for c in COLUMNS], st["activation"], st["first_subject_in"]]])
    states = Counter(s.state for s in subs)
    names = {"screening": "screening", "ineligible": "screen failure (`ineligible`)",
             "on-study": "on study / randomised (`on-study`)", "follow-up": "follow-up",
             "withdrawn": "withdrawn", "off-study": "completed (`off-study`, reason `completed`)"}
    state_rows = []
    for code, label in names.items():
        ids = sorted(s.id for s in subs if s.state == code)
        state_rows.append([label, states[code], ", ".join(f"`{i}`" for i in ids)])
    reasons = Counter(s.progress[-1][2] for s in subs if s.state == "withdrawn")
    reason_rows = [[f"`{r}`", n, ", ".join(f"`{s.id}`" for s in subs if s.state == "withdrawn" and s.progress[-1][2] == r)]
                   for r, n in sorted(reasons.items())]
    return (head + "### Per site\n\n" + sites + "\n\n### Per country\n\n" + countries + "\n\n### The study\n\n"
            + study_t + "\n\n### Subjects per current state\n\n"
            + md_table(["state", "subjects", "ids"], state_rows)
            + "\n\nWithdrawal reasons:\n\n" + md_table(["reason", "subjects", "ids"], reason_rows) + "\n\n"
            + payments_section(subs))


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=1) + "\n"


def outputs() -> dict[Path, str]:
    b1, b2 = bundles()
    return {HERE / "acme-101-1-study.json": dumps(b1), HERE / "acme-101-2-amendment.json": dumps(b2),
            HERE / "README.md": readme(b1, b2)}


def main(argv: list[str]) -> int:
    files = outputs()
    if "--check" in argv:
        stale = [p.name for p, text in files.items() if not p.exists() or p.read_text(encoding="utf-8") != text]
        if stale:
            print("out of date: " + ", ".join(stale) + " (run python examples/build_example.py)")
            return 1
        return 0
    for path, text in files.items():
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
