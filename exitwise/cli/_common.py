"""What every command of the ``exitwise`` CLI shares: loading files, printing, the common
options, and the one meaning of each shared flag:

* ``--signal NAME``: the confidence signal;
* ``--risk NAME=LIMIT``: a risk and its limit (repeatable where several are certified);
* ``--confidence C``: the probability that a guarantee holds (1 - the failure probability);
* ``--target-accuracy A`` with ``--relative``: an accuracy target (a fraction of the final
  exit's accuracy with ``--relative``);
* ``--split S`` / ``--seed K``: the tuning (calibration) share and the seed of that split.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from exitwise._distributed import first_rank  # rank 0 prints and writes files under torchrun

__all__ = [
    "ShardedInput",
    "command",
    "fingerprint",
    "first_rank",
    "held_out_options",
    "held_out_part",
    "in_memory",
    "load",
    "load_calibrated",
    "print_payload",
    "process_group",
    "reference",
    "risk_pair",
    "signal_option",
    "tune_context",
    "warn",
]

TARGET_HELP = (
    "accuracy target: an absolute accuracy, or with --relative a fraction of the final "
    "exit's accuracy (the same in every command)"
)
RELATIVE_HELP = "--target-accuracy is a fraction of the final exit's accuracy"
CONFIDENCE_HELP = "probability that the guarantee holds (1 - the failure probability)"


def warn(message: str) -> None:
    """One line on stderr (deprecated flags, notes); stdout stays machine-readable."""
    print(f"exitwise: warning: {message}", file=sys.stderr)


@contextmanager
def process_group() -> Iterator[None]:
    """Started by ``torchrun`` (``WORLD_SIZE`` > 1): a gloo process group around the command
    (the CLI reads files onto the CPU), so each rank reads its part of a sharded directory
    and every step combines the parts; nothing otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield
        return
    import torch.distributed as dist

    started = not dist.is_initialized()
    if started:
        dist.init_process_group("gloo")
    try:
        yield
    finally:
        if started:
            dist.destroy_process_group()


class ShardedInput:
    """A sharded directory for the commands: this rank's part, split as one process splits
    the whole, each part read into memory (and calibrated) on its rank."""

    def __init__(self, data: Any, calibrator: Any = None) -> None:
        self.data, self.calibrator = data, calibrator

    def _ready(self, part: Any):
        out = part.to_outputs()
        return out if self.calibrator is None else self.calibrator.transform(out)

    def split(self, fraction: float, seed: int = 0) -> tuple[Any, Any]:
        first, rest = self.data.split(fraction, seed)
        return self._ready(first), self._ready(rest)

    def whole(self):
        return self._ready(self.data)

    @property
    def labelled(self) -> bool:
        return self.data.labelled


def in_memory(out: Any):
    """ExitOutputs as they are; this rank's whole part of a sharded directory."""
    return out.whole() if isinstance(out, ShardedInput) else out


def load(path: str | None, calibrator: Any = None):
    """An ExitOutputs file, a sharded directory (``collect(..., out=dir)``) or the bundled
    Fashion-MNIST exits without a path; transformed by ``calibrator`` when given."""
    if path is None:
        from exitwise.datasets import load_default

        out = load_default()
    else:
        from exitwise import ExitOutputs
        from exitwise.data_shards import load as load_any

        out = load_any(path)
        if not isinstance(out, ExitOutputs):
            return ShardedInput(out, calibrator)
    return out if calibrator is None else calibrator.transform(out)


def load_calibrated(args: argparse.Namespace):
    """The file's outputs, transformed by ``--calibrator`` when one is given."""
    calibrator = None
    if args.calibrator:
        from exitwise.calibrate import load_calibrator

        calibrator = load_calibrator(args.calibrator)
    return load(args.file, calibrator)


def reference(out: Any) -> str:
    """Score against labels when there are any, else against the final exit."""
    if isinstance(out, ShardedInput):
        return "labels" if out.labelled else "final"
    return "labels" if out.labels is not None else "final"


def print_payload(args: argparse.Namespace, payload: dict[str, Any], text: str) -> None:
    if not first_rank():  # under torchrun every rank has the answer: rank 0 prints it
        return
    if args.json:
        print(json.dumps(payload, indent=2, default=float))
    else:
        print(text)


