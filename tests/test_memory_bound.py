"""Out-of-core paths stay within a memory budget smaller than the data: in a subprocess whose
data segment is capped (``resource.setrlimit(RLIMIT_DATA)``) at 64 MiB above its warmed-up
size, streaming a 160 MB directory of logits and tuning on it succeeds (and gives the
in-memory policy), while loading the same directory into memory fails."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from exitwise import ExitOutputs
from exitwise.data_shards import ShardWriter
from exitwise.policies import tune_for_budget

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_DATA")

BUDGET_MIB = 64
SCRIPT = """
import json, resource, sys
import torch
torch.set_num_threads(1)
import exitwise
from exitwise.policies import ExitScores, tune_for_budget
from exitwise.policies.streamed import stream_scores

def data_segment():
    for line in open("/proc/self/status"):
        if line.startswith("VmData"):
            return int(line.split()[1]) * 1024

tiny = exitwise.ExitOutputs(torch.randn(64, 4, 5), torch.randint(0, 5, (64,)))
tune_for_budget(ExitScores(tiny, "max_probability"), None, 0.6, relative=True)  # lazy imports
base = data_segment()
resource.setrlimit(resource.RLIMIT_DATA, (base + int(sys.argv[3]) * 2**20, resource.RLIM_INFINITY))
data = exitwise.load(sys.argv[1])
if sys.argv[2] == "stream":
    scores = stream_scores(data, "max_probability", rows=256)
    tuned = tune_for_budget(scores, None, 0.6, relative=True)
    print(json.dumps({"thresholds": tuned.policy.threshold_vector(4).tolist(),
                      "used": data_segment() - base}))
else:
    data.to_outputs()
    print(json.dumps({"loaded": True}))
"""


def _run(directory, mode: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, str(directory), mode, str(BUDGET_MIB)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_streaming_fits_a_budget_that_loading_does_not(tmp_path):
    g = torch.Generator().manual_seed(0)
    writer = ShardWriter(tmp_path)
    n, e, c = 2500, 4, 1000  # 40 MB of float32 logits a file, 4 files
    parts = []
    for _ in range(4):
        labels = torch.randint(0, c, (n,), generator=g)
        logits = torch.randn(n, e, c, generator=g)
        logits[torch.arange(n), :, labels] += torch.tensor([2.0, 3.0, 4.0, 6.0])
        part = ExitOutputs(logits, labels)
        writer.write(part, 0)
        parts.append(part)
    writer.finish()
    assert 4 * n * e * c * 4 > 2 * BUDGET_MIB * 2**20  # the data is larger than the budget

    streamed = _run(tmp_path, "stream")
    assert streamed.returncode == 0, streamed.stderr[-2000:]
    got = json.loads(streamed.stdout.strip().splitlines()[-1])
    assert got["used"] < BUDGET_MIB * 2**20

    loaded = _run(tmp_path, "load")  # the same budget, everything in memory: refused
    assert loaded.returncode != 0
    assert "allocate" in loaded.stderr.lower() or "memory" in loaded.stderr.lower()

    whole = ExitOutputs(torch.cat([p.logits for p in parts]), torch.cat([p.labels for p in parts]))
    want = tune_for_budget(whole, "max_probability", 0.6, relative=True)
    assert got["thresholds"] == want.policy.threshold_vector(4).tolist()
