"""The tuners' confidence-level mode: a shared threshold certified by Learn-then-Test.

``tune_for_accuracy``, ``tune_for_budget`` and ``tune_for_latency`` with ``confidence=c``
return the policy :func:`~exitwise.policies.risk_controlled_threshold` certifies for their
constraint at confidence ``c``, so the constraint holds on new data with probability at least
``c``; picking the best of many per-exit candidates on the same data would not keep that
promise (the candidates' own bounds are each optimistic once one is chosen). This module adds
the tuners' evaluation to that certificate; it is the one route to a certified shared
threshold for the tuners.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from exitwise._checks import check_open_unit
from exitwise.policies.evaluate_policies import evaluate_policy
from exitwise.policies.results import PolicyResult
from exitwise.policies.risk import risk_controlled_threshold
from exitwise.policies.scores import ExitScores

__all__ = ["certified_tuning"]


def certified_tuning(
    scores: ExitScores,
    *,
    confidence: float,
    risk: str,
    limit: float,
    grid: Any = None,
    reference: Literal["labels", "final"] = "labels",
    recall: str = "none",
    unit: str | None = None,
    direction: Literal["down", "up"] = "down",
    losses: Any = None,
    percentiles: tuple[float, ...] = (),
    asked: dict[str, float] | None = None,
) -> PolicyResult:
    """Learn-then-Test at ``confidence`` for ``risk <= limit``
    (:func:`~exitwise.policies.risk_controlled_threshold`), with the certified policy's
    :class:`~exitwise.policies.results.Evaluation` on ``scores`` (``percentiles`` in
    percent) and ``asked`` (what the tuner was asked, e.g. ``{"accuracy": 0.85}``) as the
    result's ``limits``.

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> from exitwise.policies import ExitScores
    >>> cal = ExitScores(load_default()[:2000], "max_probability")
    >>> r = certified_tuning(cal, confidence=0.9, risk="error", limit=0.15)
    >>> r.feasible, r.guarantee.p_values["error"] <= 0.1, r.guarantee.unit
    (True, True, 'sample')
    """
    confidence = check_open_unit(confidence, "confidence")
    res = risk_controlled_threshold(
        scores,
        risk=risk,
        limit=limit,
        confidence=confidence,
        grid=grid,
        recall=recall,
        losses=losses,
        direction=direction,
        unit=unit,
    )
    limits = dict(asked) if asked else dict(res.limits)
    if res.policy is None:
        return dataclasses.replace(res, limits=limits)
    evaluation = evaluate_policy(
        res.policy,
        scores,
        reference=reference,
        percentiles=percentiles or None,
        confidence=confidence,
    )
    return dataclasses.replace(res, evaluation=evaluation, limits=limits)
