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
        M.bootstrap(M.expected_calibration_error, probs, labels, method="bca")
