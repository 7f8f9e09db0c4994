"""Measure the latency model of the bundled default model (the 4-exit Fashion-MNIST CNN).

Latency depends on the architecture, not on the trained weights, so this builds
``EarlyExitCNN`` from ``make_default_dataset.py`` and times every exit segment (block and its
head) at batch sizes 1 to 64 on one CPU thread with
:func:`exitwise.serving.measure_latency_model`, plus the extra time of a request that finds
the core idle. Writes ``exitwise/datasets/fashion_mnist_cnn_latency.json`` (read by
``exitwise.datasets.load_default_latency``). Figures are for the machine it ran on (the card
says which).

Usage::

    python examples/make_default_latency.py [--out exitwise/datasets]
"""

from __future__ import annotations

import argparse
import runpy
import time
from pathlib import Path

import numpy as np
import torch

from exitwise.serving import LatencyModel, measure_latency_model

HERE = Path(__file__).parent


def wake_up_curve(model, idles=(0.0005, 0.001, 0.002, 0.004, 0.008, 0.016)) -> np.ndarray:
    """Extra seconds of a one-image pass after sleeping ``idle`` (from when it was due)."""
    x = torch.randn(1, 1, 28, 28)

    def one(due=None) -> float:
        t0 = time.perf_counter() if due is None else due
        model(x)
        return time.perf_counter() - t0

    warm = np.median([one() for _ in range(50)])
    rows = []
    for idle in idles:
        times = []
        for _ in range(30):
            due = time.perf_counter() + idle
            time.sleep(idle)
            times.append(one(due))
        rows.append((idle, max(0.0, float(np.median(times) - warm))))
    return np.maximum.accumulate(np.array(rows), axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE.parent / "exitwise" / "datasets"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cnn = runpy.run_path(str(HERE / "make_default_dataset.py"))["EarlyExitCNN"]().eval()
    with torch.inference_mode():
        measured = measure_latency_model(
            cnn,
            lambda b: torch.randn(b, 1, 28, 28),
            exits=["heads.0", "heads.1", "heads.2", "heads.3"],
            batch_sizes=(1, 2, 4, 8, 16, 32, 64),
            repeats=15,
        )
        model = LatencyModel(measured.batch_sizes, measured.seconds, wake_up=wake_up_curve(cnn))
    path = Path(args.out) / "fashion_mnist_cnn_latency.json"
    model.save(path)
    print(model)
    print(
        "ms per segment at batch 1 / 64:",
        np.round(model.seconds[0] * 1e3, 3).tolist(),
        np.round(model.seconds[-1] * 1e3, 3).tolist(),
    )
    print(f"written to {path}")


if __name__ == "__main__":
    main()
