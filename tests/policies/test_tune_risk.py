"""Tuners (accuracy, budget, latency, frontier) and Learn-then-Test risk control."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import binom

from exitwise import ExitOutputs
from exitwise.exceptions import VacuousGuaranteeWarning
from exitwise.policies import (
    CostQuantileAtMost,
    evaluate,
    evaluate_thresholds,
    first_exit,
    hoeffding_bentkus_p_value,
    pareto_frontier,
    risk_controlled_threshold,
    sweep_shared_threshold,
    tune,
    tune_for_accuracy,
    tune_for_budget,
    tune_for_latency,
)
from exitwise.signals import compute_signal


@pytest.fixture(scope="module")
def split(real_outputs):
    cal, test = real_outputs.split(0.5, seed=0)
    return cal[:2500], test


def best_shared(cal, feasible, key):
    scores = compute_signal(cal, "max_probability")
    sw = sweep_shared_threshold(scores, cal.correct(), cal.costs)
    ok = feasible(sw)
    return key(sw, ok)


def test_accuracy_target_holds_and_per_exit_beats_shared(split):
    cal, test = split
    final = float(cal.correct()[:, -1].double().mean())
    tuned = tune_for_accuracy(cal, "max_probability", 0.99, relative=True)
    assert tuned.feasible and tuned.evaluation.accuracy >= 0.99 * final - 1e-12
    shared_cost = best_shared(
        cal,
        lambda sw: sw.accuracy >= 0.99 * final - 1e-12,
        lambda sw, ok: float(sw.mean_cost[ok].min()),
    )
    assert tuned.evaluation.mean_cost <= shared_cost + 1e-9
    # the evaluation figures are what evaluate() reports for the policy on the tuning split
    again = evaluate(tuned.policy, cal)
    assert float(again.accuracy[0]) == pytest.approx(tuned.evaluation.accuracy)
    held_out = tuned.report(test)
    assert held_out.accuracy is not None and held_out.speed_up > 1.0
    assert held_out.num_samples == test.num_samples and len(held_out.exit_fractions) == 4


def test_budget_holds_and_per_exit_beats_shared(split):
    cal, _ = split
    full = float(cal.costs[-1])
    for budget in (0.3, 0.5):
        tuned = tune_for_budget(cal, "max_probability", budget)
        assert tuned.evaluation.mean_cost <= budget * full * (1 + 1e-12)
        shared_acc = best_shared(
            cal,
            lambda sw, b=budget: sw.mean_cost <= b * full,
            lambda sw, ok: float(sw.accuracy[ok].max()),
        )
        assert tuned.evaluation.accuracy >= shared_acc - 1e-12


def exhaustive_coordinate_search(cal, objective, ok, rounds=3):
    """The per-exit search before issue 10: every distinct score at exit j (and +inf) as a
    candidate, all scored by the batched evaluator (O(N^2 E / 64) per exit)."""
    scores, correct, costs = compute_signal(cal, "max_probability"), cal.correct(), cal.costs
    e = scores.shape[1]
    sw = sweep_shared_threshold(scores, correct, costs)
    feasible = ok(sw.accuracy, sw.mean_cost)
    idx = torch.nonzero(feasible).flatten()
    if objective == "cost":
        best = idx[torch.argmin(sw.mean_cost[idx] - 1e-9 * sw.accuracy[idx])]
    else:
        best = idx[torch.argmax(sw.accuracy[idx] - 1e-9 * sw.mean_cost[idx])]
    current = torch.full((e,), float(sw.thresholds[best]), dtype=torch.float64)
    acc, cost = float(sw.accuracy[best]), float(sw.mean_cost[best])
    for _ in range(rounds):
        moved = False
        for j in range(e - 1):
            grid = torch.cat([torch.unique(scores[:, j]), torch.tensor([math.inf])])
            cand = current.repeat(len(grid), 1)
            cand[:, j] = grid
            ev = evaluate_thresholds(scores, correct, costs, cand)
            good = torch.nonzero(ok(ev.accuracy, ev.mean_cost)).flatten()
            for k in good.tolist():
                a, c = float(ev.accuracy[k]), float(ev.mean_cost[k])
                better = (
                    c < cost - 1e-12 or (c <= cost + 1e-12 and a > acc + 1e-12)
                    if objective == "cost"
                    else a > acc + 1e-12 or (a >= acc - 1e-12 and c < cost - 1e-12)
                )
                if better:
                    acc, cost, current, moved = a, c, cand[k].clone(), True
        if not moved:
            break
    return acc, cost


def test_regression_per_exit_search_is_exact_line_searches(split):
    # issue 10 defect 9: the per-exit search evaluated every distinct score as a candidate
    # with the batched evaluator (N^2 growth: 149 s at N = 80k); it is now one sort per exit
    # and must find policies exactly as good on the bundled data.
    cal, _ = split
    final = float(cal.correct()[:, -1].double().mean())
    full = float(cal.costs[-1])
    tuned = tune_for_accuracy(cal, "max_probability", 0.99, relative=True)
    ref = exhaustive_coordinate_search(cal, "cost", lambda a, c: a >= 0.99 * final - 1e-12)
    assert tuned.evaluation.mean_cost <= ref[1] + 1e-12
    for budget in (0.3, 0.5):
        tuned = tune_for_budget(cal, "max_probability", budget)
        ref = exhaustive_coordinate_search(
            cal, "accuracy", lambda a, c, b=budget: c <= b * full * (1 + 1e-12)
        )
        assert tuned.evaluation.accuracy >= ref[0] - 1e-12


def test_latency_percentile_constraint(split):
    cal, _ = split
    latencies = [2.0, 5.0, 9.0, 14.0]  # ms, cumulative
    tuned = tune_for_latency(cal, "max_probability", latencies, percentile=90, limit=9.0)
    assert tuned.feasible
    assert tuned.evaluation.cost_percentiles[90.0] <= 9.0
    scores = compute_signal(cal, "max_probability")
    r = evaluate_thresholds(
        scores, cal.correct(), latencies, tuned.policy.threshold_vector(4)[None], percentiles=[90]
    )
    assert float(r.cost_quantiles[0, 0]) <= 9.0


def test_infeasible_target_is_a_result(split):
    cal, _ = split
    tuned = tune_for_accuracy(cal, "max_probability", 0.999, relative=False)
    assert not tuned.feasible and tuned.policy is None
    with pytest.raises(ValueError, match="nothing to report"):
        tuned.report(cal)
    quantile = tune(cal, "max_probability", "accuracy", [CostQuantileAtMost(0.5, 0.0)])
    assert not quantile.feasible


def test_pareto_frontier_is_non_dominated(split):
    cal, _ = split
    front = pareto_frontier(cal[:1500], "max_probability", budgets=[0.4, 0.6])
    cost, acc = front["mean_cost"], front["accuracy"]
    assert bool((cost[1:] >= cost[:-1]).all()) and bool((acc[1:] > acc[:-1]).all())
    ev = evaluate_thresholds(
        compute_signal(cal[:1500], "max_probability"),
        cal[:1500].correct(),
        cal.costs,
        front["thresholds"],
    )
    assert torch.allclose(ev.accuracy, acc) and torch.allclose(ev.mean_cost, cost)


# ----------------------------------------------------------------------------- risk control
def test_p_values_against_scipy_and_hand_values():
    from exitwise.policies import binomial_p_value

    assert binomial_p_value(3, 200, 0.05) == pytest.approx(binom.cdf(3, 200, 0.05))
    assert binomial_p_value(0, 100, 0.05) == pytest.approx(0.95**100)
    # Hoeffding-Bentkus at zero empirical risk: min(exp(-n h1(0, d)), e (1-d)^n)
    n, d = 100, 0.05
    expected = min(math.exp(n * math.log(1 - d)), math.e * (1 - d) ** n)
    assert hoeffding_bentkus_p_value(0.0, n, d) == pytest.approx(expected)
    assert hoeffding_bentkus_p_value(0.2, n, d) == pytest.approx(1.0)


def test_fixed_sequence_returns_the_last_rejected_threshold(split):
    cal, _ = split
    res = risk_controlled_threshold(cal, "max_probability", limit=0.05, confidence=0.9)
    assert res.certified and res.path.thresholds[0] == math.inf
    tested = ~torch.isnan(res.path.p_values)
    last = int(torch.nonzero(tested).max())
    assert float(res.path.p_values[last]) > 0.1 or last == len(res.path.thresholds) - 1
    assert bool((res.path.p_values[:last] <= 0.1).all())
    assert (
        res.shared_threshold == float(res.path.thresholds[last - 1])
        if float(res.path.p_values[last]) > 0.1
        else True
    )


def test_risk_validation(split):
    cal, _ = split
    with pytest.raises(ValueError, match="pass a `grid`"):
        risk_controlled_threshold(cal, "negative_entropy", limit=0.1, confidence=0.9)
    with pytest.raises(ValueError, match=r"`limit` to be in \(0, 1\)"):
        risk_controlled_threshold(cal, "max_probability", limit=1.5, confidence=0.9)
    res = risk_controlled_threshold(
        cal, "negative_entropy", limit=0.1, confidence=0.9, grid=np.linspace(-2.3, 0, 50)
    )
    assert res.path.thresholds.numel() == 51
    impossible = risk_controlled_threshold(
        cal[:20], "max_probability", risk="error", limit=0.01, confidence=0.99
    )
    assert not impossible.certified and impossible.policy is None


def naive_losses(outputs, scores, grid, risk):
    """0/1 losses [G, N] of the early answer at each shared grid threshold (a plain loop)."""
    pred = outputs.predictions()
    reference = pred[:, -1] if risk == "disagreement" else outputs.labels
    rows = []
    for t in grid.tolist():
        exits = []
        for n in range(scores.shape[0]):
            hit = [j for j in range(scores.shape[1] - 1) if scores[n, j] >= t]
            exits.append(hit[0] if hit else scores.shape[1] - 1)
        answer = pred[torch.arange(len(exits)), torch.tensor(exits)]
        rows.append((answer != reference).double())
    return torch.stack(rows)


@pytest.mark.parametrize("risk", ["disagreement", "error"])
def test_grid_statistics_equal_a_naive_loop(real_outputs, risk):
    from exitwise.policies.risk import grid_statistics

    out = real_outputs[:300]
    scores = compute_signal(out, "max_probability")
    grid = torch.tensor(
        [-math.inf, 0.3, 0.5, float(scores[3, 1]), 0.9, 0.999, 1.0, math.inf], dtype=torch.float64
    )
    from exitwise.policies import loss_table

    losses, early, n = grid_statistics(scores, grid, loss_table(out, risk), True)
    naive = naive_losses(out, scores, grid, risk)
    assert n == 300 and torch.equal(losses, naive.sum(dim=1))
    first = torch.stack(
        [first_exit(scores, torch.full((4,), t, dtype=torch.float64)) for t in grid.tolist()]
    )
    assert torch.equal(early, (first < 3).double().mean(dim=1))


def test_regression_default_risk_grid_is_dense_near_one(real_outputs):
    # issue 10 defect 3: the 101-point grid had nothing between 0.99 and 1; on overconfident
    # heads it certified 1.0 (almost the full model) where 0.9999 is certified.
    cal = ExitOutputs(
        real_outputs.logits[:5000] * 8, labels=real_outputs.labels[:5000], costs=real_outputs.costs
    )
    coarse = risk_controlled_threshold(
        cal, "max_probability", limit=0.05, confidence=0.9, grid=np.linspace(0, 1, 101)
    )
    res = risk_controlled_threshold(cal, "max_probability", limit=0.05, confidence=0.9)
    assert coarse.shared_threshold == 1.0 and 0.999 < res.shared_threshold < 1.0
    assert evaluate(res.policy, cal).speed_up[0] > 2 * evaluate(coarse.policy, cal).speed_up[0]
    # a certified threshold that lets nothing leave early is flagged as vacuous
    with pytest.warns(VacuousGuaranteeWarning, match="no calibration sample leave early"):
        none_early = risk_controlled_threshold(
            cal, "max_probability", limit=0.05, confidence=0.9, grid=np.linspace(0, 0.99, 100)
        )
    assert none_early.certified and none_early.vacuous and none_early.shared_threshold == math.inf
    assert not res.vacuous


@pytest.mark.slow
def test_learn_then_test_validity_over_500_splits(real_outputs):
    """Violation rate <= epsilon (plus binomial noise); the naive rule must fail this test."""
    delta, epsilon, n_cal, trials = 0.05, 0.1, 1000, 500
    grid = risk_controlled_threshold(
        real_outputs[:n_cal], "max_probability", limit=delta, confidence=1 - epsilon
    ).path.thresholds  # the fixed default sequence
    scores = compute_signal(real_outputs, "max_probability")
    # 0/1 losses [G, N] at every grid threshold, from the evaluator's kernel (itself checked
    # against a per-sample loop)
    pred = real_outputs.predictions()
    exits = first_exit(scores, grid[:, None].expand(-1, scores.shape[1]).contiguous())
    all_losses = (pred.gather(1, exits.T).T != pred[:, -1][None, :]).double()
    gen = torch.Generator().manual_seed(0)
    ours, naive = 0, 0
    for _ in range(trials):
        perm = torch.randperm(real_outputs.num_samples, generator=gen)
        cal_idx, test_idx = perm[:n_cal], perm[n_cal:]
        res = risk_controlled_threshold(
            real_outputs[cal_idx], "max_probability", limit=delta, confidence=1 - epsilon
        )
        g = int(torch.nonzero(grid == res.shared_threshold)[0, 0]) if res.certified else 0
        ours += float(all_losses[g, test_idx].mean()) > delta
        # naive: walk the same sequence while the empirical risk is <= delta
        emp = all_losses[:, cal_idx].mean(dim=1)
        bad = torch.nonzero(emp > delta)
        stop = int(bad[0, 0]) if bad.numel() else len(grid)
        naive += float(all_losses[max(stop - 1, 0), test_idx].mean()) > delta
    allowed = epsilon + 3 * math.sqrt(epsilon * (1 - epsilon) / trials)
    assert ours / trials <= allowed, ours / trials
    assert naive / trials > allowed, naive / trials


def test_geometric_budget_baseline_meets_the_budget(split):
    from exitwise.policies import geometric_budget_policy

    cal, _ = split
    for budget in (0.3, 0.5, 0.8):
        base = geometric_budget_policy(cal, "max_probability", budget)
        shares = torch.tensor(base.evaluation.exit_fractions, dtype=torch.float64)
        assert float((shares * cal.costs / cal.costs[-1]).sum()) == pytest.approx(budget, abs=0.02)
        assert base.evaluation.mean_cost / float(cal.costs[-1]) == pytest.approx(budget, abs=0.02)
    with pytest.raises(ValueError, match="between the first and last exits' costs"):
        geometric_budget_policy(cal, "max_probability", 0.01)


def test_risk_constraints(split):
    from exitwise.policies import RiskAtMost

    cal, _ = split
    tuned = tune(cal, "max_probability", "cost", [RiskAtMost(0.03, "disagreement")])
    assert tuned.feasible
    agree = evaluate(tuned.policy, cal, reference="final")
    assert float(agree.mean_loss[0]) <= 0.03 + 1e-12
    err = tune(cal, "max_probability", "cost", [RiskAtMost(0.13, "error")])
    assert err.evaluation.accuracy >= 0.87 - 1e-12
    assert not tune(cal, "max_probability", "cost", [RiskAtMost(0.01, "error")]).feasible


def test_evaluation_gives_cost_relative_to_the_full_model_and_result_repr_is_short(split):
    cal, test = split
    tuned = tune_for_budget(cal, "max_probability", 0.5)
    for ev in (tuned.evaluation, tuned.report(test)):
        assert ev.relative_cost == pytest.approx(ev.mean_cost / float(cal.costs[-1]))
    res = risk_controlled_threshold(cal, "max_probability", limit=0.05, confidence=0.9)
    text = repr(res)
    assert "\n" not in text and len(text) < 250 and "guarantee=(disagreement <= 0.05" in text
    none = risk_controlled_threshold(
        cal[:20], "max_probability", risk="error", limit=0.01, confidence=0.99
    )
    assert repr(none).startswith("PolicyResult(policy=None, reason='no threshold is certified")
