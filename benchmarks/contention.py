"""Speed on a busy machine: torch's default thread count against one thread, under a
competing CPU load (issue 22, item 5).

On a shared machine (or a container whose CPU quota is below the cores torch sees), a pass
of thousands of small parallel operations waited at every operation's join for a thread the
kernel had not scheduled: the default threads ran 2-13x slower than one thread. exitwise now
spreads row chunks over worker threads instead (``exitwise/_chunk_threads.py``). This script
starts ``--load`` busy-loop subprocesses, then alternates runs with torch's default thread
count and with ``torch.set_num_threads(1)`` on the same data, and prints, per workload, the
first call and the median warm time of each, and their ratio (target: default <= 1.5x the
single-thread time). Then the same without the load, for reference.

Workloads (what the issue names): ``TemperatureScaling().fit`` on N = 100,000 x E = 12 x
C = 100 logits; top-label ECE on the same logits; ``evaluate_thresholds`` on N = 100,000 x
E = 12 scores with K = 8 candidates (dense kernel) and K = 2,000 (bitset kernel).

    python benchmarks/contention.py [--load 4] [--repeats 3] [--n 100000]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _synthetic import early_exit_scores

from exitwise import metrics
from exitwise.calibrate import TemperatureScaling
from exitwise.policies import evaluate_thresholds


def workloads(n: int) -> dict[str, Callable[[], object]]:
    g = torch.Generator().manual_seed(0)
    e, c = 12, 100
    labels = torch.randint(0, c, (n,), generator=g)
    logits = torch.randn(n, e, c, generator=g) * 2
    logits[torch.arange(n), :, labels] += torch.linspace(0.5, 4.0, e)
    scores, correct, costs = early_exit_scores(n, e)
    few = torch.rand(8, e, generator=g).double()
    many = torch.rand(2000, e, generator=g).double()
    return {
        "TemperatureScaling().fit": lambda: TemperatureScaling().fit(logits, labels),
        "expected_calibration_error": lambda: metrics.expected_calibration_error(
            logits, labels, input="logits"
        ),
        "evaluate_thresholds K=8 (dense)": lambda: evaluate_thresholds(scores, correct, costs, few),
        "evaluate_thresholds K=2000 (bitset)": lambda: evaluate_thresholds(
            scores, correct, costs, many
        ),
    }


def timed(fn: Callable[[], object], threads: int) -> float:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    finally:
        torch.set_num_threads(before)


def measure(jobs: dict[str, Callable[[], object]], repeats: int, label: str) -> None:
    default = torch.get_num_threads()
    print(f"\n{label} (torch's default: {default} threads)")
    print(
        f"{'workload':<36} {'default first':>13} {'warm':>8} {'1 thread first':>14} "
        f"{'warm':>8} {'ratio warm':>10}"
    )
    for name, fn in jobs.items():
        times: dict[int, list[float]] = {default: [], 1: []}
        for _ in range(repeats + 1):  # alternating, so both see the same load
            for threads in (default, 1):
                times[threads].append(timed(fn, threads))
        warm = {t: statistics.median(v[1:]) for t, v in times.items()}
        print(
            f"{name:<36} {times[default][0]:>12.3f}s {warm[default]:>7.3f}s "
            f"{times[1][0]:>13.3f}s {warm[1]:>7.3f}s {warm[default] / warm[1]:>9.2f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--load", type=int, default=4, help="busy-loop subprocesses")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n", type=int, default=100_000)
    args = parser.parse_args()
    jobs = workloads(args.n)
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.load)]
    try:
        time.sleep(1.0)
        measure(jobs, args.repeats, f"under a competing load of {args.load} busy processes")
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    measure(jobs, args.repeats, "without the load")


if __name__ == "__main__":
    main()
