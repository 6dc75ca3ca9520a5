"""Study, country and site milestones: planned versus actual (the ``$milestones`` operation's
figures), from lists of resource dicts: no server, no database.

A milestone is a ``progressStatus`` entry of a ResearchStudy (profiles/README.md, "Milestones"):
``state`` a code of ``study-milestone`` or ``site-milestone`` (or of the R5
``research-study-status``, which both value sets include), ``actual`` false: planned for
``period.start``, ``actual`` true: reached on ``period.start``. Levels are those of
``ctms.enrollment`` (the ``study-level`` classifier, ``partOf``), whose report gives the subject
counts, enrolment dates, targets and the recruitment model reused here.

Everything is evaluated as of the evaluation date D (the same rules as ``$enrollment``): subject
progress after D is ignored, and an ``actual`` entry dated after D has not happened yet (it is
left out; a planned entry is still a plan).

Per level and milestone code:

- planned date: the ``period.start`` of the LAST planned entry (``actual`` false or absent) in
  ``progressStatus`` order: re-planning appends a new planned entry, the last one is the plan;
- recorded actual: the earliest ``actual`` true entry on or before D;
- derived actual ("not typed twice", computed from the data as of D):

  - ``first-subject-in`` (study, site; a country that lists the milestone): the earliest
    enrolment date (``subjects.enrolment_date``: the first on-study entry) of a subject of the
    level or under it;
  - ``first-site-activated`` (study): the earliest recorded actual ``activated`` of its sites;
  - ``enrolled-25``/``-50``/``-75`` (study): the enrolment date of the k-th subject enrolled,
    k = ceil(p · target / 100), target = ``recruitment.targetNumber`` (or the sum of the
    countries'/sites' targets, as ``$enrollment``); none until k subjects are enrolled;
  - ``last-subject-in`` (study): the latest enrolment date, once enrolment is closed: the study
    has an actual ``closed-to-accrual``, ``enrolment-closed`` or ``last-subject-in`` entry, or it
    has sites and every one of them has an actual ``enrolment-closed`` or ``closed`` entry;
  - ``last-subject-last-visit`` (study): once enrolment is closed (as above) and every enrolled
    subject is off study (completed or withdrawn, as of D), the latest ``actualPeriod.start`` (on
    or before D) of a completed visit (Encounter) of an enrolled subject; the caller gives the
    visits (:func:`visit_subjects` says whose are needed: the operation reads the subjects'
    ``ctms-visit-plan`` CarePlans and the completed Encounters ``basedOn`` them);
  - site ``enrolment-closed`` and every other milestone are only what is recorded;

- the actual date is the recorded one when there is one (source ``recorded``), else the derived
  one (source ``derived``). When both exist and differ, or a milestone is recorded that the data
  show has not happened (a recorded ``first-subject-in`` with no enrolment), the milestone
  carries a discrepancy (both dates; the recorded one stays the actual). A milestone the data
  show has not happened keeps its recorded date as the actual, but its forecast, state and
  variance follow the data, as if nothing were recorded (``overdue``, ``at-risk`` or
  ``upcoming``; ``upcoming`` without a plan), so a state filter does not hide it;
- forecast (enrolment milestones only: ``first-subject-in``, ``enrolled-25/50/75``,
  ``last-subject-in`` at 100 % of the target): the date the k-th enrolment is expected, by the
  ``$enrollment`` model (``ctms.forecast.time_to_target`` of the k − enrolled remaining recruits,
  over the level's open and planned sites, the fitted α, β, the same draws and seed; the date is
  D + the median's whole days, so the 100 % forecast is ``$enrollment``'s ``forecastMedian``);
- state: ``met`` (actual on or before the plan, or an actual without a plan), ``met-late``
  (actual after the plan), ``overdue`` (no actual, the plan before D), ``at-risk`` (no actual,
  the plan on or after D, and the forecast after the plan, or beyond the forecast horizon),
  ``upcoming`` (no actual, the plan on or after D, not at risk). Milestones without a forecast
  (all but the enrolment ones) are never at risk;
- variance, in days: actual − planned when met; forecast − planned when a forecast exists;
  otherwise, for an overdue milestone, D − planned (late by at least that much); none for a
  milestone without a plan, or upcoming without a forecast.

A level lists every milestone code it has an entry for, plus the derived ones that have a date.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from collections.abc import Mapping
from typing import Any

from .. import terminology
from . import enrollment as en
from . import forecast as fc
from .subjects import classify, parse_date

STUDY_SYSTEM = "http://fhir-ctms.org/fhir/CodeSystem/study-milestone"
SITE_SYSTEM = "http://fhir-ctms.org/fhir/CodeSystem/site-milestone"
STATUS_SYSTEMS = ("http://hl7.org/fhir/research-study-status",
                  "http://terminology.hl7.org/CodeSystem/research-study-status")
SYSTEMS = (STUDY_SYSTEM, SITE_SYSTEM, *STATUS_SYSTEMS, None)

STATES = ("met", "met-late", "overdue", "at-risk", "upcoming")
#: enrolment milestones: code -> the fraction of the target whose reaching they mark (None: the
#: first subject)
ENROLMENT = {"first-subject-in": None, "enrolled-25": 0.25, "enrolled-50": 0.50,
             "enrolled-75": 0.75, "last-subject-in": 1.0}
#: the study's entries that close enrolment
STUDY_CLOSING = ("closed-to-accrual", "enrolment-closed", "last-subject-in")
#: a site's entries that close its enrolment
SITE_CLOSING = ("enrolment-closed", "closed")


@dataclass(frozen=True, slots=True)
class Discrepancy:
    recorded: dt.date
    derived: dt.date | None  #: None: the data show the milestone has not happened


@dataclass(frozen=True, slots=True)
class Milestone:
    level: str  #: study | country | site
    study: str  #: the id of the level's ResearchStudy
    title: str | None
    code: str
    system: str | None
    display: str | None
    planned: dt.date | None
    actual: dt.date | None
    source: str | None  #: recorded | derived (None: no actual)
    derived: dt.date | None  #: the derived date (also when the recorded one is the actual)
    forecast: dt.date | None
    forecast_note: str | None
    variance: int | None  #: days
    state: str
    discrepancy: Discrepancy | None = None
    top: str | None = None  #: the id of the study (top level) it belongs to

    @property
    def reference(self) -> str:
        return f"ResearchStudy/{self.study}"


@dataclass(slots=True)
class _Entries:
    planned: dt.date | None = None
    recorded: dt.date | None = None
    system: str | None = None
    display: str | None = None


def entries(study: dict[str, Any], as_of: dt.date) -> dict[str, _Entries]:
    """The milestone entries of a ResearchStudy by code: the plan (the last planned entry) and
    the recorded actual (the earliest actual entry on or before ``as_of``)."""
    out: dict[str, _Entries] = {}
    for p in study.get("progressStatus") or []:
        if not isinstance(p, dict):
            continue
        start = parse_date((p.get("period") or {}).get("start"))
        if start is None:
            continue
        for c in (p.get("state") or {}).get("coding") or []:
            if not isinstance(c, dict) or not isinstance(c.get("code"), str) \
                    or c.get("system") not in SYSTEMS:
                continue
            e = out.setdefault(c["code"], _Entries())
            if e.system is None:
                e.system = c.get("system")
            e.display = e.display or c.get("display")
            if p.get("actual") is True:
                if start <= as_of and (e.recorded is None or start < e.recorded):
                    e.recorded = start
            else:
                e.planned = start
            break
    return out


def _display(system: str | None, code: str, given: str | None) -> str | None:
    for s in ([system] if system else [STUDY_SYSTEM, SITE_SYSTEM, *STATUS_SYSTEMS]):
        found = terminology.display(s, code)
        if found:
            return found
    return given


def kth(dates: list[dt.date], k: int) -> dt.date | None:
    """The date of the k-th event (1-based) of ``dates``, None when there are fewer than k."""
    if k < 1:
        return None
    ordered = sorted(dates)
    return ordered[k - 1] if len(ordered) >= k else None


def needed(code: str, target: int | None) -> int | None:
    """How many enrolments an enrolment milestone marks (k = ceil(p · target)); None when it
    depends on a target the level does not have."""
    fraction = ENROLMENT[code]
    if fraction is None:
        return 1
    if not target:
        return None
    return math.ceil(round(fraction * target, 9))


def forecast_date(lv: en.Level, k: int, fit: fc.Fit | None, as_of: dt.date, *,
                  draws: int = fc.DRAWS, seed: int = fc.SEED) -> tuple[dt.date | None, str | None]:
    """The forecast date of the level's k-th enrolment (as ``$enrollment`` forecasts its
    target): (date, None), or (None, why not). A date beyond the horizon or after 9999-12-31:
    (None, "beyond ...")."""
    remaining = k - lv.counts.enrolled
    if remaining <= 0:
        return kth(lv.enrolment_dates, k), None
    if fit is None:
        return None, "no activated site with active days: no rate to forecast from"
    rates: list[fc.SiteRate] = []
    for s in lv.sites:
        if s.enrolment_closed is not None:
            continue
        if s.activated is not None:
            shape, rate = fit.posterior(s.counts.enrolled, s.site_days)
            rates.append(fc.SiteRate(shape, rate, 0.0))
        elif s.planned_activation is not None:
            rates.append(fc.SiteRate(fit.alpha, fit.beta,
                                     float(max(0, (s.planned_activation - as_of).days))))
    result = fc.time_to_target(remaining, rates, common=fit.pooled, draws=draws, seed=seed)
    if result is None:
        return None, "no open or planned site"
    if not math.isfinite(result.median) or result.median > en.HORIZON_YEARS * 365.25:
        return None, f"beyond {en.HORIZON_YEARS} years at the present rate"
    try:
        return as_of + dt.timedelta(days=int(math.floor(result.median))), None
    except OverflowError:  # as $enrollment: no date after the calendar's last (9999-12-31)
        return None, "beyond the last date of the calendar (9999-12-31)"


def _state(planned: dt.date | None, actual: dt.date | None, forecast: dt.date | None,
           beyond: bool, as_of: dt.date) -> tuple[str, int | None]:
    if actual is not None:
        if planned is None:
            return "met", None
        return ("met" if actual <= planned else "met-late"), (actual - planned).days
    if planned is None:  # recorded without a plan, but the data say not yet: nothing is late
        return "upcoming", None
    if planned < as_of:
        return "overdue", ((forecast if forecast is not None else as_of) - planned).days
    if beyond or (forecast is not None and forecast > planned):
        return "at-risk", (forecast - planned).days if forecast is not None else None
    return "upcoming", (forecast - planned).days if forecast is not None else None


def _closed(study: dict[str, Any], sites: list[dict[str, Any]], as_of: dt.date) -> bool:
    own = entries(study, as_of)
    if any(own.get(c) and own[c].recorded for c in STUDY_CLOSING):
        return True
    if not sites:
        return False
    for s in sites:
        got = entries(s, as_of)
        if not any(got.get(c) and got[c].recorded for c in SITE_CLOSING):
            return False
    return True


def _tree(study: dict[str, Any], children: list[dict[str, Any]]) -> tuple[set[str], list[dict[str, Any]]]:
    """The ids of the study, its countries and sites; the sites' resources."""
    ids, sites = {study["id"]}, []
    for c in sorted(children, key=lambda c: en.level_of(c) != "country"):
        if en.ref_id(next(iter(c.get("partOf") or []), None)) in ids and isinstance(c.get("id"), str):
            ids.add(c["id"])
            if (en.level_of(c) or "site") == "site":
                sites.append(c)
    return ids, sites


