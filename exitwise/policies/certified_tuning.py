"""The tuners' confidence-level mode: a shared threshold certified by Learn-then-Test.

``tune_for_accuracy``, ``tune_for_budget`` and ``tune_for_latency`` with ``confidence=c``
return the policy :func:`~exitwise.policies.risk_controlled_threshold` certifies for their
constraint with failure probability ``1 - c``, so the constraint holds on new data with
probability at least ``c``; picking the best of many per-exit candidates on the same data
would not keep that promise (the candidates' own bounds are each optimistic once one is
chosen).
"""

from __future__ import annotations

import math
from typing import Any

from exitwise._checks import check_open_unit
from exitwise.data import ExitOutputs
from exitwise.policies.evaluate_policies import evaluate
from exitwise.policies.risk import risk_controlled_threshold
from exitwise.policies.tune import TunedPolicy, _summary, _with_lower_bound

__all__ = ["certified_tuning"]


def certified_tuning(
    outputs: ExitOutputs,
    signal: str,
    confidence: float,
    grid: Any,
    kwargs: dict[str, Any],
    quantiles: tuple[float, ...] = (),
    **risk_args: Any,
) -> TunedPolicy:
    """Learn-then-Test at failure probability ``1 - confidence`` (``risk_args`` go to
    :func:`~exitwise.policies.risk_controlled_threshold`), summarised like a tuner's result
    with the p-value and the accuracy's Clopper–Pearson bound at ``confidence``.

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> cal = load_default()[:2000]
    >>> tuned = certified_tuning(cal, "max_probability", 0.9, None, {}, risk="error", delta=0.15)
    >>> tuned.feasible, tuned.achieved["p_value"] <= 0.1
    (True, True)
    """
    confidence = check_open_unit(confidence, "confidence")
    res = risk_controlled_threshold(
        outputs, signal, epsilon=1.0 - confidence, grid=grid, **risk_args
    )
    if res.policy is None:
        return TunedPolicy(None, False, {}, math.inf, quantiles)
    reference = kwargs.get("reference", "labels")
    ev = evaluate(res.policy, outputs, reference=reference, quantiles=quantiles or None)
    achieved = _with_lower_bound(_summary(ev), outputs.num_samples, confidence)
    achieved["p_value"] = float(res.p_values[res.certified_index])
    return TunedPolicy(res.policy, True, achieved, res.threshold, quantiles)
