"""Bootstrap intervals against a numpy loop with the same resampling indices, and scipy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from exitwise import metrics as M
from exitwise.metrics.bootstrap import bootstrap_indices
from tests.conftest import random_probs


def test_bootstrap_equals_loop_with_same_indices():
    probs, labels = random_probs(300, 2, 4, seed=3)
    res = M.bootstrap(M.expected_calibration_error, probs, labels, n_resamples=200, seed=5)
    idx = bootstrap_indices(300, 200, 5, torch.device("cpu")).numpy()
    values = np.stack([M.expected_calibration_error(probs[i], labels[i]).numpy() for i in idx])
    low, high = np.quantile(values, [0.025, 0.975], axis=0)
    assert np.allclose(res.low.numpy(), low) and np.allclose(res.high.numpy(), high)
    assert torch.allclose(res.estimate, M.expected_calibration_error(probs, labels))
    assert res.samples.shape == (200, 2)


def test_bootstrap_close_to_scipy_percentile_interval():
    from scipy.stats import bootstrap as scipy_bootstrap

    rng = np.random.default_rng(0)
    hit = rng.random(2000) < 0.8
    pred = np.where(hit, 1, 0)[:, None]
    labels = np.ones(2000, dtype=np.int64)
    ours = M.bootstrap(M.per_exit_accuracy, pred, labels, n_resamples=2000, seed=1)
    ref = scipy_bootstrap(
        (hit.astype(float),), np.mean, n_resamples=2000, method="percentile", random_state=1
    )
    assert float(ours.low[0]) == pytest.approx(ref.confidence_interval.low, abs=0.005)
    assert float(ours.high[0]) == pytest.approx(ref.confidence_interval.high, abs=0.005)


def test_bootstrap_validation():
    with pytest.raises(TypeError, match="`metric` to be callable"):
        M.bootstrap(3, torch.ones(3))
    with pytest.raises(ValueError, match="at least one per-sample array"):
        M.bootstrap(M.consistency)
    with pytest.raises(ValueError, match="first dimension N = 3"):
        M.bootstrap(M.per_exit_accuracy, torch.ones(3, 2, 2), torch.ones(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"`confidence` to be in \(0, 1\)"):
        M.bootstrap(M.consistency, torch.zeros(3, 2, dtype=torch.long), confidence=95)


def test_bias_corrected_interval_matches_the_formula():
    from scipy.stats import norm

    probs, labels = random_probs(400, 2, 4, seed=9, scale=1.0)
    res = M.bootstrap(
        M.expected_calibration_error, probs, labels, n_resamples=300, seed=2, method="bc"
    )
    est = M.expected_calibration_error(probs, labels).numpy()
    samples = res.samples.numpy()
    for e in range(2):
        share = np.clip((samples[:, e] < est[e]).mean(), 1 / 600, 1 - 1 / 600)
        z0, z = norm.ppf(share), norm.ppf(0.975)
        low = np.quantile(samples[:, e], norm.cdf(2 * z0 - z))
        high = np.quantile(samples[:, e], norm.cdf(2 * z0 + z))
        assert float(res.low[e]) == pytest.approx(low, rel=1e-9)
        assert float(res.high[e]) == pytest.approx(high, rel=1e-9)
        # ECE is biased upwards under resampling; the corrected interval holds the estimate
        assert float(res.low[e]) <= est[e] <= float(res.high[e])
    with pytest.raises(ValueError, match="`method` to be one of"):
        M.bootstrap(M.expected_calibration_error, probs, labels, method="abc")


def test_bca_interval_matches_the_formula_with_a_plain_jackknife():
    from scipy.stats import norm

    probs, labels = random_probs(150, 2, 4, seed=4, scale=1.0)
    res = M.bootstrap(
        M.expected_calibration_error,
        probs,
        labels,
        n_resamples=400,
        seed=3,
        method="bca",
        jackknife_groups=150,  # the delete-one jackknife
    )
    est = M.expected_calibration_error(probs, labels).numpy()
    jack = np.stack(
        [
            M.expected_calibration_error(np.delete(probs, i, 0), np.delete(labels, i, 0)).numpy()
            for i in range(150)
        ]
    )
    samples = res.samples.numpy()
    for e in range(2):
        d = jack[:, e].mean() - jack[:, e]
        a = (d**3).sum() / (6 * (d**2).sum() ** 1.5)
        share = np.clip((samples[:, e] < est[e]).mean(), 1 / 800, 1 - 1 / 800)
        z0, z = norm.ppf(share), norm.ppf(0.975)
        for bound, sign in ((res.low, -1), (res.high, 1)):
            level = norm.cdf(z0 + (z0 + sign * z) / (1 - a * (z0 + sign * z)))
            assert float(bound[e]) == pytest.approx(np.quantile(samples[:, e], level), rel=1e-9)


def test_bca_agrees_with_scipy_for_a_mean():
    from scipy.stats import bootstrap as scipy_bootstrap

    g = np.random.default_rng(0)
    x = g.exponential(size=300)  # skewed: BCa differs from the percentile interval
    ours = M.bootstrap(
        lambda t: t.mean(),
        torch.tensor(x),
        n_resamples=20000,
        seed=0,
        method="bca",
        jackknife_groups=300,
    )
    ref = scipy_bootstrap((x,), np.mean, n_resamples=20000, method="BCa", random_state=0)
    ci = ref.confidence_interval
    assert float(ours.low) == pytest.approx(ci.low, rel=0.01)
    assert float(ours.high) == pytest.approx(ci.high, rel=0.01)


def known_ece_data(n, gap, rng):
    """Top-label confidence uniform on [0.5, 1], accuracy confidence - gap: every bin's gap
    is exactly ``gap``, so the population's binned ECE is ``gap``."""
    conf = rng.uniform(0.5, 1.0, n)
    hit = rng.uniform(size=n) < conf - gap
    probs = np.stack([conf, 1 - conf], 1)[:, None, :]
    return torch.tensor(probs), torch.tensor(np.where(hit, 0, 1))