def visit_subjects(study: dict[str, Any], children: list[dict[str, Any]],
                   subjects: list[dict[str, Any]], as_of: dt.date) -> list[str] | None:
    """The ids of the study's enrolled subjects whose visits date ``last-subject-last-visit``;
    None while it cannot be derived (enrolment open, or a subject still on study)."""
    ids, sites = _tree(study, children)
    if not _closed(study, sites, as_of):
        return None
    out = []
    for subj in subjects:
        if en.ref_id(subj.get("study")) not in ids:
            continue
        st = classify(subj, as_of)
        if not st.enrolled:
            continue
        if not (st.completed or st.withdrawn):
            return None
        out.append(subj.get("id"))
    return sorted(i for i in out if isinstance(i, str))


def _derived(code: str, lv: en.Level, raw: dict[str, Any], site_raw: list[dict[str, Any]],
             as_of: dt.date, last_visit: dt.date | None = None,
             visits_known: bool = False) -> tuple[bool, dt.date | None]:
    """(derivable here, the derived date)."""
    if code == "first-subject-in":
        return True, kth(lv.enrolment_dates, 1)
    if lv.level != "study":
        return False, None
    if code == "first-site-activated":
        dates = [d for s in site_raw
                 if (d := getattr(entries(s, as_of).get("activated"), "recorded", None))]
        return True, min(dates) if dates else None
    if code in ("enrolled-25", "enrolled-50", "enrolled-75"):
        k = needed(code, lv.target)
        return (k is not None), (kth(lv.enrolment_dates, k) if k else None)
    if code == "last-subject-in":
        if not _closed(raw, site_raw, as_of):
            return False, None
        return True, max(lv.enrolment_dates) if lv.enrolment_dates else None
    if code == "last-subject-last-visit":
        return visits_known, last_visit
    return False, None


