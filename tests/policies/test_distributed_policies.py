"""The threshold searches on shards: 2 and 4 gloo processes on CPU (NCCL on CUDA where there is a
GPU per rank), uneven shards (one rank with 3 samples), sequences whole within a rank. Every
rank gets the single-process answer on the concatenated data: the same thresholds (exactly) and
the same evaluations (to 1e-9 relative) for the exact shared-threshold sweep, ``tune`` and the
SLA tuners (also with ``confidence``), the frontiers, MSDNet's budgeted baseline and ``certify``
over samples and sequences; rank 0 runs the searches, and an error there is raised on every
rank."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from exitwise import ExitOutputs
from exitwise.policies import (
    AccuracyAtLeast,
    CostQuantileAtMost,
    ExitScores,
    certify,
    geometric_budget_policy,
    held_out_frontier,
    pareto_frontier,
    sweep_shared_threshold,
    tune,
    tune_for_accuracy,
    tune_for_budget,
    tune_for_latency,
)
from tests.test_distributed_shards import SHARDS, _data, _groups, shard_of, start_rank

LATENCIES = [1.0, 2.5, 4.0]


def _row(result) -> list[float]:
    """A PolicyResult as numbers: thresholds, then its evaluation (NaN when infeasible)."""
    if result.policy is None:
        return [float("nan")] * 9
    ev = result.evaluation
    return [
        *result.policy.threshold_vector(3).tolist(),
        float("nan") if ev.accuracy is None else ev.accuracy,  # None against "final"
        ev.agreement,
        ev.mean_cost,
        *ev.exit_fractions,
    ]


def _tuning_rows(world: int) -> torch.Tensor:
    """Every other row of each shard is for tuning, the rest held out (both non-empty on
    every rank)."""
    return torch.cat([torch.arange(size) % 2 == 0 for size in SHARDS[world]])


def _results(
    logits: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor, tuning: torch.Tensor
) -> dict:
    out = ExitOutputs(logits, labels)
    scores = ExitScores(out, "max_probability")
    sweep = sweep_shared_threshold(scores.scores, scores.correct(), [1.0, 2.0, 3.0])
    tokens = ExitOutputs(logits, labels, groups=groups)
    front = pareto_frontier(out, "max_probability", budgets=[0.5, 0.8])
    held = held_out_frontier(out[tuning], out[~tuning], "max_probability", budgets=[0.6])
    values = {
        "sweep": torch.stack([sweep.thresholds, sweep.accuracy, sweep.mean_cost]),
        "tune_cost": _row(tune(scores, None, "cost", [AccuracyAtLeast(0.95, relative=True)])),
        "tune_quantile": _row(
            tune(scores, None, "accuracy", [CostQuantileAtMost(0.6, 2.0)], percentiles=[60])
        ),
        "tune_agreement": _row(
            tune_for_accuracy(out, "margin", 0.9, relative=True, reference="final")
        ),
        "budget": _row(tune_for_budget(out, "negative_entropy", 0.7, relative=True)),
        "budget_absolute": _row(tune_for_budget(scores, None, 2.0, relative=False)),
        "latency": _row(tune_for_latency(scores, None, LATENCIES, 80, 2.5)),
        "certified": _row(
            tune_for_accuracy(out, "max_probability", 0.9, relative=True, confidence=0.8)
        ),
        "infeasible": [
            tune_for_accuracy(scores, None, 0.999, relative=False).best_achievable["accuracy"]
        ],
        "front": torch.cat([front["mean_cost"], front["accuracy"], front["thresholds"].flatten()]),
        "held_out": torch.cat([held["accuracy"], held["shared_accuracy"], held["mean_cost"]]),
        "geometric": _row(geometric_budget_policy(out, "max_probability", 0.6, relative=True)),
    }
    for name, data in (("certify", out), ("certify_tokens", tokens)):
        res = certify(
            data,
            "max_probability",
            {"error": 0.68, "cost": 0.8},
            confidence=0.8,
            num_candidates=50,
            tuned_levels=2,
        )
        values[name] = [*_row(res), res.path.num_tested, res.path.num_passed, res.num_units]
    return {k: torch.as_tensor(v, dtype=torch.float64).cpu().numpy() for k, v in values.items()}


def _worker(rank: int, world: int, init_file: str, out_dir: str, backend: str) -> None:
    device = start_rank(rank, world, init_file, backend)
    try:
        logits, labels, groups, rows = shard_of(rank, world, device)
        tuning = _tuning_rows(world)[rows].to(device)
        results = _results(logits, labels, groups, tuning)
        np.savez(f"{out_dir}/rank{rank}.npz", **results)
        # an error in rank 0's search reaches every rank (none is left waiting for a result)
        with pytest.raises(ValueError, match="leave both parts non-empty"):
            certify(ExitOutputs(logits, labels), "margin", {"cost": 0.5}, split=0.9999)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("backend", ["gloo", "nccl"])
@pytest.mark.parametrize("world", [2, 4])
def test_every_rank_gets_the_single_process_policy(tmp_path, world, backend):
    if backend == "nccl" and torch.cuda.device_count() < world:
        pytest.skip(f"NCCL needs a GPU per rank: {world} GPUs")
    args = (world, str(tmp_path / "init"), str(tmp_path), backend)
    mp.spawn(_worker, args=args, nprocs=world, join=True)
    single = _results(*_data(), _groups(world), _tuning_rows(world))
    assert not np.isnan(single["tune_cost"]).any() and not np.isnan(single["certify"]).any()
    for rank in range(world):
        got = np.load(tmp_path / f"rank{rank}.npz")
        for key, want in single.items():
            np.testing.assert_allclose(got[key], want, rtol=1e-9, atol=1e-12, err_msg=key)
