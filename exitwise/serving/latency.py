r"""Latency of each exit segment as a function of batch size, modelled.

Segment ``e`` is the work between exit ``e - 1`` and exit ``e`` (segment 0: input to exit 0),
including exit ``e``'s head. :class:`LatencyModel` keeps the table (measured by
:mod:`exitwise.serving.measure` or fitted to a server's logs by
:mod:`exitwise.serving.latency_fit`) and answers ``time(segment, batch)`` by linear
interpolation between measured batch sizes, and beyond the largest by the least-squares line
:math:`a_e + b_e \cdot \text{batch}` of that segment. It saves to and loads from JSON.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from exitwise._checks import check_int

__all__ = ["LatencyModel", "WarmthState", "load_default_latency"]

_FORMAT = "exitwise.LatencyModel/1"

#: latency units a model may be given in, and their length in seconds
UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


class LatencyModel:
    """Seconds to run each exit segment for a batch, from a measured table.

    Parameters
    ----------
    batch_sizes : sequence of int
        Increasing batch sizes the table was measured at (>= 1).
    seconds : array-like of shape (len(batch_sizes), E)
        ``seconds[i, e]``: time of segment ``e`` for a batch of ``batch_sizes[i]``.
    unit : {"s", "ms", "us"}, default="s"
        The unit of ``seconds`` and ``wake_up`` as given; they are converted to seconds (the
        model's ``unit`` is then ``"s"``). Any other unit is refused.
    wake_up : float or sequence of (idle seconds, extra seconds), default=0.0
        Extra time of the first segment a server runs after waiting idle for a request (cold
        caches, a clocked-down core, the wake-up itself): a constant, or a table over the
        idle time (linear interpolation from (0, 0), constant beyond the last entry). The
        simulator adds it.
    jitter : array-like of float, optional
        Multiplicative factors (time over the typical time) that real segment timings show;
        the simulator multiplies each segment it runs by one drawn at random, so service times
        vary as measured (``None``: every segment takes exactly its table time).
    overhead : float or (float, float), default=0.0
        The server's bookkeeping after each batch (answering, taking the next requests,
        refilling slots), during which it runs no segment: ``a`` seconds, or ``(a, b)`` for
        ``a + b * size`` seconds after a batch of ``size`` requests (in the model's
        ``unit``). The simulator keeps the server busy that long after every batch.
    warmth : (float, float), default=(0.0, 0.0)
        ``(cold, tau)``: a server that has been idle runs slower than one that has been busy
        (caches lose the weights, clocks drop). The simulator keeps each server's warmth
        ``h`` in [0, 1], decaying towards 0 while it idles and growing towards 1 while it
        works, with time constant ``tau`` seconds; a batch formed at warmth ``h`` runs
        ``1 + cold * (1 - h)`` times its table time (``cold=0``: no such effect). The table
        holds a fully warm server's times.
    speed_range : (float, float), default=(1.0, 1.0)
        How much slower or faster than the table the same server ran over the measurement
        (factors on every time, e.g. ``(0.9, 1.3)``): machines drift, and
        :func:`~exitwise.serving.max_rate` and :func:`~exitwise.serving.replicas_needed`
        turn this spread into an interval. :func:`~exitwise.serving.fit_latency_model`
        measures it from the runs it is given.

    Examples
    --------
    >>> model = LatencyModel([1, 4], [[0.001, 0.002], [0.002, 0.005]])
    >>> round(model.time(1, 2), 6), round(model.time(1, 8), 6)   # interpolated, extrapolated
    (0.003, 0.009)
    >>> model.num_segments
    2
    """

    def __init__(
        self,
        batch_sizes: Sequence[int],
        seconds: Any,
        unit: str = "s",
        wake_up: Any = 0.0,
        jitter: Any = None,
        overhead: Any = 0.0,
        speed_range: Any = (1.0, 1.0),
        warmth: Any = (0.0, 0.0),
    ) -> None:
        if unit not in UNITS:
            raise ValueError(
                f"Expected the latency `unit` to be one of {', '.join(map(repr, UNITS))}, got "
                f"{unit!r}."
            )
        scale = UNITS[unit]
        sizes = np.asarray(batch_sizes, dtype=np.float64)
        table = np.asarray(seconds, dtype=np.float64) * scale
        if sizes.ndim != 1 or sizes.size == 0 or (sizes < 1).any() or (np.diff(sizes) <= 0).any():
            raise ValueError(
                f"Expected `batch_sizes`: increasing integers >= 1, got {sizes.tolist()}."
            )
        if table.ndim != 2 or table.shape[0] != sizes.size or table.shape[1] == 0:
            raise ValueError(
                f"Expected `seconds` of shape [{sizes.size}, E] (one row per batch size), got "
                f"{list(table.shape)}."
            )
        if not np.isfinite(table).all() or (table < 0).any():
            raise ValueError("Expected `seconds` to be finite and >= 0.")
        self.batch_sizes = sizes.astype(np.int64)
        self.seconds = table
        self.unit = "s"  # converted from `unit`
        self.wake_up = _wake_up_table(wake_up)
        self.wake_up = self.wake_up * scale
        self.jitter = None
        if jitter is not None:
            factors = np.asarray(jitter, dtype=np.float64)
            if (
                factors.ndim != 1
                or factors.size == 0
                or not np.isfinite(factors).all()
                or (factors <= 0).any()
            ):
                raise ValueError("Expected `jitter`: a non-empty 1-D array of factors > 0.")
            self.jitter = factors
        self.overhead = _overhead_pair(overhead) * scale
        speed = np.asarray(speed_range, dtype=np.float64)
        if speed.shape != (2,) or not np.isfinite(speed).all() or not 0 < speed[0] <= speed[1]:
            raise ValueError(
                f"Expected `speed_range`: (slowest, fastest) factors with 0 < low <= high, got "
                f"{speed_range!r}."
            )
        self.speed_range = (float(speed[0]), float(speed[1]))
        cold, tau = _warmth_pair(warmth)
        self.warmth = (cold, tau * scale)
        if sizes.size >= 2:
            design = np.c_[np.ones_like(sizes), sizes]
            coef, *_ = np.linalg.lstsq(design, table, rcond=None)
            self.intercept, self.slope = coef[0], np.maximum(coef[1], 0.0)
        else:
            self.intercept, self.slope = np.zeros(table.shape[1]), table[0] / sizes[0]

    def wake_up_time(self, idle: float) -> float:
        """Extra seconds after ``idle`` seconds without work (0 for ``idle <= 0``)."""
        if idle <= 0:
            return 0.0
        w = self.wake_up
        if isinstance(w, float):
            return w
        return float(np.interp(idle, np.r_[0.0, w[:, 0]], np.r_[0.0, w[:, 1]]))

    def scaled(self, factor: float) -> LatencyModel:
        """The same server ``factor`` times slower (every segment, the wake-up and the
        bookkeeping; the jitter is relative and stays).

        Examples
        --------
        >>> LatencyModel([1], [[0.002]]).scaled(1.5).time(0, 1)
        0.003
        """
        if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor > 0):
            raise ValueError(f"Expected `factor` > 0, got {factor!r}.")
        wake = self.wake_up * factor if isinstance(self.wake_up, float) else self.wake_up.copy()
        if not isinstance(wake, float):
            wake[:, 1] *= factor
        return LatencyModel(
            self.batch_sizes.tolist(),
            self.seconds * factor,
            wake_up=wake,
            jitter=self.jitter,
            overhead=self.overhead * factor,
            speed_range=self.speed_range,
            warmth=self.warmth,
        )

    def overhead_time(self, size: int) -> float:
        """Seconds of bookkeeping after a batch of ``size`` requests (``a + b * size``)."""
        return float(self.overhead[0] + self.overhead[1] * size)

    def batch_times(self, segment_sizes: Any) -> np.ndarray:
        """Table seconds of logged batches: ``segment_sizes[b, e]`` requests ran segment ``e``
        in batch ``b`` (0: it did not run), summed over the segments (no warmth, no jitter).

        Examples
        --------
        >>> LatencyModel([1, 2], [[0.001, 0.002], [0.0015, 0.003]]).batch_times([[2, 1], [1, 0]])
        array([0.0035, 0.001 ])
        """
        sizes = np.asarray(segment_sizes, dtype=np.int64)
        table = self.table(int(sizes.max(initial=0)) + 1)  # row 0 is zeros: segments not run
        return table[sizes, np.arange(self.num_segments)].sum(axis=1)

    @property
    def num_segments(self) -> int:
        return int(self.seconds.shape[1])

    def time(self, segment: int, batch: int) -> float:
        """Seconds for ``batch`` requests to run ``segment`` (0 for an empty batch)."""
        return float(self.table(int(batch) + 1)[int(batch), int(segment)])

    def table(self, max_batch: int) -> np.ndarray:
        """``[max_batch, E]``: row ``b`` holds the segment times for a batch of ``b`` (row 0
        is zeros), for fast lookups in the simulator."""
        max_batch = check_int(max_batch, "max_batch", minimum=1)
        b = np.arange(max_batch, dtype=np.float64)
        out = np.empty((max_batch, self.num_segments))
        sizes = self.batch_sizes.astype(np.float64)
        for e in range(self.num_segments):
            inside = np.interp(b, sizes, self.seconds[:, e])
            top = self.seconds[-1, e] + self.slope[e] * (b - sizes[-1])
            below = self.seconds[0, e] * b / sizes[0]
            out[:, e] = np.where(b > sizes[-1], top, np.where(b < sizes[0], below, inside))
        out[0] = 0.0
        return out

    def full_time(self, batch: int) -> float:
        """Seconds for a batch to run every segment."""
        return float(self.table(int(batch) + 1)[int(batch)].sum())

    @classmethod
    def from_observations(
        cls, segments: Any, batches: Any, seconds: Any, num_segments: int, idle: Any = None
    ) -> LatencyModel:
        """Fit the table from timings logged by a real server: one entry per executed
        segment (its index, its batch size, its seconds, and optionally whether the server
        had been waiting idle just before). Each (segment, batch size) gets the median of its
        busy timings; ``wake_up`` is how much longer segment 0 of one request takes after
        idling (difference of medians, >= 0); ``jitter`` holds 200 quantiles of each busy
        timing over its (segment, batch size) median, from cells with at least 5 timings.
        A batch size some segment never ran at gets that segment's interpolation (linear;
        beyond its range the least-squares line, or a time proportional to the batch when it
        ran at one size only).

        Examples
        --------
        >>> lm = LatencyModel.from_observations([0, 0, 1, 0], [1, 1, 1, 4], [1.0, 3.0, 5.0, 8.0], 2)
        >>> lm.batch_sizes.tolist(), lm.seconds.tolist()
        ([1, 4], [[2.0, 5.0], [8.0, 20.0]])
        """
        seg = np.asarray(segments, dtype=np.int64)
        bat = np.asarray(batches, dtype=np.int64)
        sec = np.asarray(seconds, dtype=np.float64)
        cold = np.zeros(seg.shape, bool) if idle is None else np.asarray(idle, dtype=bool)
        if (
            not (seg.shape == bat.shape == sec.shape == cold.shape)
            or seg.ndim != 1
            or seg.size == 0
        ):
            raise ValueError(
                "Expected `segments`, `batches`, `seconds` (and `idle`) of one equal length."
            )
        first = (seg == 0) & (bat == 1)
        wake_up = 0.0
        if (first & cold).any() and (first & ~cold).any():
            wake_up = max(0.0, float(np.median(sec[first & cold]) - np.median(sec[first & ~cold])))
        seg, bat, sec = seg[~cold], bat[~cold], sec[~cold]
        ratios = []
        for e, b in {(int(x), int(y)) for x, y in zip(seg, bat, strict=True)}:
            cell = sec[(seg == e) & (bat == b)]
            if cell.size >= 5 and np.median(cell) > 0:
                ratios.append(cell / np.median(cell))
        jitter = None
        if ratios:
            jitter = np.quantile(np.concatenate(ratios), np.linspace(0.0025, 0.9975, 200))
        if seg.min() < 0 or seg.max() >= num_segments or bat.min() < 1:
            raise ValueError(f"Expected segments in [0, {num_segments - 1}] and batch sizes >= 1.")
        sizes = np.unique(bat)
        table = np.empty((sizes.size, num_segments))
        for e in range(num_segments):
            seen = np.unique(bat[seg == e])
            if seen.size == 0:
                raise ValueError(f"No timing of segment {e} was observed.")
            med = np.array([np.median(sec[(seg == e) & (bat == b)]) for b in seen])
            fill = cls(seen.tolist(), med[:, None]).table(int(sizes.max()) + 1)[:, 0]
            table[:, e] = fill[sizes]
        return cls(sizes.tolist(), table, wake_up=wake_up, jitter=jitter)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "unit": self.unit,
            "batch_sizes": self.batch_sizes.tolist(),
            "seconds": self.seconds.tolist(),
            "wake_up": self.wake_up if isinstance(self.wake_up, float) else self.wake_up.tolist(),
            "jitter": None if self.jitter is None else self.jitter.tolist(),
            "overhead": self.overhead.tolist(),
            "speed_range": list(self.speed_range),
            "warmth": list(self.warmth),
        }

    def save(self, path: str | Path) -> None:
        """Write the table as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> LatencyModel:
        """Read a table written by :meth:`save` (validated)."""
        try:
            doc = json.loads(Path(path).read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"'{path}' is not a JSON latency model: {err}") from None
        if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
            raise ValueError(f"Expected a latency model with format {_FORMAT!r} in '{path}'.")
        return cls(
            doc["batch_sizes"],
            doc["seconds"],
            doc.get("unit", "s"),
            doc.get("wake_up", 0.0),
            doc.get("jitter"),
            doc.get("overhead", 0.0),
            doc.get("speed_range", (1.0, 1.0)),
            doc.get("warmth", (0.0, 0.0)),
        )

    def __repr__(self) -> str:
        return (
            f"LatencyModel(segments={self.num_segments}, batch_sizes="
            f"{self.batch_sizes.tolist()}, full batch-1 time={self.full_time(1):.3g} {self.unit})"
        )


