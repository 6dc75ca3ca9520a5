"""fhir_ctms.ctms.forecast: the Poisson-gamma recruitment model (Anisimov and Fedorov 2007)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import gammaln

from fhir_ctms.ctms.forecast import (LR_CRITICAL, MAX_ALPHA, Fit, Site, SiteRate, fit,
                                     forecast, log_likelihood, poisson_log_likelihood,
                                     slow_probability, time_to_target)


def simulate(alpha: float, beta: float, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lam = rng.gamma(alpha, 1 / beta, size=n)
    tau = rng.uniform(90, 400, size=n)
    return rng.poisson(lam * tau), tau


@pytest.mark.parametrize("alpha,beta,seed", [(2.0, 40.0, 1), (5.0, 100.0, 2), (0.8, 20.0, 3)])
def test_fit_recovers_known_parameters(alpha, beta, seed):
    k, tau = simulate(alpha, beta, 600, seed)
    f = fit(k, tau)
    assert f is not None and f.method == "poisson-gamma" and f.sites == 600
    assert f.alpha == pytest.approx(alpha, rel=0.3)
    assert f.mean_rate == pytest.approx(alpha / beta, rel=0.1)


def test_fit_is_the_maximum_of_the_negative_binomial_likelihood():
    k, tau = simulate(2.0, 40.0, 50, 7)
    f = fit(k, tau)
    best = log_likelihood(f.alpha, f.beta, k, tau)
    for da, db in ((1.05, 1), (0.95, 1), (1, 1.05), (1, 0.95), (1.05, 1.05)):
        assert log_likelihood(f.alpha * da, f.beta * db, k, tau) <= best + 1e-6


def test_log_likelihood_matches_the_negative_binomial_pmf():
    # one site: P(k) = Γ(α+k) / (Γ(α) k!) (β/(β+τ))^α (τ/(β+τ))^k
    a, b, k, t = 2.5, 30.0, 4, 100.0
    direct = (gammaln(a + k) - gammaln(a) - gammaln(k + 1) + a * math.log(b / (b + t))
              + k * math.log(t / (b + t)))
    assert log_likelihood(a, b, np.array([k]), np.array([t])) == pytest.approx(direct)
    # a site with no active day contributes log 1 = 0
    assert log_likelihood(a, b, np.array([0]), np.array([0.0])) == pytest.approx(0.0)


def test_equal_rates_use_the_pooled_model():
    # the likelihood only grows towards alpha = infinity (equal rates): the maximum would sit at
    # the bound, every posterior a point mass; the likelihood-ratio statistic is 0, so the
    # pooled model, Gamma(K + 1/2, T) = Gamma(12.5, 400), carries the mean rate's uncertainty
    k, tau = np.array([3, 3, 3, 3]), np.array([100.0] * 4)
    assert log_likelihood(MAX_ALPHA, MAX_ALPHA / 0.03, k, tau) > \
        log_likelihood(10, 10 / 0.03, k, tau)
    f = fit(k, tau)
    assert (f.method, f.alpha, f.beta, f.sites) == ("pooled", 12.5, 400.0, 4)
    assert "equal rates" in f.note and f.lr == pytest.approx(0.0, abs=1e-3)
    assert f.mean_rate == pytest.approx(0.03125)


def test_the_poisson_likelihood_is_the_limit_of_the_negative_binomial():
    k, tau = simulate(2.0, 40.0, 20, 5)
    m = k.sum() / tau.sum()
    assert log_likelihood(1e9, 1e9 / m, k, tau) == pytest.approx(
        poisson_log_likelihood(m, k, tau), abs=1e-4)


def test_the_likelihood_ratio_test_decides_the_model():
    # 2, 5 and 8 recruits in 100 days: within Poisson noise of one rate (statistic 0.06)
    near = fit([2, 5, 8], [100, 100, 100])
    assert near.method == "pooled" and near.lr < LR_CRITICAL
    assert (near.alpha, near.beta) == (15.5, 300.0)
    # 10, 12, 9 and 0 in 90 days (and 0 in 20): the rates differ; the statistic is
    # 2 (log L(alpha, beta) - log L_Poisson(K / T)) from the two likelihoods
    k, tau = np.array([10, 12, 9, 0, 0]), np.array([90.0, 90, 90, 90, 20])
    f = fit(k, tau)
    assert f.method == "poisson-gamma" and f.lr > LR_CRITICAL
    assert f.lr == pytest.approx(2 * (log_likelihood(f.alpha, f.beta, k, tau)
                                      - poisson_log_likelihood(31 / 380, k, tau)), abs=1e-3)


def test_laplace_covariance_matches_the_fisher_information():
    # n sites with equal days: var(log m) = 1/K + 1/(n alpha) (negative binomial mean)
    rng = np.random.default_rng(11)
    n, alpha, beta = 400, 3.0, 60.0
    tau = np.full(n, 200.0)
    k = rng.poisson(rng.gamma(alpha, 1 / beta, size=n) * tau)
    f = fit(k, tau)
    assert f.method == "poisson-gamma" and f.cov is not None
    vx, cxy, vy = f.cov
    assert vy == pytest.approx(1 / k.sum() + 1 / (n * f.alpha), rel=0.1)
    assert vx > 0 and cxy ** 2 < vx * vy
    # the covariance is the inverse curvature: moving log alpha by one sd costs about 1/2
    # of log-likelihood (the quadratic approximation, the mean re-optimised: the profile)
    from scipy.optimize import minimize_scalar
    x = math.log(f.alpha) + math.sqrt(vx)
    prof = minimize_scalar(lambda y: -log_likelihood(math.exp(x), math.exp(x - y), k, tau),
                           bounds=(math.log(f.mean_rate) - 1, math.log(f.mean_rate) + 1),
                           method="bounded")
    drop = log_likelihood(f.alpha, f.beta, k, tau) + prof.fun
    assert drop == pytest.approx(0.5, rel=0.2)


def test_fallbacks():
    assert fit([], []) is None
    assert fit([0, 0], [0, 0]) is None  # no site with an active day
    two = fit([4, 2], [100, 50])  # fewer than 3 sites: pooled, Gamma(K + 1/2, T)
    assert (two.method, two.alpha, two.beta, two.sites) == ("pooled", 6.5, 150.0, 2)
    assert two.posterior(4, 100) == (6.5, 150.0)
    none = fit([0, 0, 0], [30, 40, 50])  # no recruit: the ML mean would be 0
    assert (none.method, none.alpha, none.beta) == ("pooled", 0.5, 120.0)
    with pytest.raises(ValueError):
        fit([1, 2], [10])
    with pytest.raises(ValueError):
        fit([-1, 2, 3], [10, 10, 10])


def test_posterior_updates_the_prior():
    f = fit(*simulate(2.0, 40.0, 100, 4))
    shape, rate = f.posterior(10, 100)
    assert (shape, rate) == (f.alpha + 10, f.beta + 100)


def test_forecast_with_many_sites_of_known_rate():
    # 20 sites at 0.1/day each, known almost exactly (shape 1e6): total rate 2/day, so 200
    # recruits take about 100 days; the spread is that of a Gamma(200, 2): sd 7 days
    sites = [SiteRate(1e6, 1e7)] * 20
    f = time_to_target(200, sites)
    assert f.median == pytest.approx(100, rel=0.03)
    assert f.low < f.median < f.high
    assert f.high - f.low == pytest.approx(2 * 1.2816 * math.sqrt(200) / 2, rel=0.15)


def test_forecast_with_late_openings():
    # 10 sites at 0.1/day: 5 open now, 5 from day 50. 50 recruits: the first 5 sites bring
    # 25 by day 50, then 1/day: day 75
    sites = [SiteRate(1e6, 1e7)] * 5 + [SiteRate(1e6, 1e7, 50.0)] * 5
    assert time_to_target(50, sites).median == pytest.approx(75, rel=0.05)
    # a site opening after the target is reached makes no difference
    early = time_to_target(10, [SiteRate(1e6, 1e7)] * 5)
    same = time_to_target(10, [SiteRate(1e6, 1e7)] * 5 + [SiteRate(1e6, 1e7, 500.0)])
    assert same.median == pytest.approx(early.median, rel=0.03)


def test_forecast_is_deterministic_and_monotonic():
    sites = [SiteRate(2.0 + i, 40.0 + 10 * i) for i in range(6)]
    assert time_to_target(30, sites) == time_to_target(30, sites)
    medians = [time_to_target(n, sites).median for n in (5, 10, 20, 40)]
    assert medians == sorted(medians) and len(set(medians)) == 4
    # more sites: sooner
    assert time_to_target(30, sites + sites).median < time_to_target(30, sites).median
    # a later opening: later
    later = [SiteRate(s.shape, s.rate, 30.0) for s in sites]
    assert time_to_target(30, later).median > time_to_target(30, sites).median
    # more uncertain rates (same mean): a wider interval
    sure = [SiteRate(100.0, 2000.0)] * 6
    unsure = [SiteRate(1.0, 20.0)] * 6
    a, b = time_to_target(30, sure), time_to_target(30, unsure)
    assert b.high - b.low > a.high - a.low


def test_forecast_edge_cases():
    assert time_to_target(0, []) == time_to_target(-3, [SiteRate(1, 1)])
    assert time_to_target(0, []).median == 0.0
    assert time_to_target(5, []) is None
    assert time_to_target(5, [SiteRate(0.0, 1.0)]) is None
    # the pooled fallback: one common rate for all sites, so a wider interval than independent
    # rates with the same law
    sites = [SiteRate(3.5, 100.0)] * 10
    common = time_to_target(40, sites, common=True)
    independent = time_to_target(40, sites)
    assert common.median == pytest.approx(independent.median, rel=0.15)
    assert common.high - common.low > independent.high - independent.low


# -- parameter uncertainty in the forecast (forecast()) -------------------------------------------

def test_pooled_forecast_is_the_beta_prime_law():
    # n open sites sharing one rate lambda ~ Gamma(a, rate b): the time to R recruits is
    # G / (n lambda), G ~ Gamma(R, 1), that is (b / n) X with X ~ BetaPrime(R, a)
    from scipy.stats import betaprime
    f = Fit.pooled_from([12, 0, 9, 3, 13, 12], [609, 34, 567, 151, 623, 442], "test")
    assert (f.alpha, f.beta) == (49.5, 2426.0)
    open_sites = [Site(12, 609), Site(0, 34), Site(9, 567), Site(13, 623)]
    got = forecast(f, 41, open_sites)
    scale = f.beta / 4
    for q, value in ((0.1, got.low), (0.5, got.median), (0.9, got.high)):
        assert value == pytest.approx(scale * betaprime.ppf(q, 41, 49.5), rel=0.03), q


def test_parameter_uncertainty_widens_the_interval():
    """The review's case (the example on 2026-11-23): 49 recruits over 2,426 site-days at six
    sites, equal rates. With alpha at its bound and the parameters fixed (the old forecast) the
    interval holds only the arrivals' Poisson noise; the pooled model adds the uncertainty of
    the mean rate, estimated from 49 recruits (sd of log m about 1/sqrt(49) = 14%)."""
    k, tau = [12, 0, 9, 3, 13, 12], [609, 34, 567, 151, 623, 442]
    f = fit(k, tau)
    assert f.method == "pooled" and (f.alpha, f.beta) == (49.5, 2426.0)
    sites = [Site(12, 609), Site(0, 34), Site(9, 567), Site(13, 623),
             Site(0, 0, 22), Site(0, 0, 58)]  # two planned sites open in 22 and 58 days
    new = forecast(f, 41, sites)
    m = 49 / 2426
    fixed = Fit(MAX_ALPHA, MAX_ALPHA / m, "poisson-gamma", 6, 49, 2426.0)  # cov None: fixed
    old = forecast(fixed, 41, sites)
    assert new.median == pytest.approx(old.median, rel=0.05)
    assert new.high - new.low > 1.2 * (old.high - old.low)
    # Poisson-gamma with a finite alpha: drawing (alpha, beta) from the Laplace approximation
    # widens the interval of the plug-in
    g = fit(*simulate(2.0, 40.0, 8, 21))
    assert g.method == "poisson-gamma" and g.cov is not None
    sites = [Site(3, 200), Site(8, 150), Site(1, 120), Site(0, 0, 30)]
    with_unc = forecast(g, 30, sites)
    plug_in = forecast(Fit(g.alpha, g.beta, g.method, g.sites, g.recruits, g.site_days), 30, sites)
    assert with_unc.high - with_unc.low > plug_in.high - plug_in.low
    assert forecast(g, 30, sites) == with_unc  # deterministic (fixed seed)
    assert forecast(g, 0, sites).median == 0.0 and forecast(g, 5, []) is None


def test_slow_probability_at_the_study_mean_rate():
    # pooled: Gamma(11.5, 300), mean rate 11.5 / 300 = 0.038333 per day
    f = Fit.pooled_from([5, 5, 1], [100, 100, 100], "test")
    # a site with 1 recruit in 100 days: Poisson mean 3.8333,
    # P(<= 1) = e^-3.8333 (1 + 3.8333) = 0.02163 * 4.8333 = 0.10458 (poisson.cdf(1, 3.8333))
    assert slow_probability(f, 1, 100) == pytest.approx(0.10458, abs=1e-4)
    # 0 in 100 days: e^-3.8333 = 0.02163 (poisson.cdf(0, 3.8333))
    assert slow_probability(f, 0, 100) == pytest.approx(0.02163, abs=1e-4)
    # Poisson-gamma alpha 2, beta 50 (mean 0.04): 2 in 100 days, mean 4:
    # P(<= 2) = e^-4 (1 + 4 + 8) = 0.018316 * 13 = 0.23810 (poisson.cdf(2, 4))
    g = Fit(2.0, 50.0, "poisson-gamma", 3, 10, 250.0)
    assert slow_probability(g, 2, 100) == pytest.approx(0.23810, abs=1e-4)
    assert slow_probability(g, 0, 0) == 1.0
