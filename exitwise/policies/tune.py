"""Tune exit thresholds for an SLA: accuracy target, compute budget, latency percentile.

Every tuner works on a tuning (calibration) split (:class:`~exitwise.ExitOutputs` plus a
signal, or :class:`~exitwise.policies.ExitScores`) and returns a
:class:`~exitwise.policies.PolicyResult`: the policy, its evaluation there and
``report(test)`` for a held-out split; or no policy, with the reason and the best achievable
values.

The search: start from the best *shared* threshold (exact, from every breakpoint of
:func:`sweep_shared_threshold`), then improve the per-exit thresholds by exact
coordinate-wise line searches: with the other thresholds fixed, every distinct score at exit
``j`` (and ``+inf``) is a candidate for ``t_j``, all scored at once by one sort and
cumulative sums (:func:`sweep_exit_threshold`, O(N log N) per exit), and the best feasible
one is kept. A move is only taken when it improves the objective, so
the result is never worse than the best shared threshold on the tuning split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch

from exitwise._checks import check_choice, check_costs, check_int, check_open_unit
from exitwise._deprecation import MISSING, moved_names
from exitwise._distributed import all_reduce_max, group_active
from exitwise.data import ExitOutputs
from exitwise.policies.certified_tuning import certified_tuning
from exitwise.policies.constraints import (
    AccuracyAtLeast,
    CostAtMost,
    CostQuantileAtMost,
    RiskAtMost,
    resolve_relative,
)
from exitwise.policies.entry import as_scores
from exitwise.policies.evaluate_policies import evaluate_policy
from exitwise.policies.gathered import search_on_first_rank
from exitwise.policies.inputs import percent_levels
from exitwise.policies.recall import Recall, recalled_outcome
from exitwise.policies.results import PolicyResult
from exitwise.policies.scores import ExitScores
from exitwise.policies.search import search_thresholds
from exitwise.policies.threshold import ThresholdPolicy
from exitwise.policies.tune_limits import infeasible_result, limits_of

__all__ = [
    "AccuracyAtLeast",
    "CostAtMost",
    "CostQuantileAtMost",
    "RiskAtMost",
    "tune",
    "tune_for_accuracy",
    "tune_for_budget",
    "tune_for_latency",
]


# the old result type of the tuners, one release with a warning
__getattr__ = moved_names(__name__, {"TunedPolicy": ("PolicyResult", lambda: PolicyResult)})


def tune(
    outputs: ExitOutputs | ExitScores,
    signal: Any = None,
    objective: Literal["cost", "accuracy"] = "cost",
    constraints: Sequence[Any] | None = None,
    *,
    per_exit: bool = True,
    rounds: int = 3,
    percentiles: Sequence[float] | None = None,
    reference: Literal["labels", "final"] = "labels",
    recall: Recall = "none",
    min_exit: int = 0,
    progress: bool | None = None,
    quantiles: Any = MISSING,
) -> PolicyResult:
    """General tuner: minimise mean cost (``objective="cost"``) or maximise accuracy
    (``"accuracy"``) subject to ``constraints``, on the tuning split.

    Parameters
    ----------
    outputs : ExitOutputs or ExitScores
        Tuning split (labels needed unless ``reference="final"``); ``ExitScores`` carry their
        signal (pass ``signal=None``) and are used without recomputing it.
    signal : str, DecayedSignal, callable or array-like of shape (N, E)
        The signal (:func:`~exitwise.policies.scores.resolve_signal`: checked before the
        search), e.g. a name from :mod:`exitwise.signals` or a position-aware
        :class:`~exitwise.policies.positions.DecayedSignal` (CALM's decaying thresholds).
    constraints : list
        :class:`AccuracyAtLeast`, :class:`CostAtMost`, :class:`CostQuantileAtMost`,
        :class:`RiskAtMost`.
    per_exit : bool, default=True
        Improve per-exit thresholds after the shared one (``rounds`` coordinate passes, each
        an exact line search per exit: :func:`~exitwise.policies.sweep_exit_threshold`).
    percentiles : sequence of float in [0, 100], optional
        Cost percentiles to report in the evaluation (``quantiles`` is the old spelling).
    recall : {"none", "most_confident"}, default="none"
        Tune a recall policy (the most confident exit computed so far answers); the search
        stays exact (:func:`~exitwise.policies.recall.recalled_outcome`).
    min_exit : int, default=0
        Never exit before exit ``min_exit``: the search runs on exits ``min_exit..E-1`` (with
        their cumulative costs; signals are computed on all exits), which is exact.
    progress : bool, optional
        Show a progress bar over the per-exit line searches (default: when N * E >= 10^7).

    Returns
    -------
    PolicyResult
        The policy and its evaluation on the tuning split; or no policy, with the reason and
        the best achievable values.

    Notes
    -----
    In an initialised ``torch.distributed`` group of several processes each rank passes its
    shard and every rank gets the one-process answer on the concatenated shards (rank order):
    the ``[N, E]`` scores and outcome tables, not the logits, are gathered on rank 0, which
    searches them and hands every rank the result
    (:func:`~exitwise.policies.gathered.search_on_first_rank`).

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> cal, test = load_default().split(0.5, seed=0)
    >>> tuned = tune(cal, "max_probability", "cost", [AccuracyAtLeast(0.87, relative=False)])
    >>> tuned.feasible, tuned.evaluation.accuracy >= 0.87
    (True, True)
    """
    check_choice(objective, "objective", ("cost", "accuracy"))
    if constraints is None:
        raise TypeError("Expected `constraints`, e.g. [AccuracyAtLeast(0.99, relative=True)].")
    constraints = list(constraints)
    rounds = check_int(rounds, "rounds", minimum=0)
    pct = percent_levels(percentiles, quantiles)
    data = as_scores(outputs, signal)
    if group_active():  # the exact search reads every rank's scores: rank 0 runs it on them
        return search_on_first_rank(
            lambda every: tune(
                every,
                None,
                objective,
                constraints,
                per_exit=per_exit,
                rounds=rounds,
                percentiles=pct or None,
                reference=reference,
                recall=recall,
                min_exit=min_exit,
                progress=progress,
            ),
            data,
        )
    scores = data.scores.cpu()
    correct = recalled_outcome(data.correct(reference).cpu(), scores, recall)
    costs = data.costs.cpu()
    needs_agreement = any(
        isinstance(c, RiskAtMost) and c.risk == "disagreement" for c in constraints
    )
    agree = recalled_outcome(data.agreement().cpu(), scores, recall) if needs_agreement else None
    m = check_int(min_exit, "min_exit", minimum=0)
    if m >= scores.shape[1]:
        raise ValueError(f"Expected `min_exit` below the number of exits ({scores.shape[1]}).")
    limits = limits_of(constraints, float(correct[:, -1].double().mean()), data.full_cost)
    thresholds, shared_tau = search_thresholds(
        scores[:, m:],
        correct[:, m:],
        costs[..., m:],
        constraints,
        objective,
        rounds if per_exit else 0,
        None if agree is None else agree[:, m:],
        progress,
    )
    if thresholds is None:
        return infeasible_result(data, correct, constraints, reference, limits, "sample")
    thresholds = torch.cat([torch.full((m,), math.inf, dtype=torch.float64), thresholds])
    policy = ThresholdPolicy(data.signal, thresholds.tolist(), recall=recall, min_exit=m)
    evaluation = evaluate_policy(
        policy, data, reference=reference, percentiles=pct or None
    )
    return PolicyResult(
        policy,
        evaluation,
        shared_threshold=shared_tau,
        limits=limits,
        num_units=data.num_samples,
        unit="sample",
    )


def tune_for_accuracy(
    outputs: ExitOutputs | ExitScores,
    signal: Any = None,
    target: float | None = None,
    *,
    relative: bool | None = None,
    confidence: float | None = None,
    grid: Any = None,
    per_exit: bool = True,
    rounds: int = 3,
    percentiles: Sequence[float] | None = None,
    reference: Literal["labels", "final"] = "labels",
    recall: Recall = "none",
    min_exit: int = 0,
    unit: str | None = None,
    progress: bool | None = None,
    quantiles: Any = MISSING,
) -> PolicyResult:
    """Least mean cost with accuracy >= ``target`` (x the final exit's accuracy if
    ``relative``, the default of every tuner).

    By default the target is met on the tuning split, and new data misses it about half the
    time when the chosen policy sits right on it (``evaluation.accuracy_lower_bound``, the
    one-sided 95 % Clopper–Pearson bound, says how far it may fall). With ``confidence``
    (e.g. 0.9) the target holds on new data with at least that probability: the policy is a
    shared threshold certified by Learn-then-Test
    (:func:`~exitwise.policies.risk_controlled_threshold` with ``risk="error"`` and
    ``limit = 1 - target``; a relative target takes the final exit's accuracy on this split
    as known), over sequences for token data (``unit``). Per-exit thresholds picked on the
    same data would not keep the guarantee: picking the cheapest of many candidates whose
    bound clears the target met it on new data only 66 % of the time at confidence 0.9 on
    the bundled data. ``grid`` is passed on for signals outside [0, 1].

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> cal, test = load_default().split(0.5, seed=0)
    >>> tuned = tune_for_accuracy(cal, "max_probability", 0.99, relative=True)
    >>> tuned.evaluation.speed_up > 1.0
    True
    """
    if target is None:
        raise TypeError("Expected an accuracy `target`, e.g. 0.99 (relative) or 0.87.")
    relative = resolve_relative(relative)
    if not relative:
        check_open_unit(target, "target")
    data = as_scores(outputs, signal)
    if confidence is None:
        return tune(
            data,
            None,
            "cost",
            [AccuracyAtLeast(target, relative=relative)],
            per_exit=per_exit,
            rounds=rounds,
            percentiles=percentiles,
            reference=reference,
            recall=recall,
            min_exit=min_exit,
            progress=progress,
            quantiles=quantiles,
        )
    absolute = data.accuracy_target(target, relative, reference)
    if not 0.0 < absolute < 1.0:
        raise ValueError(f"Expected an accuracy target in (0, 1), got {absolute!r}.")
    return certified_tuning(
        data,
        confidence=confidence,
        risk="error" if reference == "labels" else "disagreement",
        limit=1.0 - absolute,
        grid=grid,
        reference=reference,
        recall=recall,
        unit=unit,
        percentiles=percent_levels(percentiles, quantiles),
        asked={"accuracy": absolute},
    )


def _largest_full_cost(data: ExitScores) -> float:
    """The largest cost of running a sample to the last exit (of every rank's samples)."""
    top = data.costs[..., -1].max().to(torch.float64).reshape(1)
    if group_active():
        all_reduce_max(top)
    return float(top)


def tune_for_budget(
    outputs: ExitOutputs | ExitScores,
    signal: Any = None,
    budget: float | None = None,
    *,
    relative: bool = True,
    confidence: float | None = None,
    grid: Any = None,
    per_exit: bool = True,
    rounds: int = 3,
    percentiles: Sequence[float] | None = None,
    reference: Literal["labels", "final"] = "labels",
    recall: Recall = "none",
    min_exit: int = 0,
    unit: str | None = None,
    progress: bool | None = None,
    quantiles: Any = MISSING,
) -> PolicyResult:
    """Best accuracy with mean cost <= ``budget`` (a fraction of the final exit's cost by
    default).

    With ``confidence`` the budget holds on new data with at least that probability: a shared
    threshold certified by Learn-then-Test on the cost over the full cost (a loss in [0, 1],
    WSR p-values), walking the thresholds up from "everyone leaves at the first exit".

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> cal, test = load_default().split(0.5, seed=0)
    >>> tune_for_budget(cal, "max_probability", 0.5).evaluation.speed_up >= 2.0
    True
    """
    if budget is None:
        raise TypeError("Expected a `budget`, e.g. 0.5 (half the full model's cost).")
    relative = resolve_relative(relative)
    data = as_scores(outputs, signal)
    if confidence is None:
        return tune(
            data,
            None,
            "accuracy",
            [CostAtMost(budget, relative=relative)],
            per_exit=per_exit,
            rounds=rounds,
            percentiles=percentiles,
            reference=reference,
            recall=recall,
            min_exit=min_exit,
            progress=progress,
            quantiles=quantiles,
        )
    share = budget if relative else budget / _largest_full_cost(data)
    return certified_tuning(
        data,
        confidence=confidence,
        risk="cost",
        limit=share,
        grid=grid,
        reference=reference,
        recall=recall,
        unit=unit,
        direction="up",
        percentiles=percent_levels(percentiles, quantiles),
        asked={"relative_cost": share},
    )


def tune_for_latency(
    outputs: ExitOutputs | ExitScores,
    signal: Any = None,
    latencies: Any = None,
    percentile: float | None = None,
    limit: float | None = None,
    *,
    confidence: float | None = None,
    grid: Any = None,
    per_exit: bool = True,
    rounds: int = 3,
    reference: Literal["labels", "final"] = "labels",
    recall: Recall = "none",
    min_exit: int = 0,
    unit: str | None = None,
    progress: bool | None = None,
) -> PolicyResult:
    """Best accuracy with the ``percentile`` (e.g. 99) of per-sample latency <= ``limit``.

    ``latencies`` are cumulative per-exit latencies ``[E]`` (e.g. milliseconds); they replace
    the costs for this tuning (:meth:`ExitScores.with_costs`: labels, ``groups`` and
    ``positions`` are kept). With ``confidence`` the percentile holds on new data with at
    least that probability: a shared threshold certified by Learn-then-Test on the 0/1 loss
    "latency > limit" with limit ``1 - percentile / 100`` (binomial p-values, or over
    sequences for token data), walking the thresholds up from "everyone leaves at the first
    exit".

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> cal, _ = load_default().split(0.5, seed=0)
    >>> r = tune_for_latency(cal, "max_probability", [2.0, 4.0, 6.0, 8.0], 90, 6.0)
    >>> r.evaluation.cost_percentiles[90.0] <= 6.0
    True
    """
    if latencies is None or percentile is None or limit is None:
        raise TypeError("Expected `latencies` [E], a `percentile` (e.g. 99) and a `limit`.")
    if isinstance(percentile, bool) or not 0.0 < float(percentile) < 100.0:
        raise ValueError(f"Expected `percentile` in (0, 100), e.g. 99, got {percentile!r}.")
    data = as_scores(outputs, signal)
    lat = check_costs(latencies, "latencies", data.num_exits, positive=True, device=data.device)
    timed = data.with_costs(lat)
    q = float(percentile) / 100.0
    if confidence is None:
        return tune(
            timed,
            None,
            "accuracy",
            [CostQuantileAtMost(q, limit)],
            per_exit=per_exit,
            rounds=rounds,
            percentiles=(percentile,),
            reference=reference,
            recall=recall,
            min_exit=min_exit,
            progress=progress,
        )
    slow = (lat > limit).to(torch.float64).expand(data.num_samples, -1)
    return certified_tuning(
        timed,
        confidence=confidence,
        risk="latency",
        limit=1.0 - q,
        grid=grid,
        reference=reference,
        recall=recall,
        unit=unit,
        direction="up",
        losses=slow,
        percentiles=(float(percentile),),
        asked={f"p{float(percentile):g}_latency": float(limit)},
    )
