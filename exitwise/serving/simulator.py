r"""A discrete-event simulation of serving an early-exit model under load.

Requests arrive (a Poisson process at ``rate`` per second, or a trace of timestamps), wait in
one FIFO queue shared by ``replicas`` identical servers, and run in batches of at most
``max_batch``. Each request leaves at its own exit depth (bootstrap-sampled from a policy's exits
on real data, so the joint distribution is the data's); running segment ``e`` for ``b``
requests takes ``latency.time(e, b)`` seconds. Schedulers:

* ``"full"``: no early exit; a batch runs every segment (the static model).
* ``"static"``: a batch runs until its deepest member's exit and every member answers when
  the batch ends (what most paper code does); the time between a request's exit and its
  answer is its *involuntary wait*.
* ``"compact"``: after each exit the requests that left are dropped and answered; the batch
  continues smaller. The server takes a new batch when the deepest member is done.
* ``"refill"``: layer-level continuous batching. The server runs *steps*: in a step every
  request in its ``max_batch`` slots runs its next segment (the requests at each segment as
  one group, the groups one after another); requests that reached their exit are answered at
  the end of the step and their slots are refilled from the queue; new requests start at
  segment 0.

A server that finds the queue empty waits for the next arrival and starts with what is there
(no batching timeout); its first segment after waiting ``idle`` seconds takes
``latency.wake_up_time(idle)`` longer.

The loop is a small heap of server-free events written for this module (about 100 lines):
every step can be checked by hand (``tests/test_serving.py`` does), it is
deterministic for a seed, and it needs no dependency; SimPy would add a process abstraction
that this model does not need.

A run whose queue keeps growing is reported as unstable (:attr:`ServingResult.stable`), and
its percentiles are ``inf`` instead of a number that only reflects the run's length.
"""

from __future__ import annotations

import heapq
import math
from typing import Any

import numpy as np

from exitwise._checks import check_choice, check_int
from exitwise.serving.batch_log import BatchRecorder
from exitwise.serving.latency import LatencyModel, WarmthState
from exitwise.serving.serving_result import ServingResult

__all__ = ["SCHEDULERS", "ServingResult", "poisson_arrivals", "simulate_serving"]

#: the schedulers :func:`simulate_serving` knows
SCHEDULERS = ("static", "compact", "refill", "full")


def poisson_arrivals(rate: float, num_requests: int, seed: int = 0) -> np.ndarray:
    """Arrival times of a Poisson process at ``rate`` per second, starting at 0.

    Examples
    --------
    >>> poisson_arrivals(100.0, 3, seed=0).round(4)
    array([0.    , 0.0102, 0.0104])
    """
    if not rate > 0 or not math.isfinite(rate):
        raise ValueError(f"Expected `rate` > 0 requests per second, got {rate!r}.")
    num_requests = check_int(num_requests, "num_requests", minimum=1)
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, num_requests)
    gaps[0] = 0.0
    return np.cumsum(gaps)


