"""Capacity answers with their interval: a number that still behaves as one.

:func:`~exitwise.serving.max_rate` returns a :class:`RateEstimate` and
:func:`~exitwise.serving.replicas_needed` a :class:`ReplicaEstimate`: a ``float`` (``int``) with
``low`` and ``high`` beside it, so code that used the plain number keeps working.

The interval covers two things, both measured:

* **the latency model's spread**: the same server ran between ``speed_range[0]`` and
  ``speed_range[1]`` times its table's speed while it was measured
  (:func:`~exitwise.serving.fit_latency_model`); the answer is recomputed with every time
  scaled by each end;
* **the simulation's own sampling error**: the answer is recomputed with other seeds of the
  simulated arrivals and exit depths.

``low`` is the worst over the seeds at the slow end (fewest requests per second, most
replicas), ``high`` the best at the fast end. It is a range of what was measured, not a
confidence interval with a stated level.
"""

from __future__ import annotations

__all__ = ["RateEstimate", "ReplicaEstimate"]


class RateEstimate(float):
    """A rate in requests per second, with ``low`` and ``high``.

    Examples
    --------
    >>> r = RateEstimate(1200.0, 1000.0, 1300.0)
    >>> r * 2, r.low, r.high
    (2400.0, 1000.0, 1300.0)
    >>> r
    RateEstimate(1200.0, low=1000.0, high=1300.0)
    """

    low: float
    high: float

    def __new__(cls, value: float, low: float, high: float) -> RateEstimate:
        if not low <= value <= high:
            raise ValueError(f"Expected low <= value <= high, got {low}, {value}, {high}.")
        obj = super().__new__(cls, value)
        obj.low, obj.high = float(low), float(high)
        return obj

    def __repr__(self) -> str:
        return f"RateEstimate({float(self)!r}, low={self.low!r}, high={self.high!r})"

    def __str__(self) -> str:
        return f"{float(self):.0f} ({self.low:.0f}-{self.high:.0f})"


class ReplicaEstimate(int):
    """A number of replicas, with ``low`` (at the fast end) and ``high`` (at the slow end;
    ``None`` where even ``max_replicas`` did not meet the limit there).

    Examples
    --------
    >>> n = ReplicaEstimate(3, 2, 4)
    >>> n + 1, n.low, n.high, str(n)
    (4, 2, 4, '3 (2-4)')
    """

    low: int
    high: int | None

    def __new__(cls, value: int, low: int, high: int | None) -> ReplicaEstimate:
        if not (low <= value and (high is None or value <= high)):
            raise ValueError(f"Expected low <= value <= high, got {low}, {value}, {high}.")
        obj = super().__new__(cls, value)
        obj.low, obj.high = int(low), None if high is None else int(high)
        return obj

    def __repr__(self) -> str:
        return f"ReplicaEstimate({int(self)}, low={self.low}, high={self.high})"

    def __str__(self) -> str:
        return f"{int(self)} ({self.low}-{'more' if self.high is None else self.high})"
