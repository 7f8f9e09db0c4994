"""Batched-serving simulation against a naive loop; the runtime controller."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from exitwise import ExitOutputs
from exitwise.calibrate import TemperatureScaling
from exitwise.policies import (
    ExitController,
    ThresholdPolicy,
    load_policy,
    simulate_batching,
)
from exitwise.signals import SIGNALS, compute_signal


def naive_simulation(exits, costs, batch_size, mode, layer_cost, seed):
    n, e = len(exits), len(costs)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    total = full = 0.0
    for start in range(0, n, batch_size):
        batch = [int(exits[i]) for i in order[start : start + batch_size]]
        for j in range(e):
            if mode == "per_sample":
                total += sum(layer_cost(1, j) for x in batch if x >= j)
                full += len(batch) * layer_cost(1, j)
            elif mode == "wait_all":
                if max(batch) >= j:
                    total += layer_cost(len(batch), j)
                full += layer_cost(len(batch), j)
            else:
                running = sum(1 for x in batch if x >= j)
                if running:
                    total += layer_cost(running, j)
                full += layer_cost(len(batch), j)
    return total, full


@settings(max_examples=60, deadline=None)
@given(
    exits=st.lists(st.integers(0, 3), min_size=1, max_size=40),
    batch_size=st.integers(1, 9),
    mode=st.sampled_from(["per_sample", "wait_all", "compact"]),
    fixed=st.floats(0.0, 2.0),
    seed=st.integers(0, 100),
)
def test_simulation_matches_naive_loop(exits, batch_size, mode, fixed, seed):
    costs = [1.0, 2.5, 3.0, 6.0]
    out = ExitOutputs(torch.zeros(len(exits), 4, 2), costs=costs)
    seg = np.diff([0.0, *costs])

    def layer_cost(b, j):
        return fixed + b * seg[j]  # a latency model: fixed overhead + per-sample work

    res = simulate_batching(torch.tensor(exits), out, batch_size, mode, layer_cost, seed)
    total, full = naive_simulation(exits, costs, batch_size, mode, layer_cost, seed)
    assert res.total_cost == pytest.approx(total) and res.full_cost == pytest.approx(full)
    default = simulate_batching(torch.tensor(exits), out, batch_size, mode, seed=seed)
    t0, f0 = naive_simulation(exits, costs, batch_size, mode, lambda b, j: b * seg[j], seed)
    assert default.total_cost == pytest.approx(t0) and default.full_cost == pytest.approx(f0)


def test_batching_breaks_the_ideal_speed_up(real_outputs):
    policy = ThresholdPolicy("max_probability", 0.9)
    modes = {
        m: simulate_batching(policy, real_outputs, 32, m)
        for m in ("per_sample", "wait_all", "compact")
    }
    assert modes["per_sample"].speed_up > modes["compact"].speed_up - 1e-9
    assert modes["compact"].speed_up >= modes["wait_all"].speed_up
    assert modes["wait_all"].speed_up < 1.2  # with 32 samples someone always runs deep
    assert simulate_batching(policy, real_outputs, 1, "wait_all").speed_up == pytest.approx(
        modes["per_sample"].speed_up
    )


def run_controller(controller, logits):
    """An inference loop with compaction: samples leave the batch when they exit."""
    n, e, _ = logits.shape
    alive = torch.arange(n)
    state = controller.initial_state(n)
    exits = torch.full((n,), -1)
    for j in range(e):
        done, state = controller.decide(j, logits[alive, j], state)
        exits[alive[done]] = j
        alive = alive[~done]
        state = (state[0][~done], state[1][~done])
        if alive.numel() == 0:
            break
    return exits


@pytest.mark.parametrize(
    "signal",
    [
        "max_probability",
        "margin",
        "negative_entropy",
        "normalized_entropy_confidence",
        "patience",
        "agreement_with_previous",
        "log_max_probability",
    ],
)
def test_controller_equals_offline_policy(signal, real_outputs):
    out = ExitOutputs(
        real_outputs.logits[:3000].double(),
        labels=real_outputs.labels[:3000],
        costs=real_outputs.costs,
    )
    thresholds = {
        "max_probability": [0.95, 0.9, 0.8, 0.0],
        "margin": [0.9, 0.8, 0.6, 0.0],
        "negative_entropy": [-0.1, -0.3, -0.5, 0.0],
        "normalized_entropy_confidence": [0.9, 0.85, 0.8, 0.0],
        "patience": [1.0, 1.0, 2.0, 0.0],
        "agreement_with_previous": [1.0] * 4,
        "log_max_probability": [-0.05, -0.1, -0.2, 0.0],
    }[signal]
    policy = ThresholdPolicy(signal, thresholds)
    controller = ExitController.from_policy(policy)
    assert torch.equal(run_controller(controller, out.logits), policy.exit_indices(out))


class Scripted:
    """The TorchScript-compiled controller behind the eager one's loop interface."""

    def __init__(self, controller):
        self.eager, self.module = controller, torch.jit.script(controller)

    def initial_state(self, n):
        return self.eager.initial_state(n)

    def decide(self, j, logits, state):
        done, pred, run = self.module(j, logits, state[0], state[1])
        return done, (pred, run)


BUILT_IN = [name for name, s in SIGNALS.items() if s.code is not None]