class WarmthState:
    """Each server's warmth ``h`` in [0, 1] (:attr:`LatencyModel.warmth`), the one place its
    rule lives (the simulator runs it, :func:`~exitwise.serving.fit_latency_model` replays it
    on logs): ``h`` decays towards 0 while the server idles and grows towards 1 while it
    works, with time constant ``tau``; a batch formed at warmth ``h`` runs
    ``1 + cold * (1 - h)`` times its table time. With ``tau == 0`` nothing changes.

    Examples
    --------
    >>> w = WarmthState((0.4, 0.02), servers=1, start=1.0)
    >>> w.cool(0, 0.02); round(w.h[0], 4), round(w.factor(0), 4)   # one time constant idle
    (0.3679, 1.2528)
    >>> w.warm(0, 0.02); round(w.h[0], 4)
    0.7675
    """

    def __init__(self, warmth: tuple[float, float], servers: int, start: float) -> None:
        self.cold, self.tau = warmth
        self.h = [start] * servers

    def cool(self, r: int, idle: float) -> None:
        """Server ``r`` idled ``idle`` seconds (not finite: its first batch, the start state)."""
        if self.tau > 0 and math.isfinite(idle):
            self.h[r] *= math.exp(-idle / self.tau)

    def warm(self, r: int, seconds: float) -> None:
        """Server ``r`` worked ``seconds``."""
        if self.tau > 0:
            self.h[r] = 1.0 - (1.0 - self.h[r]) * math.exp(-max(seconds, 0.0) / self.tau)

    def factor(self, r: int) -> float:
        """How many times its table time a batch of server ``r`` takes now."""
        return 1.0 + self.cold * (1.0 - self.h[r])


