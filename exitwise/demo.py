"""The demo behind ``make demo``: per-exit metrics of the bundled real data.

Run with ``python -m exitwise.demo``.
"""

from __future__ import annotations

import torch

from exitwise import metrics
from exitwise.data import ExitOutputs
from exitwise.datasets import dataset_card, load_default

__all__ = ["main", "per_exit_table"]


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


def main() -> None:
    torch.set_num_threads(2)
    outputs = load_default()
    card = dataset_card()
    print(f"exitwise demo: {card['model']}")
    print(f"data: {card['data']}; {outputs.num_exits} exits, {outputs.num_classes} classes")
    print("cost = cumulative FLOPs relative to the full model; ECE: top-label, 15 uniform bins\n")
    print(per_exit_table(outputs))


if __name__ == "__main__":
    main()
