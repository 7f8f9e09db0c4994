"""Measuring a :class:`~exitwise.serving.LatencyModel` on the model itself.

:func:`measure_latency_model` times the cumulative latency to each exit at several batch sizes
(:func:`~exitwise.collect.measure_costs` with ``method="latency"``: warm-up, median of
repeats, CUDA events on GPU) and takes differences; :func:`measure_wake_up` times how much
longer one request takes after the server slept. Both are micro-benchmarks: a real server's
own batch logs (:func:`~exitwise.serving.fit_latency_model`) also hold its bookkeeping.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from exitwise._checks import check_int
from exitwise.serving.latency import LatencyModel

__all__ = ["measure_latency_model", "measure_wake_up"]


def measure_latency_model(
    model: Any,
    make_batch: Callable[[int], Any],
    *,
    exits: Sequence[str],
    heads: Any = None,
    batch_sizes: Sequence[int] = (1, 2, 4, 8, 16, 32, 64),
    warmup: int = 3,
    repeats: int = 10,
) -> LatencyModel:
    """Measure each segment's latency at several batch sizes.

    Parameters
    ----------
    model : torch.nn.Module
    make_batch : callable ``batch_size -> inputs``
        An example batch of that size (on the model's device).
    exits, heads
        As for :func:`~exitwise.collect.measure_costs`.
    batch_sizes : sequence of int
    warmup, repeats : int
        Per batch size (median of ``repeats``).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> body = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
    >>> lm = measure_latency_model(body, lambda b: torch.randn(b, 8), exits=["1", "3"],
    ...                            batch_sizes=(1, 8), repeats=3)
    >>> lm.num_segments, bool((lm.seconds > 0).all())
    (2, True)
    """
    from exitwise.exit_costs import measure_costs

    rows = []
    for b in batch_sizes:
        b = check_int(b, "batch_sizes", minimum=1)
        cumulative = measure_costs(
            model,
            make_batch(b),
            exits=exits,
            heads=heads,
            method="latency",
            per_sample=False,
            warmup=warmup,
            repeats=repeats,
        ).numpy()
        rows.append(np.maximum(np.diff(cumulative, prepend=0.0), 0.0))
    return LatencyModel(list(batch_sizes), np.stack(rows))


def measure_wake_up(
    run_one: Callable[[], Any],
    idles: Sequence[float] = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016),
    *,
    repeats: int = 30,
) -> np.ndarray:
    """How much longer one request takes after the server slept ``idle`` seconds, for
    ``LatencyModel(wake_up=...)``: rows ``(idle, extra seconds)``.

    ``run_one()`` serves one request (e.g. a full pass at batch 1). Each timing starts when
    the request was *due* (the end of the intended sleep), so the sleep's own lateness counts,
    as it does for a server woken by a request; ``extra`` is the median against back-to-back
    calls, made non-decreasing in the idle time.

    Examples
    --------
    >>> rows = measure_wake_up(lambda: sum(range(1000)), idles=(0.0005, 0.002), repeats=5)
    >>> rows.shape, bool((rows[:, 1] >= 0).all())
    ((2, 2), True)
    """
    import time

    repeats = check_int(repeats, "repeats", minimum=1)

    def timed(due: float | None = None) -> float:
        start = time.perf_counter() if due is None else due
        run_one()
        return time.perf_counter() - start

    warm = float(np.median([timed() for _ in range(2 * repeats)]))
    rows = []
    for idle in idles:
        if not idle > 0:
            raise ValueError(f"Expected `idles` > 0 seconds, got {idle!r}.")
        times = []
        for _ in range(repeats):
            due = time.perf_counter() + idle
            time.sleep(idle)
            times.append(timed(due))
        rows.append((float(idle), max(0.0, float(np.median(times)) - warm)))
    return np.maximum.accumulate(np.array(rows), axis=0)
