"""``evaluate(policies, data)``: any exit policies on :class:`~exitwise.ExitOutputs` or
:class:`~exitwise.policies.ExitScores`, one layer above the threshold evaluator (threshold
policies sharing a signal go through it at once, on scores computed once; other policies
through their exit indices). ``evaluate_policy`` gives one policy's typed
:class:`~exitwise.policies.results.Evaluation`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from exitwise._deprecation import MISSING
from exitwise.policies.base import ExitPolicy
from exitwise.policies.evaluate import evaluate_thresholds
from exitwise.policies.evaluation import Evaluation
from exitwise.policies.inputs import check_percentiles
from exitwise.policies.kernels import (
    DEFAULT_MEMORY_BUDGET,
    ThresholdEvaluation,
    _all_reduce,
    _finish,
    _full_cost_sum,
    _reduce_exits,
)
from exitwise.policies.recall import recalled_outcome
from exitwise.policies.scores import scores_for
from exitwise.policies.threshold import ThresholdPolicy

__all__ = ["evaluate", "evaluate_policy"]


def evaluate(
    policies: Any,
    outputs: Any,
    *,
    reference: Literal["labels", "final"] = "labels",
    percentiles: Sequence[float] | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    distributed: bool | None = None,
    quantiles: Any = MISSING,
) -> ThresholdEvaluation:
    """Evaluate one policy or a list of policies on :class:`~exitwise.ExitOutputs` or
    :class:`~exitwise.policies.ExitScores` (whose scores and costs are used as they are when
    the policies' signal is theirs: nothing is recomputed).

    Threshold policies sharing a signal are evaluated together by
    :func:`evaluate_thresholds` (recall policies on the recalled outcome); other policies
    (fixed exit, oracle, SDN fallback) through their exit and answering-exit indices.
    Correctness is against the labels, or agreement with the final exit with
    ``reference="final"``; costs are ``outputs.costs``. ``percentiles`` (0-100) adds cost
    percentiles (``quantiles``, as fractions, is the deprecated spelling).

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
    data = outputs
    correct = data.correct(reference)
    costs = data.costs
    e = data.num_exits
    qs = check_percentiles(percentiles, quantiles)
    simple = [
        type(p) is ThresholdPolicy
        and p.fallback == "last"
        and (p.signal, p.recall) == (items[0].signal, items[0].recall)
        for p in items
    ]
    if all(simple):
        scores = scores_for(data, items[0].signal)
        thresholds = torch.stack([p.threshold_vector(e, scores.device) for p in items])
        return evaluate_thresholds(
            scores,
            recalled_outcome(correct, scores, items[0].recall),
            costs,
            thresholds,
            percentiles=[100.0 * q for q in qs],
            memory_budget=memory_budget,
            distributed=distributed,
        )
    exits = torch.stack([p.exit_indices(data) for p in items])
    answers = torch.stack([p.answer_indices(data) for p in items])
    totals = _reduce_exits(exits, correct, costs, torch.int64, False, answers)
    thresholds = torch.full((len(items), e), float("nan"), dtype=torch.float64, device=exits.device)
    for i, policy in enumerate(items):
        if isinstance(policy, ThresholdPolicy):
            thresholds[i] = policy.threshold_vector(e, exits.device)
    full = _full_cost_sum(costs, data.num_samples, exits.device)
    _all_reduce(totals, full, distributed)
    return _finish(totals, thresholds, costs, qs, True, full)


def evaluate_policy(
    policy: ExitPolicy,
    data: Any,
    *,
    reference: Literal["labels", "final"] | None = None,
    percentiles: Sequence[float] | None = None,
    confidence: float = 0.95,
) -> Evaluation:
    """One policy's typed :class:`~exitwise.policies.results.Evaluation` on ``data``
    (``ExitOutputs`` or ``ExitScores``): accuracy against the labels (when there are any,
    or ``reference="final"`` for agreement only), agreement with the final exit, costs,
    exit fractions and cost percentiles, and the accuracy's Clopper–Pearson lower bound at
    ``confidence``.

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> from exitwise.policies import ThresholdPolicy
    >>> ev = evaluate_policy(ThresholdPolicy("max_probability", 0.9), load_default())
    >>> round(ev.accuracy, 4), ev.agreement > 0.9, ev.speed_up > 1
    (0.8811, True, True)
    """
    if reference is None:
        reference = "labels" if data.labels is not None else "final"
    main = evaluate(policy, data, reference=reference, percentiles=percentiles)
    agreement = None if reference == "final" else evaluate(policy, data, reference="final")
    return Evaluation.from_rows(
        main, 0, correct_is=reference, agreement=agreement, confidence=confidence
    )
