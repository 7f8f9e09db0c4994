"""Memory of the two vocabulary reductions of ``collect``: ``reduce="topk:K"`` (its "rest"
columns follow the flattest token) against ``reduce="fixed:K"`` (the same width for every
token), on LLM-like logits: N tokens x E exits x C = 32,000 classes, the label's logit lifted
by ``lift`` x [0.5 .. 1.5] from the first exit to the last over Gaussian noise (the early exits
flatter). Prints the columns and bytes of each, the full logits' bytes beside them, and, per
form, on how many (token, exit) pairs the argmax or the max-probability (to 1e-5) differs from
the full logits' (both should be 0).

    python benchmarks/fixed_width.py [--n 1000] [--exits 6] [--classes 32000] [--k 32]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from vocabulary import logits_for

from exitwise import ExitOutputs
from exitwise.collect import collect
from exitwise.signals import compute_signal


class _Stored(nn.Module):
    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[x]


def _not_exact(reduced: ExitOutputs, kept: torch.Tensor, full: ExitOutputs) -> int:
    """(token, exit) pairs whose argmax (as a class id) or max-probability differ from full."""
    argmax = kept.gather(1, reduced.predictions()) != full.predictions()
    top = compute_signal(reduced, "max_probability") - compute_signal(full, "max_probability")
    return int((argmax | (top.abs() > 1e-5)).sum())


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
        full = ExitOutputs(logits, labels)
        size = logits.numel() * 4
        topk, topk_kept = collect(
            model, data, reduce=f"topk:{args.k}", progress=False, return_class_indices=True
        )
        fixed, fixed_kept = collect(
            model, data, reduce=f"fixed:{args.k}", progress=False, return_class_indices=True
        )
        print(
            f"lift {lift:>4}: full {size / 2**20:8.1f} MiB ({args.classes} columns); "
            f"topk:{args.k} {topk.logits.numel() * 4 / 2**20:6.2f} MiB "
            f"({topk.num_classes} columns, not exact: {_not_exact(topk, topk_kept, full)}); "
            f"fixed:{args.k} {fixed.logits.numel() * 4 / 2**20:6.2f} MiB "
            f"({fixed.num_classes} columns, {topk.num_classes / fixed.num_classes:.1f}x fewer, "
            f"not exact: {_not_exact(fixed, fixed_kept, full)}) of {full.num_samples} x "
            f"{full.num_exits}"
        )


if __name__ == "__main__":
    main()
