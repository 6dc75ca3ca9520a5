"""Enrolment tracking and forecasting of a study, per study, country and site (the ``$enrollment``
operation's figures), from lists of resource dicts: no server, no database.

Levels follow profiles/README.md: a ResearchStudy's level is its ``classifier`` coding of
``study-level`` (a child without one is taken as a site); a country is ``partOf`` the study, a
site ``partOf`` the study and its country when the study has countries (the ``partOf`` entry that
is a country of the study is the site's parent, else the study). A subject counts at the site its ``study``
references (and so at the site's country and the study); one referencing the study or a country
directly counts there and above. Subjects are classified by ``ctms.subjects.classify`` as of the
evaluation date (later progress entries are ignored), so a past date gives the figures of then.

Definitions (all as of the evaluation date D):

- target: ``recruitment.targetNumber``; a country or study without one: the sum of its sites'
  (countries') targets when every one has a target, else none (no percent, no forecast);
- percent of target: 100 · enrolled / target, one decimal;
- a site's activation: the ``period.start`` of its actual ``activated`` progressStatus entry on
  or before D (a site with subjects but no such entry: its first subject's screening date, so its
  recruits have an exposure); planned activation: a planned (``actual`` false) ``activated``
  entry, or an actual one dated after D. Enrolment closed: an actual ``enrolment-closed`` or
  ``closed`` entry on or before D;
- active days τ of a site: days from its activation to D (or to its closing, if earlier);
- rate: enrolled per 30 days. Site: over its τ. Country and study: over the days since the level's
  first site activation (the level's overall pace); ratePerSite: enrolled per 30 active site-days
  (Σ τ over the level's sites, the mean pace of one site). Absent when the days are 0;
- forecast (see ``ctms.forecast``): α, β fitted over all the study's sites (k = enrolled, τ),
  or the pooled model (one common rate) when equal rates are not rejected; the parameters are
  drawn anew in every simulation draw, so the interval carries their uncertainty; for each level, the sites of the level that are open (posterior rate, from D) or planned (prior
  rate, from the planned activation, or from D when that date has passed without activation;
  a site closed to enrolment or with neither date contributes nothing) give the days until
  target − enrolled more; the dates are D + whole days (the day of the event; none beyond
  :data:`HORIZON_YEARS`, as when nothing has been recruited yet). A level that has
  met its target: the forecast is the date it was met (the enrolment date of its target-th
  subject), with no interval;
- lagging (sites): judged on the site's OWN data (k enrolled in τ active days), not on its
  posterior rate (which the model shrinks towards the study's mean: with equal rates it is the
  mean). A site open (activated, enrolment not closed) for at least :data:`LAG_MIN_DAYS` active
  days is lagging when either:

  * ``slow``: recruiting at the study's mean rate m (the reported ``meanRate``: α/β, pooled
    (K + ½)/T), it would have had at most k recruits in τ days with probability below
    :data:`LAG_PROBABILITY` (one-sided, Poisson of mean m τ; ``forecast.slow_probability``).
    The probability is reported (``lagProbability``);
  * ``behind plan``: the site has a target and a planned enrolment close (a planned, ``actual``
    false, ``enrolment-closed`` progressStatus entry after its activation) and is at least
    :data:`LAG_BEHIND` subject behind a linear plan: enrolled ≤ target × elapsed / planned
    period − 1, with planned period = planned close − activation and elapsed = min(D, planned
    close) − activation (a whole subject: a fraction of one behind the line is no delay);

  ``laggingReason`` says which and with the figures. A site open fewer days: not lagging
  (false); closed to enrolment or not activated: not judged (absent).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Any

from . import forecast as fc
from .subjects import classify, parse_date

LEVEL_SYSTEM = "http://fhir-ctms.org/fhir/CodeSystem/study-level"
MILESTONE_SYSTEMS = ("http://fhir-ctms.org/fhir/CodeSystem/site-milestone",
                     "http://fhir-ctms.org/fhir/CodeSystem/study-milestone", None)
PER = 30  #: rates are per 30 days
LAG_PROBABILITY = 0.10  #: a site is slow when P(≤ k in τ days) at the study's mean rate is below
LAG_MIN_DAYS = 30
LAG_BEHIND = 1  #: subjects behind the linear plan that make a site lagging
HORIZON_YEARS = 100  #: forecast dates further away are not given (a note says so)


@dataclass
class Counts:
    screened: int = 0
    screen_failures: int = 0
    enrolled: int = 0
    active: int = 0
    withdrawn: int = 0
    completed: int = 0


@dataclass
class Level:
    """One row of the report: the study, a country or a site."""

    level: str  #: study | country | site
    id: str
    title: str | None = None
    part_of: str | None = None  #: the parent's id
    region: str | None = None  #: the level's region when it has exactly one (a study in several: none)
    target: int | None = None
    counts: Counts = field(default_factory=Counts)
    enrolment_dates: list[dt.date] = field(default_factory=list)
    activated: dt.date | None = None  #: site: its activation; above: the first of its sites'
    planned_activation: dt.date | None = None  #: site only
    enrolment_closed: dt.date | None = None  #: site only
    active_sites: int = 0
    site_days: int = 0
    rate: float | None = None
    rate_per_site: float | None = None
    posterior_rate: float | None = None  #: site only, per 30 days
    lagging: bool | None = None  #: site only
    lagging_reason: str | None = None  #: site only, when lagging
    lag_probability: float | None = None  #: site only: P(≤ k recruits in τ days) at the mean rate
    planned_enrolment_closed: dt.date | None = None  #: site only: its planned (actual false) one
    target_met_on: dt.date | None = None
    forecast_median: dt.date | None = None
    forecast_low: dt.date | None = None
    forecast_high: dt.date | None = None
    forecast_note: str | None = None
    sites: list["Level"] = field(default_factory=list)  #: the sites of this level (site: itself)

    @property
    def reference(self) -> str:
        return f"ResearchStudy/{self.id}"

    @property
    def percent(self) -> float | None:
        if not self.target:
            return None
        return round(100.0 * self.counts.enrolled / self.target, 1)

    @property
    def open(self) -> bool:
        return self.activated is not None and self.enrolment_closed is None


@dataclass
class Report:
    date: dt.date
    fit: fc.Fit | None
    levels: list[Level]  #: the study, then its countries, then its sites (each in id order)


def ref_id(reference: Any, rtype: str = "ResearchStudy") -> str | None:
    """The id a Reference names (relative, absolute or versioned), if of type ``rtype``."""
    if not isinstance(reference, dict) or not isinstance(reference.get("reference"), str):
        return None
    parts = reference["reference"].split("/")
    if "_history" in parts:
        parts = parts[:parts.index("_history")]
    if len(parts) >= 2 and parts[-2] == rtype:
        return parts[-1]
    return None


def level_of(study: dict[str, Any]) -> str | None:
    for concept in study.get("classifier") or []:
        for c in (concept or {}).get("coding") or []:
            if c.get("system") == LEVEL_SYSTEM and c.get("code") in ("study", "country", "site"):
                return c["code"]
    return None


def _parent(child: dict[str, Any], by_id: dict[str, Level]) -> str | None:
    """The level ``child`` belongs to among those known: a site is ``partOf`` both its study and
    its country (profiles/README.md), so the country wins, whatever the order of ``partOf``."""
    known = [p for p in (ref_id(r) for r in child.get("partOf") or []) if p in by_id]
    return next((p for p in known if by_id[p].level == "country"), known[0] if known else None)


def _milestone(study: dict[str, Any], codes: tuple[str, ...], actual: bool,
               as_of: dt.date) -> dt.date | None:
    """The earliest ``period.start`` of a progressStatus entry with one of ``codes``: actual
    ones on or before ``as_of`` (actual=True), or planned ones and actual ones after it."""
    found: list[dt.date] = []
    for p in study.get("progressStatus") or []:
        if not isinstance(p, dict):
            continue
        codes_here = {c.get("code") for c in ((p.get("state") or {}).get("coding") or [])
                      if isinstance(c, dict) and c.get("system") in MILESTONE_SYSTEMS}
        if not codes_here & set(codes):
            continue
        start = parse_date((p.get("period") or {}).get("start"))
        if start is None:
            continue
        reached = p.get("actual") is True and start <= as_of
        if reached == actual:
            found.append(start)
    return min(found) if found else None


def _target(study: dict[str, Any]) -> int | None:
    n = (study.get("recruitment") or {}).get("targetNumber")
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else None


def _level(study: dict[str, Any], kind: str, parent: str | None) -> Level:
    regions = set()
    for concept in study.get("region") or []:
        codes = [c.get("code") for c in (concept or {}).get("coding") or [] if c.get("code")]
        if codes:
            regions.add(codes[0])
    # one region or none: a study in three countries has no single region to report
    region = next(iter(regions)) if len(regions) == 1 else None
    return Level(kind, study["id"], study.get("title") or study.get("name"), parent, region,
                 _target(study))


def _add(counts: Counts, st: Any) -> None:
    counts.screened += st.screened
    counts.screen_failures += st.screen_failure
    counts.enrolled += st.enrolled
    counts.active += st.active
    counts.withdrawn += st.withdrawn
    counts.completed += st.completed


def _date(as_of: dt.date, days: float) -> dt.date | None:
    """The day of an event ``days`` after the evaluation date; None beyond the horizon or
    after the last date of the calendar (9999-12-31: an evaluation date near it)."""
    if not math.isfinite(days) or days > HORIZON_YEARS * 365.25:
        return None
    try:
        return as_of + dt.timedelta(days=int(math.floor(days)))
    except OverflowError:
        return None


def report(study: dict[str, Any], children: list[dict[str, Any]], subjects: list[dict[str, Any]],
           as_of: dt.date, *, draws: int = fc.DRAWS, seed: int = fc.SEED) -> Report:
    """The enrolment report of ``study`` (the top level) from its descendants ``children``
    (countries and sites, any order) and the ResearchSubjects of any of them."""
    top = _level(study, "study", None)
    by_id: dict[str, Level] = {top.id: top}
    countries: list[Level] = []
    sites: list[Level] = []
    raw: dict[str, dict[str, Any]] = {top.id: study}
    # countries first, so sites under them find their parent
    pending = sorted(children, key=lambda c: (level_of(c) != "country", c.get("id", "")))
    for child in pending:
        parent = _parent(child, by_id)
        if child.get("id") in by_id or parent is None:
            continue
        kind = level_of(child) or "site"
        if kind == "study" or (kind == "country" and parent != top.id) \
                or by_id[parent].level == "site":
            continue  # not a level this study can hold
        lv = _level(child, kind, parent)
        by_id[lv.id], raw[lv.id] = lv, child
        (countries if kind == "country" else sites).append(lv)
    for s in sites:
        s.sites = [s]
        chain = [by_id[s.part_of]] if s.part_of else []
        if chain and chain[0].level == "country":
            chain.append(top)
        for up in chain:
            up.sites.append(s)

    first_seen: dict[str, dt.date] = {}
    for subj in subjects:
        where = ref_id(subj.get("study"))
        if where not in by_id:
            continue
        st = classify(subj, as_of)
        if st.state is None:
            continue
        node: Level | None = by_id[where]
        if st.screened_on or st.enrolled_on:
            d = min(x for x in (st.screened_on, st.enrolled_on) if x)
            first_seen[where] = min(first_seen.get(where, d), d)
        while node is not None:
            _add(node.counts, st)
            if st.enrolled and st.enrolled_on:
                node.enrolment_dates.append(st.enrolled_on)
            node = by_id[node.part_of] if node.part_of else None

    for s in sites:
        study_json = raw[s.id]
        s.activated = _milestone(study_json, ("activated",), True, as_of)
        if s.activated is None and s.counts.screened and s.id in first_seen:
            s.activated = first_seen[s.id]
        s.planned_activation = _milestone(study_json, ("activated",), False, as_of)
        s.enrolment_closed = _milestone(study_json, ("enrolment-closed", "closed"), True, as_of)
        if s.activated is not None:
            s.planned_enrolment_closed = _planned_close(study_json, s.activated)
        if s.activated is not None:
            end = min(as_of, s.enrolment_closed) if s.enrolment_closed else as_of
            s.site_days = max(0, (end - s.activated).days)
            s.active_sites = 1

    for lv in [*countries, top]:  # a study's missing target may come from its countries'
        if lv.target is None:
            below = [c for c in (*countries, *sites) if c.part_of == lv.id]
            targets = [b.target for b in below]
            if below and all(t is not None for t in targets):
                lv.target = sum(t for t in targets if t is not None)
        opened = [s.activated for s in lv.sites if s.activated is not None]
        lv.activated = min(opened) if opened else None
        lv.active_sites = len(opened)
        lv.site_days = sum(s.site_days for s in lv.sites)

    levels = [top, *sorted(countries, key=lambda x: x.id), *sorted(sites, key=lambda x: x.id)]
    for lv in levels:
        n = lv.counts.enrolled
        days = lv.site_days if lv.level == "site" else \
            ((as_of - lv.activated).days if lv.activated else 0)
        lv.rate = round(PER * n / days, 2) if days > 0 else None
        lv.rate_per_site = round(PER * n / lv.site_days, 2) if lv.site_days > 0 else None

    fit = fc.fit([s.counts.enrolled for s in sites if s.activated is not None],
                 [s.site_days for s in sites if s.activated is not None])
    for s in sites:
        if fit is None or s.activated is None:
            continue
        shape, rate = fit.posterior(s.counts.enrolled, s.site_days)
        s.posterior_rate = round(PER * shape / rate, 2)
        if s.enrolment_closed is None:
            _judge_pace(s, fit, as_of)
    for lv in levels:
        _forecast(lv, fit, as_of, draws, seed)
    return Report(as_of, fit, levels)


def _planned_close(study: dict[str, Any], after: dt.date) -> dt.date | None:
    """The earliest planned (``actual`` not true) ``enrolment-closed`` date after ``after``."""
    found = []
    for p in study.get("progressStatus") or []:
        if not isinstance(p, dict) or p.get("actual") is True:
            continue
        if any(isinstance(c, dict) and c.get("system") in MILESTONE_SYSTEMS
               and c.get("code") == "enrolment-closed"
               for c in (p.get("state") or {}).get("coding") or []):
            start = parse_date((p.get("period") or {}).get("start"))
            if start is not None and start > after:
                found.append(start)
    return min(found) if found else None


def _judge_pace(s: Level, fit: fc.Fit, as_of: dt.date) -> None:
    """Whether an open site is lagging, on its own data (the module docstring, "lagging")."""
    k, tau = s.counts.enrolled, s.site_days
    s.lag_probability = round(fc.slow_probability(fit, k, tau), 4) if tau > 0 else None
    if tau < LAG_MIN_DAYS:
        s.lagging = False
        return
    reasons = []
    p = fc.slow_probability(fit, k, tau)
    if p < LAG_PROBABILITY:
        reasons.append(
            f"slow: {k} enrolled in {tau} days, P(<= {k}) = {p:.3f} < {LAG_PROBABILITY} "
            f"at the study's mean rate ({PER * fit.mean_rate:.2f} per 30 days per site)")
    close = s.planned_enrolment_closed
    if s.target and close is not None and s.activated is not None:
        period = (close - s.activated).days
        elapsed = (min(as_of, close) - s.activated).days
        expected = s.target * elapsed / period if period > 0 else float(s.target)
        if k <= expected - LAG_BEHIND:
            reasons.append(f"behind plan: {k} enrolled, {expected:.1f} planned by now "
                           f"(target {s.target} by {close.isoformat()})")
    s.lagging = bool(reasons)
    s.lagging_reason = "; ".join(reasons) or None


def _forecast(lv: Level, fit: fc.Fit | None, as_of: dt.date, draws: int, seed: int) -> None:
    if lv.target is None:
        lv.forecast_note = "no target"
        return
    enrolled = sorted(lv.enrolment_dates)
    if lv.counts.enrolled >= lv.target:
        if lv.target == 0:
            lv.target_met_on = None
        elif len(enrolled) >= lv.target:
            lv.target_met_on = enrolled[lv.target - 1]
        lv.forecast_median = lv.target_met_on
        lv.forecast_note = "target met"
        return
    if fit is None:
        lv.forecast_note = "no activated site with active days: no rate to forecast from"
        return
    rates: list[fc.Site] = []
    for s in lv.sites:
        if s.enrolment_closed is not None:
            continue
        if s.activated is not None:  # its posterior (pooled: the common rate)
            rates.append(fc.Site(s.counts.enrolled, float(s.site_days), 0.0))
        elif s.planned_activation is not None:  # the prior, from its planned activation
            rates.append(fc.Site(0, 0.0, float(max(0, (s.planned_activation - as_of).days))))
    result = fc.forecast(fit, lv.target - lv.counts.enrolled, rates, draws=draws, seed=seed)
    if result is None:
        lv.forecast_note = "enrolment closed" if lv.level == "site" and lv.enrolment_closed \
            else "no open or planned site"
        return
    lv.forecast_median = _date(as_of, result.median)
    lv.forecast_low = _date(as_of, result.low)
    lv.forecast_high = _date(as_of, result.high)
    lv.forecast_note = fit.note if fit.pooled else None
    if lv.forecast_high is None:
        lv.forecast_note = f"beyond {HORIZON_YEARS} years at the present rate" + (
            f" ({fit.note})" if fit.pooled and fit.note else "")
