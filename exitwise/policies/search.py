"""The tuners' exact search: the best shared threshold, then per-exit coordinate line
searches (every distinct score of an exit is a candidate, all scored at once by one sort and
cumulative sums). Used by :mod:`~exitwise.policies.tune` and by Pareto Testing's tuned
candidates."""

from __future__ import annotations

import math
from typing import Any

import torch

from exitwise.policies.constraints import CostQuantileAtMost, _Stats
from exitwise.policies.sweep import sweep_exit_threshold, sweep_shared_threshold

__all__ = ["search_thresholds"]


def _progress_bar(total: int, size: int, progress: bool | None) -> Any:
    from tqdm.auto import tqdm

    show = (size >= 10**7 if progress is None else progress) and total > 0
    return tqdm(total=total, desc="per-exit search", unit=" line", disable=not show)


def _better(acc_a, cost_a, acc_b, cost_b, objective: str) -> torch.Tensor:
    """Is candidate a strictly better than b (ties broken by the other criterion)."""
    if objective == "cost":
        return (cost_a < cost_b - 1e-12) | ((cost_a <= cost_b + 1e-12) & (acc_a > acc_b + 1e-12))
    return (acc_a > acc_b + 1e-12) | ((acc_a >= acc_b - 1e-12) & (cost_a < cost_b - 1e-12))


def _pick(stats: _Stats, feasible: torch.Tensor, objective: str) -> int | None:
    if not bool(feasible.any()):
        return None
    idx = torch.nonzero(feasible).flatten()
    acc, cost = stats.accuracy[idx], stats.mean_cost[idx]
    if objective == "cost":
        best_cost = cost.min()
        near = cost <= best_cost + 1e-12
        choice = torch.argmax(torch.where(near, acc, torch.full_like(acc, -1.0)))
    else:
        best_acc = acc.max()
        near = acc >= best_acc - 1e-12
        choice = torch.argmin(torch.where(near, cost, torch.full_like(cost, math.inf)))
    return int(idx[choice])


def search_thresholds(
    scores: torch.Tensor,
    correct: torch.Tensor,
    costs: torch.Tensor,
    constraints: list[Any],
    objective: str,
    rounds: int,
    agree: torch.Tensor | None = None,
    progress: bool | None = False,
) -> tuple[torch.Tensor | None, float]:
    """The best per-exit thresholds ``[E]`` for ``constraints`` and the best shared threshold
    (``(None, inf)`` when no shared threshold is feasible).

    Start from the best *shared* threshold (exact, from every breakpoint of
    :func:`~exitwise.policies.sweep_shared_threshold`), then ``rounds`` passes of exact
    coordinate-wise line searches (:func:`~exitwise.policies.sweep.sweep_exit_threshold`),
    taking a move only when it improves the objective. ``agree`` ``[N, E]`` (agreement with
    the final exit) is needed by disagreement bounds.
    """
    e = scores.shape[1]
    final_accuracy = float(correct[:, -1].double().mean())
    full_cost = float(costs[-1])

    def feasible(stats: _Stats) -> torch.Tensor:
        ok = torch.ones_like(stats.accuracy, dtype=torch.bool)
        for c in constraints:
            ok &= c.ok(stats, final_accuracy, full_cost)
        return ok

    need_counts = any(isinstance(c, CostQuantileAtMost) for c in constraints)
    sweep = sweep_shared_threshold(scores, correct, costs, return_exit_counts=need_counts)
    disagree = None
    if agree is not None:  # same scores, so the same breakpoints
        disagree = 1.0 - sweep_shared_threshold(scores, agree, costs).accuracy
    n = scores.shape[0]
    shared = _Stats(sweep.accuracy, sweep.mean_cost, sweep.exit_counts, costs, disagree)
    best = _pick(shared, feasible(shared), objective)
    if best is None:
        return None, math.inf
    shared_tau = float(sweep.thresholds[best])
    current = torch.full((e,), shared_tau, dtype=torch.float64)
    cur_acc, cur_cost = shared.accuracy[best], shared.mean_cost[best]
    tables = [correct] if agree is None else [correct, agree]
    bar = _progress_bar(rounds * (e - 1), n * e, progress)
    for _ in range(rounds):
        improved = False
        for j in range(e - 1):
            bar.update(1)
            line = sweep_exit_threshold(
                scores, tables, costs, current, j, return_exit_counts=need_counts
            )
            stats = _Stats(
                line.outcome_sums[:, 0] / n,
                line.cost_sum / n,
                line.exit_counts,
                costs,
                None if agree is None else 1.0 - line.outcome_sums[:, 1] / n,
            )
            pick = _pick(stats, feasible(stats), objective)
            if pick is None:
                continue
            if bool(
                _better(stats.accuracy[pick], stats.mean_cost[pick], cur_acc, cur_cost, objective)
            ):
                current[j] = line.thresholds[pick]
                cur_acc, cur_cost = stats.accuracy[pick], stats.mean_cost[pick]
                improved = True
        if not improved:
            break
    bar.close()
    current[-1] = -math.inf  # the last exit always answers: make that explicit
    return current, shared_tau
