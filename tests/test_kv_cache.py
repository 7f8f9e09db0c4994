"""KV-cache cost models and lock-step decode, against hand-computed cases and naive loops."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from exitwise.generation import KV_MODES, LayerCosts, simulate_decode, token_costs

COSTS = LayerCosts([1.0, 2.0, 3.0, 4.0], [0.1, 0.2, 0.3, 0.4], [1, 2, 4])


def test_hand_computed_token_costs():
    # one sequence, exits 0, 2, 1 (depths 1, 4, 2); C = [0, 1, 3, 6, 10]
    exits, groups, positions = [0, 2, 1], [5, 5, 5], [0, 1, 2]
    assert token_costs(exits, groups, positions, COSTS, "skip").tolist() == [1.0, 10.0, 3.0]
    copy = token_costs(exits, groups, positions, COSTS, "copy").tolist()
    assert copy == pytest.approx([1.0 + 0.9, 10.0, 3.0 + 0.7])
    # recompute: token 1 (depth 4) first brings token 0 from depth 1 to 4 (2 + 3 + 4 = 9)
    rec = token_costs(exits, groups, positions, COSTS, "recompute").tolist()
    assert rec == pytest.approx([1.0, 19.0, 3.0])


def test_recompute_catches_up_only_what_is_missing():
    # depths 2, 1, 4, 4: token 2 brings token 0 from 2 (cost 10 - 3) and token 1 from 1 (9)
    rec = token_costs([1, 0, 2, 2], [0] * 4, [0, 1, 2, 3], COSTS, "recompute").tolist()
    assert rec == pytest.approx([3.0, 1.0, 10.0 + 7.0 + 9.0, 10.0])
    # rows in any order and several sequences: the same per token
    shuffled = token_costs([2, 2, 1, 0], [0, 0, 0, 0], [3, 2, 0, 1], COSTS, "recompute")
    assert shuffled.tolist() == pytest.approx([10.0, 26.0, 3.0, 1.0])


def _naive_recompute(depths, layer):
    cum = [0.0]
    for c in layer:
        cum.append(cum[-1] + c)
    computed, out = [], []
    for d in depths:
        catch = sum(max(0.0, cum[d] - cum[c]) for c in computed)
        computed = [max(c, d) for c in computed] + [d]
        out.append(cum[d] + catch)
    return out


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 8), min_size=1, max_size=5),
    seed=st.integers(0, 10_000),
)
def test_recompute_equals_a_naive_loop(lengths, seed):
    g = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    exits = torch.randint(0, 3, (n,), generator=g)
    groups = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    positions = torch.cat([torch.arange(k) for k in lengths])
    got = token_costs(exits, groups, positions, COSTS, "recompute")
    depths = COSTS.exit_layers[exits]
    for s in range(len(lengths)):
        rows = torch.nonzero(groups == s).flatten()
        assert got[rows].tolist() == pytest.approx(
            _naive_recompute(depths[rows].tolist(), COSTS.layer.tolist())
        )


def test_hand_computed_lock_step_decode():
    # batch of 2: A = exits [0, 2] (depths 1, 4), B = [1, 0] (depths 2, 1); C = [0, 1, 3, 6, 10]
    exits, groups, positions = [0, 2, 1, 0], [0, 0, 1, 1], [0, 1, 0, 1]
    skip = simulate_decode(exits, groups, positions, COSTS, batch_size=2, kv="skip")
    assert skip.steps == 2 and skip.mean_step_time == pytest.approx((3.0 + 10.0) / 2)
    assert skip.full_step_time == pytest.approx(10.0)
    assert skip.relative_throughput == pytest.approx(10.0 / 6.5)
    assert skip.compute_per_token == pytest.approx((1 + 10 + 3 + 1) / 4)
    copy = simulate_decode(exits, groups, positions, COSTS, batch_size=2, kv="copy")
    assert copy.mean_step_time == pytest.approx((3.0 + 0.7 + 10.0) / 2)
    alone = simulate_decode(exits, groups, positions, COSTS, batch_size=1, kv="skip")
    assert alone.steps == 4 and alone.mean_step_time == pytest.approx((1 + 10 + 3 + 1) / 4)
    for kv in KV_MODES:
        full = simulate_decode([2] * 4, groups, positions, COSTS, batch_size=2, kv=kv)
        assert full.relative_throughput == pytest.approx(1.0)
        assert full.relative_compute_throughput == pytest.approx(1.0)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="`exit_layers` increasing"):
        LayerCosts([1.0, 1.0], [0.1, 0.1], [2, 1])
    with pytest.raises(ValueError, match="`kv`: one cost"):
        LayerCosts([1.0, 1.0], [0.1], [1, 2])
    with pytest.raises(ValueError, match="`kv` to be one of"):
        token_costs([0], [0], [0], COSTS, "drop")
    with pytest.raises(ValueError, match="`batch_size`"):
        simulate_decode([0], [0], [0], COSTS, batch_size=0)


def test_policy_token_costs_summarise_a_policy(real_outputs):
    from exitwise.generation import policy_token_costs
    from exitwise.policies import ThresholdPolicy
    from tests.conftest import as_sequences

    tokens = as_sequences(real_outputs[:400], 20)
    costs = LayerCosts([1.0] * 4, [0.25] * 4, [1, 2, 3, 4])
    policy = ThresholdPolicy("max_probability", 0.9)
    exits = policy.exit_indices(tokens)
    for kv in KV_MODES:
        summary = policy_token_costs(policy, tokens, costs, kv)
        per_token = token_costs(exits, tokens.groups, tokens.positions, costs, kv)
        assert summary["mean"] == pytest.approx(float(per_token.mean()))
        assert summary["percentiles"][90.0] == pytest.approx(float(torch.quantile(per_token, 0.9)))
        assert summary["full"] == 4.0
    skip = policy_token_costs(policy, tokens, costs, "skip")["mean"]
    copy = policy_token_costs(policy, tokens, costs, "copy")["mean"]
    assert skip < copy < 4.0
