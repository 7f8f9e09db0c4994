"""matplotlib figures of token-level exits: the self-speculation speed-up over (draft exit,
draft length).

Like :mod:`exitwise.plots`, every function takes ``ax=None``, draws and returns the Axes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from exitwise.plots import new_figure

__all__ = ["position_plot", "speculation_plot"]


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


def position_plot(outputs: Any, exits: Any, *, bins: int = 8, n_bins: int = 15, axes: Any = None):
    """Two panels over token positions (``bins`` equal-count position buckets): each exit's
    top-label ECE (``outputs`` as given, e.g. calibrated), and the mean exit depth (1 = first
    exit) of the policy's ``exits`` per token. Returns the two Axes.

    Examples
    --------
    >>> import torch
    >>> from exitwise import ExitOutputs
    >>> out = ExitOutputs(torch.randn(80, 2, 3), labels=torch.arange(80) % 3,
    ...                   groups=torch.arange(80) // 20, positions=torch.arange(80) % 20)
    >>> axes = position_plot(out, torch.zeros(80, dtype=torch.long), bins=4)
    >>> axes[1].get_ylabel()
    'mean exit depth'
    """
    import torch

    from exitwise import metrics

    if axes is None:
        axes = new_figure((9, 3.5)).subplots(1, 2)
    pos = outputs.positions.cpu()
    edges = torch.quantile(pos.double(), torch.linspace(0, 1, bins + 1, dtype=torch.float64))
    bucket = torch.bucketize(pos.double(), edges[1:-1], right=True)
    centres, eces, depth = [], [], []
    ex = torch.as_tensor(exits).cpu()
    for b in range(bins):
        rows = torch.nonzero(bucket == b).flatten()
        if rows.numel() == 0:
            continue
        part = outputs[rows.to(outputs.device)]
        centres.append(float(pos[rows].double().mean()))
        eces.append(metrics.expected_calibration_error(part.probs(), part.labels, n_bins).cpu())
        depth.append(float((ex[rows] + 1).double().mean()))
    ece = torch.stack(eces).numpy()
    for e, name in enumerate(outputs.exit_names):
        axes[0].plot(centres, ece[:, e], marker="o", label=name)
    axes[0].set_xlabel("token position")
    axes[0].set_ylabel("ECE")
    axes[0].legend(fontsize=7)
    axes[0].set_title("calibration by position", fontsize=10)
    axes[1].plot(centres, depth, marker="o", color="C3")
    axes[1].set_xlabel("token position")
    axes[1].set_ylabel("mean exit depth")
    axes[1].set_ylim(0.8, outputs.num_exits + 0.2)
    axes[1].set_title("where tokens leave, by position", fontsize=10)
    return axes