def _warmth_pair(warmth: Any) -> tuple[float, float]:
    """``(cold, tau)`` with ``cold >= 0`` and ``tau > 0`` (any ``tau >= 0`` when cold is 0)."""
    try:
        cold, tau = (float(v) for v in warmth)
    except (TypeError, ValueError):
        cold = tau = math.nan
    if not (cold >= 0 and tau >= 0 and math.isfinite(cold + tau)) or (cold > 0 and tau == 0):
        raise ValueError(f"Expected `warmth`: (cold >= 0, tau > 0 seconds), got {warmth!r}.")
    return cold, tau


def _overhead_pair(overhead: Any) -> np.ndarray:
    """``(a, b)`` from ``a`` or ``(a, b)``, both finite and >= 0."""
    try:
        cost = np.asarray(overhead, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        cost = np.empty(0)
    if cost.size == 1:
        cost = np.r_[cost, 0.0]
    if cost.size != 2 or np.ndim(overhead) > 1 or not np.isfinite(cost).all() or (cost < 0).any():
        raise ValueError(
            "Expected `overhead`: seconds >= 0, or (seconds per batch, seconds per request) "
            f">= 0, got {overhead!r}."
        )
    return cost


def _wake_up_table(wake_up: Any) -> float | np.ndarray:
    if isinstance(wake_up, (int, float)) and not isinstance(wake_up, bool):
        if not (math.isfinite(wake_up) and wake_up >= 0):
            raise ValueError(f"Expected `wake_up` >= 0 seconds, got {wake_up!r}.")
        return float(wake_up)
    table = np.asarray(wake_up, dtype=np.float64)
    if (
        table.ndim != 2
        or table.shape[1] != 2
        or table.shape[0] == 0
        or not np.isfinite(table).all()
        or (table < 0).any()
        or (np.diff(table[:, 0]) <= 0).any()
    ):
        raise ValueError(
            "Expected `wake_up`: seconds >= 0, or rows of (idle seconds, extra seconds) with "
            f"increasing idle times, got {wake_up!r}."
        )
    return table


def load_default_latency() -> LatencyModel:
    """The latency model of the bundled default model (its 4 exit segments, batch sizes 1 to
    64, one CPU thread), made by ``examples/make_default_latency.py`` on a 2-core CPU (the file
    ships with :mod:`exitwise.datasets`; serving reads it).

    Examples
    --------
    >>> lm = load_default_latency()
    >>> lm.num_segments, lm.batch_sizes.tolist()[-1]
    (4, 64)
    """
    from exitwise.datasets import default_latency_file

    with default_latency_file() as path:
        return LatencyModel.load(path)
