"""Enrolment forecasting: the Poisson-gamma recruitment model (Anisimov and Fedorov, Statistics
in Medicine 26(27), 2007, "Modelling, prediction and adaptive adjustment of recruitment in
multicentre trials").

Each site i recruits as a Poisson process of rate λi per day from its activation; the rates vary
between sites as λi ~ Gamma(α, β) (shape α, rate β; mean α/β). With ki recruits over τi active
days, ki is negative binomial, so α and β are fitted by maximum likelihood over the sites
(:func:`fit`):

    log L(α, β) = Σi [ lnΓ(α + ki) − lnΓ(α) − ln ki! + α ln β − (α + ki) ln(β + τi) + ki ln τi ]

and a site's rate, given its data, is Gamma(α + ki, β + τi) (:meth:`Fit.posterior`). A site not
yet open recruits from its planned activation with the prior Gamma(α, β).

The time to the R-th further recruit (:func:`time_to_target`) is simulated: each draw takes
every site's rate from its gamma law; the recruits then form one Poisson process whose
cumulative intensity Λ(t) = Σi λi · max(0, t − di) (di: the day the site opens, 0 if open) is
piecewise linear, and the R-th arrival time is Λ⁻¹(G) with G ~ Gamma(R, 1) (the sum of R unit
exponentials): exact, with no time grid. The median and the 10th and 90th percentiles of the
draws are the forecast and its 80% interval. The seed is fixed, so the output is deterministic.

When the model cannot be fitted (fewer than :data:`MIN_SITES` sites with active days, or no
recruit at all, where the maximum-likelihood mean is 0) the fallback is the pooled estimate
(:meth:`Fit.pooled`): every site recruits at one common rate λ, known as the posterior of a
homogeneous Poisson process under the Jeffreys prior, Gamma(K + ½, T) (K recruits over T
site-days in all); each draw takes one λ for all sites. When the sites show no more spread
than Poisson noise, the likelihood grows as α → ∞ (equal rates): α is bounded by
:data:`MAX_ALPHA`, which is the same thing in practice, and the fit says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.optimize import minimize
from scipy.special import gammaln

MIN_SITES = 3  #: fewer sites with active days: the pooled fallback
MAX_ALPHA = 1e4  #: the bound on the shape (equal rates, in practice)
MIN_ALPHA = 1e-3
DRAWS = 4000
SEED = 20070215


@dataclass(frozen=True, slots=True)
class Fit:
    """The recruitment model fitted to the sites' data (rates per day)."""

    alpha: float
    beta: float
    method: str  #: "poisson-gamma" (maximum likelihood) or "pooled" (the fallback)
    sites: int  #: sites with active days used
    recruits: int
    site_days: float
    note: str | None = None

    @property
    def pooled(self) -> bool:
        return self.method == "pooled"

    @property
    def mean_rate(self) -> float:
        """The mean rate of a site, per day (α/β)."""
        return self.alpha / self.beta

    def posterior(self, k: int, tau: float) -> tuple[float, float]:
        """(shape, rate) of a site's rate given k recruits in tau active days. Pooled: the
        common rate (a site's own data are already in it)."""
        if self.pooled:
            return self.alpha, self.beta
        return self.alpha + k, self.beta + tau

    @classmethod
    def pooled_from(cls, k: Sequence[int], tau: Sequence[float], note: str) -> "Fit":
        """The pooled fallback: one common rate, Gamma(K + ½, T)."""
        kk, tt = int(sum(k)), float(sum(tau))
        return cls(kk + 0.5, tt, "pooled", sum(1 for t in tau if t > 0), kk, tt, note)


def log_likelihood(alpha: float, beta: float, k: np.ndarray, tau: np.ndarray) -> float:
    """The negative-binomial marginal log-likelihood of (α, β) for counts k over days tau."""
    k = np.asarray(k, dtype=float)
    tau = np.asarray(tau, dtype=float)
    k_log_tau = np.where(k > 0, k * np.log(np.where(tau > 0, tau, 1.0)), 0.0)
    return float(np.sum(gammaln(alpha + k) - gammaln(alpha) - gammaln(k + 1)
                        + alpha * math.log(beta) - (alpha + k) * np.log(beta + tau) + k_log_tau))


