"""collect(reduce="fixed:K"): one width for every token, exact argmax / max-probability /
correctness / NLL on every token however flat an exit (checked against the full logits), the
stated bound on the sampling acceptance, the same speculation plans, and clear refusals where
the rest column leaves an answer undetermined."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from exitwise import ExitOutputs, load
from exitwise.calibrate import TemperatureScaling
from exitwise.collect import collect
from exitwise.generation import AcceptanceCalibration, acceptance, plan_self_speculation
from exitwise.metrics import per_exit_metrics
from exitwise.plots import reliability_grid
from exitwise.signals import compute_signal


def _collect(logits, labels, reduce=None):
    """collect() over a model that returns ``logits[x]``, in two batches (with the kept class
    ids when reducing)."""

    class Fixed(nn.Module):
        def forward(self, x):
            return logits[x]

    n = logits.shape[0]
    data = [
        (torch.arange(0, n // 2), labels[: n // 2]),
        (torch.arange(n // 2, n), labels[n // 2 :]),
    ]
    if reduce is None:
        return collect(Fixed(), data, progress=False)
    return collect(Fixed(), data, reduce=reduce, progress=False, return_class_indices=True)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(2, 30),
    e=st.integers(2, 4),
    vocab=st.integers(3, 80),
    k=st.integers(1, 12),
    sharp=st.one_of(
        st.just(0.0), st.floats(0.01, 6.0)
    ),  # (differences below float32 log-prob resolution are not kept)
    flat_exit=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_fixed_width_is_exact_on_every_token(n, e, vocab, k, sharp, flat_exit, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, e, vocab, generator=g) * sharp
    if flat_exit:  # an exit far flatter than its rest's share: the old buckets beat its top
        logits[:, 0] *= 0.01
    labels = torch.randint(0, vocab, (n,), generator=g)
    full = _collect(logits, labels)
    small, kept = _collect(logits, labels, f"fixed:{k}")
    width = min(vocab, k + e + 1)
    assert small.logits.shape == (n, e, width + 1)  # the same width for every token
    assert small.rest_columns == 1
    lp = torch.log_softmax(full.logits.double(), -1)
    assert torch.allclose(
        small.log_probs()[:, :, :width].double(),
        lp.gather(2, kept[:, None, :].expand(-1, e, -1)),
        atol=1e-5,
    )
    assert torch.allclose(small.probs().sum(-1), torch.ones(n, e), atol=1e-5)
    assert torch.equal(kept.gather(1, small.predictions()), full.predictions())
    for signal in ("max_probability", "log_max_probability", "patience"):
        got, want = compute_signal(small, signal), compute_signal(full, signal)
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), signal
    for reference in ("labels", "final"):
        assert torch.equal(small.correct(reference), full.correct(reference))
    nll_small = -small.log_probs().gather(2, small.labels[:, None, None].expand(-1, e, 1))
    nll_full = -lp.gather(2, labels[:, None, None].expand(-1, e, 1))
    assert torch.allclose(nll_small.double(), nll_full, atol=1e-4)  # the label is always kept
    # sampling acceptance: a lower bound, off by at most min(r_d, r_L)
    rest = torch.logsumexp(lp.scatter(2, kept[:, None, :].expand(-1, e, -1), -torch.inf), -1)
    true, reduced = acceptance(full, "sampling"), acceptance(small, "sampling")
    r = rest.exp()
    gap = torch.minimum(r[:, :-1], r[:, -1:])
    assert bool((reduced <= true + 1e-5).all()) and bool((reduced >= true - gap - 1e-5).all())


def test_fixed_width_keeps_the_speculation_plans_with_flat_drafts():
    g = torch.Generator().manual_seed(0)
    n, e, vocab = 120, 3, 2000
    logits = torch.randn(n, e, vocab, generator=g)
    logits[:, 1:, 5] += torch.tensor([12.0, 13.0])  # the deeper exits are peaked
    logits[:, 0] *= 0.05  # the first exit is flat: its rest is ~0.99 of the mass
    logits[::3, 0, 5] += 0.3  # and agrees on every third token, with a low confidence
    labels = torch.randint(0, vocab, (n,), generator=g)
    full = _collect(logits, labels)
    small, _ = _collect(logits, labels, "fixed:8")
    assert small.num_classes == 8 + 3 + 1 + 1  # 2000 classes -> 13 columns
    seq = {"groups": torch.arange(n) // 20, "positions": torch.arange(n) % 20}
    data = [
        ExitOutputs(out.logits, out.labels, rest_columns=out.rest_columns, **seq)
        for out in (full, small)
    ]
    fixed = [plan_self_speculation(out, 4) for out in data]
    assert fixed[0].rows == fixed[1].rows
    calibration = [AcceptanceCalibration.fit(out) for out in data]
    assert torch.allclose(
        calibration[0].calibration_error(data[0]), calibration[1].calibration_error(data[1])
    )
    adaptive = [
        plan_self_speculation(out, 4, thresholds=[0.3, 0.6], calibration=cal)
        for out, cal in zip(data, calibration, strict=True)
    ]
    for want, got in zip(adaptive[0].rows, adaptive[1].rows, strict=True):
        assert want.keys() == got.keys()  # float32 log-probabilities: the thresholds to 1e-6
        numbers = {k for k, v in want.items() if isinstance(v, float)}
        assert {k: got[k] for k in numbers} == pytest.approx({k: want[k] for k in numbers})
        assert all(got[k] == want[k] for k in want.keys() - numbers)
    with pytest.raises(ValueError, match="'fixed:K'"):
        _collect(logits[:10], labels[:10], "fixed:0")


def test_rest_columns_refuse_what_they_leave_undetermined(tmp_path):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(40, 2, 30, generator=g)
    small, _ = _collect(logits, torch.randint(0, 30, (40,), generator=g), "fixed:3")
    for signal in ("margin", "negative_entropy", "normalized_entropy_confidence"):
        with pytest.raises(ValueError, match=f"The '{signal}' signal needs every class"):
            compute_signal(small, signal)
    with pytest.raises(ValueError, match="Calibration needs every class as a column"):
        TemperatureScaling().fit(small)
    with pytest.raises(ValueError, match=r"per-exit metrics table .* needs every class"):
        per_exit_metrics(small)
    with pytest.raises(ValueError, match="A reliability diagram needs every class"):
        reliability_grid(small)
    for suffix in ("npz", "safetensors"):  # the files keep the rest column
        small.save(tmp_path / f"small.{suffix}")
        back = load(tmp_path / f"small.{suffix}")
        assert back.rest_columns == 1 and torch.equal(back.predictions(), small.predictions())
    assert "rest_columns=1" in repr(small) and small[:3].to("cpu").rest_columns == 1


def test_rest_columns_are_checked():
    z = torch.zeros(2, 1, 4)
    with pytest.raises(ValueError, match="`rest_columns` to leave at least 2 class columns"):
        ExitOutputs(z, rest_columns=3)
    with pytest.raises(TypeError, match="`rest_columns` to be an integer"):
        ExitOutputs(z, rest_columns=1.0)
    with pytest.raises(ValueError, match=r"`labels` in \[0, 2\]"):
        ExitOutputs(z, labels=torch.tensor([0, 3]), rest_columns=1)
    out = ExitOutputs(torch.tensor([[[1.0, 0.0, 5.0]]]), rest_columns=1)
    assert out.predictions().tolist() == [[0]]  # the rest column is never predicted
    assert out.with_logits(out.logits).rest_columns == 1
