"""Calibration metrics against netcal, torchmetrics, scikit-learn, relplot, uncertainty-calibration
and naive loops; properties with hypothesis; validation errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from exitwise import metrics as M
from tests.conftest import random_probs


# ----------------------------------------------------------------------------- naive references
def naive_binned(conf, hit, n_bins, binning):
    """Bin ids by a Python loop following the documented convention."""
    n = len(conf)
    ids = []
    for x in conf:
        if binning == "uniform":
            # [a, b) bins, the last one closed: count the inner edges at or below x
            edges = np.linspace(0, 1, n_bins + 1)
            b = sum(1 for edge in edges[1:-1] if edge <= x)
        else:
            below = sum(1 for y in conf if y < x)
            b = below * n_bins // n
        ids.append(b)
    return np.array(ids)


def naive_ece(conf, hit, n_bins, binning="uniform", norm="l1"):
    conf, hit = np.asarray(conf, float), np.asarray(hit, float)
    ids = naive_binned(conf, hit, n_bins, binning)
    total, worst, sq = 0.0, 0.0, 0.0
    for b in range(n_bins):
        m = ids == b
        if m.sum() == 0:
            continue
        gap = hit[m].mean() - conf[m].mean()
        total += m.sum() / len(conf) * abs(gap)
        sq += m.sum() / len(conf) * gap * gap
        worst = max(worst, abs(gap))
    return {"l1": total, "l2": math.sqrt(sq), "max": worst}[norm]


def top(probs, labels):
    return probs.max(-1), (probs.argmax(-1) == labels).astype(float)


# ----------------------------------------------------------------------------- ECE references
@pytest.mark.parametrize("n_bins", [1, 10, 15])
def test_ece_equals_netcal_per_exit(n_bins):
    from netcal.metrics import ECE, MCE

    probs, labels = random_probs(3000, 3, 10, seed=n_bins)
    ours = M.expected_calibration_error(probs, labels, n_bins=n_bins)
    ours_max = M.maximum_calibration_error(probs, labels, n_bins=n_bins)
    for e in range(3):
        assert float(ours[e]) == pytest.approx(
            ECE(bins=n_bins).measure(probs[:, e], labels), abs=1e-12
        )
        assert float(ours_max[e]) == pytest.approx(
            MCE(bins=n_bins).measure(probs[:, e], labels), abs=1e-12
        )


def test_ece_equals_netcal_on_real_data_float32(real_outputs):
    from netcal.metrics import ECE

    probs = real_outputs.probs()
    ours = M.expected_calibration_error(probs, real_outputs.labels)
    for e in range(real_outputs.num_exits):
        ref = ECE(bins=15).measure(probs[:, e].double().numpy(), real_outputs.labels.numpy())
        assert float(ours[e]) == pytest.approx(ref, abs=1e-9)


@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
def test_ece_equals_torchmetrics(norm):
    from torchmetrics.functional.classification import multiclass_calibration_error

    probs, labels = random_probs(4000, 2, 7, seed=3)
    ours = M.expected_calibration_error(probs, labels, norm=norm)
    for e in range(2):
        ref = multiclass_calibration_error(
            torch.tensor(probs[:, e]), torch.tensor(labels), num_classes=7, n_bins=15, norm=norm
        )
        assert float(ours[e]) == pytest.approx(float(ref), abs=1e-6)


def test_confidence_exactly_one_lands_in_last_bin_like_netcal():
    """torchmetrics puts 1.0 into a hidden 16th bin (#3510); we and netcal close the last bin."""
    from netcal.metrics import ECE

    probs = np.array([[1.0, 0.0], [0.95, 0.05], [0.97, 0.03], [0.4, 0.6]])
    labels = np.array([0, 1, 0, 1])
    bins = M.reliability_bins(probs, labels, n_bins=15)
    assert float(bins.count[-1]) == 3.0 and float(bins.count.sum()) == 4.0
    ours = float(M.expected_calibration_error(probs, labels))
    assert ours == pytest.approx(ECE(bins=15).measure(probs, labels), abs=1e-12)
    assert ours == pytest.approx(naive_ece(*top(probs, labels), 15), abs=1e-12)


def test_bins_are_closed_on_the_left():
    probs = np.array([[0.5, 0.5], [0.75, 0.25]])
    bins = M.reliability_bins(probs, np.array([0, 0]), n_bins=4)
    # 0.5 is the left edge of bin 2 ([0.5, 0.75)), 0.75 the left edge of bin 3
    assert bins.count.tolist() == [0.0, 0.0, 1.0, 1.0]
    assert torch.allclose(bins.edges, torch.linspace(0, 1, 5, dtype=torch.float64))


def test_uncertainty_calibration_plugin_and_debiased_agree_on_same_bins():
    """Kumar et al.'s package with uniform edges ((a, b] bins: no value sits on an edge here)."""
    from calibration import utils as uc

    def uniform_edges(probs, num_bins):
        return list(np.linspace(0, 1, num_bins + 1)[1:])

    probs, labels = random_probs(2000, 1, 5, seed=7, scale=1.5)
    p = probs[:, 0]
    for debias, ours in [
        (False, M.expected_calibration_error(p, labels, norm="l2")),
        (True, M.debiased_calibration_error(p, labels, binning="uniform")),
    ]:
        ref = uc._get_ce(p, labels, 2, debias, 15, uniform_edges, mode="top-label")
        assert float(ours) == pytest.approx(ref, abs=1e-10)
    ref_l1 = uc._get_ce(p, labels, 1, False, 15, uniform_edges, mode="top-label")
    assert float(M.expected_calibration_error(p, labels)) == pytest.approx(ref_l1, abs=1e-10)


def test_debiased_matches_naive_formula_with_quantile_bins():
    probs, labels = random_probs(500, 2, 4, seed=11, scale=1.0)
    ours = M.debiased_calibration_error(probs, labels, n_bins=7)
    for e in range(2):
        conf, hit = top(probs[:, e], labels)
        ids = naive_binned(conf, hit, 7, "quantile")
        total = 0.0
        for b in range(7):
            m = ids == b
            k = m.sum()
            if k < 2:
                continue
            acc = hit[m].mean()
            total += k / len(conf) * ((acc - conf[m].mean()) ** 2 - acc * (1 - acc) / (k - 1))
        assert float(ours[e]) == pytest.approx(math.sqrt(max(total, 0.0)), abs=1e-12)


def test_quantile_and_classwise_and_ace_match_naive_loops():
    probs, labels = random_probs(300, 2, 4, seed=5)
    for e in range(2):
        conf, hit = top(probs[:, e], labels)
        ours = M.expected_calibration_error(probs, labels, n_bins=6, binning="quantile")
        assert float(ours[e]) == pytest.approx(naive_ece(conf, hit, 6, "quantile"), abs=1e-12)
        classwise = np.mean(
            [naive_ece(probs[:, e, c], (labels == c).astype(float), 6) for c in range(4)]
        )
        ours_cw = M.expected_calibration_error(probs, labels, n_bins=6, mode="classwise")
        assert float(ours_cw[e]) == pytest.approx(classwise, abs=1e-12)
        gaps = []
        for c in range(4):
            f, h = probs[:, e, c], (labels == c).astype(float)
            ids = naive_binned(f, h, 6, "quantile")
            gaps += [
                abs(h[ids == b].mean() - f[ids == b].mean()) for b in range(6) if (ids == b).any()
            ]
        ours_ace = M.adaptive_calibration_error(probs, labels, n_bins=6)
        assert float(ours_ace[e]) == pytest.approx(np.mean(gaps), abs=1e-12)


def test_quantile_bins_survive_ties_and_ignore_sample_order():
    conf = np.array([0.6] * 50 + [0.9] * 50)
    probs = np.stack([conf, 1 - conf], axis=1)
    labels = np.array([0, 1] * 50)
    ece = M.expected_calibration_error(probs, labels, binning="quantile")
    perm = np.random.default_rng(0).permutation(100)
    again = M.expected_calibration_error(probs[perm], labels[perm], binning="quantile")
    assert float(ece) == float(again)
    assert float(ece) == pytest.approx(naive_ece(*top(probs, labels), 15, "quantile"), abs=1e-12)
    bins = M.reliability_bins(probs, labels, binning="quantile")
    assert int((bins.count > 0).sum()) == 2 and bins.edges is None


def test_smooth_ece_matches_relplot(real_outputs):
    import relplot

    probs = real_outputs.probs()[:3000]
    labels = real_outputs.labels[:3000]
    ours, widths = M.smooth_calibration_error(probs, labels, return_bandwidth=True)
    for e in range(real_outputs.num_exits):
        f = probs[:, e].max(-1).values.double().numpy()
        y = (probs[:, e].argmax(-1) == labels).double().numpy()
        ref, width = relplot.smECE(f, y, return_width=True)
        assert float(ours[e]) == pytest.approx(ref, rel=1e-6, abs=1e-9)
        assert float(widths[e]) == pytest.approx(width, rel=1e-9)


def test_brier_and_nll_match_scikit_learn():
    from sklearn.metrics import brier_score_loss, log_loss

    probs, labels = random_probs(2000, 3, 6, seed=2)
    brier = M.brier_score(probs, labels)
    nll = M.negative_log_likelihood(probs, labels)
    for e in range(3):
        ref = brier_score_loss(labels, probs[:, e], labels=range(6), scale_by_half=False)
        assert float(brier[e]) == pytest.approx(ref, abs=1e-12)
        assert float(nll[e]) == pytest.approx(
            log_loss(labels, probs[:, e], labels=range(6)), abs=1e-9
        )


def test_nll_from_logits_is_exact_where_probabilities_underflow():
    logits = torch.tensor([[[0.0, 200.0]], [[0.0, 1.0]]])
    labels = torch.tensor([0, 1])
    nll = M.negative_log_likelihood(logits, labels, input="logits")
    expected = (200.0 + math.log1p(math.exp(-200.0)) + math.log1p(math.exp(-1.0))) / 2
    assert float(nll[0]) == pytest.approx(expected, rel=1e-6)
    with np.errstate(divide="ignore"):
        assert math.isinf(float(M.negative_log_likelihood(torch.softmax(logits, -1), labels)[0]))


def test_logits_input_equals_softmax_probs():
    probs, labels = random_probs(500, 2, 5, seed=8)
    logits = np.log(probs)
    for fn in [M.expected_calibration_error, M.brier_score, M.negative_log_likelihood]:
        a, b = fn(probs, labels), fn(logits, labels, input="logits")
        assert torch.allclose(a, b, atol=1e-9)


def test_two_dimensional_input_gives_scalar_equal_to_batched():
    probs, labels = random_probs(400, 3, 4, seed=9)
    batched = M.expected_calibration_error(probs, labels)
    for e in range(3):
        single = M.expected_calibration_error(probs[:, e], labels)
        assert single.ndim == 0 and float(single) == float(batched[e])


def test_reliability_bins_match_ece_and_are_fixed_length():
    probs, labels = random_probs(1000, 2, 3, seed=4)
    bins = M.reliability_bins(probs, labels, n_bins=20)
    assert bins.count.shape == (2, 20) and bins.confidence.shape == (2, 20)
    filled = bins.count > 0
    assert torch.isnan(bins.accuracy[~filled]).all()
    gap = (bins.accuracy - bins.confidence).abs().nan_to_num(0.0)
    ece = (bins.count / 1000 * gap).sum(-1)
    assert torch.allclose(ece, M.expected_calibration_error(probs, labels, n_bins=20))


# ----------------------------------------------------------------------------- properties
@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 60),
    e=st.integers(1, 4),
    c=st.integers(2, 5),
    seed=st.integers(0, 10**6),
    n_bins=st.integers(1, 20),
    binning=st.sampled_from(["uniform", "quantile"]),
    scale=st.sampled_from([0.0, 1.0, 30.0]),
)
def test_ece_in_unit_interval_and_batched_equals_loop(n, e, c, seed, n_bins, binning, scale):
    probs, labels = random_probs(n, e, c, seed=seed, scale=scale)
    batched = M.expected_calibration_error(probs, labels, n_bins=n_bins, binning=binning)
    assert batched.shape == (e,)
    assert bool(((batched >= 0) & (batched <= 1)).all())
    for i in range(e):
        single = M.expected_calibration_error(probs[:, i], labels, n_bins=n_bins, binning=binning)
        assert float(single) == pytest.approx(float(batched[i]), abs=1e-12)
        assert float(single) == pytest.approx(
            naive_ece(*top(probs[:, i], labels), n_bins, binning), abs=1e-9
        )


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(2, 80))
def test_metrics_are_permutation_invariant(seed, n):
    probs, labels = random_probs(n, 2, 3, seed=seed)
    probs = np.round(probs, 1)  # many ties
    probs /= probs.sum(-1, keepdims=True)
    perm = np.random.default_rng(seed).permutation(n)
    for fn in [
        lambda p, y: M.expected_calibration_error(p, y, binning="quantile"),
        M.expected_calibration_error,
        M.adaptive_calibration_error,
        M.debiased_calibration_error,
        M.brier_score,
    ]:
        assert torch.allclose(fn(probs, labels), fn(probs[perm], labels[perm]), atol=1e-12)


