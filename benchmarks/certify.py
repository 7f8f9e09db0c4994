"""``certify`` (Pareto Testing) at scale, against the tuners at the same size.

Issue 24 item 7: ``certify`` on N = 2,000,000 ran 1,148 s (and returned no policy without a
reason). Target: <= 60 s at N = 2M, scaling like the tuners. The baseline in the same run is
``tune_for_budget`` (one exact per-exit search) on the same scores; both are timed on the first
call and warm (a second call), and the ratio is printed. The data are the bundled
Fashion-MNIST exits repeated with small noise (4 exits x 10 classes).

    python benchmarks/certify.py [--n 2000000]
"""

from __future__ import annotations

import argparse
import time

import torch

from exitwise import ExitOutputs
from exitwise.datasets import load_default
from exitwise.policies import ExitScores, certify, tune_for_budget


def repeated(n: int, seed: int = 0) -> ExitOutputs:
    base = load_default()
    reps = -(-n // base.num_samples)
    g = torch.Generator().manual_seed(seed)
    logits = base.logits.repeat(reps, 1, 1)[:n]
    logits = logits + 0.05 * torch.randn(logits.shape, generator=g)
    return ExitOutputs(logits, labels=base.labels.repeat(reps)[:n], costs=base.costs)


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2_000_000)
    args = parser.parse_args()
    torch.set_num_threads(2)
    scores = ExitScores(repeated(args.n), "max_probability")
    limits = {"disagreement": 0.05, "cost": 0.6}
    for label in ("first call", "warm"):
        t_cert, res = timed(lambda: certify(scores, limits=limits, confidence=0.95))
        t_tune, _ = timed(lambda: tune_for_budget(scores, budget=0.6))
        print(
            f"N = {args.n:,} ({label}): certify {t_cert:.1f} s (target <= 60 s; certified: "
            f"{res.certified}, {res.guarantee.num_units if res.guarantee else 0} testing "
            f"samples, {res.path.num_tested} candidates tested), tune_for_budget "
            f"{t_tune:.1f} s -> certify / tune = {t_cert / t_tune:.1f}x"
        )


if __name__ == "__main__":
    main()
