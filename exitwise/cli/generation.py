"""The ``plan-speculation`` command of the ``exitwise`` CLI: the self-speculative decoding
plan of token-level outputs."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_plan_speculation"]


def _plan_speculation(args: argparse.Namespace) -> None:
    from exitwise.cli._common import load, print_payload
    from exitwise.generation import plan_self_speculation

    out = load(args.file)
    plan = plan_self_speculation(
        out, args.max_draft, mode=args.mode, verification=args.verification
    )
    text = plan.to_text()
    best = plan.best
    text += (
        f"\n\nbest: draft with {best['draft_name']} (exit {best['draft_exit']}), "
        f"k = {best['draft_length']}: {best['tokens_per_verification']:.2f} tokens per "
        f"verification, expected speed-up {best['speed_up']:.2f}x (teacher-forced estimate; "
        "free generation can differ)"
    )
    if args.plot:
        from exitwise.plots_generation import speculation_plot

        speculation_plot(plan).figure.savefig(args.plot, dpi=110, bbox_inches="tight")
        text += f"\nplot written to {args.plot}"
    payload = {"rows": plan.rows, "best": best, "mode": plan.mode, "plot": args.plot}
    print_payload(args, payload, text)


def add_plan_speculation(sub: Any) -> None:
    """Register ``exitwise plan-speculation``."""
    from exitwise.cli._common import command

    p = command(
        sub,
        "plan-speculation",
        "plan self-speculative decoding from token-level outputs",
        seed=False,
    )
    p.add_argument("--max-draft", type=int, default=8, help="largest draft length k (8)")
    p.add_argument("--mode", default="greedy", choices=("greedy", "sampling"))
    p.add_argument(
        "--verification",
        default="remaining",
        choices=("remaining", "full"),
        help="a verification pass runs the remaining layers (LayerSkip) or the whole model",
    )
    p.add_argument("--plot", help="write the speed-up heat map (.png)")
    p.set_defaults(run=_plan_speculation)
