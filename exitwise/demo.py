"""The demo behind ``make demo``: per-exit metrics of the bundled real data.

Run with ``python -m exitwise.demo``.
"""

from __future__ import annotations

import torch

from exitwise import metrics
from exitwise.data import ExitOutputs
from exitwise.datasets import dataset_card, load_default

__all__ = ["main", "per_exit_table"]


def per_exit_table(outputs: ExitOutputs, n_resamples: int = 200, seed: int = 0) -> str:
    """An aligned text table: cost, accuracy, ECE (95 % bias-corrected bootstrap interval),
    NLL, Brier, AUROC.

    Examples
    --------
    >>> out = ExitOutputs(torch.randn(50, 2, 3), labels=torch.arange(50) % 3)
    >>> print(per_exit_table(out, n_resamples=20).splitlines()[0])  # doctest: +ELLIPSIS
    exit ...
    """
    if outputs.labels is None:
        raise ValueError("`outputs` needs labels for the per-exit table.")
    probs, labels = outputs.probs(), outputs.labels
    acc = metrics.per_exit_accuracy(probs, labels)
    ece = metrics.bootstrap(
        metrics.expected_calibration_error,
        probs,
        labels,
        n_resamples=n_resamples,
        seed=seed,
        method="bc",
    )
    nll = metrics.negative_log_likelihood(outputs.logits, labels, input="logits")
    brier = metrics.brier_score(probs, labels)
    auroc = metrics.auroc(probs.max(dim=-1).values, outputs.correct())
    rel_cost = outputs.costs / outputs.costs[-1]
    header = (
        f"{'exit':<10} {'cost':>6} {'accuracy':>9} {'ECE':>7} {'ECE 95% CI':>17} "
        f"{'NLL':>7} {'Brier':>7} {'AUROC':>7}"
    )
    rows = [header, "-" * len(header)]
    for e, name in enumerate(outputs.exit_names):
        interval = f"[{float(ece.low[e]):.4f}, {float(ece.high[e]):.4f}]"
        rows.append(
            f"{name:<10} {float(rel_cost[e]):>6.3f} {float(acc[e]):>9.4f} "
            f"{float(ece.estimate[e]):>7.4f} {interval:>17} {float(nll[e]):>7.4f} "
            f"{float(brier[e]):>7.4f} {float(auroc[e]):>7.4f}"
        )
    return "\n".join(rows)


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
