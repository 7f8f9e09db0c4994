"""collect(reduce="fixed:K"): one width for every token, exact argmax / max-probability / NLL
where no rest bucket beats an exit's top class (checked against the full logits), the stated
bound on the sampling acceptance, and the same greedy speculation plan."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from exitwise import ExitOutputs
from exitwise.collect import collect
from exitwise.generation import acceptance, plan_self_speculation


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
    seed=st.integers(0, 10_000),
)
def test_fixed_width_is_exact_where_no_bucket_beats_the_top(n, e, vocab, k, sharp, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, e, vocab, generator=g) * sharp
    labels = torch.randint(0, vocab, (n,), generator=g)
    full = _collect(logits, labels)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        small, kept = _collect(logits, labels, f"fixed:{k}")
    width = min(vocab, k + e + 1)
    assert small.logits.shape == (n, e, width + e)  # the same width for every token
    lp = torch.log_softmax(full.logits.double(), -1)
    assert torch.allclose(
        small.log_probs()[:, :, :width].double(),
        lp.gather(2, kept[:, None, :].expand(-1, e, -1)),
        atol=1e-5,
    )
    assert torch.allclose(small.probs().sum(-1), torch.ones(n, e), atol=1e-5)
    top = lp.amax(-1)
    rest = torch.logsumexp(lp.scatter(2, kept[:, None, :].expand(-1, e, -1), -torch.inf), -1)
    bucket = rest - torch.log(torch.tensor(float(e)))
    ok = ~(bucket > top + 1e-6).any(dim=1)  # no bucket above an exit's top class
    bad = int((~(bucket <= top - 1e-6).all(dim=1)).sum())  # near ties: either way
    assert (len(caught) > 0) == (int((~ok).sum()) > 0) or bad > 0
    mapped = kept[ok].gather(1, small.predictions()[ok])
    assert torch.equal(mapped, full.predictions()[ok])
    assert torch.allclose(small.probs().amax(-1)[ok], full.probs().amax(-1)[ok], atol=1e-5)
    assert torch.equal(small.correct()[ok], full.correct()[ok])
    nll_small = -small.log_probs().gather(2, small.labels[:, None, None].expand(-1, e, 1))
    nll_full = -lp.gather(2, labels[:, None, None].expand(-1, e, 1))
    assert torch.allclose(nll_small.double(), nll_full, atol=1e-4)  # the label is always kept
    # sampling acceptance: an upper bound, off by at most min(r_d, r_L)
    true = acceptance(full, "sampling")
    reduced = acceptance(small, "sampling")
    r = rest.exp()
    gap = torch.minimum(r[:, :-1], r[:, -1:])
    assert bool((reduced >= true - 1e-5).all()) and bool((reduced <= true + gap + 1e-5).all())


def test_fixed_width_keeps_the_greedy_plan_and_warns_on_flat_tokens():
    g = torch.Generator().manual_seed(0)
    n, e, vocab = 120, 3, 2000
    logits = torch.randn(n, e, vocab, generator=g)
    logits[:, :, 5] += torch.tensor([10.0, 12.0, 13.0])  # peaked tokens: the draft agrees
    logits[::3, 0, 7] += 14.0  # and every third token it does not
    labels = torch.randint(0, vocab, (n,), generator=g)
    full = _collect(logits, labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no token has a bucket above its top class
        small, _ = _collect(logits, labels, "fixed:8")
    assert small.num_classes == 8 + 3 + 1 + 3  # 2000 classes -> 15 columns
    seq = {"groups": torch.arange(n) // 20, "positions": torch.arange(n) % 20}
    plans = [
        plan_self_speculation(ExitOutputs(out.logits, out.labels, **seq), 4)
        for out in (full, small)
    ]
    assert plans[0].rows == plans[1].rows
    flat = torch.randn(10, 2, 500, generator=g) * 0.1
    with pytest.warns(
        UserWarning, match=r"above the exit's most likely class, of 10 \(exit_0: 10, exit_1: 10\)"
    ):
        _collect(flat, torch.zeros(10, dtype=torch.long), "fixed:4")
    with pytest.raises(ValueError, match="'fixed:K'"):
        _collect(flat, torch.zeros(10, dtype=torch.long), "fixed:0")
