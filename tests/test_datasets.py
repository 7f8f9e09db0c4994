"""The bundled real dataset and the demo built on it."""

from __future__ import annotations

import pytest
import torch

from exitwise import metrics
from exitwise.datasets import DATASET_NAMES, dataset_card, load_dataset, load_default
from exitwise.report_text import per_exit_table


def test_default_dataset_is_real_and_matches_its_card(real_outputs):
    card = dataset_card()
    assert real_outputs.num_samples == 10000 and real_outputs.num_exits == 4
    assert real_outputs.exit_names == card["exit_names"]
    acc = metrics.per_exit_accuracy(real_outputs.logits, real_outputs.labels)
    assert acc.tolist() == pytest.approx(card["per_exit_accuracy"], abs=1e-9)
    assert real_outputs.costs.tolist() == pytest.approx(card["costs_flops"])
    # a clean early-exit profile: accuracy and cost rise with depth
    assert bool((acc[1:] > acc[:-1]).all()) and 0.65 < float(acc[0]) < float(acc[-1]) < 0.95
    # balanced Fashion-MNIST test split
    assert torch.bincount(real_outputs.labels).tolist() == [1000] * 10


def test_loaders_agree_and_reject_unknown_names():
    assert torch.equal(load_dataset(DATASET_NAMES[0]).logits, load_default().logits)
    with pytest.raises(ValueError, match="`name` to be one of"):
        load_dataset("imagenet")


def test_demo_table_reports_the_metrics(real_outputs):
    table = per_exit_table(real_outputs, n_resamples=20)
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["exit", "cost", "accuracy"]
    assert len(lines) == 2 + real_outputs.num_exits
    ece = metrics.expected_calibration_error(real_outputs.probs(), real_outputs.labels)
    for e, line in enumerate(lines[2:]):
        fields = line.split()
        assert fields[0] == real_outputs.exit_names[e]
        assert float(fields[3]) == pytest.approx(float(ece[e]), abs=5e-5)


def test_newsgroups_dataset_matches_its_card():
    out = load_dataset("newsgroups_minilm")
    card = dataset_card("newsgroups_minilm")
    assert (out.num_samples, out.num_exits, out.num_classes) == (3000, 6, 20)
    assert out.exit_names == card["exit_names"]
    acc = metrics.per_exit_accuracy(out.logits, out.labels)
    assert acc.tolist() == pytest.approx(card["per_exit_accuracy"], abs=1e-4)
    assert torch.bincount(out.labels).tolist() == [150] * 20
    # a frozen encoder: early layers already carry most of the signal, the last one is best
    assert float(acc[-1]) == float(acc.max()) and 0.6 < float(acc[0]) < float(acc[-1]) < 0.8
