"""Calibrate -> tune -> certify on a sharded directory: R ranks (torchrun, gloo) against one
process on the same files (issue 22).

The directory: ``--tokens`` tokens (default 10 M) x ``--exits`` exits (6) in sequences of
256, written by :class:`~exitwise.data_shards.ShardWriter` in files of ``--shard`` tokens,
with 16 columns per exit in the layout of ``collect(..., reduce="topk:12")`` (12 kept classes
and 4 rest buckets). The logits are synthetic (a model run over 10 M tokens would take hours
on 2 cores): the label's logit grows with the exit's depth.

The pipeline, the same script for one process and for every rank:

1. ``part = exitwise.load(dir)`` (this rank's files), ``cal, test = part.split(0.5)`` (by
   sequence, as one process splits all files);
2. calibrate: ``TemperatureScaling().fit(cal.to_outputs())`` (each rank its part in memory);
3. ``stream_scores(test, "max_probability", transform=ts.transform)`` (a chunk at a time);
4. tune: ``tune_for_budget(scores, 0.6)`` (exact per-exit search);
5. certify: ``certify(scores, {"disagreement": 0.1, "cost": 0.8})``.

It prints, for one process and for R ranks, the wall time of each step (the first run and a
warm second run in the same processes), the whole command's wall time, the peak resident
memory of each process, and checks that every rank's temperatures (1e-9) and thresholds
(exactly) equal one process's.

    python benchmarks/sharded_pipeline.py [--tokens 10000000] [--ranks 4] [--dir PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from exitwise import ExitOutputs, load
from exitwise.calibrate import TemperatureScaling
from exitwise.data_shards import INDEX, ShardWriter
from exitwise.policies import certify, tune_for_budget
from exitwise.policies.streamed import stream_scores

SEQUENCE = 256
KEPT, BUCKETS = 12, 4


def write_directory(directory: Path, tokens: int, exits: int, shard: int) -> None:
    """Synthetic top-k-reduced token logits, ``shard`` tokens (whole sequences) a file."""
    writer = ShardWriter(directory)
    shard = max(SEQUENCE, shard // SEQUENCE * SEQUENCE)
    boost = torch.linspace(0.5, 3.5, exits)
    for k, start in enumerate(range(0, tokens, shard)):
        n = min(shard, tokens - start)
        g = torch.Generator().manual_seed(k)
        labels = torch.randint(0, KEPT, (n,), generator=g)
        logits = torch.randn(n, exits, KEPT + BUCKETS, generator=g) * 1.5
        logits[..., KEPT:] -= 3.0  # the rest buckets: little mass each
        logits[torch.arange(n), :, labels] += boost * (1.0 + torch.rand(n, 1, generator=g))
        local = torch.arange(n)
        writer.write(
            ExitOutputs(logits, labels, groups=local // SEQUENCE, positions=local % SEQUENCE),
            (n + SEQUENCE - 1) // SEQUENCE,
        )
    writer.finish()


def pipeline(directory: str) -> dict:
    times = {}
    t = time.perf_counter()
    part = load(directory)
    cal, test = part.split(0.5, seed=0)
    times["load+split"] = time.perf_counter() - t
    t = time.perf_counter()
    ts = TemperatureScaling().fit(cal.to_outputs())
    times["calibrate"] = time.perf_counter() - t
    t = time.perf_counter()
    scores = stream_scores(test, "max_probability", transform=ts.transform)
    times["stream scores"] = time.perf_counter() - t
    t = time.perf_counter()
    tuned = tune_for_budget(scores, None, 0.6, relative=True, progress=False)
    times["tune"] = time.perf_counter() - t
    t = time.perf_counter()
    both = certify(
        scores, limits={"disagreement": 0.1, "cost": 0.8}, confidence=0.9, progress=False
    )
    times["certify"] = time.perf_counter() - t
    e = scores.num_exits
    return {
        "times": times,
        "temperatures": ts.temperatures_.tolist(),
        "tuned": tuned.policy.threshold_vector(e).tolist() if tuned.feasible else None,
        "certified": both.policy.threshold_vector(e).tolist() if both.certified else None,
        "test_tokens": scores.num_samples,
    }


def worker(directory: str, out: str, repeats: int) -> None:
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    runs = [pipeline(directory) for _ in range(repeats)]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    Path(out, f"rank{rank}.json").write_text(json.dumps({"runs": runs, "peak": peak}))
    if dist.is_initialized():
        dist.destroy_process_group()


def launch(directory: str, ranks: int, repeats: int, threads: int) -> tuple[float, list[dict]]:
    out = tempfile.mkdtemp()
    me = [str(Path(__file__).resolve()), "--worker", out, "--dir", directory]
    me += ["--repeats", str(repeats)]
    cmd = (
        [sys.executable, *me]
        if ranks == 1
        else [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={ranks}", *me]
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    wall = time.perf_counter() - t
    return wall, [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(ranks)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=10_000_000)
    parser.add_argument("--exits", type=int, default=6)
    parser.add_argument("--shard", type=int, default=500_000)
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dir", default=None, help="the directory (default: a temporary one)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.dir, args.worker, args.repeats)
        return
    directory = Path(args.dir or tempfile.mkdtemp(prefix="exitwise-shards-"))
    try:
        run(args, directory)
    finally:
        if args.dir is None:  # a directory of our own: gigabytes, gone with the run
            shutil.rmtree(directory, ignore_errors=True)


def run(args: argparse.Namespace, directory: Path) -> None:
    if not (directory / INDEX).is_file():
        t = time.perf_counter()
        write_directory(directory, args.tokens, args.exits, args.shard)
        print(f"wrote {directory} in {time.perf_counter() - t:.1f} s")
    index = json.loads((directory / INDEX).read_text())
    n = sum(s["num_samples"] for s in index["shards"])
    size = sum((directory / s["file"]).stat().st_size for s in index["shards"])
    print(
        f"{n:,} tokens x {index['num_exits']} exits x {index['num_columns']} columns in "
        f"{len(index['shards'])} files, {size / 2**30:.2f} GiB"
    )
    results = {}
    for ranks in (1, args.ranks):
        threads = max(1, (os.cpu_count() or 1) // ranks)
        results[ranks] = launch(str(directory), ranks, args.repeats, threads)
    one = results[1][1][0]["runs"][0]
    for ranks, (wall, per_rank) in results.items():
        print(f"\n{ranks} process(es), {max(1, (os.cpu_count() or 1) // ranks)} thread(s) each:")
        print(f"  whole command {wall:.1f} s (start-up, {args.repeats} runs, shut-down)")
        for i in range(args.repeats):
            steps = per_rank[0]["runs"][i]["times"]
            label = "first" if i == 0 else "warm "
            total = sum(steps.values())
            parts = ", ".join(f"{k} {v:.1f}" for k, v in steps.items())
            print(f"  {label} run (rank 0): {total:.1f} s = {parts}")
        peaks = ", ".join(f"{r['peak'] / 2**30:.2f}" for r in per_rank)
        print(f"  peak resident memory per process (GiB): {peaks}")
        for r in per_rank:
            got = r["runs"][-1]
            np.testing.assert_allclose(got["temperatures"], one["temperatures"], rtol=1e-9)
            assert got["tuned"] == one["tuned"] and got["certified"] == one["certified"]
    for i, label in enumerate(("first", "warm")[: args.repeats]):
        took = {r: sum(results[r][1][0]["runs"][i]["times"].values()) for r in results}
        print(
            f"{label} run: {args.ranks} ranks take {took[args.ranks] / took[1]:.2f}x the time "
            "of one process"
        )
    print(
        f"the same answer on every rank (temperatures, tuned and certified thresholds): "
        f"tuned {one['tuned']}, certified {one['certified']}"
    )


if __name__ == "__main__":
    main()
