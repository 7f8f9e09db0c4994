"""The per-exit metric table: one row per exit, the same numbers wherever a table is shown
(the demo, the report, ``compare_calibrators``, the CLI)."""

from __future__ import annotations

import math
from typing import Any

import torch

from exitwise._distributed import refuse_in_group
from exitwise.data import ExitOutputs, require_class_columns
from exitwise.metrics.bootstrap import bootstrap
from exitwise.metrics.calibration import (
    brier_score,
    expected_calibration_error,
    negative_log_likelihood,
)
from exitwise.metrics.exits import per_exit_accuracy
from exitwise.metrics.selective import auroc

__all__ = ["INTERVAL_METHOD", "TABLE_METRICS", "per_exit_metrics"]

#: bootstrapped columns, in order, with each metric's upper bound (all are >= 0)
TABLE_METRICS = (
    ("accuracy", 1.0),
    ("ece", 1.0),
    ("nll", math.inf),
    ("brier", 2.0),
    ("auroc", 1.0),
)
#: the bootstrap interval of the table (see :func:`~exitwise.metrics.bootstrap`)
INTERVAL_METHOD = "basic"


def _stacked(logits: torch.Tensor, labels: torch.Tensor, n_bins: int) -> torch.Tensor:
    """``[5, E]``: accuracy, top-label ECE, NLL, Brier score and the AUROC of max-probability
    against correctness, from logits."""
    log_probs = torch.log_softmax(logits.to(torch.float64), dim=-1)
    top, pred = log_probs.max(dim=-1)
    correct = pred == labels[:, None]
    return torch.stack(
        [
            per_exit_accuracy(logits, labels),
            expected_calibration_error(logits, labels, n_bins, input="logits"),
            negative_log_likelihood(logits, labels, input="logits"),
            brier_score(logits, labels, input="logits"),
            auroc(top, correct).to(torch.float64),
        ]
    ).to(torch.float64)


def per_exit_metrics(
    outputs: ExitOutputs,
    *,
    n_bins: int = 15,
    n_resamples: int = 0,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Held-out metrics of every exit as rows of plain numbers.

    Each row has ``exit`` (index), ``exit_name``, ``relative_cost`` (cost / full cost),
    ``accuracy``, ``ece`` (top-label, ``n_bins`` uniform bins), ``nll``, ``brier`` and
    ``auroc`` (log max-probability against correctness: the same order). With
    ``n_resamples > 0`` it also has
    ``{metric}_low``/``{metric}_high``, the basic bootstrap interval clipped to the metric's
    range (resampling whole sequences when ``outputs`` has groups), and
    ``{metric}_excludes_estimate``: True where the interval lies beside the
    estimate, as it can for ECE, whose plug-in value is biased upwards (say so when printing).

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> rows = per_exit_metrics(load_default()[:1000], n_resamples=20)
    >>> sorted(rows[0])[:6]
    ['accuracy', 'accuracy_excludes_estimate', 'accuracy_high', 'accuracy_low', 'auroc',
     'auroc_excludes_estimate']
    """
    refuse_in_group("per_exit_metrics (its bootstrap intervals)")
    if outputs.labels is None:
        raise ValueError("`outputs` needs labels for the per-exit metrics.")
    require_class_columns(outputs, "The per-exit metrics table (ECE, Brier)")
    logits, labels = outputs.logits, outputs.labels
    values = _stacked(logits, labels, n_bins)
    relative = outputs.costs / outputs.costs[-1]
    intervals = None
    if n_resamples > 0:
        intervals = bootstrap(
            _stacked,
            logits,
            labels,
            n_resamples=n_resamples,
            confidence=confidence,
            seed=seed,
            method=INTERVAL_METHOD,
            bounds=(0.0, math.inf),
            groups=outputs.groups,
            n_bins=n_bins,
        )
    rows = []
    for e, name in enumerate(outputs.exit_names):
        row: dict[str, Any] = {"exit": e, "exit_name": name, "relative_cost": float(relative[e])}
        for m, (metric, upper) in enumerate(TABLE_METRICS):
            row[metric] = float(values[m, e])
            if intervals is not None:
                row[f"{metric}_low"] = min(float(intervals.low[m, e]), upper)
                row[f"{metric}_high"] = min(float(intervals.high[m, e]), upper)
                row[f"{metric}_excludes_estimate"] = not (
                    row[f"{metric}_low"] <= row[metric] <= row[f"{metric}_high"]
                )
        rows.append(row)
    return rows
