"""Exit metrics against naive loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from exitwise import metrics as M
from tests.conftest import random_probs


def test_exit_metrics_match_loops(real_outputs):
    probs = real_outputs.probs()
    labels = real_outputs.labels
    pred = probs.argmax(-1).numpy()
    y = labels.numpy()
    acc = M.per_exit_accuracy(probs, labels)
    cons = M.consistency(probs)
    for e in range(real_outputs.num_exits):
        assert float(acc[e]) == pytest.approx(np.mean(pred[:, e] == y))
        assert float(cons[e]) == pytest.approx(np.mean(pred[:, e] == pred[:, -1]))
    over = np.mean([(pred[n, :-1] == y[n]).any() and pred[n, -1] != y[n] for n in range(len(y))])
    assert float(M.overthinking(probs, labels)) == pytest.approx(over)
    assert float(M.overthinking(torch.tensor(pred), labels)) == pytest.approx(over)


def test_expected_cost_and_speed_up():
    idx = torch.tensor([0, 1, 1, 2])
    costs = torch.tensor([1.0, 2.0, 5.0])
    assert float(M.expected_cost(idx, costs)) == pytest.approx(2.5)
    assert float(M.speed_up(idx, costs)) == pytest.approx(5.0 / 2.5)
    per_sample = torch.tensor([[1.0, 2.0, 5.0], [1.0, 3.0, 6.0], [2.0, 2.0, 2.0], [1.0, 1.0, 9.0]])
    assert float(M.expected_cost(idx, per_sample)) == pytest.approx((1 + 3 + 2 + 9) / 4)
    assert float(M.speed_up(idx, per_sample)) == pytest.approx((5 + 6 + 2 + 9) / 15)


def test_exit_metric_validation():
    with pytest.raises(ValueError, match=r"`exit_indices` in \[0, 2\]"):
        M.expected_cost(torch.tensor([3]), torch.ones(3))
    with pytest.raises(TypeError, match="1-D integer tensor"):
        M.expected_cost(torch.tensor([0.5]), torch.ones(3))
    with pytest.raises(ValueError, match="N = 2, got 3"):
        M.expected_cost(torch.tensor([0, 1]), torch.ones(3, 3))
    with pytest.raises(TypeError, match="floating scores or integer predictions"):
        M.consistency(torch.ones(3, 2, dtype=torch.bool))
    probs, labels = random_probs(5, 2, 3)
    with pytest.raises(ValueError, match="one label per sample"):
        M.per_exit_accuracy(probs, labels[:2])


def test_single_exit_has_no_overthinking():
    probs, labels = random_probs(50, 1, 3)
    assert float(M.overthinking(probs, labels)) == 0.0
