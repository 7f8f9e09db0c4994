"""Signals against direct numpy formulas and the papers' loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from exitwise import ExitOutputs, signals
from exitwise.signals import SIGNALS, compute_signal, register_signal


def softmax(x):
    z = np.exp(x - x.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


@pytest.fixture
def outputs():
    g = torch.Generator().manual_seed(0)
    return ExitOutputs(torch.randn(40, 4, 5, generator=g) * 3)


def test_probability_signals_match_numpy(outputs):
    p = softmax(outputs.logits.double().numpy())
    top2 = np.sort(p, -1)[..., ::-1][..., :2]
    ent = -(p * np.log(p)).sum(-1)
    assert np.allclose(signals.max_probability(outputs).numpy(), p.max(-1))
    assert np.allclose(signals.log_max_probability(outputs).numpy(), np.log(p.max(-1)))
    assert np.allclose(signals.margin(outputs).numpy(), top2[..., 0] - top2[..., 1])
    assert np.allclose(signals.negative_entropy(outputs).numpy(), -ent)
    assert np.allclose(
        signals.normalized_entropy_confidence(outputs).numpy(), 1 - ent / math.log(5)
    )


def test_log_max_probability_does_not_saturate():
    logits = torch.tensor([[[0.0, 30.0], [0.0, 40.0], [0.0, 60.0]]])
    out = ExitOutputs(logits)
    assert signals.max_probability(out)[0, 1] == 1.0  # float64 rounds this to one
    log_p = signals.log_max_probability(out)[0]
    assert bool((log_p < 0).all())
    assert bool((log_p[1:] > log_p[:-1]).all())  # still ranks a larger gap as more confident
    assert float(log_p[2]) == pytest.approx(-math.exp(-60.0), rel=1e-12)


def pabee_counter(pred):
    """PABEE's loop: cnt += 1 when the prediction repeats, else reset to 0."""
    out = np.zeros(pred.shape)
    for n in range(pred.shape[0]):
        cnt = 0
        for e in range(pred.shape[1]):
            cnt = cnt + 1 if e > 0 and pred[n, e] == pred[n, e - 1] else 0
            out[n, e] = cnt
    return out


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 2), min_size=1, max_size=7), min_size=1, max_size=10).filter(
        lambda rows: len({len(r) for r in rows}) == 1
    )
)
def test_patience_is_pabee_counter(rows):
    pred = np.array(rows)
    logits = torch.nn.functional.one_hot(torch.tensor(pred), 3).double()
    out = ExitOutputs(logits)
    assert np.array_equal(signals.patience(out).numpy(), pabee_counter(pred))
    agree = signals.agreement_with_previous(out).numpy()
    assert np.array_equal(agree[:, 1:], (pred[:, 1:] == pred[:, :-1]).astype(float))
    assert (agree[:, 0] == 0).all()


def test_higher_means_more_confident_on_real_data(real_outputs):
    correct = real_outputs.correct()
    from exitwise.metrics import auroc

    for name in ["max_probability", "margin", "negative_entropy", "normalized_entropy_confidence"]:
        assert bool((auroc(compute_signal(real_outputs, name), correct) > 0.75).all()), name


def test_compute_signal_accepts_names_callables_tensors(outputs):
    by_name = compute_signal(outputs, "margin")
    assert torch.equal(compute_signal(outputs, signals.margin), by_name)
    assert torch.equal(compute_signal(outputs, by_name), by_name)
    with pytest.raises(ValueError, match="Unknown signal 'confidence'"):
        compute_signal(outputs, "confidence")
    with pytest.raises(ValueError, match=r"shape \[N, E\] = \[40, 4\]"):
        compute_signal(outputs, torch.zeros(3, 4))
    with pytest.raises(TypeError, match="a name, a callable or a tensor"):
        compute_signal(outputs, 3)
    bad = torch.zeros(40, 4)
    bad[5, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN value, first at sample 5, exit 1"):
        compute_signal(outputs, bad)


def test_register_signal(outputs):
    register_signal("test_neg_margin", lambda o: -signals.margin(o))
    try:
        assert torch.equal(compute_signal(outputs, "test_neg_margin"), -signals.margin(outputs))
        with pytest.raises(ValueError, match="exists"):
            register_signal("test_neg_margin", signals.margin)
    finally:
        SIGNALS.pop("test_neg_margin")


def test_signals_on_device_and_raw_logits(device, outputs):
    moved = outputs.to(device)
    for name, fn in SIGNALS.items():
        value = fn(moved)
        assert value.device.type == device and value.shape == (40, 4), name
        assert torch.allclose(value.cpu(), fn(outputs.logits)), name
