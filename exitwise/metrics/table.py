"""The per-exit metric table: one row per exit, the same numbers wherever a table is shown
(the demo, the report, ``compare_calibrators``, the CLI)."""

from __future__ import annotations

import math
from typing import Any

import torch

from exitwise._distributed import gather_rows_to_first, group_active, on_first_rank
from exitwise.data import ExitOutputs, require_class_columns
from exitwise.metrics.binning import calibration_error_from_confidence
from exitwise.metrics.bootstrap import bootstrap
from exitwise.metrics.calibration import brier_per_sample
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


def _per_sample(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[N, E, 4]`` per sample and exit: the top log-probability, the hit (0/1), the label's
    log-probability and the Brier term: everything the table needs, ``4 x 8`` bytes a row
    and exit whatever the number of classes."""
    log_probs = torch.log_softmax(logits.to(torch.float64), dim=-1)
    top, pred = log_probs.max(dim=-1)
    at_label = log_probs.gather(-1, labels[:, None, None].expand(-1, logits.shape[1], 1))
    brier = brier_per_sample(log_probs.exp(), labels)
    hit = (pred == labels[:, None]).to(torch.float64)
    return torch.stack([top, hit, at_label[..., 0], brier], dim=-1)


def _stacked(samples: torch.Tensor, n_bins: int) -> torch.Tensor:
    """``[5, E]``: accuracy, top-label ECE, NLL, Brier score and the AUROC of max-probability
    (its log: the same order, without ties from rounding near 1) against correctness, from
    :func:`_per_sample`'s ``[N, E, 4]``."""
    top, hit, at_label, brier = samples.unbind(dim=-1)
    correct = hit == 1.0
    return torch.stack(
        [
            hit.mean(dim=0),
            calibration_error_from_confidence(top.exp(), correct, n_bins),
            -at_label.mean(dim=0),
            brier.mean(dim=0),
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

    In an initialised ``torch.distributed`` group of several processes each rank passes its
    shard and every rank gets the table of all of them: the per-sample values behind it
    (``[N, E, 4]`` float64, not the logits) are gathered in rank order on rank 0, which
    computes the table and its bootstrap and hands them to every rank.

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> rows = per_exit_metrics(load_default()[:1000], n_resamples=20)
    >>> sorted(rows[0])[:6]
    ['accuracy', 'accuracy_excludes_estimate', 'accuracy_high', 'accuracy_low', 'auroc',
     'auroc_excludes_estimate']
    """
    if outputs.labels is None:
        raise ValueError("`outputs` needs labels for the per-exit metrics.")
    require_class_columns(outputs, "The per-exit metrics table (ECE, Brier)")
    samples = _per_sample(outputs.logits, outputs.labels)
    groups = outputs.groups
    if group_active():  # every rank's per-sample values (not logits) on rank 0, which computes
        samples = gather_rows_to_first(samples)
        groups = None if groups is None else gather_rows_to_first(groups)

    def table() -> tuple[torch.Tensor, Any]:
        intervals = None
        if n_resamples > 0:
            intervals = bootstrap(
                _stacked,
                samples,
                n_resamples=n_resamples,
                confidence=confidence,
                seed=seed,
                method=INTERVAL_METHOD,
                bounds=(0.0, math.inf),
                groups=groups,
                n_bins=n_bins,
            )
        return _stacked(samples, n_bins), intervals

    values, intervals = on_first_rank(table)  # every rank gets rank 0's table
    relative = outputs.costs / outputs.costs[-1]
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
