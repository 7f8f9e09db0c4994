"""The SLA table of the bundled data: accuracy targets and compute budgets, tune vs test.

Tunes per-exit max-probability thresholds on a calibration half of the bundled Fashion-MNIST
exits (after temperature scaling) and reports them on the other half, next to the best shared
threshold and MSDNet's geometric budget rule.

    python examples/sla_table.py
"""

from __future__ import annotations

import time

import torch

from exitwise.calibrate import TemperatureScaling
from exitwise.datasets import load_default
from exitwise.policies import (
    evaluate,
    geometric_budget_policy,
    risk_controlled_threshold,
    tune_for_accuracy,
    tune_for_budget,
)


def main() -> None:
    start = time.perf_counter()
    torch.set_num_threads(2)
    cal, test = load_default().split(0.5, seed=0)
    ts = TemperatureScaling().fit(cal)
    cal, test = ts.transform(cal), ts.transform(test)
    final_tune = float(cal.correct()[:, -1].double().mean())
    final_test = float(test.correct()[:, -1].double().mean())
    print(
        f"final exit accuracy: tune {final_tune:.4f}, test {final_test:.4f}; "
        f"{len(cal)} tune / {len(test)} test samples; cost = FLOPs, relative to the full model"
    )
    header = (
        f"{'SLA':<26} {'search':<9} {'acc tune':>8} {'acc test':>8} "
        f"{'cost tune':>9} {'cost test':>9} {'speed-up test':>13}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    for target in (0.99, 1.00):
        for per_exit in (False, True):
            tuned = tune_for_accuracy(
                cal, "max_probability", target, relative=True, per_exit=per_exit
            )
            rows.append((f"accuracy >= {target:.0%} of final", per_exit, tuned))
    for budget in (0.3, 0.5):
        for per_exit in (False, True):
            tuned = tune_for_budget(cal, "max_probability", budget, per_exit=per_exit)
            rows.append((f"mean cost <= {budget:.0%}", per_exit, tuned))
        rows.append(
            (
                f"mean cost <= {budget:.0%}",
                "msdnet",
                geometric_budget_policy(cal, "max_probability", budget),
            )
        )
    for name, per_exit, tuned in rows:
        search = per_exit if isinstance(per_exit, str) else ("per-exit" if per_exit else "shared")
        if not tuned.feasible:
            print(f"{name:<26} {search:<9} infeasible")
            continue
        rep = tuned.report(test)
        print(
            f"{name:<26} {search:<9} {tuned.evaluation.accuracy:>8.4f} "
            f"{rep.accuracy:>8.4f} {tuned.evaluation.relative_cost:>9.3f} "
            f"{rep.relative_cost:>9.3f} {rep.speed_up:>12.2f}x"
        )
    res = risk_controlled_threshold(
        cal, "max_probability", risk="disagreement", limit=0.05, confidence=0.95
    )
    if res.certified:
        rep = evaluate(res.policy, test, reference="final")
        print(
            f"\nLearn-then-Test, disagreement <= 5 % with probability >= 95 %: threshold "
            f"{res.shared_threshold:.2f}; test disagreement {float(rep.mean_loss[0]):.4f}, "
            f"speed-up {float(rep.speed_up[0]):.2f}x"
        )
    print(f"\ntook {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
