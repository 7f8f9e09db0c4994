"""The ``calibrate`` command of the ``exitwise`` CLI: fit a calibrator (or pick one per exit
with ``--method auto``) and compare it, cross-fitted and on a held-out split."""

from __future__ import annotations

import argparse
import warnings
from typing import Any

__all__ = ["add_calibrate"]


def _calibrate(args: argparse.Namespace) -> None:
    from exitwise.calibrate import AUTO_METHODS, PerExitCalibration, calibrate, compare_calibrators
    from exitwise.cli._common import first_rank, in_memory, load, print_payload

    out = load(args.file)
    cal, test = out.split(args.split, seed=args.seed)
    with warnings.catch_warnings(record=True) as caught:  # reported, not swallowed
        warnings.simplefilter("always")
        auto = args.method == "auto"  # every candidate; each exit's winner by cross-fitted score
        table = compare_calibrators(
            cal, test, AUTO_METHODS if auto else [args.method], score=args.score, seed=args.seed
        )
        method = PerExitCalibration(list(table.best)) if auto else args.method
        calibrator = calibrate(in_memory(out) if args.fit_all else cal, method)
    notes = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
    if args.out and first_rank():
        calibrator.save(args.out)
    text = table.to_text()
    if auto:
        text += "\n\nper exit: " + ", ".join(table.best)
    text += f"\n\ncalibrator written to {args.out}" if args.out else ""
    text += "".join(f"\nwarning: {note}" for note in notes)
    payload = {"table": table.rows, "best": list(table.best), "out": args.out, "warnings": notes}
    print_payload(args, payload, text)


def add_calibrate(sub: Any, methods: tuple[str, ...]) -> None:
    """Register ``exitwise calibrate``."""
    from exitwise.cli._common import command

    p = command(sub, "calibrate", "fit a calibrator and compare it on a held-out split")
    p.add_argument(
        "--method",
        default="temperature",
        choices=(*methods, "auto"),
        help="calibrator, or auto: each exit's best by cross-fitted --score (default: temperature)",
    )
    p.add_argument(
        "--score", default="nll", choices=("nll", "brier"), help="proper score that ranks (nll)"
    )
    p.add_argument("--split", type=float, default=0.5, help="calibration share")
    p.add_argument("--fit-all", action="store_true", help="refit the saved one on all data")
    p.add_argument("--out", help="calibrator file (.json)")
    p.set_defaults(run=_calibrate)
