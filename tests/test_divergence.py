"""First divergence and per-sequence disagreement against a naive loop over sequences."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from exitwise import ExitOutputs
from exitwise.generation import first_divergence, sequence_disagreement


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 12), min_size=1, max_size=5),
    e=st.integers(2, 4),
    seed=st.integers(0, 10_000),
)
def test_divergence_equals_a_naive_loop(lengths, e, seed):
    g = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    logits = torch.randn(n, e, 3, generator=g)
    groups = torch.repeat_interleave(torch.arange(len(lengths)) * 5, torch.tensor(lengths))
    positions = torch.cat([torch.randperm(k, generator=g) * 2 for k in lengths])  # gaps, shuffled
    out = ExitOutputs(logits, groups=groups, positions=positions)
    exits = torch.randint(0, e, (n,), generator=g)
    first, share = first_divergence(out, exits), sequence_disagreement(out, exits)
    pred = logits.argmax(-1)
    for s, grp in enumerate(sorted(set(groups.tolist()))):
        rows = [i for i in range(n) if groups[i] == grp]
        rows.sort(key=lambda i: int(positions[i]))
        differs = [bool(pred[i, exits[i]] != pred[i, -1]) for i in rows]
        assert int(first[s]) == (differs.index(True) if True in differs else len(rows))
        assert float(share[s]) == pytest.approx(sum(differs) / len(rows))


def test_bad_exit_indices_are_named():
    out = ExitOutputs(
        torch.randn(4, 2, 3), groups=torch.zeros(4, dtype=torch.long), positions=torch.arange(4)
    )
    with pytest.raises(ValueError, match="`exit_indices` of shape"):
        first_divergence(out, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"`exit_indices` in \[0, 1\]"):
        sequence_disagreement(out, torch.full((4,), 2))
    with pytest.raises(ValueError, match="`groups` and `positions`"):
        first_divergence(ExitOutputs(torch.randn(4, 2, 3)), torch.zeros(4, dtype=torch.long))
