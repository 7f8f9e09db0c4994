"""Inductive Venn–Abers predictors against isotonic regression refitted per test point and
against the venn-abers package."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.isotonic import IsotonicRegression

from exitwise import metrics
from exitwise.calibrate import Isotonic, VennAbers
from exitwise.calibrate._toplabel import top_label_pairs
from exitwise.calibrate.venn_abers import venn_abers_pair, venn_abers_tables


def _naive(x, y, s, label):
    """Isotonic regression refitted on the calibration pairs plus (s, label), read at s."""
    iso = IsotonicRegression(y_min=0.0, y_max=1.0).fit(np.r_[x, s], np.r_[y, label])
    return float(iso.predict([s])[0])


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 40),
    decimals=st.integers(1, 3),
    seed=st.integers(0, 10_000),
)
def test_tables_equal_isotonic_refitted_per_test_point(n, decimals, seed):
    rng = np.random.default_rng(seed)
    x = np.round(rng.random(n), decimals)  # ties
    y = (rng.random(n) < x).astype(float)
    tables = {k: torch.as_tensor(v) for k, v in venn_abers_tables(x, y).items()}
    tests = np.r_[x[:5], np.round(rng.random(5), decimals + 1), -0.5, 1.5]
    p0, p1 = venn_abers_pair(tables, torch.as_tensor(tests))
    for j, s in enumerate(tests):
        assert float(p0[j]) == pytest.approx(_naive(x, y, s, 0.0), abs=1e-12)
        assert float(p1[j]) == pytest.approx(_naive(x, y, s, 1.0), abs=1e-12)
    assert bool((p0 <= p1 + 1e-15).all())


def test_tables_are_bounded_in_memory_by_chunks(monkeypatch):
    from exitwise.calibrate import venn_abers

    rng = np.random.default_rng(1)
    x, y = rng.random(300), (rng.random(300) < 0.6).astype(float)
    whole = venn_abers_tables(x, y)
    monkeypatch.setattr(venn_abers, "_CHUNK_CELLS", 301 * 7)  # 7 rows per chunk
    chunked = venn_abers_tables(x, y)
    for key in whole:
        assert np.array_equal(whole[key], chunked[key])


def test_top_label_ivap_equals_the_venn_abers_package(real_outputs):
    from venn_abers import VennAbers as Reference

    cal, test = real_outputs.split(0.5, seed=2)
    va = VennAbers().fit(cal)

    def top(out, e):  # the confidences the calibrator sees
        return top_label_pairs(out.logits, out.labels)[0][:, e]

    for e in range(cal.num_exits):
        conf = top(cal, e)
        hit = cal.correct()[:, e].double().numpy()
        ref = Reference().fit(np.c_[1 - conf, conf], hit)
        tconf = np.r_[top(test, e), conf[:50]]  # some test scores equal calibration scores
        merged, pair = ref.predict_proba(np.c_[1 - tconf, tconf])
        p0, p1 = va.probability_interval(tconf, exit=e)
        assert np.allclose(p0.numpy(), pair[:, 0], atol=1e-12)
        assert np.allclose(p1.numpy(), pair[:, 1], atol=1e-12)
        ours = va.confidence_map(tconf, exit=e).numpy()
        assert np.allclose(ours, merged[:, 1], atol=1e-12)


def test_ivap_log_loss_is_finite_where_isotonic_is_not(real_outputs):
    cal, test = real_outputs.split(0.5, seed=0)
    va = VennAbers().fit(cal).transform(test)
    assert bool(torch.isfinite(va.logits).all())
    nll_va = metrics.negative_log_likelihood(va.logits, va.labels, input="logits")
    nll_iso = metrics.negative_log_likelihood(
        Isotonic().fit(cal).transform(test).logits, test.labels, input="logits"
    )
    assert bool(torch.isfinite(nll_va).all())
    # IVAP's merged probabilities hedge towards 1/2 where data is thin: never worse than 5 %
    # above isotonic's NLL on this data, and its ECE stays low
    assert bool((nll_va <= nll_iso * 1.05).all()), (nll_va, nll_iso)
    ece = metrics.expected_calibration_error(va.probs(), va.labels)
    assert bool((ece < 0.03).all()), ece


def test_one_vs_rest_mode_maps_every_class(real_outputs):
    cal, test = real_outputs[:3000].split(0.5, seed=0)
    va = VennAbers(mode="one_vs_rest").fit(cal)
    out = va.transform(test)
    rows = out.logits.exp().sum(-1)
    assert torch.allclose(rows.double(), torch.ones_like(rows.double()), atol=1e-9)
    # class 3 of exit 1 equals the binary IVAP of (p_3, label == 3), renormalised
    probs = torch.softmax(cal.logits[:, 1].double(), -1)[:, 3].numpy()
    tables = venn_abers_tables(probs, (cal.labels == 3).double().numpy())
    tables = {k: torch.as_tensor(v) for k, v in tables.items()}
    p0, p1 = venn_abers_pair(tables, torch.softmax(test.logits[:, 1].double(), -1)[:, 3])
    raw = torch.stack(
        [
            va._apply(va._class_state(1, c), torch.softmax(test.logits[:, 1].double(), -1)[:, c])
            for c in range(10)
        ],
        -1,
    )
    assert torch.allclose(raw[:, 3], p1 / (1 - p0 + p1))
    assert torch.allclose(out.logits[:, 1].exp(), raw / raw.sum(-1, keepdim=True))


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="binary `labels`"):
        venn_abers_tables(np.array([0.1, 0.2]), np.array([0, 2]))
    with pytest.raises(ValueError, match="`scores` and `labels`"):
        venn_abers_tables(np.array([]), np.array([]))
    with pytest.raises(ValueError, match="`mode`"):
        VennAbers(mode="pairwise").fit(torch.randn(20, 3), torch.arange(20) % 3)
