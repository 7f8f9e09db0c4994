"""2 and 4 gloo processes on CPU (NCCL on CUDA where there is a GPU per rank), uneven shards (one
rank with 3 samples): every rank gets the single-process answer on the concatenated data, for
the binned calibration errors (uniform and quantile bins, top-label and classwise), Brier, NLL,
AUROC, AURC, temperature scaling, isotonic and histogram-binning fits, vector / matrix /
Dirichlet / structured matrix scaling with their cross-validated penalties (Newton, and L-BFGS
for a large map), the folds by sequence, risk control over samples and sequences (binomial and
betting p-values), and the self-speculation plan with a calibrated stop threshold and the
per-exit table with its bootstrap over sequences (to 1e-9 relative, counts, folds and thresholds
exactly). The threshold searches are in ``tests/policies/test_distributed_policies.py``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from exitwise import ExitOutputs, metrics
from exitwise.calibrate import (
    DirichletCalibration,
    HistogramBinning,
    Isotonic,
    MatrixScaling,
    StructuredMatrixScaling,
    TemperatureScaling,
    VectorScaling,
)
from exitwise.calibrate._folds import fold_ids
from exitwise.generation import AcceptanceCalibration, plan_self_speculation
from exitwise.policies import risk_controlled_threshold

SHARDS = {2: [3, 1200], 4: [500, 3, 400, 300]}  # 1,203 samples in all
GRID = torch.linspace(0.0, 1.0, 101, dtype=torch.float64)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    n, e, c = 1203, 3, 7
    labels = torch.randint(0, c, (n,), generator=g)
    logits = torch.randn(n, e, c, generator=g) * torch.tensor([1.0, 2.0, 3.0])[None, :, None]
    logits[torch.arange(n), :, labels] += torch.tensor([0.5, 1.5, 2.5])
    logits[:50] = logits[:50].round()  # ties in the confidences (AUROC, AURC, quantile bins)
    return logits, labels


def _groups(world: int) -> torch.Tensor:
    """Sequence ids of every row: 5 rows each within a shard, numbered apart per shard (so
    unique across shards, and whole within one, as collect writes them)."""
    return torch.cat([1000 * r + torch.arange(size) // 5 for r, size in enumerate(SHARDS[world])])


def _positions(groups: torch.Tensor) -> torch.Tensor:
    """Each token's position in its sequence (rows of a sequence are consecutive)."""
    start = torch.searchsorted(groups, groups)  # groups are sorted within a shard
    return torch.arange(len(groups)) - start


def _wide(out: ExitOutputs) -> ExitOutputs:
    """26 classes (C x (C + 1) > 600 parameters: L-BFGS), every one labelled: 4 copies of the
    7, the label moved to a copy chosen by the sample itself (not by its row)."""
    copy = (out.logits[:, 0, 0] * 1000).abs().long() % 4
    labels = (out.labels * 4 + copy) % 26
    logits = out.logits.repeat(1, 1, 4)[..., :26] * 0.5
    logits[torch.arange(out.num_samples), :, labels] += 1.0
    return ExitOutputs(logits, labels)