def risk_pair(text: str) -> tuple[str, float]:
    """``NAME=LIMIT`` (e.g. ``disagreement=0.02``); a bare number is the deprecated spelling
    of ``disagreement=NUMBER`` (``exitwise tune --risk 0.05``)."""
    name, sep, value = text.partition("=")
    if not sep:
        try:
            limit = float(text)
        except ValueError:
            limit = None
        if limit is not None:
            warn(
                f"--risk {text} is deprecated; write --risk disagreement={text} (NAME=LIMIT, the "
                "one meaning of --risk in every command)"
            )
            return "disagreement", limit
    try:
        limit = float(value)
    except ValueError:
        limit = None
    if not sep or limit is None:
        raise argparse.ArgumentTypeError(
            f"expected NAME=LIMIT such as disagreement=0.02 or cost=0.4, got {text!r}"
        )
    return name.strip(), limit


class DeprecatedFlag(argparse.Action):
    """An old flag that still works for one release: it warns and sets the new option
    (``convert`` maps the old value, e.g. ``--epsilon E`` -> ``--confidence 1-E``)."""

    def __init__(
        self, option_strings: Any, dest: str, new: str = "", convert: Any = None, **kwargs: Any
    ) -> None:
        self.new, self.convert = new, convert
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        warn(f"{option} is deprecated; use {self.new} (see CHANGELOG.md)")
        setattr(namespace, self.dest, self.convert(values) if self.convert else values)


def confidence_option(
    p: argparse.ArgumentParser, default: float | None, help_text: str, old: str = "epsilon"
) -> None:
    """``--confidence`` and its deprecated spelling ``--{old}``, a failure probability
    (``--epsilon`` in tune and certify, ``--alpha`` in monitor; = 1 - confidence)."""
    p.add_argument("--confidence", type=float, default=default, help=help_text)
    p.add_argument(
        f"--{old}",
        dest="confidence",
        type=float,
        action=DeprecatedFlag,
        new=f"--confidence (= 1 - {old})",
        convert=lambda e: 1.0 - e,
        help=argparse.SUPPRESS,
    )


def fingerprint(path: str | None, outputs: Any) -> str:
    """sha256 of the data file (of the bundled logits without a file; of the index and every
    shard file, in index order, for a sharded directory)."""
    digest = hashlib.sha256()
    if path is None:
        digest.update(outputs.logits.cpu().numpy().tobytes())
        return "sha256:" + digest.hexdigest()
    files = [Path(path)]
    if files[0].is_dir():
        from exitwise.data_shards import INDEX, ShardedOutputs

        files = [files[0] / INDEX, *ShardedOutputs(path).files]
    for name in files:
        with open(name, "rb") as f:
            for block in iter(lambda f=f: f.read(1 << 20), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()


def tune_context(args: argparse.Namespace) -> dict[str, Any]:
    """What a policy file records about its making (read back by ``evaluate``)."""
    return {
        "data": str(args.file),
        "calibrator": args.calibrator,
        "signal": args.signal,
        "split": args.split,
        "seed": args.seed,
        "tuned_on": "the first part of ExitOutputs.split(split, seed)",
    }


def command(
    sub: Any, name: str, help_text: str, file_required: bool = True, seed: bool = True
) -> argparse.ArgumentParser:
    """A subcommand with the options every command shares."""
    p = sub.add_parser(name, help=help_text, description=help_text)
    if file_required:
        p.add_argument(
            "file", help="ExitOutputs file (.safetensors or .npz) or a sharded directory"
        )
    else:
        p.add_argument(
            "file",
            nargs="?",
            default=None,
            help="ExitOutputs file (default: the bundled Fashion-MNIST exits)",
        )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    if seed:
        p.add_argument("--seed", type=int, default=0, help="seed of the split")
    return p


def held_out_options(p: argparse.ArgumentParser) -> None:
    """``--split``/``--seed`` of the split a policy was tuned on, and ``--all``."""
    p.add_argument(
        "--split",
        type=float,
        default=None,
        help="tuning share to skip (default: the policy file's, else 0.5)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of that split (default: the policy file's, else 0)",
    )
    p.add_argument("--all", action="store_true", help="use every sample, the tuning part included")


def held_out_part(out: Any, context: dict[str, Any], args: argparse.Namespace) -> tuple[Any, str]:
    """The part of ``out`` a policy was not tuned or certified on (its file's split and seed
    unless ``--split``/``--seed`` say otherwise; every sample with ``--all``), and its name."""
    if args.all:
        return in_memory(out), "all samples"
    split = context.get("split", 0.5) if args.split is None else args.split
    seed = context.get("seed", 0) if args.seed is None else args.seed
    split = 0.5 if split is None else split
    seed = 0 if seed is None else seed
    return out.split(split, seed=seed)[1], f"the held-out part of split({split}, seed={seed})"


def signal_option(p: argparse.ArgumentParser) -> None:
    from exitwise.signals import built_in_signals

    p.add_argument(
        "--signal",
        default="max_probability",
        choices=built_in_signals(),
        help="confidence signal (default: max_probability)",
    )
