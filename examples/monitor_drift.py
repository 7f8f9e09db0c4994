"""Monitor a certified policy on replayed traffic: silent on the test split, alarmed by a shift.

The bundled Fashion-MNIST exits are split in half. A policy is certified on the first half
(disagreement with the full model <= 5 %, confidence 0.95) and "deployed". Traffic is replayed
from the second half, with 20 % of requests also run to full depth (shadow requests):

* **in distribution**: requests drawn at random from the test half. The monitor's risk
  limit holds there, so every alarm is a false alarm; over many replays their rate must stay
  below the monitor's level alpha.
* **class-mix shift**: the same requests, but 70 % drawn from the three classes where the
  policy disagrees most with the full model (shirts, pullovers, coats...). The risk rises above
  the limit and the monitor must raise its alarm; we report how many requests that takes.

Run: ``python examples/monitor_drift.py [--replays 500] [--requests 20000]``.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from exitwise.datasets import load_default
from exitwise.monitor import RiskMonitor
from exitwise.policies import certify
from exitwise.signals import compute_signal


def deployed_policy(seed: int = 0):
    """Certify on one half; return (certificate, the test half, what serving would log)."""
    cal, test = load_default().split(0.5, seed=seed)
    cert = certify(cal, "max_probability", {"disagreement": 0.05}, confidence=0.95, seed=seed)
    policy = cert.policy
    exits = policy.exit_indices(test).numpy()
    answers = policy.answer_indices(test)
    confidence = compute_signal(test, "max_probability").gather(1, answers[:, None])[:, 0]
    served = {
        "exit": exits,
        "confidence": confidence.numpy(),
        "prediction": policy.predictions(test).numpy(),
        "full_prediction": test.predictions()[:, -1].numpy(),
        "label": test.labels.numpy(),
    }
    rates = np.bincount(policy.exit_indices(cal).numpy(), minlength=cal.num_exits)
    return cert, served, rates / rates.sum()


def shifted_weights(served: dict, hard_share: float = 0.9) -> np.ndarray:
    """Sampling weights putting ``hard_share`` of the traffic on the 3 hardest classes."""
    wrong = served["prediction"] != served["full_prediction"]
    labels = served["label"]
    rate = np.array([wrong[labels == c].mean() for c in range(labels.max() + 1)])
    hard = np.isin(labels, np.argsort(rate)[-3:])
    w = np.where(hard, hard_share / hard.sum(), (1 - hard_share) / (~hard).sum())
    return w / w.sum()


def replay(served, weights, cert, rates, requests, shadow, alpha, rng) -> RiskMonitor:
    """One stream of ``requests`` draws; a ``shadow`` share carries the full model's answer."""
    idx = rng.choice(len(served["exit"]), size=requests, p=weights)
    full = np.where(rng.random(requests) < shadow, served["full_prediction"][idx], -1)
    monitor = RiskMonitor(
        cert.limits["disagreement"],
        num_exits=len(rates),
        confidence=1 - alpha,
        reference_exit_rates=rates,
    )
    monitor.update(served["exit"][idx], served["confidence"][idx], served["prediction"][idx], full)
    return monitor


def main(replays: int = 500, requests: int = 20000, shadow: float = 0.2, alpha: float = 0.05):
    torch.manual_seed(0)
    cert, served, rates = deployed_policy()
    wrong = served["prediction"] != served["full_prediction"]
    uniform = np.full(len(wrong), 1 / len(wrong))
    shifted = shifted_weights(served)
    print(
        f"certified policy: disagreement <= {cert.limits['disagreement']:.2f} "
        f"(confidence 0.95), cost {cert.evaluation.relative_cost:.3f} of the full model"
    )
    print(
        f"true risk of the replayed traffic: in distribution {float(uniform @ wrong):.4f}, "
        f"class-mix shift {float(shifted @ wrong):.4f}"
    )
    rng = np.random.default_rng(0)
    false_alarms, delays, tv = 0, [], []
    for _ in range(replays):
        ok = replay(served, uniform, cert, rates, requests, shadow, alpha, rng)
        false_alarms += ok.alarm
        bad = replay(served, shifted, cert, rates, requests, shadow, alpha, rng)
        delays.append(bad.alarm_at if bad.alarm else np.inf)
        tv.append(bad.exit_rate_drift()["total_variation"])
    delays = np.asarray(delays, dtype=float)
    found = np.isfinite(delays)
    print(
        f"{replays} replays of {requests} requests, {shadow:.0%} shadow, alpha {alpha}: "
        f"false-alarm rate {false_alarms / replays:.4f} (allowed <= {alpha})"
    )
    print(
        f"shifted stream: alarm in {found.mean():.1%} of replays; detection delay "
        f"median {np.median(delays[found]):.0f} requests "
        f"(~{np.median(delays[found]) * shadow:.0f} shadow), 90th percentile "
        f"{np.percentile(delays[found], 90):.0f}; exit-rate TV distance {np.mean(tv):.3f}"
    )
    return false_alarms / replays, delays


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replays", type=int, default=500)
    parser.add_argument("--requests", type=int, default=20000)
    args = parser.parse_args()
    main(args.replays, args.requests)