def _results(
    logits: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor
) -> dict[str, np.ndarray]:
    out = ExitOutputs(logits, labels)
    conf = out.probs().amax(dim=-1).double()
    hit = out.correct()
    ts = TemperatureScaling().fit(out)
    iso = Isotonic().fit(out)
    hist = HistogramBinning(n_bins=10).fit(out)
    values = {
        "ece": metrics.expected_calibration_error(logits, labels, input="logits"),
        "mce": metrics.maximum_calibration_error(logits, labels, input="logits"),
        "classwise": metrics.expected_calibration_error(
            logits, labels, input="logits", mode="classwise"
        ),
        "quantile": metrics.expected_calibration_error(
            logits, labels, 10, binning="quantile", input="logits"
        ),
        "brier": metrics.brier_score(logits, labels, input="logits"),
        "nll": metrics.negative_log_likelihood(logits, labels, input="logits"),
        "auroc": metrics.auroc(conf, hit),
        "aurc": metrics.aurc(conf, hit),
        "temperatures": ts.temperatures_,
        "isotonic": torch.stack([iso.confidence_map(GRID, exit=e) for e in range(3)]),
        "histogram": torch.stack([hist.confidence_map(GRID, exit=e) for e in range(3)]),
        "folds": fold_ids(len(labels), 4, seed=3).double(),
        "sequence_folds": fold_ids(len(labels), 4, seed=3, groups=groups).double(),
    }
    affine = {
        "vector": (VectorScaling(), out),
        "matrix": (MatrixScaling(), out),
        "dirichlet": (DirichletCalibration(), out),
        "structured": (StructuredMatrixScaling(), out),
        "lbfgs": (MatrixScaling(penalty=0.01), _wide(out)),  # 702 parameters per exit
    }
    for name, (cal, data) in affine.items():
        values[name] = cal.fit(data).coefficients_
    tokens = ExitOutputs(logits, labels, groups=groups, positions=_positions(groups))
    calibration = AcceptanceCalibration.fit(tokens)
    for name, plan in (
        ("plan", plan_self_speculation(tokens, 3)),
        (
            "plan_adaptive",
            plan_self_speculation(tokens, 3, thresholds=[0.3], calibration=calibration),
        ),
    ):
        keys = ("draft_exit", "draft_length", "tokens", "verifications", "draft_steps", "speed_up")
        values[name] = torch.tensor([[float(row[k]) for k in keys] for row in plan.rows])
    values["plan_threshold"] = torch.tensor([calibration.confidence_threshold(0.3, 0)])
    for name, data, p_value in (
        ("risk_binomial", out, "binomial"),
        ("risk_wsr", out, "wsr"),
        ("risk_sequence_wsr", tokens, "wsr"),
    ):
        res = risk_controlled_threshold(
            data, "max_probability", limit=0.2, confidence=0.9, p_value=p_value
        )
        p = res.guarantee.p_values["disagreement"] if res.certified else float("nan")
        values[name] = torch.tensor([res.shared_threshold or float("nan"), p])
    table = metrics.per_exit_metrics(tokens, n_bins=10, n_resamples=30)
    values["table"] = torch.tensor(
        [[v for v in row.values() if not isinstance(v, str)] for row in table]
    )
    return {k: v.double().cpu().numpy() for k, v in values.items()}


def start_rank(rank: int, world: int, init_file: str, backend: str) -> torch.device:
    """Join the test's process group; the device its tensors live on (NCCL: a GPU a rank)."""
    torch.set_num_threads(1)
    init = f"file://{init_file}"
    dist.init_process_group(backend, init_method=init, rank=rank, world_size=world)
    if backend != "nccl":
        return torch.device("cpu")
    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    return device


def shard_of(rank: int, world: int, device: torch.device):
    """This rank's logits, labels and sequence ids on ``device``, and its rows."""
    logits, labels = _data()
    sizes = SHARDS[world]
    start = sum(sizes[:rank])
    rows = slice(start, start + sizes[rank])
    return logits[rows].to(device), labels[rows].to(device), _groups(world)[rows].to(device), rows


def _worker(rank: int, world: int, init_file: str, out_dir: str, backend: str) -> None:
    device = start_rank(rank, world, init_file, backend)
    try:
        logits, labels, groups, _ = shard_of(rank, world, device)
        np.savez(f"{out_dir}/rank{rank}.npz", **_results(logits, labels, groups))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("backend", ["gloo", "nccl"])
@pytest.mark.parametrize("world", [2, 4])
def test_every_rank_gets_the_single_process_answer(tmp_path, world, backend):
    if backend == "nccl" and torch.cuda.device_count() < world:
        pytest.skip(f"NCCL needs a GPU per rank: {world} GPUs")
    args = (world, str(tmp_path / "init"), str(tmp_path), backend)
    mp.spawn(_worker, args=args, nprocs=world, join=True)
    single = _results(*_data(), _groups(world))
    sizes = SHARDS[world]
    for rank in range(world):
        got = np.load(tmp_path / f"rank{rank}.npz")
        rows = slice(sum(sizes[:rank]), sum(sizes[: rank + 1]))
        for key, want in single.items():
            if key.endswith("folds"):  # per row: this rank's part of the one-process partition
                want = want[rows]
            scale = 1e-9 * max(1.0, float(np.abs(want).max()))  # near-zero coefficients
            np.testing.assert_allclose(got[key], want, rtol=1e-9, atol=scale, err_msg=key)
