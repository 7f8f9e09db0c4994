"""What a simulated serving run gives: every request's timeline, percentiles with bootstrap
intervals, the queue over time, the batch log; and the block bootstrap of latency percentiles,
for a simulated run or a real server's latencies alike."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from exitwise.serving.batch_log import BatchLog

__all__ = ["ServingResult", "latency_percentile_intervals"]


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
        Server-seconds spent running segments and the bookkeeping after each batch.
    stable : bool
        False when the queue kept growing (the backlog at the last arrival exceeds
        ``max(4 * max_batch * replicas, 1 % of requests)`` and waits in the last fifth of
        requests are more than 1.5x those in the middle fifth).
    batches : BatchLog
        What each server did, batch by batch (a ``"refill"`` step counts as a batch).
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
    batches: BatchLog | None = field(default=None, repr=False)

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
        """Share of server time spent running segments and bookkeeping."""
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
        """Bootstrap intervals of the percentiles (:func:`latency_percentile_intervals` of
        :attr:`latency`); ``inf`` when unstable."""
        if not self.stable:
            return {q: (math.inf, math.inf) for q in levels}
        return latency_percentile_intervals(
            self.latency, levels, confidence=confidence, n_resamples=n_resamples, seed=seed
        )

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


def latency_percentile_intervals(
    latency: Any,
    levels: tuple[float, ...] = (50, 99),
    *,
    confidence: float = 0.95,
    n_resamples: int = 200,
    seed: int = 0,
) -> dict[float, tuple[float, float]]:
    """Bootstrap intervals of latency percentiles, resampling blocks of consecutive requests
    (about :math:`\\sqrt{N}` each: latencies of neighbours in a queue are dependent). For a
    simulated run or a real server's log alike (``latency`` in arrival order).

    Examples
    --------
    >>> lat = np.random.default_rng(0).exponential(0.002, 10000)
    >>> lo, hi = latency_percentile_intervals(lat, (99,))[99]
    >>> bool(lo < np.percentile(lat, 99) < hi), bool(hi / lo < 1.3)
    (True, True)
    """
    import torch

    from exitwise.metrics.bootstrap import bootstrap

    lat = np.asarray(latency, dtype=np.float64)
    if lat.ndim != 1 or lat.size < 4 or not np.isfinite(lat).all():
        raise ValueError(
            f"Expected `latency`: at least 4 finite seconds in a 1-D array, got shape "
            f"{list(lat.shape)}."
        )
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
