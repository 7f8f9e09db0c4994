"""Memory of the two vocabulary reductions of ``collect``: ``reduce="topk:K"`` (its "rest"
columns follow the flattest token) against ``reduce="fixed:K"`` (the same width for every
token), on LLM-like logits: N tokens x E exits x C = 32,000 classes, the label's logit lifted
by ``lift`` x [0.5 .. 1.5] from the first exit to the last over Gaussian noise (the early exits
flatter). Prints the columns and bytes of each, the full logits' bytes beside them, and how
many tokens ``fixed:K`` could not keep exact (a rest bucket above an exit's top class).

    python benchmarks/fixed_width.py [--n 1000] [--exits 6] [--classes 32000] [--k 32]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from vocabulary import logits_for

from exitwise.collect import collect


class _Stored(nn.Module):
    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[x]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--exits", type=int, default=6)
    parser.add_argument("--classes", type=int, default=32_000)
    parser.add_argument("--k", type=int, default=32)
    args = parser.parse_args()
    for lift in (3.0, 6.0, 12.0):
        logits, labels = logits_for(args.n, args.exits, args.classes, lift)
        data = [
            (torch.arange(i, min(i + 100, args.n)), labels[i : i + 100])
            for i in range(0, args.n, 100)
        ]
        model = _Stored(logits)
        full = logits.numel() * 4
        topk = collect(model, data, reduce=f"topk:{args.k}", progress=False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fixed = collect(model, data, reduce=f"fixed:{args.k}", progress=False)
        failed = next((str(w.message).split("(")[1].split(")")[0] for w in caught), "none")
        print(
            f"lift {lift:>4}: full {full / 2**20:8.1f} MiB ({args.classes} columns); "
            f"topk:{args.k} {topk.logits.numel() * 4 / 2**20:6.2f} MiB "
            f"({topk.num_classes} columns); fixed:{args.k} {fixed.logits.numel() * 4 / 2**20:6.2f}"
            f" MiB ({fixed.num_classes} columns, {topk.num_classes / fixed.num_classes:.1f}x "
            f"fewer; tokens not exact per exit: {failed})"
        )


if __name__ == "__main__":
    main()
