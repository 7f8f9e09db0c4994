"""``evaluate(policies, outputs)``: any exit policies on :class:`~exitwise.ExitOutputs`, one
layer above the threshold evaluator (threshold policies sharing a signal go through it at
once; other policies through their exit indices)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from exitwise.policies.base import ExitPolicy
from exitwise.policies.evaluate import evaluate_thresholds
from exitwise.policies.inputs import check_quantiles
from exitwise.policies.kernels import (
    DEFAULT_MEMORY_BUDGET,
    ThresholdEvaluation,
    _finish,
    _full_cost_sum,
    _reduce_exits,
)
from exitwise.policies.recall import recalled_outcome
from exitwise.policies.threshold import ThresholdPolicy
from exitwise.signals import compute_signal

__all__ = ["evaluate"]


def evaluate(
    policies: Any,
    outputs: Any,
    *,
    reference: Literal["labels", "final"] = "labels",
    quantiles: Sequence[float] | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> ThresholdEvaluation:
    """Evaluate one policy or a list of policies on :class:`~exitwise.ExitOutputs`.

    Threshold policies sharing a signal are evaluated together by
    :func:`evaluate_thresholds` (recall policies on the recalled outcome); other policies
    (fixed exit, oracle, SDN fallback) through their exit and answering-exit indices.
    Correctness is against the labels, or agreement with the final exit with
    ``reference="final"``; costs are ``outputs.costs``.

    Returns
    -------
    ThresholdEvaluation
        One row per policy, in order; ``thresholds`` is NaN for policies without thresholds.

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> from exitwise.policies import FixedExitPolicy, ThresholdPolicy
    >>> out = load_default()
    >>> r = evaluate([ThresholdPolicy("max_probability", 0.9), FixedExitPolicy(-1)], out)
    >>> [round(a, 4) for a in r.accuracy.tolist()]
    [0.8811, 0.8809]
    """
    items = [policies] if isinstance(policies, ExitPolicy) else list(policies)
    if not items:
        raise ValueError("Expected at least one policy, got none.")
    for i, policy in enumerate(items):
        if not isinstance(policy, ExitPolicy):
            raise TypeError(f"Expected ExitPolicy objects, got {type(policy).__name__} at {i}.")
    correct = outputs.correct(reference)
    e = outputs.num_exits
    qs = check_quantiles(quantiles)
    simple = [
        type(p) is ThresholdPolicy
        and p.fallback == "last"
        and (p.signal, p.recall) == (items[0].signal, items[0].recall)
        for p in items
    ]
    if all(simple):
        scores = compute_signal(outputs, items[0].signal)
        thresholds = torch.stack([p.threshold_vector(e, scores.device) for p in items])
        return evaluate_thresholds(
            scores,
            recalled_outcome(correct, scores, items[0].recall),
            outputs.costs,
            thresholds,
            quantiles=qs,
            memory_budget=memory_budget,
            distributed=False,
        )
    exits = torch.stack([p.exit_indices(outputs) for p in items])
    answers = torch.stack([p.answer_indices(outputs) for p in items])
    totals = _reduce_exits(exits, correct, outputs.costs, torch.int64, False, answers)
    thresholds = torch.full((len(items), e), float("nan"), dtype=torch.float64, device=exits.device)
    for i, policy in enumerate(items):
        if isinstance(policy, ThresholdPolicy):
            thresholds[i] = policy.threshold_vector(e, exits.device)
    full = _full_cost_sum(outputs.costs, outputs.num_samples, exits.device)
    return _finish(totals, thresholds, outputs.costs, qs, True, full)
