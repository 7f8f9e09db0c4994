"""The per-exit threshold search of the tuners, at scale.

Baseline: the search before issue 10, an exhaustive coordinate search that scores every
distinct score at exit j as a candidate with the batched evaluator (its cost grows with N^2;
149 s at N = 80,000 was measured). It is run at a size it can finish (``--baseline-n``),
beside exitwise's exact line searches at the same size (same result checked), then exitwise
alone at N = 2,000,000 x E = 12 x C = 10 (target, issue 10: <= 60 s), with the shared-only
tuning for scale and the peak memory.

    python benchmarks/tuning.py [--n 2000000] [--baseline-n 20000]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from exitwise import ExitOutputs
from exitwise.policies import evaluate_thresholds, sweep_shared_threshold, tune_for_budget
from exitwise.signals import compute_signal


def synthetic(n: int, e: int = 12, c: int = 10, seed: int = 0) -> ExitOutputs:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, c, (n,), generator=g)
    logits = torch.randn(n, e, c, generator=g)
    logits[torch.arange(n), :, labels] += (
        torch.linspace(0.5, 4, e) * torch.rand(n, 1, generator=g) * 2
    )
    return ExitOutputs(logits, labels=labels)


def exhaustive_search(out: ExitOutputs, budget: float, rounds: int = 3) -> tuple[float, float]:
    """The old per-exit search (accuracy objective under a relative mean-cost budget)."""
    scores, correct, costs = compute_signal(out, "max_probability"), out.correct(), out.costs
    e, limit = scores.shape[1], budget * float(costs[-1]) * (1 + 1e-12)
    sw = sweep_shared_threshold(scores, correct, costs)
    ok = torch.nonzero(sw.mean_cost <= limit).flatten()
    best = ok[torch.argmax(sw.accuracy[ok] - 1e-9 * sw.mean_cost[ok])]
    current = torch.full((e,), float(sw.thresholds[best]), dtype=torch.float64)
    acc, cost = float(sw.accuracy[best]), float(sw.mean_cost[best])
    for _ in range(rounds):
        moved = False
        for j in range(e - 1):
            grid = torch.cat([torch.unique(scores[:, j]), torch.tensor([math.inf])])
            cand = current.repeat(len(grid), 1)
            cand[:, j] = grid
            ev = evaluate_thresholds(scores, correct, costs, cand)
            good = torch.nonzero(ev.mean_cost <= limit).flatten()
            k = good[torch.argmax(ev.accuracy[good] - 1e-9 * ev.mean_cost[good])]
            a, c = float(ev.accuracy[k]), float(ev.mean_cost[k])
            if a > acc + 1e-12 or (a >= acc - 1e-12 and c < cost - 1e-12):
                acc, cost, current, moved = a, c, cand[k].clone(), True
        if not moved:
            break
    return acc, cost


def peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2_000_000)
    parser.add_argument("--baseline-n", type=int, default=20_000)
    args = parser.parse_args()

    small = synthetic(args.baseline_n)
    start = time.perf_counter()
    ref_acc, _ = exhaustive_search(small, 0.5)
    t_ref = time.perf_counter() - start
    start = time.perf_counter()
    ours = tune_for_budget(small, "max_probability", 0.5, progress=False)
    t_ours = time.perf_counter() - start
    print(
        f"N={args.baseline_n} x 12 x 10, budget 50 %: exhaustive search {t_ref:.2f} s "
        f"(accuracy {ref_acc:.4f}), exitwise {t_ours:.2f} s (accuracy "
        f"{ours.evaluation.accuracy:.4f}) -> {t_ref / t_ours:.1f}x; never worse: "
        f"{ours.evaluation.accuracy >= ref_acc - 1e-12}"
    )

    big = synthetic(args.n)
    size = big.logits.numel() * big.logits.element_size()
    start = time.perf_counter()
    tuned = tune_for_budget(big, "max_probability", 0.5, progress=True)
    t_big = time.perf_counter() - start
    start = time.perf_counter()
    shared = tune_for_budget(big, "max_probability", 0.5, per_exit=False)
    t_shared = time.perf_counter() - start
    print(
        f"N={args.n} x 12 x 10 ({size / 2**30:.2f} GiB of logits): per-exit search "
        f"{t_big:.1f} s (target <= 60 s), accuracy {tuned.evaluation.accuracy:.4f}; shared "
        f"threshold only {t_shared:.1f} s, accuracy {shared.evaluation.accuracy:.4f}; peak "
        f"RSS {peak_rss() / 2**30:.2f} GiB"
    )


if __name__ == "__main__":
    main()