def simulate_serving(
    exits: Any,
    latency: LatencyModel,
    *,
    rate: float | None = None,
    arrivals: Any = None,
    num_requests: int = 20000,
    scheduler: str = "compact",
    max_batch: int = 32,
    replicas: int = 1,
    seed: int = 0,
) -> ServingResult:
    """Simulate serving requests whose exit depths are drawn from ``exits``.

    Parameters
    ----------
    exits : array-like of int
        Exit depths observed on real data (e.g. ``policy.exit_indices(outputs)``); each request
        draws one at random (with replacement). For a trace, pass one per request in order
        and ``arrivals``.
    latency : LatencyModel
    rate : float, optional
        Poisson arrival rate per second (or give ``arrivals``).
    arrivals : array-like, optional
        Arrival times (seconds, non-decreasing); then ``exits`` must match them one to one.
    num_requests : int, default=20000
    scheduler : {"static", "compact", "refill", "full"}, default="compact"
    max_batch, replicas : int
    seed : int, default=0

    Returns
    -------
    ServingResult

    Examples
    --------
    >>> from exitwise.serving import LatencyModel
    >>> lm = LatencyModel([1, 8], [[0.001, 0.004], [0.002, 0.011]])
    >>> r = simulate_serving([0, 0, 1], lm, rate=100.0, num_requests=5000)
    >>> r.stable, round(r.throughput) > 90
    (True, True)
    """
    check_choice(scheduler, "scheduler", SCHEDULERS)
    max_batch = check_int(max_batch, "max_batch", minimum=1)
    replicas = check_int(replicas, "replicas", minimum=1)
    depths_seen = np.asarray(exits)
    if (
        depths_seen.ndim != 1
        or depths_seen.size == 0
        or not np.issubdtype(depths_seen.dtype, np.integer)
    ):
        raise ValueError("Expected `exits`: a non-empty 1-D array of exit indices (integers).")
    e = latency.num_segments
    if depths_seen.min() < 0 or depths_seen.max() >= e:
        raise ValueError(
            f"Expected `exits` in [0, {e - 1}] (the latency model has {e} segments), got "
            f"values in [{depths_seen.min()}, {depths_seen.max()}]."
        )
    if arrivals is not None:
        arr = np.asarray(arrivals, dtype=np.float64)
        if arr.ndim != 1 or arr.size != depths_seen.size or (np.diff(arr) < 0).any():
            raise ValueError("Expected `arrivals`: non-decreasing times, one per entry of `exits`.")
        depths, offered = depths_seen.astype(np.int64), math.nan
    else:
        if rate is None:
            raise ValueError("Pass `rate` (Poisson arrivals) or `arrivals` (a trace).")
        arr = poisson_arrivals(rate, num_requests, seed)
        rng = np.random.default_rng(seed + 1)
        depths = depths_seen[rng.integers(0, depths_seen.size, arr.size)].astype(np.int64)
        offered = float(rate)
    if scheduler == "full":
        depths = np.full(arr.size, e - 1, dtype=np.int64)
    table = latency.table(max_batch + 1)
    run = _refill if scheduler == "refill" else _batches
    # with a warmth effect the servers start at their steady-state warmth, the utilisation: a
    # first pass from full warmth measures it, the second starts there
    start = 1.0
    for _ in range(2 if latency.warmth[0] > 0 else 1):
        noise, log = _Jitter(latency.jitter, e, seed), BatchRecorder(e)
        warmth = WarmthState(latency.warmth, replicas, start)
        starts, answers, ready, busy = run(
            arr, depths, table, scheduler, max_batch, replicas, latency, noise, log, warmth
        )
        duration = float(answers.max() - arr.min())
        start = min(1.0, busy / (replicas * duration)) if duration > 0 else 1.0
    stable = _stable(arr, starts, max_batch * replicas)
    return ServingResult(
        scheduler,
        offered,
        max_batch,
        replicas,
        arr,
        starts,
        answers,
        depths,
        answers - ready,
        busy,
        stable,
        log.finish(),
    )


class _Jitter:
    """Per-segment time factors drawn from the latency model's ``jitter`` (ones without)."""

    def __init__(self, factors: np.ndarray | None, num_segments: int, seed: int) -> None:
        self.factors, self.e = factors, num_segments
        self.rng = np.random.default_rng(seed + 2)
        self.buffer, self.used = np.empty((0, num_segments)), 0

    def next(self) -> np.ndarray:
        if self.factors is None:
            return np.ones(self.e)
        if self.used == len(self.buffer):
            self.buffer = self.rng.choice(self.factors, size=(4096, self.e))
            self.used = 0
        self.used += 1
        return self.buffer[self.used - 1]


