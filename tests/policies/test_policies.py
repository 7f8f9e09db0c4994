"""Policy objects: exit decisions against loops, JSON round trips, evaluate()."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from exitwise import ExitOutputs
from exitwise.policies import (
    FixedExitPolicy,
    OracleExit,
    PatiencePolicy,
    ThresholdPolicy,
    evaluate,
    load_policy,
    policy_from_dict,
)
from exitwise.signals import compute_signal


def test_threshold_policy_matches_loop(real_outputs):
    policy = ThresholdPolicy("margin", [0.9, 0.7, 0.5, float("inf")])
    idx = policy.exit_indices(real_outputs).numpy()
    scores = compute_signal(real_outputs, "margin").numpy()
    expected = [
        next((e for e in range(3) if scores[n, e] >= policy.thresholds[e]), 3)
        for n in range(real_outputs.num_samples)
    ]
    assert np.array_equal(idx, expected)
    pred = policy.predictions(real_outputs).numpy()
    assert np.array_equal(pred, real_outputs.predictions().numpy()[np.arange(len(idx)), idx])


def test_sdn_fallback_takes_most_confident_exit():
    logits = torch.tensor(
        [[[0.0, 1.0], [0.0, 2.0], [0.0, 0.5]], [[0.0, 5.0], [0.0, 0.0], [0.0, 0.0]]]
    )
    out = ExitOutputs(logits)
    last = ThresholdPolicy("max_probability", 0.95)
    sdn = ThresholdPolicy("max_probability", 0.95, fallback="most_confident")
    assert last.exit_indices(out).tolist() == [2, 0]
    assert sdn.exit_indices(out).tolist() == [1, 0]


def test_patience_policy_is_pabee():
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 2, size=(300, 6))
    out = ExitOutputs(torch.nn.functional.one_hot(torch.tensor(pred), 2).float())
    for t in [1, 2, 3]:
        expected = []
        for row in pred:  # PABEE inference loop
            cnt, exit_ = 0, 5
            for e in range(6):
                cnt = cnt + 1 if e > 0 and row[e] == row[e - 1] else 0
                if cnt == t:
                    exit_ = e
                    break
            expected.append(exit_)
        assert PatiencePolicy(t).exit_indices(out).tolist() == expected


def test_fixed_and_oracle():
    out = ExitOutputs(
        torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]]),
        labels=torch.tensor([1, 1]),
    )
    assert FixedExitPolicy(1).exit_indices(out).tolist() == [1, 1]
    assert FixedExitPolicy(-1).exit_indices(out).tolist() == [2, 2]
    assert OracleExit().exit_indices(out).tolist() == [1, 2]
    assert OracleExit("final").exit_indices(out).tolist() == [1, 0]
    with pytest.raises(ValueError, match=r"`exit` in \[-3, 2\]"):
        FixedExitPolicy(3).exit_indices(out)


@pytest.mark.parametrize(
    "policy",
    [
        ThresholdPolicy("max_probability", [0.9, 1 / 3, float("inf")]),
        ThresholdPolicy("negative_entropy", -0.123456789012345678, fallback="most_confident"),
        ThresholdPolicy("margin", [float("-inf"), 0.5, 0.5]),
        PatiencePolicy(2),
        FixedExitPolicy(1),
        OracleExit("final"),
    ],
)
def test_json_round_trip_is_exact(tmp_path, policy):
    path = tmp_path / "policy.json"
    policy.save(path)
    back = load_policy(path)
    assert back == policy and type(back) is type(policy)
    out = ExitOutputs(torch.randn(50, 3, 4), labels=torch.arange(50) % 4)
    assert torch.equal(back.exit_indices(out), policy.exit_indices(out))
    text = path.read_text()
    assert "Infinity" not in text and "NaN" not in text  # strict JSON
    json.loads(text)


def test_policy_validation(tmp_path):
    with pytest.raises(ValueError, match="Unknown signal 'conf'"):
        ThresholdPolicy("conf", 0.5)
    with pytest.raises(ValueError, match="without NaN"):
        ThresholdPolicy("margin", [0.5, math.nan])
    with pytest.raises(ValueError, match="`patience` to be an integer >= 1"):
        PatiencePolicy(0)
    with pytest.raises(ValueError, match="3 thresholds but the outputs have 2 exits"):
        ThresholdPolicy("margin", [0.1, 0.2, 0.3]).exit_indices(ExitOutputs(torch.zeros(2, 2, 2)))
    with pytest.raises(ValueError, match="Unknown policy kind 'magic'"):
        policy_from_dict({"format": "exitwise.ExitPolicy/1", "kind": "magic", "params": {}})
    with pytest.raises(ValueError, match="format"):
        policy_from_dict({"kind": "fixed", "params": {"exit": 0}})
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a JSON policy file"):
        load_policy(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="numbers or 'inf'"):
        policy_from_dict(
            {
                "format": "exitwise.ExitPolicy/1",
                "kind": "threshold",
                "params": {"signal": "margin", "thresholds": ["high"]},
            }
        )


def test_evaluate_policies_matches_direct_computation(real_outputs):
    policies = [
        ThresholdPolicy("max_probability", 0.8),
        ThresholdPolicy("max_probability", [0.95, 0.9, 0.8, 0.0]),
        FixedExitPolicy(0),
        OracleExit(),
        PatiencePolicy(2),
    ]
    r = evaluate(policies, real_outputs, percentiles=[50])
    labels = real_outputs.labels
    for i, policy in enumerate(policies):
        idx = policy.exit_indices(real_outputs)
        acc = (policy.predictions(real_outputs) == labels).double().mean()
        assert float(r.accuracy[i]) == pytest.approx(float(acc))
        assert float(r.mean_cost[i]) == pytest.approx(float(real_outputs.costs[idx].mean()))
        assert torch.equal(r.exit_counts[i], torch.bincount(idx, minlength=4))
    assert torch.isnan(r.thresholds[2]).all() and not torch.isnan(r.thresholds[0]).any()
    # the oracle is an upper bound on accuracy
    assert float(r.accuracy[3]) >= float(r.accuracy.max()) - 1e-12
    same_signal = evaluate(policies[:2], real_outputs)
    assert torch.equal(same_signal.accuracy, r.accuracy[:2])
    with pytest.raises(TypeError, match="ExitPolicy objects"):
        evaluate([0.5], real_outputs)
