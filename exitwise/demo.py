"""The demo behind ``make demo``: per-exit metrics of the bundled real data.

Run with ``python -m exitwise.demo``.
"""

from __future__ import annotations

import torch

from exitwise.datasets import dataset_card, load_default
from exitwise.report_text import per_exit_table

__all__ = ["main"]


def main() -> None:
    torch.set_num_threads(2)
    outputs = load_default()
    card = dataset_card()
    print(f"exitwise demo: {card['model']}")
    print(f"data: {card['data']}; {outputs.num_exits} exits, {outputs.num_classes} classes")
    print("cost = cumulative FLOPs relative to the full model; ECE: top-label, 15 uniform bins\n")
    print(per_exit_table(outputs))


if __name__ == "__main__":
    main()
