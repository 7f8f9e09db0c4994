"""Isotonic, histogram binning, Platt and beta: against scikit-learn, netcal and invariants."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from exitwise import ExitOutputs, metrics
from exitwise.calibrate import BetaCalibration, HistogramBinning, Isotonic, PlattScaling
from exitwise.calibrate._toplabel import interpolate, top_label_pairs

TOP_LABEL = [Isotonic, HistogramBinning, PlattScaling, BetaCalibration]


@pytest.fixture(scope="module")
def split(real_outputs):
    return real_outputs.split(0.5, seed=0)


def test_isotonic_map_equals_scikit_learn(split):
    cal, _ = split
    iso = Isotonic().fit(cal)
    conf, hit = top_label_pairs(cal.logits, cal.labels)
    grid = np.linspace(0, 1, 1001)
    for e in range(cal.num_exits):
        ref = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(conf[:, e], hit[:, e])
        assert np.allclose(iso.confidence_map(grid, exit=e).numpy(), ref.predict(grid), atol=1e-12)


def test_interpolate_equals_numpy():
    rng = np.random.default_rng(0)
    xp = np.sort(rng.random(20))
    fp = np.sort(rng.random(20))
    x = rng.random(1000) * 1.4 - 0.2
    ours = interpolate(torch.tensor(x), torch.tensor(xp), torch.tensor(fp)).numpy()
    assert np.allclose(ours, np.interp(x, xp, fp), atol=1e-12)


def test_histogram_binning_uniform_equals_netcal():
    from netcal.binning import HistogramBinning as NetcalHB

    rng = np.random.default_rng(1)
    conf = rng.uniform(0.5, 1.0, 20000)
    hit = (rng.random(20000) < conf**2).astype(float)
    probs = np.stack([conf, 1 - conf], axis=1)
    labels = np.where(hit == 1, 0, 1)
    ours = HistogramBinning(n_bins=10, binning="uniform").fit(np.log(probs), labels)
    ref = NetcalHB(bins=10)
    ref.fit(conf, hit.astype(int))
    # off the bin edges: netcal fits with [a, b) bins but transforms with (a, b] ones
    grid = np.linspace(0.5025, 0.9975, 100)
    assert np.allclose(ours.confidence_map(grid).numpy(), ref.transform(grid), atol=1e-9)


def test_histogram_binning_quantile_matches_naive():
    rng = np.random.default_rng(2)
    conf = np.round(rng.uniform(0.51, 0.99, 500), 2)  # ties
    hit = (rng.random(500) < conf).astype(float)
    probs = np.stack([conf, 1 - conf], axis=1)
    labels = np.where(hit == 1, 0, 1)
    hb = HistogramBinning(n_bins=7).fit(np.log(probs), labels)
    below = np.array([(conf < x).sum() for x in conf])
    ids = below * 7 // 500
    expected = np.array([hit[ids == ids[i]].mean() for i in range(500)])
    assert np.allclose(hb.confidence_map(conf).numpy(), expected, atol=1e-12)


def test_platt_equals_logistic_regression(split):
    cal, _ = split
    platt = PlattScaling().fit(cal)
    conf, hit = top_label_pairs(cal.logits, cal.labels)
    for e in range(cal.num_exits):
        x = np.log(conf[:, e] / (1 - conf[:, e]))[:, None]
        ref = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(x, hit[:, e])
        grid = np.linspace(0.15, 0.999, 50)
        expected = ref.predict_proba(np.log(grid / (1 - grid))[:, None])[:, 1]
        assert np.allclose(platt.confidence_map(grid, exit=e).numpy(), expected, atol=1e-6)


def test_beta_matches_logistic_regression_and_is_monotone(split):
    cal, _ = split
    beta = BetaCalibration().fit(cal)
    conf, hit = top_label_pairs(cal.logits, cal.labels)
    grid = np.linspace(0.11, 0.999, 200)
    for e in range(cal.num_exits):
        a, b, _c = beta.exit_maps_[e]["coef"].tolist()
        assert a >= 0 and b >= 0
        mapped = beta.confidence_map(grid, exit=e).numpy()
        assert np.all(np.diff(mapped) >= -1e-12)
        if a > 0 and b > 0:
            feats = np.stack([np.log(conf[:, e]), -np.log1p(-conf[:, e])], axis=1)
            ref = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(feats, hit[:, e])
            g = np.stack([np.log(grid), -np.log1p(-grid)], axis=1)
            assert np.allclose(mapped, ref.predict_proba(g)[:, 1], atol=1e-6)


@pytest.mark.parametrize("cls", TOP_LABEL)
def test_top_label_invariants(cls, split):
    cal, test = split
    out = cls().fit(cal).transform(test)
    assert torch.equal(out.predictions(), test.predictions())  # argmax kept
    rows = out.logits.exp().sum(-1)
    assert torch.allclose(rows, torch.ones_like(rows), atol=1e-9)
    assert bool(torch.isfinite(out.logits).all())
    if cls is HistogramBinning:
        return  # bin accuracies need not be monotone
    grid = torch.linspace(0.1, 1.0, 200, dtype=torch.float64)
    fitted = cls().fit(cal)
    for e in range(cal.num_exits):
        mapped = fitted.confidence_map(grid, exit=e)
        assert bool((mapped[1:] >= mapped[:-1] - 1e-12).all())


@pytest.mark.parametrize("cls", [PlattScaling, BetaCalibration])
def test_strictly_monotone_maps_keep_auroc(cls, split):
    cal, test = split
    out = cls().fit(cal).transform(test)
    before = metrics.auroc(test.probs().double().max(-1).values, test.correct())
    after = metrics.auroc(out.probs().max(-1).values, out.correct())
    lifted = (
        out.probs().max(-1).values
        > cls().fit(cal).confidence_map(test.probs().double().max(-1).values[:, 0], exit=0)[:, None]
        + 1e-9
    )
    if not bool(lifted.any()):
        assert torch.allclose(before, after, atol=1e-9)
    else:  # only where the argmax guard lifted a value may the order change
        assert torch.allclose(before, after, atol=5e-3)


def test_isotonic_lowers_held_out_ece_on_every_exit(split):
    cal, test = split
    before = metrics.expected_calibration_error(test.probs(), test.labels)
    after = metrics.expected_calibration_error(
        Isotonic().fit(cal).transform(test).probs(), test.labels
    )
    assert bool((after < before).all()), (before, after)


def test_one_vs_rest_isotonic_rows_sum_to_one(split):
    cal, test = split
    out = Isotonic(mode="one_vs_rest").fit(cal[:2000]).transform(test)
    rows = out.logits.exp().sum(-1)
    assert torch.allclose(rows, torch.ones_like(rows), atol=1e-9)
    assert bool(torch.isfinite(out.logits).all())


def test_argmax_guard_lifts_confidence_below_runner_up():
    """A map returning a tiny confidence must not hand the argmax to another class."""
    logits = torch.log(torch.tensor([[[0.5, 0.3, 0.2]]], dtype=torch.float64))
    out = ExitOutputs(logits, labels=torch.tensor([1]))
    hb = HistogramBinning(n_bins=1)
    hb.fit(ExitOutputs(logits.repeat(4, 1, 1), labels=torch.tensor([1, 1, 2, 1])))
    res = hb.transform(out)
    p = res.logits.exp()[0, 0]
    assert int(p.argmax()) == 0 and float(p.sum()) == pytest.approx(1.0)
    # without the guard the top class would get 0 (no sample of class 0 was right)
    assert float(p[0]) >= float(p[1])


def test_binning_on_device(device, split):
    cal, test = split
    iso = Isotonic().fit(cal)
    out = iso.transform(test.to(device))
    assert out.logits.device.type == device
    assert torch.allclose(out.logits.cpu(), iso.transform(test).logits)
