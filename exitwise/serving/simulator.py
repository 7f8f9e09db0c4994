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
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from exitwise._checks import check_choice, check_int
from exitwise.serving.latency import LatencyModel

__all__ = ["SCHEDULERS", "ServingResult", "poisson_arrivals", "simulate_serving"]

#: the schedulers :func:`simulate_serving` knows
SCHEDULERS = ("static", "compact", "refill", "full")


@dataclass(frozen=True)
class ServingResult:
    """Every request's timeline in one simulated run.

    Attributes
    ----------
    scheduler : str
    rate : float
        Offered arrival rate (requests per second; NaN for a trace).
    max_batch, replicas : int
    arrivals, starts, answers, exits : numpy.ndarray
        Per request: arrival, start of service, time its answer is returned, exit depth.
    involuntary : numpy.ndarray
        Per request, seconds between its exit's result and its answer (``"static"`` only).
    busy : float
        Server-seconds spent running segments.
    stable : bool
        False when the queue kept growing (the backlog at the last arrival exceeds
        ``max(4 * max_batch * replicas, 1 % of requests)`` and waits in the last fifth of
        requests are more than 1.5x those in the middle fifth).
    """

    scheduler: str
    rate: float
    max_batch: int
    replicas: int
    arrivals: np.ndarray = field(repr=False)
    starts: np.ndarray = field(repr=False)
    answers: np.ndarray = field(repr=False)
    exits: np.ndarray = field(repr=False)
    involuntary: np.ndarray = field(repr=False)
    busy: float
    stable: bool

    @property
    def latency(self) -> np.ndarray:
        """Seconds from arrival to answer, per request."""
        return self.answers - self.arrivals

    @property
    def waits(self) -> np.ndarray:
        """Seconds in the queue before service starts, per request."""
        return self.starts - self.arrivals

    @property
    def duration(self) -> float:
        return float(self.answers.max() - self.arrivals.min())

    @property
    def throughput(self) -> float:
        """Requests answered per second over the run."""
        return len(self.arrivals) / self.duration

    @property
    def utilisation(self) -> float:
        """Share of server time spent running segments."""
        return self.busy / (self.replicas * self.duration)

    def percentiles(self, levels: tuple[float, ...] = (50, 90, 99, 99.9)) -> dict[float, float]:
        """Latency percentiles (``numpy.percentile``, linear); ``inf`` when unstable."""
        if not self.stable:
            return dict.fromkeys(levels, math.inf)
        values = np.percentile(self.latency, levels)
        return {q: float(v) for q, v in zip(levels, values, strict=True)}

    def percentile_intervals(
        self,
        levels: tuple[float, ...] = (50, 90, 99, 99.9),
        *,
        confidence: float = 0.95,
        n_resamples: int = 200,
        seed: int = 0,
    ) -> dict[float, tuple[float, float]]:
        """Bootstrap intervals of the percentiles, resampling blocks of consecutive requests
        (about :math:`\\sqrt{N}` each: latencies of neighbours in a queue are dependent)."""
        import torch

        from exitwise.metrics.bootstrap import bootstrap

        if not self.stable:
            return {q: (math.inf, math.inf) for q in levels}
        lat = self.latency
        size = max(1, int(math.sqrt(lat.size)))
        blocks = torch.as_tensor(lat[: lat.size // size * size].reshape(-1, size))
        qs = torch.tensor([q / 100 for q in levels], dtype=torch.float64)
        res = bootstrap(
            lambda b: torch.quantile(b.reshape(-1), qs),
            blocks,
            n_resamples=n_resamples,
            confidence=confidence,
            seed=seed,
        )
        return {
            q: (float(lo), float(hi))
            for q, lo, hi in zip(levels, res.low.tolist(), res.high.tolist(), strict=True)
        }

    def queue_length(self) -> tuple[np.ndarray, np.ndarray]:
        """The number of requests waiting (arrived, not started) as a step function:
        ``(times, lengths)``, the length holding from each time to the next."""
        times = np.r_[self.arrivals, self.starts]
        steps = np.r_[np.ones(self.arrivals.size), -np.ones(self.starts.size)]
        order = np.lexsort((-steps, times))  # at equal times: arrive, then start
        return times[order], np.cumsum(steps[order])

    def mean_queue_length(self) -> float:
        """Time-average number waiting, from the first arrival to the last start."""
        t, q = self.queue_length()
        return float(np.sum(q[:-1] * np.diff(t)) / (t[-1] - t[0]))

    def summary(self) -> dict[str, Any]:
        p = self.percentiles()
        return {
            "scheduler": self.scheduler,
            "rate": self.rate,
            "stable": self.stable,
            "throughput": self.throughput,
            "utilisation": self.utilisation,
            "p50": p[50],
            "p90": p[90],
            "p99": p[99],
            "p99.9": p[99.9],
            "mean_wait": float(self.waits.mean()),
            "mean_involuntary_wait": float(self.involuntary.mean()),
        }


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
    noise = _Jitter(latency.jitter, e, seed)
    starts, answers, ready, busy = run(
        arr, depths, table, scheduler, max_batch, replicas, latency.wake_up_time, noise
    )
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


def _batches(arr, depths, table, scheduler, max_batch, replicas, wake_up, noise):
    """``full``, ``static`` and ``compact``: one batch at a time per server."""
    n, e = arr.size, table.shape[1]
    starts, answers, ready = np.empty(n), np.empty(n), np.empty(n)
    free = [(-math.inf, r) for r in range(replicas)]
    busy, i = 0.0, 0
    segments = np.arange(e)
    while i < n:
        t_free, r = heapq.heappop(free)
        t = max(t_free, arr[i])
        begin = t + wake_up(arr[i] - t_free)  # > 0 when the server waited idle
        j = i + int(np.searchsorted(arr[i : i + max_batch], t, side="right"))
        d = depths[i:j]
        deepest = int(d.max())
        factor = noise.next()[: deepest + 1]
        if scheduler == "compact":
            alive = (d[:, None] >= segments[None, : deepest + 1]).sum(axis=0)
            done = begin + np.cumsum(table[alive, segments[: deepest + 1]] * factor)
            answers[i:j] = ready[i:j] = done[d]
        else:  # full / static: everyone runs to the deepest exit, answers at the end
            done = begin + np.cumsum(table[j - i, : deepest + 1] * factor)
            answers[i:j] = done[-1]
            ready[i:j] = done[d]
        starts[i:j] = t
        busy += float(done[-1] - t)
        heapq.heappush(free, (float(done[-1]), r))
        i = j
    return starts, answers, ready, busy


def _refill(arr, depths, table, scheduler, max_batch, replicas, wake_up, noise):
    """Layer-level continuous batching: steps of one segment per request in the slots."""
    n, e = arr.size, table.shape[1]
    starts, answers = np.full(n, np.nan), np.full(n, np.nan)
    events = [(0.0, r) for r in range(replicas)]
    slots: list[list[list[int]]] = [[] for _ in range(replicas)]  # [request, next segment]
    idle_from = [-math.inf] * replicas  # when the server ran out of work (None: busy)
    busy, queued, answered = 0.0, 0, 0
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
        extra = 0.0 if idle_from[r] is None else wake_up(t - idle_from[r])
        counts = np.bincount([s for _, s in active], minlength=e)
        step = float((table[counts, np.arange(e)] * noise.next()).sum())
        step += extra
        idle_from[r] = None
        end = t + step
        busy += step
        still = []
        for item in active:
            if item[1] == depths[item[0]]:
                answers[item[0]] = end
                answered += 1
            else:
                item[1] += 1
                still.append(item)
        slots[r] = still
        heapq.heappush(events, (end, r))
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
