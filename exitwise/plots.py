"""matplotlib figures of exits, calibration and policies.

Every function takes ``ax=None`` (or ``fig=None`` for multi-panel figures), draws, and returns
what it drew; nothing calls ``plt.show()``. New figures are ``matplotlib.figure.Figure``
objects outside pyplot: no function switches the backend or touches global state.
matplotlib is imported lazily.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from exitwise import metrics
from exitwise.data import ExitOutputs, require_class_columns
from exitwise.signals import max_probability

__all__ = [
    "confidence_histogram",
    "exit_distribution",
    "new_figure",
    "pareto_plot",
    "reliability_diagram",
    "reliability_grid",
    "risk_coverage_plot",
    "threshold_sweep_plot",
]


def new_figure(figsize: tuple[float, float] = (5, 4)) -> Any:
    """A ``matplotlib.figure.Figure`` not registered with pyplot: no backend is switched
    and no global state changes (a notebook keeps its inline backend; the figure displays
    when returned and is freed when dropped)."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def _axes(ax: Any = None):
    if ax is None:
        ax = new_figure().subplots()
    return ax


def reliability_diagram(
    probs: Any,
    labels: Any,
    n_bins: int = 15,
    *,
    ax: Any = None,
    count_ax: Any = None,
    label: str | None = None,
    color: str = "C0",
    show_counts: bool = True,
    outline: bool = False,
    min_count: int = 20,
    legend: bool = True,
    input: str = "probs",
):
    """Accuracy per confidence bin as bars with 95 % Wilson intervals, the gap to the
    diagonal shaded, the ECE in the legend. ``probs`` is ``[N, C]`` (one exit).

    Bins holding fewer than ``min_count`` samples are drawn faint and hatched (their
    accuracy is noise), so a full-height bar from one sample does not dominate. Bin counts
    go to ``count_ax`` (a histogram panel below, as in scikit-learn's
    ``CalibrationDisplay``) when given, else, with ``show_counts``, to a strip along the
    bottom. ``outline=True`` draws unfilled bars without gap or intervals (to overlay a
    "before"). Returns the Axes.

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> out = load_default()
    >>> ax = reliability_diagram(out.probs()[:, 0], out.labels)
    >>> len(ax.patches) >= 15
    True
    """
    ax = _axes(ax)
    bins = metrics.reliability_bins(probs, labels, n_bins, input=input)
    ece = float(metrics.expected_calibration_error(probs, labels, n_bins, input=input))
    edges = bins.edges.cpu().numpy()
    width = edges[1] - edges[0]
    centers = edges[:-1] + width / 2
    acc = torch.nan_to_num(bins.accuracy, nan=0.0).cpu().numpy()
    count = bins.count.cpu().numpy()
    text = f"{label + ': ' if label else ''}ECE {ece:.4f}"
    if outline:
        ax.bar(
            centers, acc, width=width * 0.95, fill=False, edgecolor=color, linewidth=1.2, label=text
        )
    else:
        _filled_bins(ax, bins, centers, width, color, text, min_count)
    ax.plot([0, 1], [0, 1], "k--", linewidth=1)
    share = count / max(count.sum(), 1)
    if count_ax is not None:
        count_ax.bar(centers, count, width=width * 0.95, color="0.5")
        count_ax.axhline(min_count, color="0.3", linestyle=":", linewidth=0.8)
        count_ax.set_yscale("symlog", linthresh=max(1, min_count))
        count_ax.set_xlim(0, 1)
        count_ax.set_xlabel("confidence")
        count_ax.set_ylabel("samples")
    elif show_counts:
        ax.bar(
            centers,
            share * 0.25,
            width=width * 0.95,
            color="gray",
            alpha=0.5,
            label="share of samples (x0.25)",
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    if legend:
        ax.legend(loc="upper left", fontsize=7, framealpha=0.6)
    return ax


def _filled_bins(
    ax: Any, bins: Any, centers: Any, width: float, color: str, text: str, min_count: int
) -> None:
    """Accuracy bars (faint and hatched under ``min_count`` samples), the gap to the
    diagonal, and 95 % Wilson intervals, for :func:`reliability_diagram`."""
    acc = torch.nan_to_num(bins.accuracy, nan=0.0).cpu().numpy()
    conf = torch.nan_to_num(bins.confidence, nan=0.0).cpu().numpy()
    count = bins.count.cpu().numpy()
    filled, solid = count > 0, count >= min_count
    style = {"color": color, "alpha": 0.75, "edgecolor": "black", "linewidth": 0.5}
    bars = ax.bar(centers, acc, width=width * 0.95, **style)
    for bar, keep in zip(bars, solid, strict=True):
        if not keep:  # few samples: faint and hatched
            bar.set_alpha(0.2)
            bar.set_hatch("..")
    ax.bar([-1.0], [0.0], width=width, label=text, **style)  # the legend's swatch
    if not solid[filled].all():
        ax.bar(
            [-1.0],
            [0.0],
            width=width,
            color=color,
            alpha=0.2,
            hatch="..",
            label=f"fewer than {min_count} samples",
        )
    gap = filled & solid
    ax.bar(
        centers[gap],
        (conf - acc)[gap],
        bottom=acc[gap],
        width=width * 0.95,
        color="red",
        alpha=0.25,
        hatch="//",
        edgecolor="red",
        linewidth=0.0,
        label="gap to the diagonal",
    )
    low = bins.accuracy_low.cpu().numpy()
    high = bins.accuracy_high.cpu().numpy()
    ax.errorbar(
        centers[filled],
        acc[filled],
        yerr=[(acc - low).clip(min=0)[filled], (high - acc).clip(min=0)[filled]],
        fmt="none",
        ecolor="black",
        elinewidth=0.8,
        capsize=2,
        label="95 % interval (Wilson)",
    )


def reliability_grid(
    before: ExitOutputs,
    after: ExitOutputs | None = None,
    n_bins: int = 15,
    *,
    fig: Any = None,
    min_count: int = 20,
):
    """One reliability panel per exit with its bin counts in a histogram panel below; with
    ``after``, before (outline) and after (blue, with intervals) calibration overlaid.
    Returns the Figure.

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> fig = reliability_grid(load_default())
    >>> len(fig.axes)
    8
    """
    for outputs in (before, after):
        if outputs is not None:
            require_class_columns(outputs, "A reliability diagram")
    e = before.num_exits
    if fig is None:
        fig = new_figure((3.2 * e, 5.0))
    axes = fig.subplots(2, e, squeeze=False, sharex="col", height_ratios=[3, 1])
    shown = after if after is not None else before
    for j in range(e):
        ax, count_ax = axes[0, j], axes[1, j]
        reliability_diagram(
            shown.probs()[:, j],
            shown.labels,
            n_bins,
            ax=ax,
            count_ax=count_ax,
            label="after calibration" if after is not None else "accuracy per bin",
            color="C0",
            min_count=min_count,
            legend=False,
        )
        ece = float(metrics.expected_calibration_error(shown.probs()[:, j], shown.labels, n_bins))
        title = f"{before.exit_names[j]}\nECE {ece:.4f}"
        if after is not None:
            reliability_diagram(
                before.probs()[:, j],
                before.labels,
                n_bins,
                ax=ax,
                label="before calibration",
                color="0.25",
                outline=True,
                show_counts=False,
                legend=False,
            )
            was = float(metrics.expected_calibration_error(before.probs()[:, j], before.labels))
            title = f"{before.exit_names[j]}\nECE {was:.4f} -> {ece:.4f}"
        ax.set_xlabel("")
        ax.set_title(title, fontsize=10)
    handles: dict[str, Any] = {}
    for ax in axes[0]:  # one legend for the figure, below the panels
        for handle, text in zip(*ax.get_legend_handles_labels(), strict=True):
            key = text.split(":")[0]
            handles.setdefault(key, handle)
    fig.legend(
        list(handles.values()),
        list(handles),
        loc="lower center",
        ncol=len(handles),
        fontsize=8,
        frameon=False,
    )
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def confidence_histogram(outputs: ExitOutputs, exit: int = -1, bins: int = 30, *, ax: Any = None):
    """Histogram of top-label confidence at one exit, correct and wrong answers apart."""
    ax = _axes(ax)
    conf = max_probability(outputs)[:, exit].cpu().numpy()  # over the class columns
    correct = outputs.correct()[:, exit].cpu().numpy()
    ax.hist(
        [conf[correct], conf[~correct]],
        bins=bins,
        range=(0, 1),
        stacked=True,
        color=["C2", "C3"],
        label=["correct", "wrong"],
    )
    ax.set_xlabel("confidence")
    ax.set_ylabel("samples")
    ax.set_title(f"exit {outputs.exit_names[exit]}")
    ax.legend()
    return ax


def pareto_plot(
    frontier: dict[str, torch.Tensor],
    *,
    sweep: Any = None,
    fixed: Any = None,
    oracle: Any = None,
    chosen: Any = None,
    full_cost: float = 1.0,
    target: float | None = None,
    held_out: bool = False,
    ax: Any = None,
):
    """Accuracy vs relative mean cost, each argument one computed result:

    * ``frontier``: :func:`~exitwise.policies.pareto_frontier`'s or
      :func:`~exitwise.policies.held_out_frontier`'s dict (the latter's ``shared_mean_cost``
      and ``shared_accuracy`` are drawn as the shared-threshold curve);
    * ``sweep``: a :class:`~exitwise.policies.SharedThresholdSweep` (the exact curve);
    * ``fixed``, ``oracle``: :func:`~exitwise.policies.evaluate` results (fixed exits, the
      oracle);
    * ``chosen``: the chosen policy's :class:`~exitwise.policies.Evaluation`;
    * ``target``: the accuracy target (a line).

    ``held_out=True`` says the curves are policies tuned on another split and scored here
    (see :func:`exitwise.policies.held_out_frontier`): they are drawn in tuning order, not
    as a step frontier, and labelled so.
    """
    ax = _axes(ax)
    shared = None
    if sweep is not None:
        shared = (sweep.mean_cost, sweep.accuracy)
    elif "shared_mean_cost" in frontier:
        shared = (frontier["shared_mean_cost"], frontier["shared_accuracy"])
    if shared is not None:
        ax.plot(
            (shared[0] / full_cost).cpu(),
            shared[1].cpu(),
            color="0.6",
            linewidth=1,
            label=(
                "shared thresholds, tuned on the calibration half"
                if held_out
                else "shared threshold (all breakpoints)"
            ),
        )
    cost = (frontier["mean_cost"] / full_cost).cpu()
    acc = frontier["accuracy"].cpu()
    if held_out:
        ax.plot(cost, acc, color="C0", marker=".", label="calibration-half frontier, held out")
    else:
        ax.step(cost, acc, where="post", color="C0", label="Pareto frontier")
    per_exit = frontier["per_exit"].cpu()
    if bool(per_exit.any()):
        ax.scatter(cost[per_exit], acc[per_exit], color="C1", zorder=3, label="per-exit search")
    if target is not None:
        ax.axhline(target, color="red", linestyle=":", linewidth=1, label="accuracy target")
    if fixed is not None:
        ax.scatter(
            (fixed.mean_cost / full_cost).cpu(),
            fixed.accuracy.cpu(),
            marker="s",
            color="C2",
            zorder=3,
            label="fixed exit",
        )
    if oracle is not None:
        ax.scatter(
            [float(oracle.mean_cost[0]) / full_cost],
            [float(oracle.accuracy[0])],
            marker="*",
            s=120,
            color="C4",
            zorder=3,
            label="oracle exit (knows the labels; not a policy)",
        )
    if chosen is not None:
        ax.scatter(
            [chosen.relative_cost],
            [chosen.accuracy],
            marker="o",
            s=90,
            facecolor="none",
            edgecolor="red",
            linewidth=2,
            zorder=4,
            label="chosen policy",
        )
    ax.set_xlabel("mean cost (fraction of the full model)")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8, loc="lower right")
    return ax