def coverage(method, n, gap, reps, seed=1):
    rng = np.random.default_rng(seed)
    hits = 0
    for r in range(reps):
        probs, labels = known_ece_data(n, gap, rng)
        res = M.bootstrap(
            M.expected_calibration_error,
            probs,
            labels,
            n_resamples=200,
            seed=r,
            method=method,
            bounds=(0.0, 1.0),
        )
        hits += float(res.low[0]) <= gap <= float(res.high[0])
    return hits / reps


def test_regression_bias_corrected_interval_collapsed_below_its_estimate():
    # issue 10 defect 11: the report's "bc" interval printed 0.0209 [0.0170, 0.0204] and a
    # collapsed 0.0103 [0.0097, 0.0105]; on data with known ECE 0.02 it covers about half the
    # time. The basic interval the report now uses covers far more often.
    assert coverage("basic", 1000, 0.02, 40) >= coverage("bc", 1000, 0.02, 40) + 0.15


@pytest.mark.slow
@pytest.mark.parametrize("gap", [0.05, 0.1])
def test_basic_interval_coverage_by_simulation(gap):
    """Nominal 95 %: at least 0.87 over 200 data sets (binomial noise about 0.015)."""
    assert coverage("basic", 1000, gap, 200) >= 0.87


def test_interval_that_excludes_its_estimate_is_flagged():
    probs, labels = random_probs(300, 3, 4, seed=2, scale=0.3)  # nearly calibrated
    res = M.bootstrap(
        M.expected_calibration_error,
        probs,
        labels,
        n_resamples=200,
        method="basic",
        bounds=(0.0, 1.0),
    )
    est = res.estimate.to(torch.float64)
    assert torch.equal(res.excludes_estimate, (est < res.low) | (est > res.high))
    assert bool((res.low >= 0).all())
