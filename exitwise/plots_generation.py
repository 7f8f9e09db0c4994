"""matplotlib figures of token-level exits: the self-speculation speed-up over (draft exit,
draft length).

Like :mod:`exitwise.plots`, every function takes ``ax=None``, draws and returns the Axes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from exitwise.plots import new_figure

__all__ = ["speculation_plot"]


def speculation_plot(plan: Any, *, ax: Any = None):
    """Heat map of the expected speed-up of every (draft exit, draft length) of a
    :class:`~exitwise.generation.SpeculationPlan`, the best one outlined.

    Examples
    --------
    >>> import torch
    >>> from exitwise import ExitOutputs
    >>> from exitwise.generation import plan_self_speculation
    >>> out = ExitOutputs(torch.randn(40, 3, 4), groups=torch.arange(40) // 10,
    ...                   positions=torch.arange(40) % 10)
    >>> ax = speculation_plot(plan_self_speculation(out, max_draft=3))
    >>> ax.get_xlabel()
    'draft length k'
    """
    from matplotlib.patches import Rectangle

    ax = new_figure((5.5, 3.5)).subplots() if ax is None else ax
    grid = plan.speed_up_grid().numpy()
    image = ax.imshow(grid, aspect="auto", origin="lower", cmap="viridis")
    ax.figure.colorbar(image, ax=ax, label="expected speed-up (x)")
    d, k = grid.shape
    ax.set_xticks(np.arange(k), [str(i + 1) for i in range(k)])
    names = {r["draft_exit"]: r["draft_name"] for r in plan.rows}
    ax.set_yticks(np.arange(d), [names[i] for i in range(d)])
    best = plan.best
    ax.add_patch(
        Rectangle(
            (best["draft_length"] - 1.5, best["draft_exit"] - 0.5),
            1,
            1,
            fill=False,
            edgecolor="red",
            linewidth=2,
        )
    )
    for i in range(d):
        for j in range(k):
            ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7, color="w")
    ax.set_xlabel("draft length k")
    ax.set_ylabel("draft exit")
    ax.set_title(f"self-speculative decoding ({plan.mode})")
    return ax
