"""Tuning with a confidence level: Clopper-Pearson bounds and the Learn-then-Test tuner."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import binomtest

from exitwise.cli import main
from exitwise.policies import evaluate, risk_controlled_threshold, tune_for_accuracy
from exitwise.policies.p_values import clopper_pearson_lower


@pytest.mark.parametrize(
    ("k", "n", "c"), [(450, 500, 0.9), (3, 10, 0.95), (10, 10, 0.9), (1, 7, 0.5), (0, 20, 0.9)]
)
def test_clopper_pearson_lower_equals_scipy(k, n, c):
    expected = binomtest(k, n, alternative="greater").proportion_ci(c, method="exact").low
    assert float(clopper_pearson_lower(k, n, c)) == pytest.approx(expected, abs=1e-10)


def test_confidence_tuner_is_learn_then_test_on_error(real_outputs):
    cal = real_outputs[:2000]
    tuned = tune_for_accuracy(cal, "max_probability", 0.85, confidence=0.9, relative=False)
    res = risk_controlled_threshold(
        cal, "max_probability", risk="error", limit=0.15, confidence=0.9
    )
    assert tuned.policy == res.policy and tuned.shared_threshold == res.shared_threshold
    assert tuned.guarantee.p_values["error"] <= 0.1 and tuned.limits["accuracy"] == 0.85
    ev = evaluate(tuned.policy, cal)
    assert tuned.evaluation.accuracy == pytest.approx(float(ev.accuracy[0]))
    hits = round(tuned.evaluation.accuracy * 2000)
    assert tuned.evaluation.accuracy_lower_bound == pytest.approx(
        float(clopper_pearson_lower(hits, 2000, 0.9))
    )
    plain = tune_for_accuracy(cal, "max_probability", 0.85, relative=False)
    assert plain.evaluation.confidence == 0.95
    assert plain.evaluation.accuracy_lower_bound < plain.evaluation.accuracy
    relative = tune_for_accuracy(cal, "max_probability", 0.97, relative=True, confidence=0.9)
    final = float(cal.correct()[:, -1].double().mean())
    assert relative.limits["accuracy"] == pytest.approx(0.97 * final)
    assert not tune_for_accuracy(
        cal[:50], "max_probability", 0.99, confidence=0.9, relative=False
    ).feasible
    with pytest.raises(ValueError, match="`confidence` to be in"):
        tune_for_accuracy(cal, "max_probability", 0.85, confidence=1.0, relative=False)


def test_cli_prints_the_guarantee_or_the_lower_bound(real_outputs, tmp_path, capsys):
    real_outputs.save(tmp_path / "d.npz")
    data = str(tmp_path / "d.npz")
    assert main(["tune", data, "--target-accuracy", "0.86", "--confidence", "0.9"]) == 0
    assert "accuracy >= 0.8600 with probability >= 90%" in capsys.readouterr().out
    assert main(["tune", data, "--target-accuracy", "0.86"]) == 0
    assert "95% Clopper-Pearson bound of the tuning accuracy" in capsys.readouterr().out
    assert main(["tune", data, "--budget", "0.4", "--confidence", "0.9"]) == 0
    assert "mean cost <= 0.4 of the full model with probability >= 90%" in capsys.readouterr().out


@pytest.mark.slow
def test_confidence_tuner_keeps_its_promise_over_400_small_splits(real_outputs):
    """Tuning on 500 samples, checked on the other 9,500: P(a policy is returned and misses
    the target) <= 1 - confidence; the point-estimate tuner misses it most of the time."""
    gen = torch.Generator().manual_seed(0)
    trials, target = 400, 0.85
    missed = {None: 0, 0.9: 0}
    returned = 0
    for _ in range(trials):
        perm = torch.randperm(real_outputs.num_samples, generator=gen)
        tune_split, new = real_outputs[perm[:500]], real_outputs[perm[500:]]
        for confidence in (None, 0.9):
            tuned = tune_for_accuracy(
                tune_split, "max_probability", target, confidence=confidence, relative=False
            )
            if not tuned.feasible:
                continue
            returned += confidence is not None
            missed[confidence] += float(evaluate(tuned.policy, new).accuracy[0]) < target
    assert missed[0.9] / trials <= 0.1 + 3 * math.sqrt(0.1 * 0.9 / trials), missed
    assert missed[None] / trials > 0.5 and returned / trials > 0.6
    print(
        f"missed: point estimate {missed[None] / trials:.3f}, confidence 0.9 "
        f"{missed[0.9] / trials:.3f} (returned a policy in {returned / trials:.1%})"
    )


def test_budget_and_latency_tuners_with_confidence_walk_up_from_the_first_exit(real_outputs):
    from exitwise.policies import tune_for_budget, tune_for_latency

    cal = real_outputs[:3000]
    tuned = tune_for_budget(cal, "max_probability", 0.4, confidence=0.9)
    res = risk_controlled_threshold(
        cal, "max_probability", risk="cost", limit=0.4, confidence=0.9, direction="up"
    )
    assert res.path.thresholds[0] == -math.inf and bool((res.path.thresholds[1:].diff() > 0).all())
    assert tuned.policy == res.policy and max(tuned.guarantee.p_values.values()) <= 0.1
    assert tuned.evaluation.relative_cost < 0.4
    # the walk stops at the first threshold whose p-value exceeds epsilon
    tested = ~torch.isnan(res.path.p_values)
    last = int(torch.nonzero(tested).max())
    assert bool((res.path.p_values[:last] <= 0.1).all()) and float(res.path.p_values[last]) > 0.1
    latencies = [2.0, 5.0, 9.0, 14.0]
    lat = tune_for_latency(cal, "max_probability", latencies, 90, 9.0, confidence=0.9)
    slow = torch.tensor([0.0, 0.0, 0.0, 1.0]).expand(3000, -1)
    same = risk_controlled_threshold(
        cal, "max_probability", losses=slow, limit=0.1, confidence=0.9, direction="up"
    )
    assert lat.policy == same.policy and lat.evaluation.cost_percentiles[90.0] <= 9.0
    with pytest.raises(ValueError, match=r"`losses` of shape \[N, E\]"):
        risk_controlled_threshold(
            cal, "max_probability", losses=slow[:10], limit=0.1, confidence=0.9
        )
    with pytest.raises(ValueError, match="`direction` to be one of"):
        risk_controlled_threshold(
            cal, "max_probability", limit=0.1, confidence=0.9, direction="sideways"
        )


@pytest.mark.slow
def test_budget_tuner_with_confidence_keeps_its_promise_over_300_small_splits(real_outputs):
    from exitwise.policies import tune_for_budget

    gen = torch.Generator().manual_seed(1)
    trials, budget = 300, 0.4
    over = {None: 0, 0.9: 0}
    for _ in range(trials):
        perm = torch.randperm(real_outputs.num_samples, generator=gen)
        tune_split, new = real_outputs[perm[:500]], real_outputs[perm[500:]]
        for confidence in (None, 0.9):
            tuned = tune_for_budget(tune_split, "max_probability", budget, confidence=confidence)
            if tuned.feasible:
                ev = evaluate(tuned.policy, new)
                over[confidence] += float(ev.mean_cost[0]) / ev.full_cost > budget
    assert over[0.9] / trials <= 0.1 + 3 * math.sqrt(0.1 * 0.9 / trials), over
    assert over[None] / trials > 0.15, over  # 26 % on the bundled data
    print(
        f"over budget: point estimate {over[None] / trials:.3f}, confidence 0.9 "
        f"{over[0.9] / trials:.3f}"
    )
