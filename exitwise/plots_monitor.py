"""The monitor's figure: a deployed policy's risk over requests
(:class:`~exitwise.monitor.RiskMonitor`)."""

from __future__ import annotations

from typing import Any

from exitwise.plots import _axes

__all__ = ["monitor_plot"]


def monitor_plot(monitor: Any, *, ax: Any = None):
    """A deployed policy's risk over requests: the running estimate, the anytime-valid
    confidence sequence (shaded), the certified limit and the alarm.

    ``monitor`` is a :class:`~exitwise.monitor.RiskMonitor` after some updates. Returns the
    Axes.

    Examples
    --------
    >>> import numpy as np
    >>> from exitwise.monitor import RiskMonitor
    >>> m = RiskMonitor(0.1, num_exits=2)
    >>> _ = m.update(np.zeros(500, int), np.full(500, 0.9), np.zeros(500, int),
    ...              np.r_[np.zeros(450, int), np.ones(50, int)])
    >>> len(monitor_plot(m).lines) >= 2
    True
    """
    ax = _axes(ax)
    h = monitor.history
    x = [r + 1 for r in h["request"]]
    ax.fill_between(
        x,
        h["lower"],
        h["upper"],
        step="post",
        color="C0",
        alpha=0.2,
        label=f"confidence sequence ({monitor.confidence:.0%} each side)",
    )
    ax.plot(x, h["estimate"], color="C0", linewidth=1.2, label="running estimate")
    ax.axhline(monitor.limit, color="C3", linestyle="--", linewidth=1.2, label="certified limit")
    if monitor.alarm:
        ax.axvline(
            monitor.alarm_at + 1,
            color="C3",
            linewidth=1,
            label=f"alarm (request {monitor.alarm_at + 1})",
        )
    ax.set_xlabel("request")
    ax.set_ylabel(monitor.risk)
    top = max(monitor.limit * 2.5, max(h["estimate"], default=0.0) * 1.3)
    ax.set_ylim(0, min(1.0, top))
    ax.legend(loc="upper right", fontsize=7, framealpha=0.6)
    return ax
