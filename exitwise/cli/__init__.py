"""The ``exitwise`` command line: report, calibrate, tune, evaluate, certify, monitor,
serve-plan, plan-speculation, info.

One module per command group (``report``, ``calibrate``, ``tuning``, ``guarantees``,
``serving``, ``generation``, ``info``) and what they share in ``_common`` (the one meaning of
every shared flag). Nothing outside the CLI imports this package. Every command reads an
ExitOutputs file (``.safetensors`` or ``.npz``) or a sharded directory
(``collect(..., out=dir)``): ``torchrun --nproc-per-node=R -m exitwise calibrate|tune|
evaluate|certify dir/`` runs the command on R processes, each reading its part of the files,
and rank 0 prints the one-process answer (``report``: rank 0 writes it from every file);
``report`` and ``info`` default to the bundled Fashion-MNIST exits. Errors print one line and
exit with status 2; ``--json`` prints machine-readable output.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    from exitwise.calibrate import METHODS
    from exitwise.cli.calibrate import add_calibrate
    from exitwise.cli.generation import add_plan_speculation
    from exitwise.cli.guarantees import add_certify, add_monitor
    from exitwise.cli.info import add_info
    from exitwise.cli.report import add_report
    from exitwise.cli.serving import add_serve_plan
    from exitwise.cli.tuning import add_evaluate, add_tune

    parser = argparse.ArgumentParser(
        prog="exitwise", description="Calibrate early exits, tune exit policies, report."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add_report(sub, METHODS)
    add_calibrate(sub, METHODS)
    add_tune(sub)
    add_evaluate(sub)
    add_certify(sub)
    add_monitor(sub)
    add_serve_plan(sub)
    add_plan_speculation(sub)
    add_info(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``exitwise`` console script."""
    from exitwise.cli._common import process_group

    args = _parser().parse_args(argv)
    with process_group():  # under torchrun: every rank its part of a sharded directory
        try:
            args.run(args)
        except (ValueError, TypeError, FileNotFoundError, OSError, KeyError) as err:
            message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            print(f"exitwise {args.command}: error: {message}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