def saturated_outputs(dtype):
    """Logits with gaps from 0 to 1,000 (max-prob is exactly 1.0 in every dtype for most)."""
    g = torch.Generator().manual_seed(3)
    n, e, c = 400, 4, 7
    logits = torch.randn(n, e, c, generator=g) * 2
    gaps = torch.tensor([0.0, 5.0, 12.0, 20.0, 40.0, 90.0, 400.0, 1000.0])
    logits[:, :, 2] += gaps[torch.randint(0, len(gaps), (n, e), generator=g)]
    labels = torch.randint(0, c, (n,), generator=g)
    return ExitOutputs(logits.to(dtype), labels=labels)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("signal", BUILT_IN)
@pytest.mark.parametrize("calibrated", [False, True])
def test_regression_controller_decisions_equal_offline_on_saturated_logits(
    signal, dtype, calibrated
):
    # issue 10 defect 1: at a logit gap of ~40 the offline log max-prob was -4e-18 and the
    # runtime's 0.0, so a threshold at 0 exited at runtime and not offline.
    out = saturated_outputs(dtype)
    ts = TemperatureScaling().fit(out) if calibrated else None
    seen = ts.transform(out) if calibrated else out
    scores = compute_signal(seen, signal)
    # thresholds exactly on observed scores (ties decide), and 0.0 / 1.0 at the top
    picks = [scores[k, j] for j, k in enumerate((7, 50, 200))]
    for thresholds in ([float(v) for v in picks] + [0.0], [0.0, 1.0, float(scores.max()), 0.0]):
        policy = ThresholdPolicy(signal, thresholds)
        controller = ExitController.from_policy(policy, ts)
        offline = policy.exit_indices(seen)
        assert torch.equal(run_controller(controller, out.logits), offline)
        assert torch.equal(run_controller(Scripted(controller), out.logits), offline)


def test_controller_with_temperatures_script_and_policy_file(real_outputs, tmp_path):
    cal = ExitOutputs(real_outputs.logits[:4000].double(), labels=real_outputs.labels[:4000])
    ts = TemperatureScaling().fit(cal)
    calibrated = ts.transform(cal)
    policy = ThresholdPolicy("max_probability", [0.9, 0.85, 0.8, float("inf")])
    controller = ExitController.from_policy(policy, ts)
    assert torch.equal(run_controller(controller, cal.logits), policy.exit_indices(calibrated))
    scripted = torch.jit.script(controller)
    done, pred, _run = scripted(0, cal.logits[:50, 0], *controller.initial_state(50))
    ref_done, ref_state = controller.decide(0, cal.logits[:50, 0], controller.initial_state(50))
    assert torch.equal(done, ref_done) and torch.equal(pred, ref_state[0])
    controller.policy().save(tmp_path / "policy.json")
    again = ExitController.from_policy_file(tmp_path / "policy.json", ts)
    assert torch.equal(again.thresholds, controller.thresholds)
    assert load_policy(tmp_path / "policy.json") == controller.policy()


def test_controller_validation():
    with pytest.raises(ValueError, match="supports the signals"):
        ExitController("halting", [0.5])
    with pytest.raises(ValueError, match="needs `num_exits`"):
        ExitController.from_policy(ThresholdPolicy("margin", 0.5))
    with pytest.raises(TypeError, match="temperature scaling only"):
        ExitController.from_policy(ThresholdPolicy("margin", [0.5, 0.5]), object())
    with pytest.raises(ValueError, match=r"`mode` to be one of"):
        simulate_batching(
            torch.zeros(2, dtype=torch.long), ExitOutputs(torch.zeros(2, 2, 2)), 2, "greedy"
        )


@pytest.mark.parametrize("scripted", [False, True])
def test_controller_input_errors_are_clear(scripted):
    controller = ExitController("max_probability", [0.9, 0.8, float("inf")])
    module = torch.jit.script(controller) if scripted else controller
    state = controller.initial_state(2)
    logits = torch.tensor([[5.0, 0.0], [0.1, 0.0]])
    error = (ValueError, torch.jit.Error) if scripted else ValueError
    with pytest.raises(error, match=r"`exit_index` in \[0, 2\]"):
        module.decide(3, logits, state)
    with pytest.raises(error, match="hold NaN"):
        module.decide(0, torch.tensor([[float("nan"), 0.0], [0.1, 0.0]]), state)
    with pytest.raises(error, match=r"shape \[B, C\]"):
        module.decide(0, logits[0], state)
    with pytest.raises(error, match="state of 2 rows"):
        module.decide(0, logits, controller.initial_state(3))
    done, (pred, _run) = module.decide(0, logits, state)  # the compiled controller keeps decide
    assert done.tolist() == [True, False] and pred.tolist() == [0, 0]


def test_controller_refuses_a_calibrator_of_other_exits():
    g = torch.Generator().manual_seed(0)
    out = ExitOutputs(torch.randn(200, 3, 4, generator=g), labels=torch.arange(200) % 4)
    ts = TemperatureScaling().fit(out)
    with pytest.raises(ValueError, match=r"has 2 thresholds .* fitted on 3 exits"):
        ExitController.from_policy(ThresholdPolicy("margin", [0.5, 0.5]), ts)
