"""Measure the latency model of the bundled default model (the 4-exit Fashion-MNIST CNN).

Latency depends on the architecture, not on the trained weights, so this builds
``EarlyExitCNN`` from ``make_default_dataset.py`` and times every exit segment (block and its
head) at batch sizes 1 to 64 on one CPU thread with
:func:`exitwise.serving.measure_latency_model`, plus the extra time of a request that finds
the core idle. Writes ``exitwise/datasets/fashion_mnist_cnn_latency.json`` (read by
``exitwise.serving.load_default_latency``). The figures are those of the machine it ran on
(the bundled file: the project's 2-core CPU development VM, whose speed drifts by up to 30 %).

Usage::

    python examples/make_default_latency.py [--out exitwise/datasets]
"""

from __future__ import annotations

import argparse
import runpy
from pathlib import Path

import numpy as np
import torch

from exitwise.serving import LatencyModel, measure_latency_model, measure_wake_up

HERE = Path(__file__).parent


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
        one = torch.randn(1, 1, 28, 28)
        wake_up = measure_wake_up(lambda: cnn(one))
        model = LatencyModel(measured.batch_sizes, measured.seconds, wake_up=wake_up)
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
