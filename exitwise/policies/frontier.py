"""The accuracy-cost frontier and MSDNet's budgeted baseline, built on the tuner."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch

from exitwise._distributed import group_active
from exitwise.data import ExitOutputs
from exitwise.policies.constraints import CostAtMost, resolve_relative
from exitwise.policies.entry import as_scores
from exitwise.policies.evaluate import evaluate_thresholds
from exitwise.policies.evaluate_policies import evaluate_policy
from exitwise.policies.gathered import search_on_first_rank
from exitwise.policies.results import PolicyResult
from exitwise.policies.scores import ExitScores
from exitwise.policies.sweep import sweep_shared_threshold
from exitwise.policies.threshold import ThresholdPolicy
from exitwise.policies.tune import tune

__all__ = ["geometric_budget_policy", "held_out_frontier", "pareto_frontier"]


def pareto_frontier(
    outputs: ExitOutputs | ExitScores,
    signal: Any = None,
    *,
    budgets: Any = None,
    reference: Literal["labels", "final"] = "labels",
) -> dict[str, torch.Tensor]:
    """Non-dominated (mean cost, accuracy) points with their thresholds.

    Exact for the shared-threshold family (every breakpoint of the sweep), plus the per-exit
    search's points at ``budgets`` (fractions of the final cost; default 10 between the
    first and last exits' costs). Returns ``mean_cost``, ``accuracy`` (sorted by cost),
    ``thresholds`` ``[P, E]`` and ``per_exit`` (bool: from the per-exit search). In a
    ``torch.distributed`` group of several processes, of every rank's samples (their scores
    searched on rank 0, as :func:`~exitwise.policies.tune`), the same on every rank.

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> front = pareto_frontier(load_default()[:2000], "max_probability", budgets=[0.5])
    >>> bool((front["accuracy"][1:] > front["accuracy"][:-1]).all())
    True
    """
    data = as_scores(outputs, signal)
    if group_active():  # every rank's breakpoints: rank 0 searches every rank's scores
        return search_on_first_rank(
            lambda every: pareto_frontier(every, budgets=budgets, reference=reference), data
        )
    scores = data.scores.cpu()
    correct = data.correct(reference).cpu()
    costs = data.costs.cpu()
    e = scores.shape[1]
    sweep = sweep_shared_threshold(scores, correct, costs)
    pts_cost = [sweep.mean_cost]
    pts_acc = [sweep.accuracy]
    pts_thr = [sweep.thresholds[:, None].expand(-1, e)]
    pts_kind = [torch.zeros(len(sweep), dtype=torch.bool)]
    if budgets is None:
        lo = float(costs[0] / costs[-1])
        budgets = torch.linspace(lo, 1.0, 12)[1:-1].tolist()
    for b in budgets:
        tuned = tune(
            data, None, "accuracy", [CostAtMost(float(b), relative=True)], reference=reference
        )
        if tuned.policy is None:
            continue
        acc = tuned.evaluation.accuracy if reference == "labels" else tuned.evaluation.agreement
        pts_cost.append(torch.tensor([tuned.evaluation.mean_cost], dtype=torch.float64))
        pts_acc.append(torch.tensor([acc], dtype=torch.float64))
        pts_thr.append(tuned.policy.threshold_vector(e)[None])
        pts_kind.append(torch.ones(1, dtype=torch.bool))
    cost = torch.cat(pts_cost)
    acc = torch.cat(pts_acc)
    thr = torch.cat(pts_thr)
    kind = torch.cat(pts_kind)
    order = torch.argsort(cost * 1.0 - acc * 1e-12, stable=True)
    cost, acc, thr, kind = cost[order], acc[order], thr[order], kind[order]
    best_before = torch.cat(
        [torch.tensor([-math.inf], dtype=torch.float64), acc.cummax(0).values[:-1]]
    )
    keep = acc > best_before + 1e-12
    return {
        "mean_cost": cost[keep],
        "accuracy": acc[keep],
        "thresholds": thr[keep],
        "per_exit": kind[keep],
    }


def geometric_budget_policy(
    outputs: ExitOutputs | ExitScores,
    signal: Any = None,
    budget: float | None = None,
    *,
    relative: bool = True,
    reference: Literal["labels", "final"] = "labels",
) -> PolicyResult:
    r"""MSDNet's budgeted-batch rule, a baseline for :func:`tune_for_budget`.

    Huang et al. (2018) let a share :math:`p_e \propto q^e` of the samples leave at exit
    :math:`e`, with :math:`q` solved (here by bisection) so that the expected cost
    :math:`\sum_e p_e c_e` equals the budget. Thresholds are then set on the tuning split
    so that, exit by exit, the most confident :math:`p_e N` of the remaining samples leave
    (ties may let a few more leave).

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> cal, _ = load_default().split(0.5, seed=0)
    >>> base = geometric_budget_policy(cal, "max_probability", 0.5)
    >>> abs(base.evaluation.speed_up - 2.0) < 0.1
    True
    """
    if budget is None:
        raise TypeError("Expected a `budget`, e.g. 0.5 (half the full model's cost).")
    relative = resolve_relative(relative)
    data = as_scores(outputs, signal)
    if group_active():  # the shares are of every rank's samples: rank 0 picks the thresholds
        return search_on_first_rank(
            lambda every: geometric_budget_policy(
                every, budget=budget, relative=relative, reference=reference
            ),
            data,
        )
    costs = data.costs.cpu().to(torch.float64)
    e = costs.numel()
    limit = budget * float(costs[-1]) if relative else float(budget)
    if not float(costs[0]) <= limit <= float(costs[-1]):
        raise ValueError(
            f"Expected a budget between the first and last exits' costs ({float(costs[0]):.4g}"
            f" and {float(costs[-1]):.4g}), got {limit:.4g}."
        )
    powers = torch.arange(e, dtype=torch.float64)

    def shares(log_q: float) -> torch.Tensor:
        w = torch.softmax(powers * log_q, dim=0)
        return w

    lo, hi = -50.0, 50.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if float((shares(mid) * costs).sum()) > limit:
            hi = mid
        else:
            lo = mid
    p = shares(lo)
    scores = data.scores.cpu()
    n = scores.shape[0]
    remaining = torch.ones(n, dtype=torch.bool)
    thresholds = torch.full((e,), -math.inf, dtype=torch.float64)
    for j in range(e - 1):
        take = round(float(p[j]) * n)
        left = int(remaining.sum())
        if take <= 0 or left == 0:
            thresholds[j] = math.inf
            continue
        values = scores[remaining, j].sort(descending=True).values
        thresholds[j] = values[min(take, left) - 1]
        remaining &= ~(scores[:, j] >= thresholds[j])
    policy = ThresholdPolicy(data.signal, thresholds.tolist())
    return PolicyResult(
        policy,
        evaluate_policy(policy, data, reference=reference),
        limits={"relative_cost": limit / float(costs[-1])},
        num_units=data.num_samples,
    )


def held_out_frontier(
    tune_outputs: ExitOutputs | ExitScores,
    test_outputs: ExitOutputs | ExitScores,
    signal: Any = None,
    *,
    budgets: Any = None,
    reference: Literal["labels", "final"] = "labels",
) -> dict[str, torch.Tensor]:
    """Policies chosen on ``tune_outputs``, evaluated on ``test_outputs``: honest curves.

    Every shared-threshold breakpoint of the tuning split (``shared_*``) and the tuning
    split's Pareto frontier with its per-exit points (``mean_cost``, ``accuracy``,
    ``thresholds``, ``per_exit``), each scored on the held-out split. Nothing is chosen on
    the data it is shown on, so the held-out curve need not be monotone.

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> cal, test = load_default()[:4000].split(0.5, seed=0)
    >>> curves = held_out_frontier(cal, test, "max_probability", budgets=[0.5])
    >>> curves["accuracy"].shape == curves["mean_cost"].shape
    True
    """
    tuning = as_scores(tune_outputs, signal, argument="tune_outputs")
    testing = as_scores(test_outputs, tuning.signal, argument="test_outputs")
    front = pareto_frontier(tuning, budgets=budgets, reference=reference)
    e = tuning.num_exits
    scores = testing.scores
    correct = testing.correct(reference)
    on_test = evaluate_thresholds(
        scores,
        correct,
        testing.costs,
        front["thresholds"].to(scores.device),
    )
    shared = sweep_shared_threshold(
        tuning.scores, tuning.correct(reference), tuning.costs
    ).thresholds
    shared_on_test = evaluate_thresholds(
        scores,
        correct,
        testing.costs,
        shared[:, None].expand(-1, e).to(scores.device),
    )
    return {
        "mean_cost": on_test.mean_cost,
        "accuracy": on_test.accuracy,
        "thresholds": front["thresholds"],
        "per_exit": front["per_exit"],
        "shared_mean_cost": shared_on_test.mean_cost,
        "shared_accuracy": shared_on_test.accuracy,
    }
