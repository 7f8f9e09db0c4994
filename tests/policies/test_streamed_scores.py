"""Policies on a sharded directory read a chunk at a time: the streamed tables equal the
in-memory ones, and calibrate -> tune -> certify on `load(dir)` gives the in-memory policy,
alone and on 2 gloo ranks (each its part of the files)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from exitwise import ExitOutputs, load
from exitwise.calibrate import TemperatureScaling
from exitwise.data_shards import ShardWriter
from exitwise.policies import ExitScores, PrecomputedScores, certify, tune_for_budget
from exitwise.policies.streamed import stream_scores


def _outputs() -> ExitOutputs:
    g = torch.Generator().manual_seed(2)
    n, e, c = 900, 3, 5
    labels = torch.randint(0, c, (n,), generator=g)
    logits = torch.randn(n, e, c, generator=g) * 2.0
    logits[torch.arange(n), :, labels] += torch.tensor([2.0, 3.5, 6.0])
    groups = torch.arange(n) // 3  # 300 sequences of 3 tokens
    return ExitOutputs(logits, labels, groups=groups, positions=torch.arange(n) % 3)


def _write(directory, out: ExitOutputs, files: int = 4) -> None:
    w = ShardWriter(directory)
    for rows in torch.arange(out.num_samples).chunk(files):  # whole sequences per file
        part = out[rows]
        local = part.groups - part.groups.min()
        w.write(
            ExitOutputs(part.logits, part.labels, groups=local, positions=part.positions),
            int(local.max()) + 1,
        )
    w.finish()


def _pipeline(data) -> np.ndarray:
    """Calibrate on one half, tune and certify on the other: the numbers of the result."""
    cal, test = data.split(0.5, seed=1)
    in_memory = isinstance(cal, ExitOutputs)
    ts = TemperatureScaling().fit(cal if in_memory else cal.to_outputs())
    if in_memory:
        scores = ExitScores(ts.transform(test), "max_probability")
    else:
        scores = stream_scores(test, "max_probability", transform=ts.transform, rows=50)
    tuned = tune_for_budget(scores, None, 0.6, relative=True)
    both = certify(scores, limits={"error": 0.25, "cost": 0.7}, confidence=0.8, num_candidates=40)
    assert tuned.feasible and both.certified
    return np.concatenate(
        [
            ts.temperatures_.numpy(),
            tuned.policy.threshold_vector(3).numpy(),
            both.policy.threshold_vector(3).numpy(),
            [tuned.evaluation.accuracy, both.evaluation.mean_cost, both.num_units],
        ]
    )


def test_streamed_tables_equal_the_in_memory_ones(tmp_path):
    out = _outputs()
    _write(tmp_path, out)
    streamed = stream_scores(load(tmp_path), "margin", losses=["nll_excess"], rows=64)
    scores = ExitScores(out, "margin")
    assert torch.equal(streamed.scores, scores.scores)
    for reference in ("labels", "final"):
        assert torch.equal(streamed.correct(reference), scores.correct(reference))
    for risk in ("error", "disagreement", "cost", "nll_excess"):
        for recall in ("none", "most_confident") if risk != "nll_excess" else ("none",):
            want = scores.losses(risk, recall=recall)
            assert torch.equal(streamed.losses(risk, recall=recall), want), (risk, recall)
    assert torch.equal(streamed.groups, out.groups) and streamed.num_groups == 300
    with pytest.raises(ValueError, match="belong to the samples"):
        stream_scores(load(tmp_path), PrecomputedScores(scores.scores))
    with pytest.raises(ValueError, match="no 'nll_excess' loss table"):
        stream_scores(load(tmp_path), "margin").losses("nll_excess")


def test_calibrate_tune_certify_on_a_directory_equals_in_memory(tmp_path):
    out = _outputs()
    _write(tmp_path, out)
    np.testing.assert_allclose(_pipeline(load(tmp_path)), _pipeline(out), rtol=1e-9)


def _worker(rank: int, world: int, init_file: str, directory: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        part = load(directory)  # this rank's files
        assert part.num_samples < part.total_samples
        np.save(f"{out_dir}/rank{rank}.npy", _pipeline(part))
    finally:
        dist.destroy_process_group()


def test_ranks_streaming_their_files_get_the_in_memory_pipeline(tmp_path):
    out = _outputs()
    _write(tmp_path / "d", out, files=5)
    args = (2, str(tmp_path / "init"), str(tmp_path / "d"), str(tmp_path))
    mp.spawn(_worker, args=args, nprocs=2, join=True)
    want = _pipeline(out)
    for rank in range(2):
        np.testing.assert_allclose(np.load(tmp_path / f"rank{rank}.npy"), want, rtol=1e-9)
