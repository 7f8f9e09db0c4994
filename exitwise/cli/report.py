"""The ``report`` command: the one-command model review (HTML, PNGs, summary.json)."""

from __future__ import annotations

import argparse
from typing import Any

from exitwise.cli._common import (
    RELATIVE_HELP,
    TARGET_HELP,
    command,
    first_rank,
    in_memory,
    load,
    print_payload,
    signal_option,
)

__all__ = ["add_report"]


def _latency_model(path: str | None):
    if path is None:
        return None
    from exitwise.serving import LatencyModel

    return LatencyModel.load(path)


def _report(args: argparse.Namespace) -> None:
    from exitwise._distributed import local_only
    from exitwise.report import summary_table

    if not first_rank():  # under torchrun rank 0 writes the one report; the others are done
        return
    with local_only():  # the report reads every sample's logits: all of them, on rank 0
        summary = _summary(args)
    print_payload(
        args, summary, summary_table(summary) + f"\n\nreport written to {args.out}/report.html"
    )


def _summary(args: argparse.Namespace) -> dict[str, Any]:
    from exitwise.report import build_report

    out = in_memory(load(args.file))  # inside local_only: every file, not this rank's part
    return build_report(
        out,
        args.out,
        calibrators=args.calibrators,
        signal=args.signal,
        target_accuracy=0.99 if args.target_accuracy is None else args.target_accuracy,
        relative=args.target_accuracy is None or args.relative,
        n_resamples=args.resamples,
        seed=args.seed,
        latency=_latency_model(args.latency),
    )


def add_report(sub: Any, methods: tuple[str, ...]) -> None:
    p = command(sub, "report", "write report.html, PNGs and summary.json", file_required=False)
    p.add_argument("--out", default="report", help="output folder (default: report)")
    p.add_argument(
        "--calibrators",
        nargs="+",
        default=["temperature", "isotonic"],
        choices=methods,
        help="calibrators to compare; the first one is used to tune",
    )
    signal_option(p)
    p.add_argument(
        "--target-accuracy",
        type=float,
        default=None,
        help=TARGET_HELP + " (default: 0.99 --relative)",
    )
    p.add_argument("--relative", action="store_true", help=RELATIVE_HELP)
    p.add_argument("--resamples", type=int, default=200, help="bootstrap resamples")
    p.add_argument("--latency", help="latency model (.json): adds latency against rate")
    p.set_defaults(run=_report)
