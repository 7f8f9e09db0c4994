"""The ``certify`` and ``monitor`` commands of the ``exitwise`` CLI (guarantees for several
risks, and checking traffic logs against them)."""

from __future__ import annotations

import argparse
import hashlib
import sys
from typing import Any

__all__ = ["add_certify", "add_monitor"]


def _risk_pair(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        limit = float(value)
    except ValueError:
        limit = None
    if not sep or limit is None:
        raise argparse.ArgumentTypeError(
            f"expected NAME=LIMIT such as disagreement=0.02 or cost=0.4, got {text!r}"
        )
    return name.strip(), limit


def _fingerprint(path: str | None, outputs: Any) -> str:
    """sha256 of the data file (of the bundled logits without a file)."""
    digest = hashlib.sha256()
    if path is None:
        digest.update(outputs.logits.cpu().numpy().tobytes())
    else:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()


def _certify(args: argparse.Namespace) -> None:
    from exitwise.cli import _load_calibrated, _print, _tune_context
    from exitwise.policies import certify, loss_table

    out = _load_calibrated(args)
    cal, test = out.split(args.split, seed=args.seed)
    risks = dict(args.risk)
    res = certify(
        cal,
        args.signal,
        risks,
        args.epsilon,
        search=args.search,
        seed=args.seed,
        p_value=args.p_value,
        recall=args.recall,
    )
    payload: dict[str, Any] = {
        "certified": res.certified,
        "risks": risks,
        "epsilon": args.epsilon,
        "calibration_samples": cal.num_samples,
        "tested_candidates": res.num_tested,
        "front_size": res.front_size,
    }
    if not res.certified:
        payload["held_out"] = {}
        text = (
            f"nothing certified: no candidate on the Pareto front has every risk "
            f"({', '.join(f'{k} <= {v:g}' for k, v in risks.items())}) certified with "
            f"probability >= {1 - args.epsilon:g} on {res.num_testing} samples; more calibration "
            "data or looser limits may"
        )
        _print(args, payload, text)
        sys.exit(1)
    policy = res.policy
    exits = policy.exit_indices(test)
    scores = None
    if args.recall != "none":
        from exitwise.signals import compute_signal

        scores = compute_signal(test, args.signal)
    held = {}
    for name in risks:
        table = loss_table(test, name, scores=scores, recall=args.recall)
        held[name] = float(table.gather(1, exits[:, None]).mean())
    rates = policy.exit_indices(cal).bincount(minlength=cal.num_exits) / cal.num_samples
    guarantee = res.guarantee()
    guarantee.update(exit_rates=rates.tolist(), data_fingerprint=_fingerprint(args.file, out))
    payload.update(policy=policy.to_dict(), guarantee=guarantee, held_out=held)
    if args.out:
        context = {**_tune_context(args), "guarantee": guarantee}
        policy.save(args.out, context=context)
    lines = [f"policy: {policy!r}"]
    for name, limit in risks.items():
        lines.append(
            f"{name}: certified <= {limit:g} (p-value {res.p_values[name]:.3g}, "
            f"{res.p_value_methods[name]}); calibration {res.empirical_risks[name]:.4f}, "
            f"held-out {held[name]:.4f}"
        )
    lines.append(
        f"with probability >= {1 - args.epsilon:g} over the {res.num_testing} testing samples; "
        f"mean cost {res.relative_cost:.3f} of the full model"
    )
    if args.out:
        lines.append(f"policy and guarantee written to {args.out}")
    _print(args, payload, "\n".join(lines))


def _monitor(args: argparse.Namespace) -> None:
    from exitwise.cli import _print
    from exitwise.monitor import check_log
    from exitwise.policies import load_policy

    monitor = check_log(
        args.log, load_policy(args.policy), alpha=args.alpha, risk=args.risk, window=args.window
    )
    summary = monitor.summary()
    if args.plot:
        from exitwise.plots import monitor_plot

        ax = monitor_plot(monitor)
        ax.figure.savefig(args.plot, dpi=120, bbox_inches="tight")
        summary["plot"] = args.plot
    drift = summary["exit_rates"]
    verdict = (
        f"ALARM at request {monitor.alarm_at + 1}: the {monitor.risk} exceeds its certified "
        f"limit {monitor.limit:g} (anytime-valid, false-alarm probability <= {args.alpha:g})"
        if monitor.alarm
        else f"no alarm: the {monitor.risk} is consistent with its limit {monitor.limit:g}"
    )
    text = "\n".join(
        [
            verdict,
            f"requests {summary['requests']}, with a reference answer {summary['scored_requests']}",
            f"{monitor.risk}: estimate {summary['estimate']:.4f}, confidence sequence "
            f"[{summary['lower_bound']:.4f}, {summary['upper_bound']:.4f}]",
            f"exit rates (last {args.window}): {[round(r, 3) for r in drift['rates']]}, total "
            f"variation to calibration {drift['total_variation']:.3f} "
            f"(chi-square p {drift['p_value']:.3g})",
            "ECE per exit (last window): " + ", ".join(f"{e:.3f}" for e in summary["windowed_ece"]),
        ]
        + ([f"plot written to {args.plot}"] if args.plot else [])
    )
    _print(args, summary, text)
    if monitor.alarm:
        sys.exit(1)


def add_certify(sub: Any) -> None:
    from exitwise.cli import _command, _signal_option
    from exitwise.policies.p_values import P_VALUES
    from exitwise.policies.recall import RECALLS

    help_text = "certify a policy for several risks at once (Pareto Testing)"
    p = _command(sub, "certify", help_text, file_required=False)
    _signal_option(p)
    p.add_argument(
        "--risk",
        type=_risk_pair,
        action="append",
        required=True,
        metavar="NAME=LIMIT",
        help="a certified limit, repeatable: error, disagreement, nll_excess or cost (as a "
        "share of the full model's)",
    )
    p.add_argument("--epsilon", type=float, default=0.05, help="failure probability")
    p.add_argument("--search", default="per_exit", choices=("per_exit", "shared"))
    p.add_argument("--p-value", default=None, choices=P_VALUES, help="default: per risk")
    p.add_argument("--recall", default="none", choices=RECALLS)
    p.add_argument("--calibrator", help="calibrator file (.json) to apply first")
    p.add_argument("--split", type=float, default=0.5, help="calibration share")
    p.add_argument("--out", help="policy file (.json) with its guarantee")
    p.set_defaults(run=_certify)


def add_monitor(sub: Any) -> None:
    help_text = "check a request log (JSON lines) against a certified policy"
    p = sub.add_parser("monitor", help=help_text, description=help_text)
    p.add_argument("log", help="JSON lines: exit, confidence, prediction[, full_prediction, label]")
    p.add_argument("--policy", required=True, help="policy file from `exitwise certify --out`")
    p.add_argument("--alpha", type=float, default=0.05, help="false-alarm probability")
    p.add_argument("--risk", default=None, choices=("disagreement", "error"))
    p.add_argument("--window", type=int, default=2000, help="requests in the drift window")
    p.add_argument("--plot", help="PNG of the risk bound over time")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=_monitor)
