"""The ``tune`` and ``evaluate`` commands: choose a policy for an SLA on the tuning part of a
file, and score a policy file on its held-out part. Both read the one result type
(:class:`~exitwise.policies.PolicyResult`) and the one evaluation
(:class:`~exitwise.policies.Evaluation`), never dict keys."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from exitwise.cli._common import (
    CONFIDENCE_HELP,
    RELATIVE_HELP,
    TARGET_HELP,
    command,
    confidence_option,
    first_rank,
    held_out_options,
    held_out_part,
    load_calibrated,
    print_payload,
    reference,
    risk_pair,
    signal_option,
    tune_context,
)

__all__ = ["add_evaluate", "add_tune"]


def _choose(cal: Any, args: argparse.Namespace) -> Any:
    """The PolicyResult for the requested SLA on the tuning part (signal computed once)."""
    from exitwise.policies import (
        ExitScores,
        risk_controlled_threshold,
        tune_for_accuracy,
        tune_for_budget,
    )

    scores = ExitScores(cal, args.signal)
    ref = reference(cal)  # unlabelled files: accuracy = agreement with the final exit
    if args.target_accuracy is not None:
        return tune_for_accuracy(
            scores,
            target=args.target_accuracy,
            relative=args.relative,
            reference=ref,
            confidence=args.confidence,
        )
    if args.budget is not None:
        return tune_for_budget(
            scores, budget=args.budget, relative=True, reference=ref, confidence=args.confidence
        )
    if len(args.risk) > 1:
        given = ", ".join(f"{n}={v:g}" for n, v in args.risk)
        raise ValueError(
            f"tune takes one --risk, got {len(args.risk)} ({given}); use `exitwise certify` to "
            "certify several risks at once"
        )
    name, limit = args.risk[0]
    return risk_controlled_threshold(
        scores, risk=name, limit=limit, confidence=args.confidence or 0.95
    )


def _statement(name: str, value: float) -> str:
    """One limit of a result in the words the user asked it in."""
    if name == "accuracy":
        return f"accuracy >= {value:.4f}"
    if name == "relative_cost":
        return f"mean cost <= {value:g} of the full model"
    return f"{name} <= {value:g}"


def _claim(result: Any) -> str:
    """One line on what new data may show."""
    g, ev = result.guarantee, result.evaluation
    if g is not None:
        statements = " and ".join(_statement(k, v) for k, v in result.limits.items())
        ps = ", ".join(f"{v:.3g}" for v in g.p_values.values())
        return (
            f"new data: {statements} with probability >= {g.confidence:.0%} (over "
            f"{g.num_units} {g.unit}s; Learn-then-Test, p-value {ps})"
        )
    if ev.accuracy_lower_bound is not None:
        return (
            f"new data may fall to accuracy {ev.accuracy_lower_bound:.4f} (one-sided "
            f"{ev.confidence:.0%} Clopper-Pearson bound of the tuning accuracy; the target is "
            "met on the tuning split only: --confidence makes it hold on new data)"
        )
    return "the target is met on the tuning split only: --confidence makes it hold on new data"


def _held_out(result: Any, test: Any) -> tuple[dict[str, Any], str]:
    """The policy on the held-out part (its evaluation, and each certified risk)."""
    from exitwise._distributed import sample_mean
    from exitwise.policies import ExitScores, evaluate_policy

    test = ExitScores(test, result.policy.signal)  # the signal once, for every figure below
    ev = evaluate_policy(result.policy, test)
    payload = ev.to_dict()
    text = (
        f"test: accuracy {ev.accuracy if ev.accuracy is not None else float('nan'):.4f}, "
        f"agreement with the full model {ev.agreement:.4f}, mean cost "
        f"{ev.relative_cost:.3f} of the full model, speed-up {ev.speed_up:.2f}x"
    )
    if result.guarantee is not None:
        exits = result.policy.exit_indices(test)
        risks = {}
        for name in result.guarantee.limits:
            if name in ("error", "disagreement", "nll_excess", "cost"):
                held = test.losses(name).gather(1, exits[:, None])[:, 0]
                risks[name] = float(sample_mean(held))  # every rank's samples
        payload["risks"] = risks
        text += "".join(f"\ntest: {k} {v:.4f}" for k, v in risks.items())
    return payload, text


def _tune(args: argparse.Namespace) -> None:
    out = load_calibrated(args)
    cal, test = out.split(args.split, seed=args.seed)
    result = _choose(cal, args)
    payload = result.summary()
    if result.policy is None:
        print_payload(args, payload, f"no policy: {result.reason}")
        sys.exit(1)
    payload["test"], held_out = _held_out(result, test)
    if args.out:
        context = tune_context(args)
        if result.guarantee is not None:
            context["guarantee"] = result.guarantee.to_dict()
        if first_rank():
            result.policy.save(args.out, context=context)
    ev = result.evaluation
    tuned = (
        f"tune: accuracy {ev.accuracy if ev.accuracy is not None else float('nan'):.4f}, "
        f"mean cost {ev.relative_cost:.3f} of the full model, speed-up {ev.speed_up:.2f}x"
    )
    text = f"policy: {result.policy!r}\n{tuned}\n{_claim(result)}\n{held_out}" + (
        f"\npolicy written to {args.out}" if args.out else ""
    )
    print_payload(args, payload, text)


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
    out, part = held_out_part(load_calibrated(args), context, args)
    ev = evaluate(policy, out, reference=reference(out))
    payload = {
        "evaluated_on": part,
        "accuracy": float(ev.accuracy[0]),
        "mean_cost": float(ev.mean_cost[0]),
        "relative_cost": float(ev.relative_cost[0]),
        "speed_up": float(ev.speed_up[0]),
        "exit_counts": ev.exit_counts[0].tolist(),
        "warnings": notes,
    }
    text = "\n".join(f"{k}: {v}" for k, v in payload.items() if k != "warnings")
    text += "".join(f"\nwarning: {note}" for note in notes)
    print_payload(args, payload, text)


def add_tune(sub: Any) -> None:
    p = command(sub, "tune", "tune an exit policy for an SLA")
    signal_option(p)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--target-accuracy", type=float, help=TARGET_HELP)
    group.add_argument("--budget", type=float, help="mean cost as a fraction of the full model")
    group.add_argument(
        "--risk",
        type=risk_pair,
        action="append",
        metavar="NAME=LIMIT",
        help="a risk limit certified by Learn-then-Test (error, disagreement, nll_excess or "
        "cost), e.g. disagreement=0.05",
    )
    p.add_argument("--relative", action="store_true", help=RELATIVE_HELP)
    confidence_option(
        p,
        None,
        CONFIDENCE_HELP + "; with --target-accuracy or --budget a shared threshold certified "
        "by Learn-then-Test (default for --risk: 0.95)",
    )
    p.add_argument("--calibrator", help="calibrator file (.json) to apply first")
    p.add_argument("--split", type=float, default=0.5, help="tuning share")
    p.add_argument("--out", help="policy file (.json)")
    p.set_defaults(run=_tune)


def add_evaluate(sub: Any) -> None:
    help_text = "evaluate a policy file on the held-out part of an ExitOutputs file"
    p = command(sub, "evaluate", help_text, seed=False)
    p.add_argument("--policy", required=True, help="policy file (.json) from `exitwise tune --out`")
    p.add_argument("--calibrator", help="calibrator file (.json) to apply first")
    held_out_options(p)
    p.set_defaults(run=_evaluate)
