"""The ``exitwise`` command line: report, calibrate, tune, evaluate, certify, monitor,
serve-plan, info.

Every command reads an ExitOutputs file (``.safetensors`` or ``.npz``); ``report`` and
``info`` default to the bundled Fashion-MNIST exits. Errors print one line and exit with
status 2; ``--json`` prints machine-readable output.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["main"]


def _load(path: str | None):
    if path is None:
        from exitwise.datasets import load_default

        return load_default()
    from exitwise.data import load

    return load(path)


def _load_calibrated(args: argparse.Namespace):
    """The file's outputs, transformed by ``--calibrator`` when one is given."""
    out = _load(args.file)
    if args.calibrator:
        from exitwise.calibrate import load_calibrator

        out = load_calibrator(args.calibrator).transform(out)
    return out


def _reference(out) -> str:
    """Score against labels when there are any, else against the final exit."""
    return "labels" if out.labels is not None else "final"


def _print(args: argparse.Namespace, payload: dict[str, Any], text: str) -> None:
    if args.json:
        print(json.dumps(payload, indent=2, default=float))
    else:
        print(text)


def _info(args: argparse.Namespace) -> None:
    import torch

    from exitwise import metrics

    out = _load(args.file)
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
        acc = metrics.per_exit_accuracy(out.logits, out.labels).tolist()
        ece = metrics.expected_calibration_error(out.probs(), out.labels).tolist()
        payload["accuracy"], payload["ece"] = acc, ece
        lines.append(f"{'exit':<12} {'cost':>12} {'accuracy':>9} {'ECE':>7}")
        for e, name in enumerate(out.exit_names):
            lines.append(f"{name:<12} {out.costs[e]:>12.4g} {acc[e]:>9.4f} {ece[e]:>7.4f}")
    _print(args, payload, "\n".join(lines))


def _latency_model(path: str | None):
    if path is None:
        return None
    from exitwise.serving import LatencyModel

    return LatencyModel.load(path)


