"""CALM's position-aware thresholds and min_exit: equal to a naive per-token loop in the
policy, the evaluator, the sweep, the tuners, the runtime controller and policy files."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from exitwise import ExitOutputs
from exitwise.policies import (
    ExitController,
    ThresholdPolicy,
    evaluate,
    evaluate_thresholds,
    load_policy,
    sweep_shared_threshold,
    tune_for_accuracy,
)
from exitwise.policies.positions import DecayedSignal, calm_factor
from exitwise.signals import compute_signal
from tests.conftest import as_sequences


def _token_outputs(n, e, c, seed, max_position=60):
    g = torch.Generator().manual_seed(seed)
    groups = torch.arange(n) // 5
    # distinct positions within each sequence of 5 (drawn from [0, max_position))
    picks = torch.stack(
        [torch.randperm(max_position, generator=g)[:5] for _ in range(-(-n // 5))]
    )
    positions = picks.reshape(-1)[:n]
    logits = torch.randn(n, e, c, generator=g) * torch.linspace(0.5, 3.0, e)[None, :, None]
    labels = torch.randint(0, c, (n,), generator=g)
    return ExitOutputs(logits, labels=labels, groups=groups, positions=positions)


def _naive_exits(out, name, thresholds, tau, length, min_exit):
    """For each token: the first exit e >= min_exit with s >= lambda_e (0.9 + 0.1 e^{-tau t/T})."""
    scores = compute_signal(out, name).double()
    exits = []
    for n in range(out.num_samples):
        t = int(out.positions[n])
        chosen = out.num_exits - 1
        for e in range(out.num_exits - 1):
            lam = thresholds[e] * (0.9 + 0.1 * math.exp(-tau * t / length))
            if e >= min_exit and float(scores[n, e]) >= lam:
                chosen = e
                break
        exits.append(chosen)
    return torch.tensor(exits)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    e=st.integers(2, 4),
    tau=st.floats(0.0, 8.0),
    length=st.floats(1.0, 100.0),
    min_exit=st.integers(0, 3),
    name=st.sampled_from(["max_probability", "margin", "negative_entropy"]),
    lams=st.lists(st.floats(-1.5, 1.0), min_size=4, max_size=4),
)
def test_position_aware_policy_equals_a_naive_loop(seed, e, tau, length, min_exit, name, lams):
    min_exit = min(min_exit, e - 1)
    out = _token_outputs(40, e, 4, seed)
    thresholds = lams[:e]
    signal = DecayedSignal(name, length=length, tau=tau)
    policy = ThresholdPolicy(signal, thresholds, min_exit=min_exit)
    naive = _naive_exits(out, name, thresholds, tau, length, min_exit)
    assert torch.equal(policy.exit_indices(out), naive)
    # the evaluator on the adjusted scores gives the same accuracy and cost
    correct = out.correct()
    expected_acc = correct[torch.arange(40), naive].double().mean()
    expected_cost = out.costs[naive].mean()
    res = evaluate(policy, out)
    assert float(res.accuracy[0]) == pytest.approx(float(expected_acc))
    assert float(res.mean_cost[0]) == pytest.approx(float(expected_cost))
    direct = evaluate_thresholds(signal(out), correct, out.costs, policy.threshold_vector(e)[None])
    assert float(direct.accuracy[0]) == pytest.approx(float(expected_acc))
    # the exact shared-threshold sweep: entry k holds every threshold in (t[k-1], t[k]]; the
    # naive loop at the middle of each interval (away from floating-point ties) agrees
    sweep = sweep_shared_threshold(signal(out), correct, out.costs)
    for k in range(1, len(sweep.thresholds) - 1, max(1, len(sweep.thresholds) // 5)):
        lam = float(sweep.thresholds[k - 1] + sweep.thresholds[k]) / 2
        shared = _naive_exits(out, name, [lam] * e, tau, length, 0)
        acc = correct[torch.arange(40), shared].double().mean()
        assert float(sweep.accuracy[k]) == pytest.approx(float(acc))


def test_the_factor_is_calms_decay():
    t = torch.tensor([0, 5, 50])
    f = calm_factor(t, 4.0, 50.0)
    assert torch.allclose(f, 0.9 + 0.1 * torch.exp(-4.0 * t.double() / 50.0))
    assert float(f[0]) == 1.0 and 0.9 < float(f[-1]) < 0.902


def test_tuners_return_position_aware_policies_that_round_trip(real_outputs, tmp_path):
    tokens = as_sequences(real_outputs[:3000], 30)
    signal = DecayedSignal("max_probability", length=30.0)
    tuned = tune_for_accuracy(tokens, signal, 0.86, min_exit=1, relative=False)
    assert tuned.feasible and tuned.policy.signal == signal and tuned.policy.min_exit == 1
    res = evaluate(tuned.policy, tokens)
    assert float(res.accuracy[0]) == pytest.approx(tuned.evaluation.accuracy)
    assert int(res.exit_counts[0, 0]) == 0  # nobody leaves before min_exit
    tuned.policy.save(tmp_path / "p.json")
    back = load_policy(tmp_path / "p.json")
    assert back == tuned.policy
    assert torch.equal(back.exit_indices(tokens), tuned.policy.exit_indices(tokens))
    # min_exit is the same as tuning on the later exits alone, thresholds +inf before
    later = ExitOutputs(
        tokens.logits[:, 1:],
        tokens.labels,
        tokens.costs[1:],
        groups=tokens.groups,
        positions=tokens.positions,
    )
    alone = tune_for_accuracy(later, signal, 0.86, relative=False)
    assert tuned.policy.thresholds[0] == math.inf
    assert tuned.policy.thresholds[1:] == alone.policy.thresholds


def test_controller_decides_like_the_offline_policy(real_outputs):
    tokens = as_sequences(real_outputs[:500], 40)
    positions = tokens.positions
    policy = ThresholdPolicy(
        DecayedSignal("max_probability", length=40.0), [0.85, 0.8, 0.75, -math.inf], min_exit=1
    )
    offline = policy.exit_indices(tokens)
    for controller in (
        ExitController.from_policy(policy),
        torch.jit.script(ExitController.from_policy(policy)),
    ):
        state = ExitController.from_policy(policy).initial_state(500)
        exits = torch.full((500,), -1)
        for e in range(4):
            done, state = controller.decide_at(e, tokens.logits[:, e], state, positions)
            exits = torch.where((exits < 0) & done, torch.full_like(exits, e), exits)
        assert torch.equal(exits, offline)
    again = ExitController.from_policy(policy).policy()  # thresholds before min_exit: +inf
    assert again.signal == policy.signal and again.min_exit == 1
    assert torch.equal(again.exit_indices(tokens), offline)
    with pytest.raises(ValueError, match="depend on token positions"):
        ExitController.from_policy(policy).decide(0, tokens.logits[:, 0], state)


def test_bad_position_arguments_are_named(real_outputs):
    with pytest.raises(ValueError, match="`length` to be a finite number > 0"):
        DecayedSignal("max_probability", length=0.0)
    with pytest.raises(ValueError, match="`tau` to be a finite number >= 0"):
        DecayedSignal("max_probability", length=10.0, tau=-1.0)
    with pytest.raises(ValueError, match="Unknown signal"):
        DecayedSignal("confidence", length=10.0)
    with pytest.raises(ValueError, match="needs token positions"):
        ThresholdPolicy(DecayedSignal("margin", length=5.0), 0.5).exit_indices(real_outputs)
    with pytest.raises(ValueError, match="`min_exit` below the number of exits"):
        ThresholdPolicy("margin", 0.5, min_exit=4).exit_indices(real_outputs)
    with pytest.raises(ValueError, match="`position_decay`"):
        DecayedSignal.from_json("margin", {"tau": 1.0})