def test_ece_of_calibrated_sample_goes_to_zero():
    """Labels drawn from the predicted probabilities: ECE shrinks roughly like 1/sqrt(N)."""
    values = []
    for n in [1000, 10000, 100000]:
        rng = np.random.default_rng(n)
        logits = rng.normal(size=(n, 5)) * 2
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        labels = (rng.random(n)[:, None] > probs.cumsum(1)).sum(1)
        values.append(float(M.expected_calibration_error(probs, labels)))
    assert values[0] > values[1] > values[2]
    assert values[2] < 0.01
    debiased = M.debiased_calibration_error(probs, labels)
    assert float(debiased) < values[2] + 1e-12


# ----------------------------------------------------------------------------- devices, dtypes
def test_results_keep_device_and_match_cpu(device):
    probs, labels = random_probs(500, 3, 4, seed=1)
    p, y = torch.tensor(probs, device=device), torch.tensor(labels, device=device)
    for fn in [
        M.expected_calibration_error,
        M.adaptive_calibration_error,
        M.debiased_calibration_error,
        M.brier_score,
        M.negative_log_likelihood,
        M.smooth_calibration_error,
    ]:
        out = fn(p, y)
        assert out.device.type == device
        assert torch.allclose(out.cpu(), fn(probs, labels), atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_probabilities_are_accepted(dtype):
    probs, labels = random_probs(500, 2, 4, seed=1)
    p = torch.tensor(probs).to(dtype)
    ece = M.expected_calibration_error(p, labels)
    ref = M.expected_calibration_error(p.double() / p.double().sum(-1, keepdim=True), labels)
    assert ece.dtype == torch.float64
    assert torch.allclose(ece, ref, atol=1e-2)


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda p, y: M.expected_calibration_error(p * 2, y),
            ValueError,
            r"probabilities in \[0, 1\]",
        ),
        (lambda p, y: M.expected_calibration_error(p * 0.5, y), ValueError, "sum to 1"),
        (
            lambda p, y: M.expected_calibration_error(p, y, n_bins=0),
            ValueError,
            "`n_bins` to be an integer >= 1, got 0",
        ),
        (
            lambda p, y: M.expected_calibration_error(p, y, n_bins=2.5),
            TypeError,
            "`n_bins` to be an integer",
        ),
        (
            lambda p, y: M.expected_calibration_error(p, y, binning="equal"),
            ValueError,
            "`binning` to be one of",
        ),
        (
            lambda p, y: M.expected_calibration_error(p, y, norm="l3"),
            ValueError,
            "`norm` to be one of",
        ),
        (
            lambda p, y: M.expected_calibration_error(p, y, mode="x"),
            ValueError,
            "`mode` to be one of",
        ),
        (lambda p, y: M.brier_score(p, y, input="log"), ValueError, "`input` to be one of"),
        (
            lambda p, y: M.negative_log_likelihood(p, y[:3]),
            ValueError,
            r"one label per sample \(10\)",
        ),
        (
            lambda p, y: M.negative_log_likelihood(p, y + 5),
            ValueError,
            r"in \[0, 2\].*got \d+ at sample",
        ),
        (
            lambda p, y: M.expected_calibration_error(p[:, :, :1], y),
            ValueError,
            "at least 2 classes",
        ),
        (
            lambda p, y: M.expected_calibration_error(p[None], y),
            ValueError,
            r"\[N, C\] or \[N, E, C\]",
        ),
        (lambda p, y: M.expected_calibration_error(p.long(), y), TypeError, "floating-point"),
        (lambda p, y: M.expected_calibration_error(p, y.double()), TypeError, "integer tensor"),
        (
            lambda p, y: M.expected_calibration_error([[object()]], y),
            TypeError,
            "cannot be converted",
        ),
    ],
)
def test_bad_inputs(call, error, match):
    probs, labels = random_probs(10, 2, 3, seed=0)
    with pytest.raises(error, match=match):
        call(torch.tensor(probs), torch.tensor(labels))


