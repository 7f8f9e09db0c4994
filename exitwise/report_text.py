"""Text pieces the report, the demo and the examples print: the per-exit metric table and its
interval notation."""

from __future__ import annotations

from exitwise import metrics
from exitwise.data import ExitOutputs

__all__ = ["EXCLUDED_NOTE", "interval_text", "per_exit_table"]


#: footnote for intervals beside their estimate (binned ECE is biased upwards)
EXCLUDED_NOTE = (
    "* interval beside the estimate: the plug-in ECE is biased upwards on finite samples, "
    "and the bootstrap interval corrects for that bias"
)


def interval_text(row: dict, metric: str) -> str:
    """``[low, high]`` of a :func:`~exitwise.metrics.per_exit_metrics` row, with ``*`` when
    the interval lies beside the estimate (see :data:`EXCLUDED_NOTE`)."""
    mark = "*" if row.get(f"{metric}_excludes_estimate") else " "
    return f"[{row[f'{metric}_low']:.4f}, {row[f'{metric}_high']:.4f}]{mark}"


def per_exit_table(outputs: ExitOutputs, n_resamples: int = 200, seed: int = 0) -> str:
    """An aligned text table of :func:`~exitwise.metrics.per_exit_metrics`: cost, accuracy,
    ECE (95 % basic bootstrap interval), NLL, Brier, AUROC.

    Examples
    --------
    >>> import torch
    >>> out = ExitOutputs(torch.randn(50, 2, 3), labels=torch.arange(50) % 3)
    >>> print(per_exit_table(out, n_resamples=20).splitlines()[0])  # doctest: +ELLIPSIS
    exit ...
    """
    rows = metrics.per_exit_metrics(outputs, n_resamples=n_resamples, seed=seed)
    header = (
        f"{'exit':<10} {'cost':>6} {'accuracy':>9} {'ECE':>7} {'ECE 95% CI':>18} "
        f"{'NLL':>7} {'Brier':>7} {'AUROC':>7}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['exit_name']:<10} {r['relative_cost']:>6.3f} {r['accuracy']:>9.4f} "
            f"{r['ece']:>7.4f} {interval_text(r, 'ece'):>18} {r['nll']:>7.4f} "
            f"{r['brier']:>7.4f} {r['auroc']:>7.4f}"
        )
    if any(r["ece_excludes_estimate"] for r in rows):
        lines.append(EXCLUDED_NOTE)
    return "\n".join(lines)
