"""Make exitwise's bundled default dataset: a 4-exit CNN on Fashion-MNIST.

Runs offline on a 2-core CPU in a few minutes. Needs the Debian package
``dataset-fashion-mnist`` (``apt-get install -y dataset-fashion-mnist``), which puts the IDX
files in ``/usr/share/datasets/fashion-mnist/``.

Recipe
------
* Model: four conv blocks (16/32/64/128 channels, 3x3 conv + batch norm + ReLU, 2x2 max-pool
  after the first three); after each block an exit head (adaptive average pool to 2x2,
  flatten, linear to 10 classes).
* Training: the 60,000 training images, joint multi-exit loss (sum of the four cross
  entropies, as in SDN/MSDNet), Adam (lr 1e-3), batch 128, 2 epochs, seed 0, 2 CPU threads.
* Output: the logits of every exit on the 10,000 test images, gathered with
  ``exitwise.collect.collect`` (the model returns its exits), their labels, and per-exit
  cumulative costs in FLOPs from ``exitwise.collect.measure_costs`` (everything run until
  each exit head has answered: the blocks so far and every head on the way), written to
  ``exitwise/datasets/fashion_mnist_cnn.npz`` with a JSON card beside it.
* Then, as every example does: temperature scaling on half of the test images, a policy
  tuned for 99 % of the final exit's accuracy, and the per-exit table on the other half.

Usage::

    python examples/make_default_dataset.py [--epochs 2] [--out exitwise/datasets]
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from exitwise.calibrate import TemperatureScaling
from exitwise.collect import collect, measure_costs
from exitwise.policies import tune_for_accuracy
from exitwise.report_text import per_exit_table

DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzip): magic byte 3 is the number of dims, then big-endian sizes."""
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_split(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    prefix = "train" if kind == "train" else "t10k"
    images = read_idx(DATA_DIR / f"{prefix}-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    labels = read_idx(DATA_DIR / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    x = (torch.from_numpy(images)[:, None] - 0.2860) / 0.3530
    return x, torch.from_numpy(labels)


class EarlyExitCNN(nn.Module):
    """Four conv blocks, an exit head after each; ``forward`` returns the list of exit logits."""

    def __init__(self, channels: tuple[int, ...] = (16, 32, 64, 128), num_classes: int = 10):
        super().__init__()
        blocks, heads, c_in = [], [], 1
        for i, c_out in enumerate(channels):
            layers: list[nn.Module] = [
                nn.Conv2d(c_in, c_out, 3, padding=1),
                nn.BatchNorm2d(c_out),
                nn.ReLU(),
            ]
            if i < len(channels) - 1:
                layers.append(nn.MaxPool2d(2))
            blocks.append(nn.Sequential(*layers))
            heads.append(
                nn.Sequential(
                    nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * c_out, num_classes)
                )
            )
            c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        self.heads = nn.ModuleList(heads)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for block, head in zip(self.blocks, self.heads, strict=True):
            x = block(x)
            outs.append(head(x))
        return outs


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for epoch in range(epochs):
        start, total = time.time(), 0.0
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 128):
            idx = perm[i : i + 128]
            outs = model(x[idx])
            loss = sum(loss_fn(o, y[idx]) for o in outs)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        print(f"epoch {epoch + 1}: joint loss {total / len(x):.4f} ({time.time() - start:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    default_out = Path(__file__).parents[1] / "exitwise" / "datasets"
    parser.add_argument("--out", type=Path, default=default_out)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    x_train, y_train = load_split("train")
    x_test, y_test = load_split("test")
    model = EarlyExitCNN()
    train(model, x_train, y_train, args.epochs)
    model.eval()
    batches = [(x_test[i : i + 1000], y_test[i : i + 1000]) for i in range(0, len(x_test), 1000)]
    heads = [f"heads.{i}" for i in range(len(model.heads))]
    costs = measure_costs(model, batches[0], exits=heads).tolist()
    names = [f"block{i + 1}" for i in range(len(heads))]
    out = collect(model, batches, costs=costs, exit_names=names, progress=False)
    acc = out.correct().double().mean(0).tolist()
    args.out.mkdir(parents=True, exist_ok=True)
    out.save(args.out / "fashion_mnist_cnn.npz")
    card = {
        "name": "fashion_mnist_cnn",
        "data": "Fashion-MNIST test split (10,000 images, 10 classes)",
        "model": "4-block CNN (16/32/64/128 channels) with an exit head after each block",
        "training": f"60,000 training images, joint multi-exit CE, Adam 1e-3, batch 128, "
        f"{args.epochs} epochs, seed 0",
        "exit_names": names,
        "costs_flops": costs,
        "per_exit_accuracy": acc,
        "classes": CLASSES,
        "script": "examples/make_default_dataset.py",
    }
    (args.out / "fashion_mnist_cnn.json").write_text(json.dumps(card, indent=2) + "\n")
    print("per-exit accuracy:", ", ".join(f"{a:.4f}" for a in acc))
    print("cumulative FLOPs per image:", ", ".join(f"{c:.3g}" for c in costs))

    cal, test = out.split(0.5, seed=0)
    ts = TemperatureScaling().fit(cal)
    tuned = tune_for_accuracy(ts.transform(cal), "max_probability", 0.99, relative=True)
    print("\nafter temperature scaling (test half):")
    print(per_exit_table(ts.transform(test)))
    report = tuned.report(ts.transform(test))
    print(
        f"\npolicy for 99 % of the final exit's accuracy: thresholds "
        f"{[round(t, 4) for t in tuned.policy.thresholds]}; test accuracy "
        f"{report['accuracy']:.4f}, speed-up {report['speed_up']:.2f}x"
    )


if __name__ == "__main__":
    main()