def test_nan_probabilities_are_located():
    probs = torch.full((4, 2, 2), 0.5)
    probs[2, 1, 0] = float("nan")
    with pytest.raises(ValueError, match="1 NaN value, first at sample 2, exit 1, class 0"):
        M.expected_calibration_error(probs, torch.tensor([0, 1, 0, 1]))


@pytest.mark.parametrize("n_bins", range(1, 51))
def test_regression_confidences_exactly_on_every_bin_edge(n_bins):
    # issue 10 defect 2: edges from torch.linspace put edge 11/15 at 0.7333333333333334, so a
    # confidence of exactly 11/15 (isotonic and histogram outputs hit edges) fell in bin 10.
    edges = np.array([k / n_bins for k in range(n_bins + 1)])  # the documented [a, b) edges
    assert np.array_equal(M.uniform_bin_edges(n_bins).numpy(), edges)
    conf = torch.tensor(edges, dtype=torch.float64)
    expected = torch.tensor([min(k, n_bins - 1) for k in range(n_bins + 1)])
    assert torch.equal(M.bin_indices(conf, n_bins), expected)
    # the same through ECE: one sample exactly on each edge, hit when its bin index is even
    probs = torch.stack([conf, 1 - conf], dim=1)
    probs = torch.where(conf[:, None] >= 0.5, probs, probs.flip(1))  # top label = class 0
    top = probs.max(dim=1).values
    labels = (M.bin_indices(top, n_bins) % 2).long()
    naive = 0.0
    for b in range(n_bins):
        inside = [
            i
            for i, x in enumerate(top.tolist())
            if edges[b] <= x < edges[b + 1] or (b == n_bins - 1 and x == 1.0)
        ]
        if inside:
            hit = np.mean([labels[i] == 0 for i in inside])
            naive += len(inside) / len(top) * abs(hit - np.mean([top[i] for i in inside]))
    ours = M.expected_calibration_error(probs, labels, n_bins)
    assert float(ours) == pytest.approx(naive, abs=1e-12)
    # and numpy's histogram agrees on every edge
    counts, _ = np.histogram(top.numpy(), bins=edges)
    assert np.array_equal(
        torch.bincount(M.bin_indices(top, n_bins), minlength=n_bins).numpy(), counts
    )


