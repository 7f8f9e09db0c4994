"""The ``info`` command: what an ExitOutputs file holds (sizes, sequences, per-exit cost,
accuracy and ECE)."""

from __future__ import annotations

import argparse
from typing import Any

from exitwise.cli._common import command, in_memory, load, print_payload

__all__ = ["add_info"]


def _info(args: argparse.Namespace) -> None:
    import torch

    from exitwise import metrics

    out = in_memory(load(args.file))
    payload: dict[str, Any] = {
        "num_samples": out.num_samples,
        "num_exits": out.num_exits,
        "num_classes": out.num_classes,
        "exit_names": out.exit_names,
        "costs": out.costs.tolist(),
        "labelled": out.labels is not None,
        "num_sequences": out.num_groups,
    }
    lines = [f"{out.num_samples} samples, {out.num_exits} exits, {out.num_classes} classes"]
    if out.groups is not None:  # token-level data: tokens are the samples
        lengths = torch.unique(out.groups, return_counts=True)[1].double()
        payload["tokens_per_sequence"] = {"mean": float(lengths.mean()), "max": int(lengths.max())}
        lines[0] = (
            f"{out.num_groups} sequences, {out.num_samples} tokens (mean {lengths.mean():.1f}, "
            f"max {int(lengths.max())} per sequence), {out.num_exits} exits, "
            f"{out.num_classes} classes"
        )
    if out.labels is not None:
        acc = out.correct().double().mean(dim=0).tolist()
        # a top-label ECE needs every class as a column (rest columns are not classes)
        ece = None
        if not out.rest_columns:
            ece = metrics.expected_calibration_error(out.probs(), out.labels).tolist()
        payload["accuracy"], payload["ece"] = acc, ece
        lines.append(f"{'exit':<12} {'cost':>12} {'accuracy':>9} {'ECE':>7}")
        for e, name in enumerate(out.exit_names):
            ece_text = "n/a" if ece is None else f"{ece[e]:.4f}"
            lines.append(f"{name:<12} {out.costs[e]:>12.4g} {acc[e]:>9.4f} {ece_text:>7}")
    print_payload(args, payload, "\n".join(lines))


def add_info(sub: Any) -> None:
    p = command(sub, "info", "summarise an ExitOutputs file", file_required=False, seed=False)
    p.set_defaults(run=_info)
