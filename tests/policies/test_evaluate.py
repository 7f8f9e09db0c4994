"""The evaluator against a naive per-sample loop: every backend, device, chunking, stream."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from exitwise.policies import (
    evaluate_thresholds,
    evaluate_thresholds_streaming,
    first_exit,
)


def naive(scores, outcome, costs, thresholds, quantiles=()):
    """Per candidate, per sample: walk the exits. Returns counts, mean outcome, costs, quantiles."""
    scores, outcome, costs, thresholds = map(np.asarray, (scores, outcome, costs, thresholds))
    n, e = scores.shape
    k = thresholds.shape[0]
    counts = np.zeros((k, e), dtype=np.int64)
    mean_outcome = np.zeros(k)
    mean_cost = np.zeros(k)
    qs = np.zeros((k, len(quantiles)))
    for i in range(k):
        per_sample = []
        total = 0.0
        for j in range(n):
            exit_ = e - 1
            for x in range(e - 1):
                if scores[j, x] >= thresholds[i, x]:
                    exit_ = x
                    break
            counts[i, exit_] += 1
            total += float(outcome[j, exit_])
            per_sample.append(costs[exit_] if costs.ndim == 1 else costs[j, exit_])
        mean_outcome[i] = total / n
        mean_cost[i] = np.mean(per_sample)
        if quantiles:
            qs[i] = np.quantile(per_sample, quantiles, method="inverted_cdf")
    return counts, mean_outcome, mean_cost, qs


values = st.sampled_from([-np.inf, -1.0, 0.0, 0.25, 0.5, 0.75, 1.0, np.inf])


@st.composite
def problems(draw):
    n = draw(st.integers(1, 25))
    e = draw(st.integers(1, 5))
    k = draw(st.integers(1, 6))
    scores = np.array(
        draw(st.lists(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]), min_size=n * e, max_size=n * e))
    ).reshape(n, e)
    thresholds = np.array(draw(st.lists(values, min_size=k * e, max_size=k * e))).reshape(k, e)
    if draw(st.booleans()):  # equal thresholds across candidates
        thresholds[-1] = thresholds[0]
    correct = np.array(draw(st.lists(st.booleans(), min_size=n * e, max_size=n * e))).reshape(n, e)
    per_sample = draw(st.booleans())
    if per_sample:
        costs = np.array(
            draw(st.lists(st.floats(0.1, 10), min_size=n * e, max_size=n * e))
        ).reshape(n, e)
    else:
        costs = np.cumsum(draw(st.lists(st.floats(0.1, 3), min_size=e, max_size=e)))
    return scores, correct, costs, thresholds


@settings(max_examples=150, deadline=None)
@given(
    problem=problems(),
    backend=st.sampled_from(["auto", "dense"]),
    budget=st.sampled_from([1, 300, 1 << 30]),
)
def test_matches_naive_loop(problem, backend, budget):
    scores, correct, costs, thresholds = problem
    qs = (0.0, 0.3, 0.5, 0.99, 1.0)
    counts, acc, mean_cost, cost_q = naive(scores, correct, costs, thresholds, qs)
    r = evaluate_thresholds(
        torch.tensor(scores),
        torch.tensor(correct),
        torch.tensor(costs),
        torch.tensor(thresholds),
        percentiles=[100 * q for q in qs],
        backend=backend,
        memory_budget=budget,
    )
    assert np.array_equal(r.exit_counts.numpy(), counts)
    assert np.allclose(r.accuracy.numpy(), acc, atol=1e-12)
    assert np.allclose(r.mean_loss.numpy(), 1 - acc, atol=1e-12)
    assert np.allclose(r.mean_cost.numpy(), mean_cost, atol=1e-9)
    assert np.allclose(r.cost_quantiles.numpy(), cost_q)
    assert r.num_samples == scores.shape[0] and len(r) == thresholds.shape[0]


@settings(max_examples=60, deadline=None)
@given(problem=problems())
def test_float_loss_matches_naive_loop(problem):
    scores, _correct, costs, thresholds = problem
    loss = np.random.default_rng(0).random(scores.shape)
    counts, mean_loss, mean_cost, _ = naive(scores, loss, costs, thresholds)
    r = evaluate_thresholds(scores, loss, costs, thresholds)
    assert r.accuracy is None
    assert np.array_equal(r.exit_counts.numpy(), counts)
    assert np.allclose(r.mean_loss.numpy(), mean_loss, atol=1e-12)
    assert np.allclose(r.mean_cost.numpy(), mean_cost, atol=1e-9)


def test_bitset_and_dense_agree_on_larger_data():
    rng = np.random.default_rng(1)
    scores = rng.random((3000, 6)).astype(np.float32)
    correct = rng.random((3000, 6)) < 0.7
    costs = np.arange(1, 7, dtype=float)
    thresholds = rng.random((300, 6))
    thresholds[::7] = np.inf
    a = evaluate_thresholds(scores, correct, costs, thresholds, backend="bitset")
    b = evaluate_thresholds(
        scores, correct, costs, thresholds, backend="dense", memory_budget=1 << 20
    )
    assert torch.equal(a.exit_counts, b.exit_counts)
    assert torch.equal(a.accuracy, b.accuracy)
    counts, _acc, _, _ = naive(scores, correct, costs, thresholds[:20])
    assert np.array_equal(a.exit_counts[:20].numpy(), counts)


def test_float32_scores_against_float64_thresholds_compare_exactly():
    scores = torch.tensor([[0.1, 0.3]], dtype=torch.float32)  # 0.1f is slightly above 0.1
    thr = torch.tensor(
        [[0.1, 0.0], [float(torch.tensor(0.1, dtype=torch.float32)), 0.0]], dtype=torch.float64
    )
    for backend in ["bitset", "dense"]:
        r = evaluate_thresholds(
            scores, torch.tensor([[True, False]]), [1.0, 2.0], thr, backend=backend
        )
        assert r.exit_counts[:, 0].tolist() == [1, 1]


def test_results_on_device(device):
    rng = np.random.default_rng(2)
    scores = torch.tensor(rng.random((500, 4)), device=device)
    correct = torch.tensor(rng.random((500, 4)) < 0.6, device=device)
    costs = torch.tensor([1.0, 2.0, 3.0, 4.0], device=device)
    thr = torch.tensor(rng.random((64, 4)), device=device)
    r = evaluate_thresholds(scores, correct, costs, thr, percentiles=[50, 90])
    assert r.accuracy.device.type == device and r.exit_counts.device.type == device
    ref = evaluate_thresholds(
        scores.cpu(), correct.cpu(), costs.cpu(), thr.cpu(), percentiles=[50, 90]
    )
    assert torch.equal(r.exit_counts.cpu(), ref.exit_counts)
    assert torch.allclose(r.mean_cost.cpu(), ref.mean_cost)
    assert torch.equal(r.cost_quantiles.cpu(), ref.cost_quantiles)


def test_streaming_equals_single_call():
    rng = np.random.default_rng(3)
    scores = rng.random((1000, 5))
    correct = rng.random((1000, 5)) < 0.6
    costs = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    thr = rng.random((40, 5))
    whole = evaluate_thresholds(scores, correct, costs, thr, percentiles=[50, 99])
    chunks = ((scores[i : i + 128], correct[i : i + 128], costs) for i in range(0, 1000, 128))
    streamed = evaluate_thresholds_streaming(chunks, thr, percentiles=[50, 99])
    assert torch.equal(streamed.exit_counts, whole.exit_counts)
    assert torch.equal(streamed.accuracy, whole.accuracy)
    assert torch.allclose(streamed.mean_cost, whole.mean_cost)
    assert torch.equal(streamed.cost_quantiles, whole.cost_quantiles)
    per_sample = rng.random((1000, 5)).cumsum(1)
    loss = rng.random((1000, 5))
    whole = evaluate_thresholds(scores, loss, per_sample, thr)
    chunks = [
        (scores[i : i + 300], loss[i : i + 300], per_sample[i : i + 300])
        for i in range(0, 1000, 300)
    ]
    streamed = evaluate_thresholds_streaming(chunks, thr)
    assert torch.equal(streamed.exit_counts, whole.exit_counts)
    assert torch.allclose(streamed.mean_loss, whole.mean_loss)
    assert torch.allclose(streamed.mean_cost, whole.mean_cost)


def test_streaming_from_memory_mapped_files(tmp_path):
    rng = np.random.default_rng(4)
    np.save(tmp_path / "s.npy", rng.random((2000, 3)))
    np.save(tmp_path / "c.npy", rng.random((2000, 3)) < 0.5)
    s = np.load(tmp_path / "s.npy", mmap_mode="r")
    c = np.load(tmp_path / "c.npy", mmap_mode="r")
    thr = rng.random((10, 3))
    chunks = (
        (np.array(s[i : i + 500]), np.array(c[i : i + 500]), [1.0, 2.0, 3.0])
        for i in range(0, 2000, 500)
    )
    streamed = evaluate_thresholds_streaming(chunks, thr)
    whole = evaluate_thresholds(np.array(s), np.array(c), [1.0, 2.0, 3.0], thr)
    assert torch.equal(streamed.exit_counts, whole.exit_counts)


def test_memory_budget_bounds_chunks():
    """A tiny budget must still give the exact answer (one candidate, few samples a chunk)."""
    rng = np.random.default_rng(5)
    scores, correct = rng.random((700, 3)), rng.random((700, 3)) < 0.5
    thr = rng.random((9, 3))
    a = evaluate_thresholds(scores, correct, [1, 2, 3], thr, backend="dense", memory_budget=1)
    b = evaluate_thresholds(scores, correct, [1, 2, 3], thr, backend="dense")
    assert torch.equal(a.exit_counts, b.exit_counts)


def test_speed_up_and_fractions():
    r = evaluate_thresholds(
        [[0.9, 0.1], [0.1, 0.1]], [[True, True], [False, True]], [1.0, 4.0], [[0.5, 0.5]]
    )
    assert r.exit_fractions.tolist() == [[0.5, 0.5]]
    assert float(r.speed_up[0]) == pytest.approx(4.0 / 2.5)
    assert r.full_cost == 4.0


def test_first_exit_kernel():
    scores = torch.tensor([[0.1, 0.2, 0.3], [0.9, 0.9, 0.9]])
    assert first_exit(scores, torch.tensor([0.5, 0.25, 0.0])).tolist() == [2, 0]
    assert first_exit(scores, torch.tensor([[1.0, 1.0, 1.0]])).tolist() == [[2, 2]]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"scores": np.zeros((3,))}, ValueError, r"`scores` to have shape \[N, E\]"),
        ({"scores": np.full((3, 2), np.nan)}, ValueError, "NaN value.*first at sample 0, exit 0"),
        ({"correct": np.zeros((3, 3), bool)}, ValueError, r"shape \[N, E\] = \[3, 2\]"),
        ({"correct": np.zeros((3, 2), np.int64)}, TypeError, "bool .* or floating"),
        ({"costs": [2.0, 1.0]}, ValueError, "non-decreasing"),
        ({"costs": [1.0]}, ValueError, r"shape \[E\] = \[2\]"),
        ({"thresholds": np.zeros((2, 3))}, ValueError, "with E = 2"),
        ({"thresholds": np.array([[np.nan, 0.0]])}, ValueError, "NaN at candidate 0, exit 0"),
        ({"thresholds": np.zeros((0, 2))}, ValueError, "K = 0"),
        ({"percentiles": [150]}, ValueError, r"`percentiles` in \[0, 100\]"),
        ({"backend": "gpu"}, ValueError, "`backend` to be one of"),
        ({"memory_budget": 0}, ValueError, "`memory_budget` to be an integer >= 1"),
    ],
)
def test_validation(kwargs, error, match):
    args = {
        "scores": np.zeros((3, 2)),
        "correct": np.zeros((3, 2), bool),
        "costs": [1.0, 2.0],
        "thresholds": np.zeros((1, 2)),
    }
    args.update(kwargs)
    with pytest.raises(error, match=match):
        evaluate_thresholds(
            args.pop("scores"),
            args.pop("correct"),
            args.pop("costs"),
            args.pop("thresholds"),
            **args,
        )


def test_bitset_backend_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="backend='bitset' needs"):
        evaluate_thresholds(
            np.zeros((3, 2)), np.zeros((3, 2)), [1.0, 2.0], [[0.5, 0.5]], backend="bitset"
        )
    with pytest.raises(ValueError, match="at least one chunk"):
        evaluate_thresholds_streaming([], [[0.5, 0.5]])


@pytest.mark.parametrize("every", [64, 128, 256, 1024])
def test_bitset_kernel_is_exact_for_every_checkpoint_interval(every):
    from exitwise.policies._bitset import bitset_block_stats

    rng = np.random.default_rng(every)
    scores = np.round(rng.random((5000, 5)), 3)  # ties, so ranks land inside tie groups
    correct = rng.random((5000, 5)) < 0.6
    thresholds = np.round(rng.random((150, 5)), 3)
    thresholds[::9, 1] = np.inf
    thresholds[::11, 2] = -np.inf
    counts, hits = bitset_block_stats(
        scores, correct, thresholds, checkpoint_every=every, threads=2
    )
    ref = evaluate_thresholds(scores, correct, np.arange(1.0, 6.0), thresholds, backend="dense")
    assert np.array_equal(counts, ref.exit_counts.numpy())
    assert np.array_equal(hits, np.round(ref.accuracy.numpy() * 5000).astype(np.int64))
