r"""A latency model fitted to what a real server logged, batch by batch.

:func:`fit_latency_model` reads :class:`~exitwise.serving.BatchLog`\ s written by the server one
plans for (its own loop, its own scheduler) and separates the three things the simulator needs:

* **the busy table and the warmth**: a server that was idle runs slower than one that was busy
  (caches lose the weights, clocks drop), and it warms up again as it works
  (:attr:`LatencyModel.warmth`: ``1 + cold * (1 - h)`` with a warmth ``h`` that follows the
  server's recent busy time with time constant ``tau``; a log starts at its steady state, its
  busy fraction). Each (segment, batch size) cell is the median time of that segment, over
  its warmth factor, in batches formed straight after the previous one (``idle == 0``);
  ``cold`` is the least-squares slope of those batches' times over the table against
  ``1 - h``, over the intercept, alternated with the table until it settles; ``tau`` is the
  one of ``taus`` (or none) with the least squared log error. ``jitter`` is the spread of the
  timings around their cell's median *within each log* (the drift between logs is not noise
  within a run: it is the speed range);
* **the bookkeeping after a batch** (``overhead``): the time from a batch's end to forming the
  next one when the server did not wait, fitted as ``a + b * size`` by least squares on the
  median per batch size (weighted by count; ``a, b >= 0``);
* **the speed range**: each log's busy segment time over the table's prediction for it; the
  slowest and fastest of these (the 10th and 90th percentiles from 10 logs on) say how much
  the same server drifted while it was measured;
* **the wake-up** after idling: batches formed after the server waited ``idle`` seconds take
  longer than the busy table says (and start late by the sleep's own lateness); the extra time
  (segments over the table's prediction, plus the start's lateness) is binned by the idle time
  (bins of equal count), its median per bin made non-decreasing.

Times are in the log's seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import numpy as np

from exitwise.serving.batch_log import BatchLog
from exitwise.serving.latency import LatencyModel, WarmthState

__all__ = ["fit_latency_model"]


def fit_latency_model(
    logs: BatchLog | Sequence[BatchLog],
    *,
    speeds: Sequence[float] | None = None,
    wake_up_bins: int = 8,
    taus: Sequence[float] = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0),
) -> LatencyModel:
    """Fit a :class:`LatencyModel` (table, jitter, overhead and wake-up) to batch logs.

    Parameters
    ----------
    logs : BatchLog or sequence of BatchLog
        What a real server did (each log one run; overheads never span two runs).
    speeds : sequence of float, optional
        The machine's speed during each log relative to a reference (e.g. a fixed job timed
        before and after it, over that job's typical time): each log's times are divided by
        it, so the model is the server at the reference speed, with drift of the machine
        between logs taken out of the table, the bookkeeping and the jitter (``None``: all 1).
        ``speed_range`` is of the times as logged either way: the drift a plan must allow for.
    wake_up_bins : int, default=8
        Bins of the idle time for the wake-up table (fewer when there are few idle batches:
        at least 20 batches a bin).
    taus : sequence of float
        Time constants (seconds) of the warmth to try; the one with the least squared log
        error of the busy batches' times wins, against no warmth effect at all.

    Returns
    -------
    LatencyModel

    Examples
    --------
    >>> from exitwise.serving import BatchRecorder
    >>> rec = BatchRecorder(1)
    >>> t = 0.0
    >>> for k in range(100):   # 1 ms per request, 0.1 ms after each batch, 2 ms after idling
    ...     size, idle = 1 + k % 4, 0.01 if k % 5 == 0 else 0.0
    ...     t += idle
    ...     extra = 0.002 if idle else 0.0
    ...     rec.add(0, t, size, 0, [size], [0.001 * size + extra], t + 0.001 * size + extra,
    ...             idle=idle)
    ...     t += 0.001 * size + extra + 0.0001
    >>> lm = fit_latency_model(rec.finish())
    >>> lm.seconds[:, 0].round(4).tolist(), lm.overhead.round(5).tolist()
    ([0.001, 0.002, 0.003, 0.004], [0.0001, 0.0])
    >>> round(lm.wake_up_time(0.01), 4)
    0.002
    """
    logs = [logs] if isinstance(logs, BatchLog) else list(logs)
    if not logs or not all(isinstance(log, BatchLog) for log in logs):
        raise TypeError("Expected `logs`: a BatchLog or a non-empty sequence of BatchLogs.")
    num_segments = {log.segment_sizes.shape[1] for log in logs}
    if len(num_segments) != 1:
        raise ValueError(f"Expected logs of one number of segments, got {sorted(num_segments)}.")

    def column(get) -> np.ndarray:
        return np.concatenate([np.asarray(get(log)) for log in logs])

    bounds = np.cumsum([0] + [len(log) for log in logs])
    runs = [slice(int(a), int(b)) for a, b in pairwise(bounds)]  # each log's rows
    prev = np.concatenate(
        [np.where(log.previous() >= 0, log.previous() + run.start, -1)
         for log, run in zip(logs, runs, strict=True)]
    )  # fmt: skip
    idle, size = column(lambda g: g.idle), column(lambda g: g.size)
    sizes, seconds = column(lambda g: g.segment_sizes), column(lambda g: g.segment_seconds)
    overhead, idle_after = column(BatchLog.overhead), column(BatchLog.idle_after)
    raw = seconds  # the speed range is of the times as logged
    if speeds is not None:
        speed = np.asarray(speeds, dtype=np.float64)
        if speed.shape != (len(logs),) or not np.isfinite(speed).all() or (speed <= 0).any():
            raise ValueError(
                f"Expected `speeds`: one factor > 0 per log ({len(logs)}), got {speeds!r}."
            )
        per_batch = np.repeat(speed, [len(log) for log in logs])
        seconds, overhead = seconds / per_batch[:, None], overhead / per_batch
    hot = idle == 0
    ran = sizes > 0
    if not (hot[:, None] & ran).any(axis=0).all():
        raise ValueError(
            "Every segment needs timings from batches formed while the server was busy "
            "(idle == 0); the logs have none for some segment: log a busier run."
        )
    best = None
    for tau in (0.0, *taus):
        h = _warmth_at_formation(logs, tau) if tau else np.ones(idle.size)
        cold, last = 0.0, -1.0
        for _ in range(50 if tau else 1):
            busy, ratio = _busy_table(sizes, seconds, hot, 1.0 + cold * (1.0 - h))
            x = 1.0 - h[hot]
            if not tau or np.ptp(x) == 0 or abs(cold - last) <= 1e-9 * (1 + cold):
                break
            # ratio = s * (1 + cold * x) whatever the table's scale s: cold = slope / s
            slope, scale = np.polyfit(x, ratio, 1)
            last, cold = cold, max(0.0, float(slope / scale)) if scale > 0 else 0.0
        error = float(np.sum((np.log(ratio) - np.log1p(cold * x)) ** 2))
        if best is None or error < best[0] - 1e-12:
            best = (error, tau, cold, busy, h)
    _, tau, cold, busy, h = best
    factor = 1.0 + cold * (1.0 - h)
    a, b = _overhead_line(size, overhead, idle_after)
    predicted = busy.batch_times(sizes) * factor
    # lateness of the start after idling: the gap before the batch less its idle and the
    # bookkeeping the previous batch needed
    has = prev >= 0
    late = np.zeros(idle.size)
    late[has] = np.maximum(overhead[prev[has]] - (a + b * size[prev[has]]), 0.0)
    woke = (idle > 0) & np.isfinite(idle)
    wake_up = _wake_up_rows(idle[woke], seconds[woke].sum(axis=1) - predicted[woke] + late[woke],
                            wake_up_bins)  # fmt: skip
    ratios = [
        float(raw[run][hot[run]].sum() / predicted[run][hot[run]].sum())
        for run in runs
        if hot[run].any()
    ]
    low, high = np.quantile(ratios, (0.1, 0.9) if len(ratios) >= 10 else (0.0, 1.0))
    return LatencyModel(
        busy.batch_sizes.tolist(), busy.seconds, wake_up=wake_up,
        jitter=_jitter_within_logs(runs, sizes, seconds / factor[:, None], hot),
        overhead=(a, b), speed_range=(min(low, 1.0), max(high, 1.0)), warmth=(cold, tau),
    )  # fmt: skip


def _jitter_within_logs(runs, sizes, adjusted, hot) -> np.ndarray | None:
    """200 quantiles of busy segment times over their (segment, batch size) cell's median
    *within the same log* (``runs``: each log's rows; cells of at least 5 timings): the spread
    a server shows at one time, without the drift between logs (which ``speed_range``
    holds)."""
    ratios = []
    for run in runs:
        pick = hot[run][:, None] & (sizes[run] > 0)
        seg = np.broadcast_to(np.arange(sizes.shape[1]), pick.shape)[pick]
        size, value = sizes[run][pick], adjusted[run][pick]
        cells = seg * (size.max(initial=0) + 1) + size
        for key in np.unique(cells):
            cell = value[cells == key]
            if cell.size >= 5 and np.median(cell) > 0:
                ratios.append(cell / np.median(cell))
    if not ratios:
        return None
    return np.quantile(np.concatenate(ratios), np.linspace(0.0025, 0.9975, 200))


def _busy_table(sizes, seconds, hot, factor) -> tuple[LatencyModel, np.ndarray]:
    """The table (cell medians) of the busy batches' segment times over their warmth
    ``factor``, and each busy batch's time over its table time (without the factor)."""
    e = sizes.shape[1]
    pick = hot[:, None] & (sizes > 0)
    seg = np.broadcast_to(np.arange(e), sizes.shape)[pick]
    adjusted = (seconds / factor[:, None])[pick]
    busy = LatencyModel.from_observations(seg, sizes[pick], adjusted, e)
    return busy, seconds[hot].sum(axis=1) / busy.batch_times(sizes[hot])


def _warmth_at_formation(logs: list[BatchLog], tau: float) -> np.ndarray:
    """Each batch's server warmth when it was formed, by the simulator's rule
    (:class:`WarmthState`): a log starts at its steady state, its busy fraction; a server
    works from forming a batch to forming the next less the idle time between."""
    out = []
    for log in logs:
        h = np.zeros(len(log))
        span = (log.end.max() - log.formed.min()) * len(np.unique(log.server)) if len(log) else 1
        busy_time = (log.end - log.formed).sum() + np.nansum(log.overhead())
        start = float(min(1.0, busy_time / span)) if span > 0 else 1.0
        state = WarmthState((0.0, tau), int(log.server.max(initial=0)) + 1, start)
        prev = log.previous()
        for k in range(len(log)):
            r = int(log.server[k])
            if prev[k] >= 0:
                state.warm(r, log.formed[k] - log.idle[k] - log.formed[prev[k]])
            state.cool(r, log.idle[k])
            h[k] = state.h[r]
        out.append(h)
    return np.concatenate(out)


def _overhead_line(size, overhead, idle_after) -> tuple[float, float]:
    """``a + b * size`` through the median bookkeeping per batch size, after batches the
    server went straight on from (count-weighted least squares, ``a, b >= 0``)."""
    keep = np.isfinite(overhead) & (idle_after == 0)
    if not keep.any():
        return 0.0, 0.0
    values, counts = np.unique(size[keep], return_counts=True)
    medians = np.array([np.median(overhead[keep][size[keep] == v]) for v in values])
    if values.size == 1:
        return max(0.0, float(medians[0])), 0.0
    w = np.sqrt(counts)
    design = np.c_[np.ones(values.size), values] * w[:, None]
    a, b = np.linalg.lstsq(design, medians * w, rcond=None)[0]
    if b < 0:
        a, b = float(np.average(medians, weights=counts)), 0.0
    if a < 0:
        b = float(np.sum(counts * values * medians) / np.sum(counts * values**2))
        a = 0.0
    return max(0.0, float(a)), max(0.0, float(b))


def _wake_up_rows(idle: np.ndarray, extra: np.ndarray, bins: int) -> float | np.ndarray:
    """Rows ``(idle, extra)``: medians over bins of equal count, extra non-decreasing."""
    if idle.size < 20:
        return 0.0
    k = int(min(bins, idle.size // 20))
    order = np.argsort(idle, kind="stable")
    rows = [
        (float(np.median(idle[part])), max(0.0, float(np.median(extra[part]))))
        for part in np.array_split(order, k)
    ]
    table = np.maximum.accumulate(np.array(rows), axis=0)
    keep = np.r_[True, np.diff(table[:, 0]) > 0]  # strictly increasing idle times
    return table[keep]
