"""``torchrun --nproc-per-node=2 -m exitwise`` on a sharded directory prints the one-process
answer: calibrate (its table and calibrator), tune (with that calibrator), evaluate and
certify, compared as JSON (numbers to 1e-9 relative, everything else exactly); report (rank 0
writes it from every file) writes the same summary."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from exitwise.calibrate import load_calibrator
from exitwise.data_shards import ShardWriter
from exitwise.datasets import load_default


def _same(a, b, where: str = "") -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b), where
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and not isinstance(b, str):
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) or a == b, (where, a, b)
    else:
        assert a == b, (where, a, b)


def _run(args: list[str], cwd, ranks: int) -> dict:
    launch = [sys.executable, "-m", "exitwise"]
    if ranks > 1:
        launch = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={ranks}"]
        launch += ["-m", "exitwise"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*launch, *args, "--json"], cwd=cwd, capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def directory(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    out = load_default()[:4000]
    writer = ShardWriter(root / "d")
    for rows in torch.arange(out.num_samples).chunk(5):  # 5 files: 2 and 3 per rank
        writer.write(out[rows], 0)
    writer.finish()
    return root


def test_torchrun_commands_print_the_one_process_answer(directory):
    runs = {}
    for ranks in (1, 2):
        tag = f"r{ranks}"
        runs[ranks] = {
            "calibrate": _run(["calibrate", "d", "--out", f"{tag}-cal.json"], directory, ranks),
            "tune": _run(
                [
                    "tune",
                    "d",
                    "--target-accuracy",
                    "0.99",
                    "--relative",
                    "--calibrator",
                    f"{tag}-cal.json",
                    "--out",
                    f"{tag}-policy.json",
                ],
                directory,
                ranks,
            ),
            "certify": _run(
                ["certify", "d", "--risk", "disagreement=0.05", "--risk", "cost=0.75"],
                directory,
                ranks,
            ),
        }
        runs[ranks]["report"] = _run(
            ["report", "d", "--out", f"{tag}-report", "--resamples", "20"], directory, ranks
        )
        runs[ranks]["evaluate"] = _run(
            ["evaluate", "d", "--policy", f"{tag}-policy.json", "--calibrator", f"{tag}-cal.json"],
            directory,
            ranks,
        )
    for command, want in runs[1].items():
        got = runs[2][command]
        if command in ("calibrate", "report"):
            want, got = dict(want, out=None), dict(got, out=None)
        _same(got, want, command)
    one, two = (load_calibrator(directory / f"r{r}-cal.json") for r in (1, 2))
    np.testing.assert_allclose(two.temperatures_, one.temperatures_, rtol=1e-9)
    assert runs[1]["certify"]["guarantee"]["data_fingerprint"].startswith("sha256:")
