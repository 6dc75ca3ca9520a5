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

Which model (:func:`fit`). Whether the sites' rates differ at all is tested first: the
likelihood-ratio statistic of equal rates (α = ∞, one Poisson rate K/T) against the fitted α,
2 (log L(α̂, β̂) − log L_Poisson), is compared with :data:`LR_CRITICAL` = 2.706. Equal rates lie
on the boundary of the parameter space, so under them the statistic is a 50:50 mixture of 0 and
χ²₁ (Self and Liang, JASA 1987): 2.706 (the 0.90 quantile of χ²₁) is a 5% test. When equal rates
are not rejected, the likelihood is flat in α (it only grows towards α = ∞), the maximum sits at
the bound :data:`MAX_ALPHA`, and every site's posterior Gamma(α + k, β + τ) would be a near point
mass at the mean rate: the forecast would then pretend that rate is known and its interval would
carry only the Poisson noise of the arrivals. Instead the model is the pooled one (method
``pooled``, below), whose one common rate carries the uncertainty of the mean rate.

Parameter uncertainty. Every draw of the simulation first draws the model's parameters, so the
80% interval includes the uncertainty of the estimates and not only the randomness of the
arrivals:

- pooled (one common rate λ for all sites: equal rates not rejected, fewer than
  :data:`MIN_SITES` sites with active days, or no recruit at all, where the maximum-likelihood
  mean is 0): λ is the posterior of a homogeneous Poisson process under the Jeffreys prior,
  Gamma(K + ½, T) (K recruits over T site-days in all), one draw per simulation draw shared by
  all sites (their rates are perfectly correlated), open or not yet open;
- Poisson-gamma: (log α, log m), m = α/β the mean rate, is drawn from the Laplace approximation
  of its posterior under a flat prior on that scale: a normal centred on the maximum-likelihood
  estimate with the inverse of the negative log-likelihood's Hessian there as covariance
  (:attr:`Fit.cov`; computed by central differences). α is clipped to [:data:`MIN_ALPHA`,
  :data:`MAX_ALPHA`]. Given (α, β) of the draw, each open site's rate is drawn from
  Gamma(α + k, β + τ) and each planned site's from Gamma(α, β). (If the Hessian is not positive
  definite, which only happens at the bounds, only log m is drawn, from 1/H_mm.) The Laplace
  approximation was chosen over sampling the exact posterior because it needs no tuning and no
  extra draws, and on the log scale it is close to the exact posterior once a handful of sites
  have recruited; when the data cannot tell α apart from ∞ the pooled model above is used.

Each site's posterior mean rate reported (:meth:`Fit.posterior`) is the plug-in
(α̂ + k)/(β̂ + τ).

The time to the R-th further recruit (:func:`forecast`, :func:`time_to_target`) is simulated:
given each draw's site rates, the recruits form one Poisson process whose cumulative intensity
Λ(t) = Σi λi · max(0, t − di) (di: the day the site opens, 0 if open) is piecewise linear, and
the R-th arrival time is Λ⁻¹(G) with G ~ Gamma(R, 1) (the sum of R unit exponentials): exact,
with no time grid. The median and the 10th and 90th percentiles of the draws are the forecast
and its 80% interval. The seed is fixed, so the output is deterministic.

A site's own pace (:func:`slow_probability`, used to flag lagging sites): the probability of at
most k recruits in its τ active days if it recruited at the study's mean rate m (α̂/β̂; pooled:
(K + ½)/T), a Poisson of mean m τ. The negative binomial marginal with the fitted α̂ (which
allows for the spread between sites) was not used: a very slow site is often what makes the
sites look heterogeneous, the fitted α̂ is then small and the wide marginal masks that very site
(four sites open 90 days with 10, 12, 9 and 0 recruits: P(0) is 0.16 under the fitted negative
binomial, 0.001 under the Poisson). The question asked is "slower than the study's average
site, beyond chance", which the Poisson answers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.optimize import minimize
from scipy.special import gammaln
from scipy.stats import poisson

MIN_SITES = 3  #: fewer sites with active days: the pooled fallback
MAX_ALPHA = 1e4  #: the bound on the shape (equal rates, in practice)
MIN_ALPHA = 1e-3
LR_CRITICAL = 2.706  #: equal rates rejected above (5%: 50:50 mixture of 0 and chi-square 1)
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
    #: the likelihood-ratio statistic of equal rates (None when not computed: pooled by rule)
    lr: float | None = None
    #: the Laplace covariance of (log α, log α/β): (var, cov, var); None: parameters fixed
    cov: tuple[float, float, float] | None = None

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
    def pooled_from(cls, k: Sequence[int], tau: Sequence[float], note: str,
                    lr: float | None = None) -> "Fit":
        """The pooled fallback: one common rate, Gamma(K + ½, T)."""
        kk, tt = int(sum(k)), float(sum(tau))
        return cls(kk + 0.5, tt, "pooled", sum(1 for t in tau if t > 0), kk, tt, note, lr)


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
    # ≥ 0: equal rates are the limit α → ∞, which the bounded search can only approach
    lr = max(0.0, 2.0 * (-float(best.fun) - poisson_log_likelihood(m0, ka, ta)))
    if lr < LR_CRITICAL or best.x[0] >= hi - 1e-3:
        return Fit.pooled_from(
            ka.astype(int).tolist(), ta.tolist(),
            f"no spread between sites beyond Poisson noise (likelihood-ratio statistic "
            f"{lr:.2f} < {LR_CRITICAL}): equal rates, pooled rate", lr)
    a = float(math.exp(best.x[0]))
    b = a / float(math.exp(best.x[1]))
    return Fit(a, b, "poisson-gamma", n, int(total_k), total_t, None, lr,
               _laplace(nll, np.asarray(best.x, dtype=float)))


