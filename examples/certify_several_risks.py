"""Pareto Testing against shared-threshold Learn-then-Test, and WSR against Hoeffding–Bentkus.

On the bundled Fashion-MNIST exits, over many random 50/50 splits (calibration / held-out):

1. **One risk** (disagreement with the full model <= 5 %, confidence 0.9): the held-out cost
   and how often the held-out disagreement exceeds 5 %, for shared-threshold LTT (all the
   calibration data tests one grid) and for Pareto Testing (half finds per-exit candidates,
   half tests them).
2. **Two risks** (disagreement <= 5 % and mean cost <= 42 % of the full model): Pareto Testing
   certifies both; LTT certifies the disagreement only, and we count how often its cost breaks
   the budget anyway.
3. **p-values**: the threshold and held-out cost that shared LTT certifies with
   Waudby-Smith–Ramdas and with Hoeffding–Bentkus p-values at n = 500 and 5,000 calibration
   samples, for the 0/1 disagreement and for the bounded NLL excess.

Run: ``python examples/certify_several_risks.py [--splits 500]``.
"""

from __future__ import annotations

import argparse
import math
import warnings

import numpy as np
import torch

from exitwise.datasets import load_default
from exitwise.exceptions import VacuousGuaranteeWarning
from exitwise.policies import certify, first_exit, loss_table, risk_controlled_threshold
from exitwise.signals import compute_signal


def held_out(thresholds, scores, tables, idx):
    exits = first_exit(scores[idx], torch.as_tensor(thresholds, dtype=torch.float64))[:, None]
    return {r: float(t[idx].gather(1, exits).mean()) for r, t in tables.items()}


def compare_procedures(out, splits, confidence=0.9):
    scores = compute_signal(out, "max_probability").double()
    tables = {r: loss_table(out, r) for r in ("disagreement", "cost")}
    e = out.num_exits
    rows = {k: [] for k in ("ltt", "pt1", "pt2")}
    gen = torch.Generator().manual_seed(0)
    for s in range(splits):
        perm = torch.randperm(out.num_samples, generator=gen)
        cal_idx, test_idx = perm[: out.num_samples // 2], perm[out.num_samples // 2 :]
        cal = out[cal_idx]
        ltt = risk_controlled_threshold(
            cal, "max_probability", limit=0.05, confidence=confidence, p_value="binomial"
        )
        thr = [ltt.shared_threshold] * (e - 1) + [-math.inf] if ltt.certified else [math.inf] * e
        rows["ltt"].append(held_out(thr, scores, tables, test_idx) | {"ok": ltt.certified})
        for key, risks in (
            ("pt1", {"disagreement": 0.05}),
            ("pt2", {"disagreement": 0.05, "cost": 0.42}),
        ):
            res = certify(cal, "max_probability", risks, confidence=confidence, seed=s)
            thr = res.policy.thresholds if res.certified else [math.inf] * e
            rows[key].append(held_out(thr, scores, tables, test_idx) | {"ok": res.certified})
    print(f"{splits} random 50/50 splits, confidence {confidence}; held-out figures")
    print("(a violation: a certified policy whose held-out risk exceeds its limit; the cost is")
    print(" the mean over splits where something was certified)")
    print(
        f"{'procedure':<50} {'certified':>9} {'cost':>6} {'P(disagr. > 5%)':>16} "
        f"{'P(cost > 42%)':>14}"
    )
    names = {
        "ltt": "shared LTT, disagreement <= 5%",
        "pt1": "Pareto Testing, disagreement <= 5%",
        "pt2": "Pareto Testing, disagreement <= 5% & cost <= 42%",
    }
    for key, label in names.items():
        ok = np.array([r["ok"] for r in rows[key]])
        d = np.array([r["disagreement"] for r in rows[key]])
        c = np.array([r["cost"] for r in rows[key]])
        cost_text = f"{np.mean(c[ok] > 0.42):14.3f}" if key == "pt2" else f"{'not certified':>14}"
        print(
            f"{label:<50} {ok.mean():9.3f} {c[ok].mean():6.3f} "
            f"{np.mean(ok & (d > 0.05)):16.3f} {cost_text}"
        )
    over = np.mean([r["cost"] > 0.42 for r in rows["ltt"]])
    print(f"(shared LTT's policy breaks the 42 % budget on held-out data in {over:.1%} of splits)")
    return rows


def compare_p_values(out, draws=20):
    print("\nshared LTT, confidence 0.95: WSR vs Hoeffding-Bentkus (mean over random draws)")
    print(f"{'risk':<22} {'n':>5} {'p-value':<18} {'threshold':>9} {'held-out cost':>13}")
    scores = compute_signal(out, "max_probability").double()
    cost = loss_table(out, "cost")
    for risk, delta in (("disagreement", 0.05), ("nll_excess", 0.05)):
        for n in (500, 5000):
            for method in ("hoeffding_bentkus", "wsr"):
                thr, costs = [], []
                gen = torch.Generator().manual_seed(1)
                for _ in range(draws):
                    perm = torch.randperm(out.num_samples, generator=gen)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", VacuousGuaranteeWarning)
                        res = risk_controlled_threshold(
                            out[perm[:n]],
                            "max_probability",
                            risk=risk,
                            limit=delta,
                            confidence=0.95,
                            p_value=method,
                        )
                    t = res.shared_threshold
                    thr.append(t)
                    exits = first_exit(
                        scores[perm[n:]], torch.full((out.num_exits,), t, dtype=torch.float64)
                    )
                    costs.append(float(cost[perm[n:]].gather(1, exits[:, None]).mean()))
                label = f"{risk} <= {delta:g}"
                print(f"{label:<22} {n:>5} {method:<18} {np.mean(thr):9.4f} {np.mean(costs):13.3f}")


def main(splits: int = 500, draws: int = 20):
    out = load_default()
    compare_procedures(out, splits)
    compare_p_values(out, draws)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", type=int, default=500)
    parser.add_argument("--draws", type=int, default=20)
    args = parser.parse_args()
    main(args.splits, args.draws)
