"""matplotlib figures of serving: latency against arrival rate, and a latency model.

Like :mod:`exitwise.plots`, every function takes ``ax=None``, draws and returns the Axes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from exitwise.plots import new_figure

__all__ = ["latency_model_plot", "latency_rate_plot"]

_STYLE = {"full": ("k", "--"), "static": ("C1", "-"), "compact": ("C0", "-"), "refill": ("C2", "-")}


def latency_rate_plot(
    rates: Any,
    curves: dict[str, list[float]],
    *,
    limit: float | None = None,
    percentile: float = 99.0,
    ax: Any = None,
):
    """Latency percentile (ms) against arrival rate, one line per scheduler (from
    :func:`~exitwise.serving.latency_by_rate`); a line stops where the queue becomes unstable.

    Examples
    --------
    >>> curves = {"full": [0.002, float("inf")], "compact": [0.001, 0.003]}
    >>> ax = latency_rate_plot([100, 200], curves)
    >>> len(ax.lines)   # two curves and the "unstable beyond" mark of the full model
    3
    """
    ax = new_figure((5.5, 4)).subplots() if ax is None else ax
    r = np.asarray(rates, dtype=float)
    for name, values in curves.items():
        v = np.asarray(values, dtype=float) * 1e3
        color, style = _STYLE.get(name, (None, "-"))
        label = "full model" if name == "full" else f"policy, {name}"
        ok = np.isfinite(v)
        ax.plot(r[ok], v[ok], style, color=color, marker="o", markersize=3, label=label)
        if (~ok).any() and ok.any():
            ax.plot([r[ok][-1]], [v[ok][-1]], "x", color=color, markersize=8)
    if limit is not None:
        ax.axhline(limit * 1e3, color="C3", linestyle=":", linewidth=1, label="limit")
    ax.set_xlabel("arrival rate (requests/s)")
    ax.set_ylabel(f"p{percentile:g} latency (ms)")
    ax.set_yscale("log")
    from matplotlib.ticker import ScalarFormatter

    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.legend(fontsize=7, framealpha=0.6)
    ax.set_title("latency under load (x: the queue grows beyond this rate)", fontsize=9)
    return ax


def latency_model_plot(latency: Any, *, ax: Any = None):
    """Measured seconds (ms) of each segment against batch size, with the fitted lines.

    Examples
    --------
    >>> from exitwise.serving import LatencyModel
    >>> ax = latency_model_plot(LatencyModel([1, 8], [[0.001, 0.002], [0.002, 0.006]]))
    >>> len(ax.lines)
    4
    """
    ax = new_figure((5, 4)).subplots() if ax is None else ax
    sizes = latency.batch_sizes
    grid = np.arange(1, int(sizes.max()) + 1)
    table = latency.table(int(sizes.max()) + 1)
    for e in range(latency.num_segments):
        ax.plot(sizes, latency.seconds[:, e] * 1e3, "o", color=f"C{e}", label=f"segment {e}")
        ax.plot(grid, table[grid, e] * 1e3, "-", color=f"C{e}", linewidth=1)
    ax.set_xlabel("batch size")
    ax.set_ylabel("ms")
    ax.legend(fontsize=7)
    ax.set_title("latency per exit segment", fontsize=9)
    return ax
