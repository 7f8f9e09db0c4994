"""Two gloo processes on CPU, each with half of the samples, give the single-process result."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from exitwise.policies import evaluate_thresholds, evaluate_thresholds_streaming


def _data():
    rng = np.random.default_rng(7)
    scores = torch.tensor(rng.random((1001, 4)))
    correct = torch.tensor(rng.random((1001, 4)) < 0.6)
    loss = torch.tensor(rng.random((1001, 4)))
    costs = torch.tensor([1.0, 2.0, 3.5, 5.0], dtype=torch.float64)
    thresholds = torch.tensor(rng.random((37, 4)))
    return scores, correct, loss, costs, thresholds


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        scores, correct, loss, costs, thresholds = _data()
        shard = slice(rank * 600, (rank + 1) * 600)  # uneven shards: 600 and 401 samples
        r = evaluate_thresholds(
            scores[shard], correct[shard], costs, thresholds, percentiles=[50, 90]
        )
        d = evaluate_thresholds(scores[shard], loss[shard], costs, thresholds, backend="dense")
        s = evaluate_thresholds_streaming(
            [
                (scores[shard][:100], correct[shard][:100], costs),
                (scores[shard][100:], correct[shard][100:], costs),
            ],
            thresholds,
        )
        np.savez(
            f"{out_dir}/rank{rank}.npz",
            counts=r.exit_counts.numpy(),
            accuracy=r.accuracy.numpy(),
            cost=r.mean_cost.numpy(),
            quantiles=r.cost_quantiles.numpy(),
            n=r.num_samples,
            loss=d.mean_loss.numpy(),
            stream_counts=s.exit_counts.numpy(),
            full=r.full_cost,
        )
    finally:
        dist.destroy_process_group()


def test_distributed_sum_equals_single_process(tmp_path):
    world = 2
    mp.spawn(_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    scores, correct, loss, costs, thresholds = _data()
    single = evaluate_thresholds(scores, correct, costs, thresholds, percentiles=[50, 90])
    single_loss = evaluate_thresholds(scores, loss, costs, thresholds, backend="dense")
    for rank in range(world):
        got = np.load(tmp_path / f"rank{rank}.npz")
        assert int(got["n"]) == 1001
        assert np.array_equal(got["counts"], single.exit_counts.numpy())
        assert np.array_equal(got["stream_counts"], single.exit_counts.numpy())
        assert np.array_equal(got["accuracy"], single.accuracy.numpy())
        assert np.allclose(got["cost"], single.mean_cost.numpy(), rtol=1e-14)
        assert np.array_equal(got["quantiles"], single.cost_quantiles.numpy())
        assert np.allclose(got["loss"], single_loss.mean_loss.numpy(), rtol=1e-12)
        assert float(got["full"]) == single.full_cost


def test_distributed_flag_without_group_is_an_error():
    import pytest

    with pytest.raises(ValueError, match=r"initialised torch\.distributed process group"):
        evaluate_thresholds(
            torch.rand(5, 2), torch.rand(5, 2) < 0.5, [1.0, 2.0], [[0.5, 0.5]], distributed=True
        )
