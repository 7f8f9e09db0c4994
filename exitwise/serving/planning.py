"""Capacity questions, answered with the serving simulator.

* :func:`max_rate`: the highest Poisson arrival rate at which a latency percentile stays under
  a limit (bisection on the rate; every run uses the same seed, so the answer is monotone in
  practice and reproducible).
* :func:`replicas_needed`: the fewest replicas that meet the limit at a rate.
* :func:`tune_for_serving`: among exit policies on the accuracy-cost frontier, the one with the
  best accuracy (or, with a target accuracy, the least mean cost) whose latency percentile
  meets the limit at the given load; beside it the full model and the policy
  :func:`~exitwise.policies.tune_for_accuracy` picks without looking at the load.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from exitwise._checks import check_int
from exitwise.data import ExitOutputs
from exitwise.serving.estimates import RateEstimate, ReplicaEstimate
from exitwise.serving.latency import LatencyModel
from exitwise.serving.simulator import simulate_serving

__all__ = [
    "ServingCandidate",
    "ServingPlan",
    "latency_by_rate",
    "latency_floor",
    "max_rate",
    "replicas_needed",
    "tune_for_serving",
]


def _meets(exits, latency, rate, limit, percentile, **kwargs) -> tuple[bool, float]:
    result = simulate_serving(exits, latency, rate=rate, **kwargs)
    value = result.percentiles((percentile,))[percentile]
    return value <= limit, value


def latency_floor(exits: Any, latency: LatencyModel, percentile: float = 99.0) -> float:
    """The ``percentile`` latency with no queueing and no batching: every request alone at
    batch 1 (its exit's cumulative segment time). No rate and no number of replicas can go
    below it, so a limit under it is unreachable and needs no search.

    Examples
    --------
    >>> from exitwise.serving import LatencyModel
    >>> lm = LatencyModel([1, 8], [[0.001, 0.002], [0.002, 0.006]])
    >>> latency_floor([0, 1, 1, 1], lm, 50)
    0.003
    """
    exits = np.asarray(exits, dtype=np.int64)
    alone = np.cumsum(latency.table(2)[1])[exits]
    return float(np.percentile(alone, percentile, method="inverted_cdf"))


def _interval_runs(latency: LatencyModel, seed: int, seeds: int):
    """The (latency model, seed) pairs of an interval: (slow end, fast end) x other seeds."""
    seeds = check_int(seeds, "interval_seeds", minimum=0)
    slow, fast = (latency.scaled(f) for f in latency.speed_range[::-1])
    others = [seed + 1000 * (k + 1) for k in range(seeds)] or [seed]
    return [(slow, s) for s in others], [(fast, s) for s in others]


def max_rate(
    exits: Any,
    latency: LatencyModel,
    *,
    limit: float,
    percentile: float = 99.0,
    tolerance: float = 0.01,
    interval_seeds: int = 1,
    **kwargs: Any,
) -> RateEstimate:
    """Highest arrival rate (requests/s) at which the ``percentile`` latency is <= ``limit``
    seconds (0.0 when even a trickle misses it), with its interval.

    ``kwargs`` go to :func:`~exitwise.serving.simulate_serving` (``scheduler``, ``max_batch``,
    ``replicas``, ``num_requests``, ``seed``). The search brackets the rate by doubling, then
    bisects to a relative ``tolerance``. The answer is a :class:`RateEstimate` (a float):
    ``low`` and ``high`` repeat the search at the slow and fast ends of the latency model's
    ``speed_range`` with ``interval_seeds`` other seeds each (:mod:`exitwise.serving.estimates`;
    ``interval_seeds=0``: the model's spread only).

    Examples
    --------
    >>> from exitwise.serving import LatencyModel
    >>> lm = LatencyModel([1, 8], [[0.001, 0.002], [0.002, 0.006]], speed_range=(0.9, 1.2))
    >>> rate = max_rate([0, 1], lm, limit=0.02, num_requests=4000)
    >>> 500 < rate.low < rate < rate.high < 5000
    True
    """
    seed = kwargs.pop("seed", 0)

    def search(model: LatencyModel, s: int) -> float:
        return _max_rate(exits, model, limit, percentile, tolerance, seed=s, **kwargs)

    value = search(latency, seed)
    slow, fast = _interval_runs(latency, seed, interval_seeds)
    low, high = min(search(m, s) for m, s in slow), max(search(m, s) for m, s in fast)
    return RateEstimate(value, min(low, value), max(high, value))


def _max_rate(exits, latency, limit, percentile, tolerance, **kwargs) -> float:
    if not limit > 0:
        raise ValueError(f"Expected `limit` > 0 seconds, got {limit!r}.")
    if limit < latency_floor(exits, latency, percentile):
        return 0.0  # unreachable at any rate: no simulation needed
    replicas = kwargs.get("replicas", 1)
    low = 0.05 / latency.full_time(1) * replicas  # a trickle: 5 % busy at batch 1
    ok, _ = _meets(exits, latency, low, limit, percentile, **kwargs)
    if not ok:
        return 0.0
    high = low * 2
    while _meets(exits, latency, high, limit, percentile, **kwargs)[0]:
        low, high = high, high * 2
        if high > 1e9:
            raise ValueError("The limit is met at every rate tried; check the latency model.")
    while high - low > tolerance * low:
        mid = 0.5 * (low + high)
        if _meets(exits, latency, mid, limit, percentile, **kwargs)[0]:
            low = mid
        else:
            high = mid
    return low


def replicas_needed(
    exits: Any,
    latency: LatencyModel,
    *,
    rate: float,
    limit: float,
    percentile: float = 99.0,
    max_replicas: int = 1024,
    interval_seeds: int = 1,
    **kwargs: Any,
) -> ReplicaEstimate | None:
    """Fewest replicas meeting the ``percentile`` latency ``limit`` at ``rate`` (``None``
    when ``max_replicas`` do not: the limit is below one request's own service time), with
    its interval: a :class:`ReplicaEstimate` (an int) whose ``low`` and ``high`` repeat the
    search at the fast and slow ends of the latency model's ``speed_range``, with
    ``interval_seeds`` other seeds each (``high`` is ``None`` where the slow end needs more
    than ``max_replicas``).

    Examples
    --------
    >>> from exitwise.serving import LatencyModel
    >>> lm = LatencyModel([1, 8], [[0.001, 0.002], [0.002, 0.006]])
    >>> replicas_needed([0, 1], lm, rate=4000.0, limit=0.02, num_requests=4000)
    ReplicaEstimate(3, low=3, high=3)
    """
    max_replicas = check_int(max_replicas, "max_replicas", minimum=1)
    kwargs.pop("replicas", None)
    seed = kwargs.pop("seed", 0)

    def search(model: LatencyModel, s: int) -> int | None:
        return _replicas(exits, model, rate, limit, percentile, max_replicas, seed=s, **kwargs)

    value = search(latency, seed)
    if value is None:
        return None
    slow, fast = _interval_runs(latency, seed, interval_seeds)
    highs, lows = [search(m, s) for m, s in slow], [search(m, s) for m, s in fast]
    high = None if None in highs else max([value, *highs])
    return ReplicaEstimate(value, min([value, *(v for v in lows if v is not None)]), high)


def _replicas(exits, latency, rate, limit, percentile, max_replicas, **kwargs) -> int | None:
    if limit < latency_floor(exits, latency, percentile):
        return None  # unreachable with any number of replicas
    low, high = 0, 1
    while not _meets(exits, latency, rate, limit, percentile, replicas=high, **kwargs)[0]:
        low, high = high, high * 2
        if high > max_replicas:
            return None
    while high - low > 1:
        mid = (low + high) // 2
        if _meets(exits, latency, rate, limit, percentile, replicas=mid, **kwargs)[0]:
            high = mid
        else:
            low = mid
    return high


def latency_by_rate(
    exits: Any,
    latency: LatencyModel,
    rates: Any,
    *,
    schedulers: tuple[str, ...] = ("full", "static", "compact", "refill"),
    percentile: float = 99.0,
    **kwargs: Any,
) -> dict[str, list[float]]:
    """The ``percentile`` latency (seconds; ``inf`` where the queue is unstable) at each
    rate, per scheduler: the curves of :func:`exitwise.plots_serving.latency_rate_plot`.

    Examples
    --------
    >>> from exitwise.serving import LatencyModel
    >>> lm = LatencyModel([1, 8], [[0.001, 0.002], [0.002, 0.006]])
    >>> curves = latency_by_rate([0, 1], lm, [100.0, 1e5], num_requests=2000)
    >>> sorted(curves), curves["full"][1]
    (['compact', 'full', 'refill', 'static'], inf)
    """
    out: dict[str, list[float]] = {}
    for scheduler in schedulers:
        out[scheduler] = [
            simulate_serving(
                exits, latency, rate=float(r), scheduler=scheduler, **kwargs
            ).percentiles((percentile,))[percentile]
            for r in rates
        ]
    return out


# old dict keys of a candidate row -> its typed field (one release, with a warning)
_OLD_KEYS = {
    "policy": lambda c: c.policy,
    "accuracy": lambda c: c.evaluation.accuracy,
    "relative_cost": lambda c: c.evaluation.relative_cost,
    "p": lambda c: c.latency,
    "stable": lambda c: c.stable,
}


@dataclass(frozen=True)
class ServingCandidate:
    """One policy simulated under load.

    Attributes
    ----------
    policy : ThresholdPolicy
    evaluation : Evaluation
        Its accuracy, agreement, relative cost, ... on the tuning split.
    latency : float
        Its latency (seconds) at ``percentile`` under the simulated load.
    percentile : float
    stable : bool
        Whether the queue stayed bounded at that rate.
    """

    policy: Any
    evaluation: Any
    latency: float
    percentile: float
    stable: bool

    def __getitem__(self, key: str) -> Any:
        from exitwise._deprecation import warn_renamed

        if key not in _OLD_KEYS:
            raise KeyError(key)
        new = {"p": "latency", "accuracy": "evaluation.accuracy"}.get(key, key)
        warn_renamed(f'candidate["{key}"]', f"candidate.{new}")
        return _OLD_KEYS[key](self)


@dataclass(frozen=True)
class ServingPlan:
    """Outcome of :func:`tune_for_serving`.

    Attributes
    ----------
    policy : ThresholdPolicy or None
        ``None`` when no candidate meets the limit (and the target); ``reason`` says why.
    candidates : list of ServingCandidate
        Every simulated candidate (its evaluation, latency percentile and stability).
    chosen, full_model, accuracy_tuned : ServingCandidate or None
        The chosen candidate; the full model; the policy ``tune_for_accuracy`` picks (when
        ``target_accuracy`` is given and it finds one).
    reason : str or None
    """

    policy: Any
    candidates: list[ServingCandidate]
    chosen: ServingCandidate | None
    full_model: ServingCandidate
    accuracy_tuned: ServingCandidate | None
    reason: str | None = None


def tune_for_serving(
    outputs: ExitOutputs,
    signal: str,
    latency: LatencyModel,
    *,
    rate: float,
    limit: float,
    percentile: float = 99.0,
    target_accuracy: float | None = None,
    budget: float | None = None,
    num_candidates: int = 40,
    **kwargs: Any,
) -> ServingPlan:
    """The exit policy that serves best at ``rate`` with its ``percentile`` latency <= ``limit``.

    Candidates are points of the accuracy-cost frontier of ``outputs`` (the tuning split;
    :func:`~exitwise.policies.pareto_frontier`: every shared threshold and per-exit tuned
    points), ``num_candidates`` of them evenly spread over cost. Each is simulated with its
    own exit depths on ``outputs``. Without ``target_accuracy`` the most accurate feasible one
    wins (with ``budget``, among those whose mean cost is at most that share of the full
    model's); with it, the cheapest feasible one with accuracy >= the target.

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> from exitwise.serving import LatencyModel
    >>> cal = load_default().split(0.5, seed=0)[0]
    >>> lm = LatencyModel([1, 32], [[1e-4] * 4, [1e-3, 4e-3, 4e-3, 3e-3]])
    >>> plan = tune_for_serving(cal, "max_probability", lm, rate=3000.0, limit=0.02,
    ...                         num_candidates=8, num_requests=3000)
    >>> plan.chosen.latency <= 0.02, plan.full_model.latency > 0.02
    (True, True)
    """
    from exitwise.policies import (
        ExitScores,
        ThresholdPolicy,
        evaluate_policy,
        pareto_frontier,
        tune_for_accuracy,
    )

    num_candidates = check_int(num_candidates, "num_candidates", minimum=1)
    scores = ExitScores(outputs, signal)  # the signal, once for every candidate
    signal = scores.signal
    front = pareto_frontier(scores)
    cost = front["mean_cost"].numpy()
    spread = np.linspace(cost.min(), cost.max(), num_candidates)
    picks = np.unique(np.minimum(np.searchsorted(cost, spread), cost.size - 1))

    def row(policy: Any) -> ServingCandidate:
        exits = policy.exit_indices(scores).cpu().numpy()
        result = simulate_serving(exits, latency, rate=rate, **kwargs)
        return ServingCandidate(
            policy,
            evaluate_policy(policy, scores),
            result.percentiles((percentile,))[percentile],
            float(percentile),
            result.stable,
        )

    rows = []
    for i in picks.tolist():
        thresholds = front["thresholds"][i]
        rows.append(row(ThresholdPolicy(signal, [float(t) for t in thresholds])))
    full = row(ThresholdPolicy(signal, math.inf))
    if target_accuracy is not None and budget is not None:
        raise ValueError("Pass `target_accuracy` or `budget`, not both.")
    ok = [
        r
        for r in rows
        if r.latency <= limit
        and (target_accuracy is None or r.evaluation.accuracy >= target_accuracy)
        and (budget is None or r.evaluation.relative_cost <= budget + 1e-12)
    ]
    chosen = None
    if ok:
        key = (
            (lambda r: r.evaluation.relative_cost)
            if target_accuracy is not None
            else (lambda r: -r.evaluation.accuracy)
        )
        chosen = min(ok, key=key)
    tuned_row = None
    if target_accuracy is not None:
        tuned = tune_for_accuracy(scores, target=target_accuracy, relative=False)
        tuned_row = row(tuned.policy) if tuned.feasible else None
    reason = None
    if chosen is None:
        fastest = min(r.latency for r in rows)
        reason = (
            f"no candidate has p{percentile:g} latency <= {limit:g} s"
            + (f" with accuracy >= {target_accuracy:g}" if target_accuracy is not None else "")
            + (f" and mean cost <= {budget:g}" if budget is not None else "")
            + f" at {rate:g} requests/s (the fastest candidate: {fastest:.4g} s)"
        )
    return ServingPlan(chosen.policy if chosen else None, rows, chosen, full, tuned_row, reason)