def _report(args: argparse.Namespace) -> None:
    from exitwise.report import build_report, summary_table

    out = _load(args.file)
    summary = build_report(
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
    _print(args, summary, summary_table(summary) + f"\n\nreport written to {args.out}/report.html")


def _tune_on(cal: Any, args: argparse.Namespace) -> tuple[Any, bool, dict[str, Any]]:
    """The policy for the requested SLA on the tuning part: (policy, feasible, achieved)."""
    from exitwise.policies import risk_controlled_threshold, tune_for_accuracy, tune_for_budget

    reference = _reference(cal)  # unlabelled files: accuracy = agreement with the final exit
    if args.target_accuracy is not None:
        tuned = tune_for_accuracy(
            cal,
            args.signal,
            args.target_accuracy,
            relative=args.relative,
            reference=reference,
            confidence=args.confidence,
        )
        return tuned.policy, tuned.feasible, tuned.achieved
    if args.budget is not None:
        tuned = tune_for_budget(
            cal, args.signal, args.budget, reference=reference, confidence=args.confidence
        )
        return tuned.policy, tuned.feasible, tuned.achieved
    res = risk_controlled_threshold(
        cal, args.signal, risk="disagreement", delta=args.risk, epsilon=args.epsilon
    )
    i = res.certified_index if res.certified else 0
    achieved = {
        "certified_threshold": res.threshold,
        "empirical_disagreement": float(res.empirical_risk[i]),
        "vacuous": res.vacuous,
    }
    return res.policy, res.certified, achieved


def _held_out(policy: Any, test: Any, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """The policy on the held-out part: the certified risk (disagreement) for ``--risk``,
    else accuracy; with cost relative to the full model."""
    from exitwise.policies import evaluate

    risk = args.risk is not None
    ev = evaluate(policy, test, reference="final" if risk else _reference(test))
    result: dict[str, Any] = {
        "speed_up": float(ev.speed_up[0]),
        "relative_cost": float(ev.mean_cost[0]) / ev.full_cost,
    }
    if risk:
        result.update(disagreement=float(ev.mean_loss[0]), risk_tolerance=args.risk)
        return result, (
            f"test: disagreement with the full model {result['disagreement']:.4f} "
            f"(certified <= {args.risk:g} with probability >= {1 - args.epsilon:g}), "
            f"speed-up {result['speed_up']:.2f}x"
        )
    result["accuracy"] = float(ev.accuracy[0])
    return result, (
        f"test: accuracy {result['accuracy']:.4f}, mean cost {result['relative_cost']:.3f} of "
        f"the full model, speed-up {result['speed_up']:.2f}x"
    )


def _tune(args: argparse.Namespace) -> None:
    out = _load_calibrated(args)
    cal, test = out.split(args.split, seed=args.seed)
    policy, feasible, achieved = _tune_on(cal, args)
    payload: dict[str, Any] = {"feasible": feasible, "tune": achieved}
    if not feasible:
        payload["best_achievable"] = _best_achievable(cal, args)
        text = f"no policy meets the target on the tuning split; {_infeasible_text(args, payload)}"
        _print(args, payload, text)
        sys.exit(1)
    payload["policy"] = policy.to_dict()
    payload["test"], held_out = _held_out(policy, test, args)
    if args.out:
        policy.save(args.out, context=_tune_context(args))
    bound = ""
    if "p_value" in achieved:
        claim = (
            f"mean cost <= {args.budget:g} of the full model"
            if args.budget is not None
            else f"accuracy >= {achieved['target']:.4f}"
        )
        bound = (
            f"\nnew data: {claim} with probability >= {achieved['confidence']:.0%} "
            f"(Learn-then-Test, p-value {achieved['p_value']:.3g})"
        )
    elif "accuracy_lower_bound" in achieved:
        bound = (
            f"\nnew data may fall to accuracy {achieved['accuracy_lower_bound']:.4f} (one-sided "
            f"{achieved['confidence']:.0%} Clopper-Pearson bound of the tuning accuracy; the "
            "target is met on the tuning split only: --confidence makes it hold on new data)"
        )
    text = f"policy: {policy!r}\ntune: {achieved}{bound}\n{held_out}" + (
        f"\npolicy written to {args.out}" if args.out else ""
    )
    _print(args, payload, text)


def _best_achievable(cal: Any, args: argparse.Namespace) -> dict[str, float]:
    """What the tuning split allows at best: the highest accuracy of any shared threshold,
    the least relative mean cost (the first exit)."""
    from exitwise.policies import sweep_shared_threshold
    from exitwise.signals import compute_signal

    reference = _reference(cal)
    sweep = sweep_shared_threshold(
        compute_signal(cal, args.signal), cal.correct(reference), cal.costs
    )
    final = float(cal.correct(reference)[:, -1].double().mean())
    return {
        "accuracy": float(sweep.accuracy.max()),
        "relative_accuracy": float(sweep.accuracy.max()) / final if final > 0 else float("nan"),
        "relative_cost": float(cal.costs[0] / cal.costs[-1]),
    }


def _infeasible_text(args: argparse.Namespace, payload: dict[str, Any]) -> str:
    best = payload["best_achievable"]
    if args.target_accuracy is not None:
        if args.relative:
            return (
                f"target {args.target_accuracy:g} x the final exit's accuracy, best "
                f"achievable {best['relative_accuracy']:.4f} x"
            )
        return f"target accuracy {args.target_accuracy:g}, best achievable {best['accuracy']:.4f}"
    if args.budget is not None:
        return (
            f"budget {args.budget:g} of the full model's cost, least achievable "
            f"{best['relative_cost']:.4f} (everyone leaves at the first exit)"
        )
    return (
        f"no threshold is certified for disagreement <= {args.risk:g} with probability >= "
        f"{1 - args.epsilon:g}; more calibration data or a looser target may"
    )


def _tune_context(args: argparse.Namespace) -> dict[str, Any]:
    """What a policy file records about its making (read back by ``evaluate``)."""
    return {
        "data": str(args.file),
        "calibrator": args.calibrator,
        "signal": args.signal,
        "split": args.split,
        "seed": args.seed,
        "tuned_on": "the first part of ExitOutputs.split(split, seed)",
    }


def _evaluate(args: argparse.Namespace) -> None:
    from exitwise.policies import evaluate, load_policy

    policy = load_policy(args.policy)
    context = policy.context
    notes = []
    tuned_with = context.get("calibrator")
    if tuned_with and not args.calibrator:
        notes.append(
            f"the policy was tuned on outputs calibrated with '{tuned_with}' but is applied to "
            f"raw logits here: its thresholds mean something else; pass --calibrator {tuned_with}"
        )
    elif args.calibrator and context and not tuned_with:
        notes.append("the policy was tuned on raw logits but is applied to calibrated outputs")
    out = _load_calibrated(args)
    split = context.get("split", args.split) if args.split is None else args.split
    seed = context.get("seed", args.seed) if args.seed is None else args.seed
    if args.all:
        part = "all samples"
    else:
        out = out.split(split if split is not None else 0.5, seed=seed or 0)[1]
        part = (
            f"the held-out part of split({split if split is not None else 0.5}, seed={seed or 0})"
        )
    ev = evaluate(policy, out, reference=_reference(out))
    payload = {
        "evaluated_on": part,
        "accuracy": float(ev.accuracy[0]),
        "mean_cost": float(ev.mean_cost[0]),
        "relative_cost": float(ev.mean_cost[0]) / ev.full_cost,
        "speed_up": float(ev.speed_up[0]),
        "exit_counts": ev.exit_counts[0].tolist(),
        "warnings": notes,
    }
    text = "\n".join(f"{k}: {v}" for k, v in payload.items() if k != "warnings")
    text += "".join(f"\nwarning: {note}" for note in notes)
    _print(args, payload, text)


_TARGET_HELP = (
    "accuracy target: an absolute accuracy, or with --relative a fraction of the final "
    "exit's accuracy (the same in every command)"
)
_RELATIVE_HELP = "--target-accuracy is a fraction of the final exit's accuracy"


def _command(
    sub: Any, name: str, help_text: str, file_required: bool = True, seed: bool = True
) -> argparse.ArgumentParser:
    """A subcommand with the options every command shares."""
    p = sub.add_parser(name, help=help_text, description=help_text)
    if file_required:
        p.add_argument("file", help="ExitOutputs file (.safetensors or .npz)")
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


def _signal_option(p: argparse.ArgumentParser) -> None:
    from exitwise.signals import built_in_signals

    p.add_argument(
        "--signal",
        default="max_probability",
        choices=built_in_signals(),
        help="confidence signal (default: max_probability)",
    )


def _add_report(sub: Any, methods: tuple[str, ...]) -> None:
    p = _command(sub, "report", "write report.html, PNGs and summary.json", file_required=False)
    p.add_argument("--out", default="report", help="output folder (default: report)")
    p.add_argument(
        "--calibrators",
        nargs="+",
        default=["temperature", "isotonic"],
        choices=methods,
        help="calibrators to compare; the first one is used to tune",
    )
    _signal_option(p)
    p.add_argument(
        "--target-accuracy",
        type=float,
        default=None,
        help=_TARGET_HELP + " (default: 0.99 --relative)",
    )
    p.add_argument("--relative", action="store_true", help=_RELATIVE_HELP)
    p.add_argument("--resamples", type=int, default=200, help="bootstrap resamples")
    p.add_argument("--latency", help="latency model (.json): adds latency against rate")
    p.set_defaults(run=_report)


def _add_tune(sub: Any) -> None:
    p = _command(sub, "tune", "tune an exit policy for an SLA")
    _signal_option(p)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--target-accuracy", type=float, help=_TARGET_HELP)
    group.add_argument("--budget", type=float, help="mean cost as a fraction of the full model")
    group.add_argument("--risk", type=float, help="disagreement tolerance (Learn-then-Test)")
    p.add_argument("--relative", action="store_true", help=_RELATIVE_HELP)
    p.add_argument(
        "--confidence",
        type=float,
        help="with --target-accuracy or --budget: it holds on new data with this probability "
        "(a shared threshold certified by Learn-then-Test)",
    )
    p.add_argument("--epsilon", type=float, default=0.05, help="failure probability for --risk")
    p.add_argument("--calibrator", help="calibrator file (.json) to apply first")
    p.add_argument("--split", type=float, default=0.5, help="tuning share")
    p.add_argument("--out", help="policy file (.json)")
    p.set_defaults(run=_tune)


def _add_evaluate(sub: Any) -> None:
    help_text = "evaluate a policy file on the held-out part of an ExitOutputs file"
    p = _command(sub, "evaluate", help_text, seed=False)
    p.add_argument("--policy", required=True, help="policy file (.json) from `exitwise tune --out`")
    p.add_argument("--calibrator", help="calibrator file (.json) to apply first")
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
    p.add_argument("--all", action="store_true", help="evaluate on every sample instead")
    p.set_defaults(run=_evaluate)


def _parser() -> argparse.ArgumentParser:
    from exitwise.calibrate import METHODS
    from exitwise.cli_calibrate import add_calibrate
    from exitwise.cli_generation import add_plan_speculation
    from exitwise.cli_guarantees import add_certify, add_monitor
    from exitwise.cli_serving import add_serve_plan

    parser = argparse.ArgumentParser(
        prog="exitwise", description="Calibrate early exits, tune exit policies, report."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_report(sub, METHODS)
    add_calibrate(sub, METHODS)
    _add_tune(sub)
    _add_evaluate(sub)
    add_certify(sub)
    add_monitor(sub)
    add_serve_plan(sub)
    add_plan_speculation(sub)
    p = _command(sub, "info", "summarise an ExitOutputs file", file_required=False, seed=False)
    p.set_defaults(run=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``exitwise`` console script."""
    args = _parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, TypeError, FileNotFoundError, OSError, KeyError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"exitwise {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