def _batches(arr, depths, table, scheduler, max_batch, replicas, latency, noise, log, warmth):
    """``full``, ``static`` and ``compact``: one batch at a time per server."""
    n, e = arr.size, table.shape[1]
    starts, answers, ready = np.empty(n), np.empty(n), np.empty(n)
    free = [(-math.inf, r) for r in range(replicas)]
    busy, i = 0.0, 0
    segments = np.arange(e)
    while i < n:
        t_free, r = heapq.heappop(free)
        t = max(t_free, arr[i])
        idle = max(0.0, arr[i] - t_free)
        begin = t + latency.wake_up_time(idle)  # > 0 when the server waited idle
        j = i + int(np.searchsorted(arr[i : i + max_batch], t, side="right"))
        d = depths[i:j]
        deepest = int(d.max())
        warmth.cool(r, idle)
        factor = noise.next()[: deepest + 1] * warmth.factor(r)
        if scheduler == "compact":
            alive = (d[:, None] >= segments[None, : deepest + 1]).sum(axis=0)
            seconds = table[alive, segments[: deepest + 1]] * factor
            done = begin + np.cumsum(seconds)
            answers[i:j] = ready[i:j] = done[d]
        else:  # full / static: everyone runs to the deepest exit, answers at the end
            alive = np.full(deepest + 1, j - i)
            seconds = table[j - i, : deepest + 1] * factor
            done = begin + np.cumsum(seconds)
            answers[i:j] = done[-1]
            ready[i:j] = done[d]
        seconds[0] += begin - t
        queue = int(np.searchsorted(arr, t, side="right")) - j
        log.add(r, t, j - i, queue, alive, seconds, float(done[-1]), idle)
        starts[i:j] = t
        free_at = float(done[-1]) + latency.overhead_time(j - i)  # bookkeeping after it
        busy += free_at - t
        warmth.warm(r, free_at - t)
        heapq.heappush(free, (free_at, r))
        i = j
    return starts, answers, ready, busy


def _refill(arr, depths, table, scheduler, max_batch, replicas, latency, noise, log, warmth):
    """Layer-level continuous batching: steps of one segment per request in the slots."""
    n, e = arr.size, table.shape[1]
    starts, answers = np.full(n, np.nan), np.full(n, np.nan)
    events = [(0.0, r) for r in range(replicas)]
    slots: list[list[list[int]]] = [[] for _ in range(replicas)]  # [request, next segment]
    idle_from = [-math.inf] * replicas  # when the server ran out of work (None: busy)
    busy, queued, answered = 0.0, 0, 0
    segments = np.arange(e)
    while answered < n:
        t, r = heapq.heappop(events)
        active = slots[r]
        while len(active) < max_batch and queued < n and arr[queued] <= t:
            starts[queued] = t
            active.append([queued, 0])
            queued += 1
        if not active:
            if idle_from[r] is None:
                idle_from[r] = t
            if queued < n:
                heapq.heappush(events, (float(arr[queued]), r))
            continue
        idle = 0.0 if idle_from[r] is None else t - idle_from[r]
        counts = np.bincount([s for _, s in active], minlength=e)
        warmth.cool(r, idle)
        seconds = table[counts, segments] * noise.next() * warmth.factor(r)
        if idle:  # the step's first group pays the wake-up
            seconds[np.argmax(counts > 0)] += latency.wake_up_time(idle)
        step = float(seconds.sum())
        queue = int(np.searchsorted(arr, t, side="right")) - queued
        log.add(r, t, len(active), queue, counts, seconds, t + step, idle)
        idle_from[r] = None
        end = t + step
        after = latency.overhead_time(len(active))
        busy += step + after
        warmth.warm(r, step + after)
        still = []
        for item in active:
            if item[1] == depths[item[0]]:
                answers[item[0]] = end
                answered += 1
            else:
                item[1] += 1
                still.append(item)
        slots[r] = still
        heapq.heappush(events, (end + after, r))
    return starts, answers, answers.copy(), busy


def _stable(arr: np.ndarray, starts: np.ndarray, slots: int) -> bool:
    n = arr.size
    backlog = int(np.sum(starts > arr[-1]))
    if backlog <= max(4 * slots, 0.01 * n) or n < 20:
        return True
    waits = starts - arr
    middle = waits[2 * n // 5 : 3 * n // 5].mean()
    last = waits[4 * n // 5 :].mean()
    return not last > 1.5 * middle
