"""The exact shared-threshold sweep against the evaluator at every breakpoint and between."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from exitwise.policies import evaluate_thresholds, sweep_shared_threshold


@st.composite
def data(draw):
    n = draw(st.integers(1, 30))
    e = draw(st.integers(1, 5))
    grid = st.sampled_from([-1.0, -0.0, 0.0, 0.2, 0.5, 0.7, 1.0])
    scores = np.array(draw(st.lists(grid, min_size=n * e, max_size=n * e))).reshape(n, e)
    correct = np.array(draw(st.lists(st.booleans(), min_size=n * e, max_size=n * e))).reshape(n, e)
    if draw(st.booleans()):
        costs = np.cumsum(np.array(draw(st.lists(st.floats(0.1, 2), min_size=e, max_size=e))))
    else:
        costs = np.array(draw(st.lists(st.floats(0.1, 5), min_size=n * e, max_size=n * e))).reshape(
            n, e
        )
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    return torch.tensor(scores, dtype=dtype), torch.tensor(correct), torch.tensor(costs)


@settings(max_examples=150, deadline=None)
@given(problem=data())
def test_sweep_equals_evaluator_at_and_between_breakpoints(problem):
    scores, correct, costs = problem
    e = scores.shape[1]
    sw = sweep_shared_threshold(scores, correct, costs, return_exit_counts=True)
    assert bool((sw.thresholds[1:] > sw.thresholds[:-1]).all())
    assert sw.thresholds[-1] == float("inf")
    at = evaluate_thresholds(
        scores, correct, costs, sw.thresholds[:, None].expand(-1, e), backend="dense"
    )
    assert torch.equal(at.exit_counts, sw.exit_counts)
    assert torch.equal(at.accuracy, sw.accuracy)
    assert torch.allclose(at.mean_cost, sw.mean_cost, atol=1e-12)
    # any threshold inside (t[i-1], t[i]] behaves like t[i]; below t[0], like t[0]
    lower = torch.cat([sw.thresholds[:1] - 1.0, sw.thresholds[:-1]])
    upper = sw.thresholds.clone()
    upper[-1] = lower[-1] + 1.0
    mid = (lower + upper) / 2
    between = evaluate_thresholds(
        scores, correct, costs, mid[:, None].expand(-1, e), backend="dense"
    )
    assert torch.equal(between.exit_counts, sw.exit_counts)
    # no breakpoint is missing: every distinct score value at exits 0..E-2 is covered
    values = torch.unique(scores[:, : max(e - 1, 1)].double()) if e > 1 else torch.tensor([])
    for v in values.tolist():
        thr = torch.full((1, e), v, dtype=torch.float64)
        one = evaluate_thresholds(scores, correct, costs, thr, backend="dense")
        i = int(torch.searchsorted(sw.thresholds, torch.tensor(v, dtype=torch.float64)))
        assert torch.equal(one.exit_counts[0], sw.exit_counts[i])


def test_sweep_with_float_loss_and_endpoints():
    rng = np.random.default_rng(0)
    scores = torch.tensor(rng.random((200, 4)))
    loss = torch.tensor(rng.random((200, 4)))
    costs = torch.tensor([1.0, 2.0, 3.0, 4.0])
    sw = sweep_shared_threshold(scores, loss, costs)
    assert sw.accuracy is None
    assert float(sw.mean_cost[0]) == 1.0 and float(sw.mean_cost[-1]) == 4.0
    assert float(sw.mean_loss[0]) == pytest.approx(float(loss[:, 0].mean()))
    assert float(sw.mean_loss[-1]) == pytest.approx(float(loss[:, -1].mean()))
    ev = evaluate_thresholds(scores, loss, costs, sw.thresholds[:, None].expand(-1, 4))
    assert torch.allclose(ev.mean_loss, sw.mean_loss, atol=1e-12)
    assert torch.allclose(sw.speed_up, 4.0 / sw.mean_cost)


def test_sweep_on_real_data_and_device(real_outputs, device):
    from exitwise.signals import max_probability

    scores = max_probability(real_outputs).to(device)
    correct = real_outputs.correct().to(device)
    sw = sweep_shared_threshold(scores, correct, real_outputs.costs.to(device))
    assert sw.thresholds.device.type == device
    assert len(sw) > 1000
    # the final exit's accuracy at +inf, exit-0 accuracy at the lowest threshold
    acc = real_outputs.correct().double().mean(0)
    assert float(sw.accuracy[-1]) == pytest.approx(float(acc[-1]))
    assert float(sw.accuracy[0]) == pytest.approx(float(acc[0]))
    pick = torch.linspace(0, len(sw) - 1, 50).long().to(device)
    ev = evaluate_thresholds(
        scores, correct, real_outputs.costs.to(device), sw.thresholds[pick, None].expand(-1, 4)
    )
    assert torch.equal(ev.accuracy, sw.accuracy[pick])
    assert torch.allclose(ev.mean_cost, sw.mean_cost[pick])


def naive_exit(scores_row, thresholds):
    for j in range(len(thresholds) - 1):
        if scores_row[j] >= thresholds[j]:
            return j
    return len(thresholds) - 1


@settings(max_examples=150, deadline=None)
@given(problem=data(), pick=st.data())
def test_exit_threshold_sweep_equals_a_naive_loop_at_and_between_breakpoints(problem, pick):
    from exitwise.policies.sweep import sweep_exit_threshold

    scores, correct, costs = problem
    n, e = scores.shape
    if costs.ndim == 2 or e < 2:
        return
    j = pick.draw(st.integers(0, e - 2))
    current = torch.tensor(
        pick.draw(
            st.lists(st.sampled_from([-1.0, 0.0, 0.3, 0.6, float("inf")]), min_size=e, max_size=e)
        ),
        dtype=torch.float64,
    )
    loss = correct.double() * 0.5
    sw = sweep_exit_threshold(
        scores.double(), [correct, loss], costs, current, j, return_exit_counts=True
    )
    assert sw.thresholds[0] == float("inf")
    assert bool((sw.thresholds[1:] < sw.thresholds[:-1]).all())
    s = scores.double().numpy()
    # at every candidate, and halfway to the next (the same outcome)
    nxt = torch.cat([sw.thresholds[1:], torch.tensor([-2.0], dtype=torch.float64)])
    mids = torch.where(
        torch.isinf(sw.thresholds),
        torch.tensor(5.0, dtype=torch.float64),
        (sw.thresholds + nxt) / 2,
    )
    for probe in (sw.thresholds, mids):
        for i, t in enumerate(probe.tolist()):
            thr = current.clone()
            thr[j] = t
            exits = [naive_exit(s[k], thr.tolist()) for k in range(n)]
            hits = sum(bool(correct[k, x]) for k, x in enumerate(exits))
            assert sw.outcome_sums[i, 0] == hits
            assert sw.outcome_sums[i, 1] == pytest.approx(0.5 * hits)
            assert float(sw.cost_sum[i]) == pytest.approx(sum(float(costs[x]) for x in exits))
            assert sw.exit_counts[i].tolist() == np.bincount(exits, minlength=e).tolist()
