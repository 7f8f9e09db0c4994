"""A real early-exit CNN on scikit-learn's digits, end to end with exitwise.

1. Train a 3-exit CNN (one exit head after each conv block) with a joint multi-exit loss on
   the 8x8 digit images that ship with scikit-learn (no download).
2. ``collect`` the per-exit logits of the held-out images (the model returns them as a list)
   and ``measure_costs`` the cumulative FLOPs of each exit.
3. Calibrate every exit with temperature scaling on a calibration split.
4. Pick the cheapest shared max-probability threshold that keeps 99 % of the final exit's
   accuracy on the calibration split (exact sweep), and report it on the test split.

Runs offline on a 2-core CPU in well under a minute::

    python examples/digits_early_exit.py
"""

from __future__ import annotations

import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from exitwise.calibrate import TemperatureScaling
from exitwise.collect import collect, measure_costs
from exitwise.policies import ThresholdPolicy, evaluate, sweep_shared_threshold
from exitwise.report_text import per_exit_table
from exitwise.signals import compute_signal


class DigitsEarlyExit(nn.Module):
    """Three conv blocks on 8x8 images with an exit head after each."""

    def __init__(self) -> None:
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.block3 = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.exit1 = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(8 * 16, 10))
        self.exit2 = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 10))
        self.exit3 = nn.Sequential(nn.Flatten(), nn.Linear(32 * 2 * 2, 10))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for block, head in [
            (self.block1, self.exit1),
            (self.block2, self.exit2),
            (self.block3, self.exit3),
        ]:
            x = block(x)
            outs.append(head(x))  # an early-exit model evaluates each head on the way
        return outs


def load_digits_split() -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    """Images ``[N, 1, 8, 8]``, labels, and a stratified 50/50 train / held-out split."""
    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32)[:, None]
    y = torch.tensor(digits.target, dtype=torch.int64)
    idx_train, idx_rest = train_test_split(
        np.arange(len(y)), test_size=0.5, random_state=0, stratify=digits.target
    )
    return x, y, idx_train, idx_rest


def train_model(x_train: torch.Tensor, y_train: torch.Tensor, epochs: int = 30) -> nn.Module:
    """Joint multi-exit loss (sum over exits, as in SDN / MSDNet), Adam, seed 0."""
    torch.manual_seed(0)
    model = DigitsEarlyExit()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(0)
    for _epoch in range(epochs):
        perm = torch.randperm(len(y_train), generator=gen)
        for i in range(0, len(perm), 64):
            rows = perm[i : i + 64]
            loss = sum(loss_fn(out, y_train[rows]) for out in model(x_train[rows]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def main() -> None:
    start = time.perf_counter()
    torch.set_num_threads(2)
    x, y, idx_train, idx_rest = load_digits_split()
    model = train_model(x[idx_train], y[idx_train])

    held_out = [
        (x[idx_rest][i : i + 128], y[idx_rest][i : i + 128]) for i in range(0, len(idx_rest), 128)
    ]
    # cumulative FLOPs per image: everything run until each exit head has answered
    costs = measure_costs(model, held_out[0], exits=["exit1", "exit2", "exit3"])
    outputs = collect(
        model, held_out, costs=costs, exit_names=["block1", "block2", "block3"], progress=False
    )
    cal, test = outputs.split(0.5, seed=0)

    print(
        f"digits: {len(idx_train)} training images, {len(idx_rest)} held out "
        f"({len(cal)} calibration / {len(test)} test); exit FLOPs per image: "
        + ", ".join(f"{c:.0f}" for c in costs.tolist())
    )
    print("\nbefore calibration (test split):")
    print(per_exit_table(test, n_resamples=200))
    calibrator = TemperatureScaling().fit(cal)
    cal_c, test_c = calibrator.transform(cal), calibrator.transform(test)
    print(f"\ntemperatures: {[round(t, 3) for t in calibrator.temperatures_.tolist()]}")
    print("after temperature scaling (test split):")
    print(per_exit_table(test_c, n_resamples=200))

    # cheapest shared threshold keeping 99 % of the final exit's accuracy (calibration split)
    scores = compute_signal(cal_c, "max_probability")
    sweep = sweep_shared_threshold(scores, cal_c.correct(), cal_c.costs)
    target = 0.99 * float(cal_c.correct()[:, -1].double().mean())
    ok = sweep.accuracy >= target
    best = int(torch.argmin(torch.where(ok, sweep.mean_cost, torch.inf)))
    threshold = float(sweep.thresholds[best])
    policy = ThresholdPolicy("max_probability", threshold)
    report = evaluate(policy, test_c)
    final_acc = float(test_c.correct()[:, -1].double().mean())
    print(
        f"\npolicy: exit when max-probability >= {threshold:.4f} "
        f"(target: 99 % of the final exit's accuracy = {target:.4f} on calibration)"
    )
    print(
        f"  calibration: accuracy {float(sweep.accuracy[best]):.4f}, "
        f"speed-up {float(sweep.speed_up[best]):.2f}x"
    )
    print(
        f"  test:        accuracy {float(report.accuracy[0]):.4f} (final exit {final_acc:.4f}), "
        f"speed-up {float(report.speed_up[0]):.2f}x, exits "
        f"{report.exit_counts[0].tolist()}"
    )
    print(f"\ntook {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