def test_calibration_error_from_confidence_is_the_core_of_ece(real_outputs):
    probs, labels = real_outputs.probs(), real_outputs.labels
    conf, pred = probs.max(dim=-1)
    hit = pred == labels[:, None]
    for norm in ("l1", "l2", "max"):
        a = M.calibration_error_from_confidence(conf, hit, 15, norm=norm)
        b = M.expected_calibration_error(probs, labels, 15, norm=norm)
        assert torch.allclose(a, b, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"`confidence` in \[0, 1\]"):
        M.calibration_error_from_confidence(torch.tensor([1.5]), torch.tensor([True]))
    with pytest.raises(ValueError, match="`hit` of the shape"):
        M.calibration_error_from_confidence(torch.tensor([0.5, 0.7]), torch.tensor([True]))


def test_tensors_that_require_grad_are_accepted():
    # the one-pass top-label kernel works outside autograd; signals stay differentiable
    from exitwise import signals
    from exitwise.calibrate import TemperatureScaling

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(60, 2, 3, generator=g).requires_grad_()
    labels = torch.arange(60) % 3
    ece = M.expected_calibration_error(logits, labels, input="logits")
    assert torch.allclose(
        ece, M.expected_calibration_error(logits.detach(), labels, input="logits")
    )
    M.expected_calibration_error(torch.softmax(logits, -1), labels)
    TemperatureScaling().fit(logits, labels).transform(logits)
    signals.max_probability(logits).sum().backward()
    assert logits.grad is not None and bool((logits.grad != 0).any())
