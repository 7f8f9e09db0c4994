"""The ``plan-speculation`` command of the ``exitwise`` CLI: the self-speculative decoding
plan of token-level outputs, as a table or as an engine's settings."""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["add_plan_speculation"]


def _costs(paths: list[str] | None) -> dict[int, Any]:
    """``--latency`` files by batch size (each a SpeculationCosts JSON)."""
    from exitwise.generation import SpeculationCosts

    by_batch: dict[int, Any] = {}
    for path in paths or []:
        costs = SpeculationCosts.load(path)
        if costs.batch_size in by_batch:
            raise ValueError(f"two --latency files measured at batch size {costs.batch_size}")
        by_batch[costs.batch_size] = costs
    return by_batch


def _plan(args: argparse.Namespace, out, by_batch: dict[int, Any]):
    from exitwise.generation import AcceptanceCalibration, plan_self_speculation

    calibration = None
    if args.thresholds and args.calibrate:
        fit_on, out = out.split(args.calibrate, seed=args.seed)
        calibration = AcceptanceCalibration.fit(fit_on)
    costs = by_batch[min(by_batch)] if by_batch else None
    return plan_self_speculation(
        out,
        args.max_draft,
        mode=args.mode,
        verification=args.verification,
        thresholds=args.thresholds or (),
        calibration=calibration,
        schedule=args.schedule,
        costs=costs,
    )


def _plan_speculation(args: argparse.Namespace) -> None:
    from exitwise.cli._common import in_memory, load, print_payload

    by_batch = _costs(args.latency)
    if args.format in ("vllm", "trtllm") and not by_batch:
        raise ValueError(
            f"--format {args.format} needs --latency files measured at the "
            "batch sizes to schedule (measure_speculation_costs(..., loop='forward', "
            "batch_size=B).save(...))"
        )
    plan = _plan(args, in_memory(load(args.file)), by_batch)
    if args.format == "hf":
        from exitwise.generation import hf_settings

        kwargs, fields = hf_settings(plan)
        print(json.dumps({"generate_kwargs": kwargs, "generation_config": fields}, indent=2))
        return
    if args.format in ("vllm", "trtllm"):
        config = plan.to_vllm(by_batch) if args.format == "vllm" else plan.to_trtllm(by_batch)
        print(json.dumps(config, indent=2))
        return
    text = plan.to_text()
    best = plan.best
    measured = "measured-time" if plan.costs is not None else "memory-bound"
    text += (
        f"\n\nbest: draft with {best['draft_name']} (exit {best['draft_exit']}), "
        f"k = {best['draft_length']}: {best['tokens_per_verification']:.2f} tokens per "
        f"verification, {measured} speed-up "
        f"{best.get('speed_up_measured', best['speed_up']):.2f}x"
        + ("" if plan.speculate else " (does not beat plain decoding: do not speculate)")
        + " (exact for greedy decoding on the model's own continuations; an estimate on "
        "teacher-forced corpus text)"
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
    )
    p.add_argument("--max-draft", type=int, default=8, help="largest draft length k (8)")
    p.add_argument("--mode", default="greedy", choices=("greedy", "sampling"))
    p.add_argument(
        "--verification",
        default="remaining",
        choices=("remaining", "full"),
        help="a verification pass runs the remaining layers (LayerSkip) or the whole model",
    )
    p.add_argument(
        "--thresholds",
        type=float,
        nargs="+",
        help="stop thresholds for adaptive drafting: acceptance probabilities with --calibrate,"
        " raw draft confidences without",
    )
    p.add_argument(
        "--calibrate",
        type=float,
        default=None,
        help="share of sequences that calibrates draft acceptance (the rest is planned on)",
    )
    p.add_argument(
        "--schedule",
        default="constant",
        choices=("constant", "heuristic", "heuristic_transient"),
        help="Hugging Face's num_assistant_tokens_schedule",
    )
    p.add_argument(
        "--latency",
        action="append",
        help="SpeculationCosts JSON (measure_speculation_costs); repeat for several batch sizes",
    )
    p.add_argument(
        "--format",
        default="text",
        choices=("text", "hf", "vllm", "trtllm"),
        help="a table, or an engine's settings as JSON",
    )
    p.add_argument("--plot", help="write the speed-up heat map (.png)")
    p.set_defaults(run=_plan_speculation)
