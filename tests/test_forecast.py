"""fhir_ctms.ctms.forecast: the Poisson-gamma recruitment model (Anisimov and Fedorov 2007)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import gammaln

from fhir_ctms.ctms.forecast import (MAX_ALPHA, SiteRate, fit, log_likelihood,
                                     time_to_target)


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


def test_equal_rates_hit_the_bound():
    f = fit([3, 3, 3, 3], [100, 100, 100, 100])
    assert f.alpha == pytest.approx(MAX_ALPHA, rel=1e-3) and "equal rates" in f.note
    assert f.mean_rate == pytest.approx(0.03, rel=1e-3)


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
