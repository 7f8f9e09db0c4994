"""What a tuner reports beside its policy: the limits it was asked for, in numbers on the
tuning data, and, when no policy meets them, the reason and the best the data allows."""

from __future__ import annotations

import math
from typing import Any

import torch

from exitwise.policies.constraints import (
    AccuracyAtLeast,
    CostAtMost,
    CostQuantileAtMost,
    RiskAtMost,
)
from exitwise.policies.results import PolicyResult
from exitwise.policies.scores import ExitScores
from exitwise.policies.sweep import sweep_shared_threshold

__all__ = ["infeasible_result", "limits_of"]


def infeasible_result(
    scores: ExitScores,
    correct: torch.Tensor,
    constraints: list[Any],
    reference: str,
    limits: dict[str, float],
    unit: str,
) -> PolicyResult:
    """No policy: the reason (the constraints, the data size) and the best the tuning data
    allows (the highest accuracy of any shared threshold; the least mean cost, everyone
    leaving at the first exit)."""
    final = float(correct[:, -1].double().mean())
    full = scores.full_cost
    sweep = sweep_shared_threshold(scores.scores.cpu(), correct.cpu(), scores.costs.cpu())
    best_acc = float(sweep.accuracy.max())
    best = {
        "accuracy": best_acc,
        "relative_accuracy": best_acc / final if final > 0 else math.nan,
        "relative_cost": float(scores.costs[..., 0].double().mean()) / full,
    }
    wanted = " and ".join(c.describe(final, full) for c in constraints)
    what = "accuracy" if reference == "labels" else "agreement with the final exit"
    reason = (
        f"no policy meets {wanted} on the {scores.num_samples} tuning samples (best "
        f"{what} {best_acc:.4f} = {best['relative_accuracy']:.4f} x the final exit's; least "
        f"mean cost {best['relative_cost']:.4f} of the full model's)"
    )
    return PolicyResult(
        None,
        None,
        reason=reason,
        best_achievable=best,
        limits=limits,
        num_units=scores.num_samples,
        unit=unit,
    )


def limits_of(constraints: list[Any], final: float, full: float) -> dict[str, float]:
    """The limits the constraints ask for, in numbers on this data (``final``: the last exit's
    accuracy, ``full``: its mean cost), keyed as a result's ``limits``.

    Examples
    --------
    >>> limits_of([AccuracyAtLeast(0.9, relative=True), CostAtMost(0.5, relative=True)], 0.8, 10.0)
    {'accuracy': 0.72, 'relative_cost': 0.5}
    """
    out: dict[str, float] = {}
    for c in constraints:
        if isinstance(c, AccuracyAtLeast):
            out["accuracy"] = c.bound(final, full)
        elif isinstance(c, CostAtMost):
            out["relative_cost"] = c._limit(full) / full
        elif isinstance(c, CostQuantileAtMost):
            out[f"p{100 * c.q:g}_cost"] = c._limit(full)
        elif isinstance(c, RiskAtMost):
            out[c.risk] = c.value
    return out