def fit(k: Sequence[int], tau: Sequence[float], *, min_sites: int = MIN_SITES) -> Fit | None:
    """α and β by maximum likelihood from each site's recruits k and active days tau (sites
    with no active day carry no information and are left out). None when no site has an
    active day (no rate can be estimated); the pooled fallback when fewer than ``min_sites``
    sites have one, or when no site has recruited."""
    ka = np.asarray(k, dtype=float)
    ta = np.asarray(tau, dtype=float)
    if ka.shape != ta.shape or np.any(ka < 0) or np.any(ta < 0):
        raise ValueError("k and tau must be non-negative and of the same length")
    use = ta > 0
    ka, ta = ka[use], ta[use]
    n, total_k, total_t = int(use.sum()), float(ka.sum()), float(ta.sum())
    if n == 0:
        return None
    if n < min_sites:
        return Fit.pooled_from(ka.astype(int).tolist(), ta.tolist(),
                               f"{n} site(s) with active days, fewer than {min_sites}: pooled rate")
    if total_k == 0:
        return Fit.pooled_from(ka.astype(int).tolist(), ta.tolist(),
                               "no recruit yet: pooled rate (Jeffreys prior)")
    m0 = total_k / total_t
    lo, hi = math.log(MIN_ALPHA), math.log(MAX_ALPHA)

    def nll(x: np.ndarray) -> float:  # parameters: log α, log of the mean rate α/β
        a = math.exp(x[0])
        return -log_likelihood(a, a / math.exp(x[1]), ka, ta)

    best = None
    for a0 in (0.5, 2.0, 20.0):  # a few starts: the surface is flat along α when α is large
        r = minimize(nll, np.array([math.log(a0), math.log(m0)]), method="L-BFGS-B",
                     bounds=[(lo, hi), (math.log(m0) - 10, math.log(m0) + 10)])
        if best is None or r.fun < best.fun:
            best = r
    assert best is not None
    a = float(math.exp(best.x[0]))
    b = a / float(math.exp(best.x[1]))
    note = None
    if best.x[0] >= hi - 1e-3:
        note = "no spread between sites beyond Poisson noise: equal rates (alpha at its bound)"
    return Fit(a, b, "poisson-gamma", n, int(total_k), total_t, note)


@dataclass(frozen=True, slots=True)
class SiteRate:
    """A site's future recruitment: its rate's gamma law and the day (from now) it opens."""

    shape: float
    rate: float
    start: float = 0.0


@dataclass(frozen=True, slots=True)
class Forecast:
    """Days from the evaluation date to the target: the median and the 80% interval."""

    median: float
    low: float  #: 10th percentile
    high: float  #: 90th percentile


def time_to_target(remaining: int, sites: Sequence[SiteRate], *, common: bool = False,
                   draws: int = DRAWS, seed: int = SEED) -> Forecast | None:
    """The days until ``remaining`` more recruits, simulated (see the module docstring).
    ``common``: one rate draw shared by all sites (the pooled fallback). None without sites."""
    if remaining <= 0:
        return Forecast(0.0, 0.0, 0.0)
    sites = [s for s in sites if s.shape > 0 and s.rate > 0]
    if not sites:
        return None
    rng = np.random.default_rng(seed)
    order = sorted(range(len(sites)), key=lambda i: sites[i].start)
    start = np.array([max(0.0, sites[i].start) for i in order])
    shape = np.array([sites[i].shape for i in order])
    scale = 1.0 / np.array([sites[i].rate for i in order])
    g = rng.gamma(float(remaining), 1.0, size=draws)  # first: the same for any set of sites
    if common:
        lam = rng.gamma(shape[0], scale[0], size=(draws, 1)) * np.ones((1, len(sites)))
    else:
        lam = rng.gamma(shape, scale, size=(draws, len(sites)))
    rate_after = np.cumsum(lam, axis=1)  # the total rate from site j's opening on
    at_start = np.zeros_like(lam)  # Λ at each opening day
    at_start[:, 1:] = np.cumsum(rate_after[:, :-1] * np.diff(start), axis=1)
    seg = (at_start <= g[:, None]).sum(axis=1) - 1
    rows = np.arange(draws)
    days = start[seg] + (g - at_start[rows, seg]) / rate_after[rows, seg]
    low, median, high = np.percentile(days, [10, 50, 90])
    return Forecast(float(median), float(low), float(high))