def exit_distribution(fractions: Sequence[float], exit_names: Sequence[str], *, ax: Any = None):
    """Share of samples leaving at each exit (bars)."""
    ax = _axes(ax)
    values = [float(f) for f in fractions]
    ax.bar(range(len(values)), values, color="C0")
    ax.set_xticks(range(len(values)), list(exit_names))
    ax.set_ylabel("share of samples")
    ax.set_ylim(0, 1)
    for i, v in enumerate(values):
        ax.text(i, v + 0.01, f"{v:.0%}", ha="center", fontsize=8)
    return ax


def risk_coverage_plot(scores: Any, signal: Any = None, *, ax: Any = None):
    """Risk (error rate) against coverage for each exit's confidence, AURC in the legend.

    ``scores`` are :class:`~exitwise.policies.ExitScores` (computed once; ``signal=None``),
    or ExitOutputs with a ``signal`` (computed here).
    """
    from exitwise.policies.entry import as_scores
    from exitwise.policies.scores import ExitScores

    ax = _axes(ax)
    if not isinstance(scores, ExitScores):
        scores = as_scores(scores, signal or "max_probability", argument="scores")
    data = scores
    outputs, scores, correct = data.outputs, data.scores, data.correct()
    aurc = metrics.aurc(scores, correct)
    for j, name in enumerate(outputs.exit_names):
        cov, risk, _ = metrics.risk_coverage_curve(scores[:, j], correct[:, j])
        ax.plot(cov.cpu(), risk.cpu(), label=f"{name} (AURC {float(aurc[j]):.4f})")
    ax.set_xlabel("coverage")
    ax.set_ylabel("risk (error rate)")
    ax.legend(fontsize=8)
    return ax


def threshold_sweep_plot(sweep: Any, *, full_cost: float = 1.0, ax: Any = None):
    """Accuracy and relative cost against the shared threshold (two y axes)."""
    ax = _axes(ax)
    finite = torch.isfinite(sweep.thresholds)
    thr = sweep.thresholds[finite].cpu()
    ax.plot(thr, sweep.accuracy[finite].cpu(), color="C0", label="accuracy")
    ax.set_xlabel("shared threshold")
    ax.set_ylabel("accuracy", color="C0")
    twin = ax.twinx()
    twin.plot(thr, (sweep.mean_cost[finite] / full_cost).cpu(), color="C1", label="cost")
    twin.set_ylabel("mean cost (fraction of full)", color="C1")
    return ax