def poisson_log_likelihood(rate: float, k: np.ndarray, tau: np.ndarray) -> float:
    """The log-likelihood of one common Poisson rate (the limit α → ∞ of
    :func:`log_likelihood`, with the same constants)."""
    k = np.asarray(k, dtype=float)
    mu = rate * np.asarray(tau, dtype=float)
    k_log_mu = np.where(k > 0, k * np.log(np.where(mu > 0, mu, 1.0)), 0.0)
    return float(np.sum(k_log_mu - mu - gammaln(k + 1)))


def _laplace(nll, x: np.ndarray, h: float = 1e-3) -> tuple[float, float, float] | None:
    """The inverse Hessian of ``nll`` at its minimum ``x`` (central differences): the Laplace
    covariance of (log α, log m). Not positive definite: log m alone (1/H_mm), or None."""
    f0 = nll(x)
    e = np.eye(2) * h
    hess = np.empty((2, 2))
    for i in range(2):
        hess[i, i] = (nll(x + e[i]) - 2 * f0 + nll(x - e[i])) / h ** 2
    hess[0, 1] = hess[1, 0] = (nll(x + e[0] + e[1]) - nll(x + e[0] - e[1])
                               - nll(x - e[0] + e[1]) + nll(x - e[0] - e[1])) / (4 * h * h)
    if not np.all(np.isfinite(hess)):
        return None
    if hess[0, 0] > 0 and np.linalg.det(hess) > 0:
        inv = np.linalg.inv(hess)
        return float(inv[0, 0]), float(inv[0, 1]), float(inv[1, 1])
    if hess[1, 1] > 0:
        return 0.0, 0.0, float(1.0 / hess[1, 1])
    return None


def slow_probability(fit: Fit, k: int, tau: float) -> float:
    """P(at most ``k`` recruits in ``tau`` days) at the study's mean rate: Poisson of mean
    (α/β) τ (see the module docstring for why not the negative binomial)."""
    if tau <= 0:
        return 1.0
    return float(poisson.cdf(k, fit.mean_rate * tau))


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
    return _percentiles(g, lam, start)


@dataclass(frozen=True, slots=True)
class Site:
    """A site's data for :func:`forecast`: k recruits in tau active days (0, 0: not yet open,
    the prior) and the day (from now) it opens or opened (0)."""

    k: int
    tau: float
    start: float = 0.0


def forecast(f: Fit, remaining: int, sites: Sequence[Site], *, draws: int = DRAWS,
             seed: int = SEED) -> Forecast | None:
    """The days until ``remaining`` more recruits from ``sites`` under the fitted model, the
    model's parameters drawn anew in every simulation draw (see the module docstring).
    None without sites."""
    if remaining <= 0:
        return Forecast(0.0, 0.0, 0.0)
    if not sites:
        return None
    rng = np.random.default_rng(seed)
    ordered = sorted(sites, key=lambda s: s.start)
    start = np.array([max(0.0, s.start) for s in ordered])
    k = np.array([float(s.k) for s in ordered])
    tau = np.array([float(s.tau) for s in ordered])
    g = rng.gamma(float(remaining), 1.0, size=draws)  # first, as in time_to_target
    return _percentiles(g, rate_draws(f, k, tau, draws, rng), start)


def rate_draws(f: Fit, k: np.ndarray, tau: np.ndarray, draws: int,
               rng: np.random.Generator) -> np.ndarray:
    """Rates per day, shape (draws, sites), parameter uncertainty included: pooled, one
    Gamma(K + ½, T) draw shared by all sites; Poisson-gamma, (log α, log m) from the Laplace
    approximation, then Gamma(α + k, β + τ) per site (α, β fixed when ``f.cov`` is None)."""
    n = len(k)
    if f.pooled:
        return rng.gamma(f.alpha, 1.0 / f.beta, size=(draws, 1)) * np.ones((1, n))
    if f.cov is None:
        alpha = np.full(draws, f.alpha)
        mean = np.full(draws, f.mean_rate)
    else:
        vx, cxy, vy = f.cov
        z = rng.multivariate_normal([0.0, 0.0], [[vx, cxy], [cxy, vy]], size=draws,
                                    method="eigh")
        z = np.clip(z, -20.0, 20.0)  # a numerical guard only (e^20: far beyond any data)
        alpha = np.clip(f.alpha * np.exp(z[:, 0]), MIN_ALPHA, MAX_ALPHA)
        mean = f.mean_rate * np.exp(z[:, 1])
    beta = alpha / mean
    return rng.gamma(alpha[:, None] + k[None, :], 1.0 / (beta[:, None] + tau[None, :]))


def _percentiles(g: np.ndarray, lam: np.ndarray, start: np.ndarray) -> Forecast:
    """The R-th arrival time Λ⁻¹(G) of each draw (sites ordered by opening day ``start``)."""
    draws = len(g)
    rate_after = np.cumsum(lam, axis=1)  # the total rate from site j's opening on
    at_start = np.zeros_like(lam)  # Λ at each opening day
    at_start[:, 1:] = np.cumsum(rate_after[:, :-1] * np.diff(start), axis=1)
    seg = (at_start <= g[:, None]).sum(axis=1) - 1
    rows = np.arange(draws)
    days = start[seg] + (g - at_start[rows, seg]) / rate_after[rows, seg]
    low, median, high = np.percentile(days, [10, 50, 90])
    return Forecast(float(median), float(low), float(high))