#: the derived codes each level lists even without an entry
_DERIVED_CODES = {"study": ("first-site-activated", "first-subject-in", "enrolled-25",
                            "enrolled-50", "enrolled-75", "last-subject-in",
                            "last-subject-last-visit"),
                  "site": ("first-subject-in",), "country": ()}


def milestones(study: dict[str, Any], children: list[dict[str, Any]],
               subjects: list[dict[str, Any]], as_of: dt.date, *,
               visits: Mapping[str, list[dt.date]] | None = None, draws: int = fc.DRAWS,
               seed: int = fc.SEED) -> list[Milestone]:
    """Every milestone of ``study`` (the top level) and of its countries and sites
    (``children``), evaluated on ``as_of`` from the ResearchSubjects ``subjects``: the study's
    first (in code order of appearance), then each country's, then each site's (in id order).
    ``visits``: the dates of the completed visits of the subjects :func:`visit_subjects` names
    (by ResearchSubject id), when it names any."""
    rep = en.report(study, children, subjects, as_of, draws=draws, seed=seed)
    whose = visit_subjects(study, children, subjects, as_of) if visits is not None else None
    last_visit = None
    if whose is not None:
        done = [d for i in whose for d in visits.get(i, ()) if d <= as_of]  # type: ignore[union-attr]
        last_visit = max(done) if done else None
    raw = {study["id"]: study, **{c["id"]: c for c in children if isinstance(c.get("id"), str)}}
    site_raw = [raw[lv.id] for lv in rep.levels if lv.level == "site"]
    out: list[Milestone] = []
    for lv in rep.levels:
        got = entries(raw[lv.id], as_of)
        codes = list(got)
        for code in _DERIVED_CODES.get(lv.level, ()):
            if code not in got:
                codes.append(code)
        for code in codes:
            e = got.get(code, _Entries())
            derivable, derived = _derived(code, lv, raw[lv.id], site_raw, as_of, last_visit,
                                          whose is not None)
            if e.planned is None and e.recorded is None and derived is None:
                continue
            actual, source = (e.recorded, "recorded") if e.recorded else \
                (derived, "derived") if derived else (None, None)
            discrepancy = None
            if e.recorded and derivable and derived != e.recorded:
                discrepancy = Discrepancy(e.recorded, derived)
            # recorded, but the data show it has not happened: the state follows the data
            happened = None if discrepancy is not None and derived is None else actual
            forecast = note = None
            beyond = False
            if happened is None and code in ENROLMENT and lv.level in ("study", "site", "country"):
                k = needed(code, lv.target)
                if k is None:
                    note = "no target"
                else:
                    forecast, note = forecast_date(lv, k, rep.fit, as_of, draws=draws, seed=seed)
                    beyond = forecast is None and bool(note) and note.startswith("beyond")
            state, variance = _state(e.planned, happened, forecast, beyond, as_of)
            system = e.system or (STUDY_SYSTEM if lv.level == "study" else SITE_SYSTEM)
            out.append(Milestone(lv.level, lv.id, lv.title, code, system,
                                 _display(system, code, e.display), e.planned, actual, source,
                                 derived, forecast, note, variance, state, discrepancy, study["id"]))
    return out
