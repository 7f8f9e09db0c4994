"""The per-exit table against scikit-learn (accuracy, Brier, log-loss, ROC AUC) and a naive
binned ECE, row by row."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from exitwise import ExitOutputs
from exitwise.metrics import per_exit_metrics


def _naive_ece(conf: np.ndarray, hit: np.ndarray, n_bins: int) -> float:
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        inside = (conf >= lo) & ((conf < hi) if b < n_bins - 1 else (conf <= hi))
        if inside.any():
            total += inside.sum() / len(conf) * abs(conf[inside].mean() - hit[inside].mean())
    return total


@pytest.mark.parametrize("n_bins", [5, 15])
def test_per_exit_table_matches_scikit_learn_and_a_naive_ece(n_bins):
    g = torch.Generator().manual_seed(3)
    n, e, c = 400, 3, 6
    labels = torch.randint(0, c, (n,), generator=g)
    logits = torch.randn(n, e, c, generator=g) * 2.0
    logits[torch.arange(n), :, labels] += torch.tensor([0.5, 1.5, 3.0])
    rows = per_exit_metrics(ExitOutputs(logits, labels), n_bins=n_bins)
    y = labels.numpy()
    for j, row in enumerate(rows):
        p = torch.softmax(logits[:, j].double(), dim=-1).numpy()
        pred, conf = p.argmax(axis=1), p.max(axis=1)
        onehot = np.eye(c)[y]
        assert row["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
        assert row["nll"] == pytest.approx(log_loss(y, p, labels=range(c)), rel=1e-9)
        assert row["brier"] == pytest.approx(((p - onehot) ** 2).sum(axis=1).mean(), rel=1e-9)
        assert row["auroc"] == pytest.approx(roc_auc_score(pred == y, conf), rel=1e-9)
        assert row["ece"] == pytest.approx(_naive_ece(conf, pred == y, n_bins), rel=1e-9)
