"""The ``certify`` and ``monitor`` commands of the ``exitwise`` CLI (guarantees for several
risks, and checking traffic logs against them)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["add_certify", "add_monitor"]


def _certify(args: argparse.Namespace) -> None:

    from exitwise._distributed import all_reduce_sum, group_active, sample_mean, shard_offset
    from exitwise.cli._common import (
        fingerprint,
        first_rank,
        load_calibrated,
        print_payload,
        tune_context,
    )
    from exitwise.policies import ExitScores, certify

    out = load_calibrated(args)
    cal, test = out.split(args.split, seed=args.seed)
    limits: dict[str, float] = {}
    for name, limit in args.risk:
        if name in limits:
            raise ValueError(f"--risk {name} is given twice ({limits[name]:g} and {limit:g}).")
        limits[name] = limit
    cal_s = ExitScores(cal, args.signal)
    res = certify(
        cal_s,
        limits=limits,
        confidence=args.confidence,
        search=args.search,
        seed=args.seed,
        p_value=args.p_value,
        recall=args.recall,
    )
    payload = res.summary()
    n_cal = shard_offset(cal.num_samples, cal.device)[1]  # every rank's
    payload["calibration_samples"] = n_cal
    if res.path is not None:
        payload.update(
            tested_candidates=res.path.num_tested, front_size=int(res.path.thresholds.shape[0])
        )
    if not res.certified:
        print_payload(args, payload, f"nothing certified: {res.reason}")
        sys.exit(1)
    policy, guarantee = res.policy, res.guarantee
    test_s = ExitScores(test, args.signal)  # the signal once, for the exits and recall
    exits = policy.exit_indices(test_s)
    held = {}
    for name in limits:
        table = test_s.losses(name, recall=args.recall)
        held[name] = float(sample_mean(table.gather(1, exits[:, None])[:, 0]))  # every rank's
    counts = policy.exit_indices(cal_s).bincount(minlength=cal.num_exits).double()
    if group_active():
        all_reduce_sum(counts)
    rates = counts / n_cal
    record = guarantee.to_dict()
    record.update(
        exit_rates=rates.tolist(),
        data_fingerprint=fingerprint(args.file, out) if first_rank() else "",
        relative_cost=res.evaluation.relative_cost,
    )
    payload.update(guarantee=record, held_out=held)
    if args.out and first_rank():
        context = {**tune_context(args), "guarantee": record}
        policy.save(args.out, context=context)
    lines = [f"policy: {policy!r}"]
    for name, limit in limits.items():
        lines.append(
            f"{name}: certified <= {limit:g} (p-value {guarantee.p_values[name]:.3g}, "
            f"{guarantee.p_value_methods[name]}); calibration "
            f"{guarantee.empirical_risks[name]:.4f}, held-out {held[name]:.4f}"
        )
    lines.append(
        f"with probability >= {guarantee.confidence:g} over the {guarantee.num_units} testing "
        f"{guarantee.unit}s; mean cost {res.evaluation.relative_cost:.3f} of the full model"
    )
    if args.out:
        lines.append(f"policy and guarantee written to {args.out}")
    print_payload(args, payload, "\n".join(lines))


def _monitor(args: argparse.Namespace) -> None:
    from exitwise.cli._common import print_payload
    from exitwise.monitor import check_log
    from exitwise.policies import load_policy

    monitor = check_log(
        args.log,
        load_policy(args.policy),
        confidence=args.confidence,
        risk=args.watch,
        window=args.window,
    )
    summary = monitor.summary()
    if args.plot:
        from exitwise.plots_monitor import monitor_plot

        ax = monitor_plot(monitor)
        ax.figure.savefig(args.plot, dpi=120, bbox_inches="tight")
        summary["plot"] = args.plot
    drift = summary["exit_rates"]
    verdict = _verdict_text(monitor, drift, args)
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
    print_payload(args, summary, text)
    if monitor.verdict in ("alarm", "drift"):
        sys.exit(1)
    if monitor.verdict == "no verdict":
        sys.exit(3)


def _verdict_text(monitor: Any, drift: dict[str, Any], args: argparse.Namespace) -> str:
    """The first line of ``exitwise monitor``: alarm, drift, no verdict or no alarm."""
    if monitor.verdict == "alarm":
        return (
            f"ALARM at request {monitor.alarm_at + 1}: the {monitor.risk} exceeds its certified "
            f"limit {monitor.limit:g} (anytime-valid, false-alarm probability <= "
            f"{1 - monitor.confidence:g})"
        )
    if monitor.verdict == "drift":
        return (
            f"ALARM (exit-rate drift): the last {args.window} requests leave at rates "
            f"{[round(r, 3) for r in drift['rates']]}, total variation "
            f"{drift['total_variation']:.3f} > {monitor.drift_limit:g} from the calibration "
            f"data's (chi-square p {drift['p_value']:.3g}): the traffic or the model is not "
            "the one certified"
        )
    if monitor.verdict == "no verdict":
        needed = "full_prediction (shadow requests)" if monitor.risk == "disagreement" else "label"
        return (
            f"NO VERDICT: none of the {monitor.num_requests} requests has a reference answer "
            f"({needed}), so the {monitor.risk} cannot be checked against its limit "
            f"{monitor.limit:g}"
        )
    return f"no alarm: the {monitor.risk} is consistent with its limit {monitor.limit:g}"


def add_certify(sub: Any) -> None:
    from exitwise.cli._common import (
        CONFIDENCE_HELP,
        command,
        confidence_option,
        risk_pair,
        signal_option,
    )
    from exitwise.policies.p_values import P_VALUES
    from exitwise.policies.recall import RECALLS

    help_text = "certify a policy for several risks at once (Pareto Testing)"
    p = command(sub, "certify", help_text, file_required=False)
    signal_option(p)
    p.add_argument(
        "--risk",
        type=risk_pair,
        action="append",
        required=True,
        metavar="NAME=LIMIT",
        help="a certified limit, repeatable: error, disagreement, nll_excess or cost (as a "
        "share of the full model's)",
    )
    confidence_option(p, 0.95, CONFIDENCE_HELP + " (default: 0.95)")
    p.add_argument("--search", default="per_exit", choices=("per_exit", "shared"))
    p.add_argument("--p-value", default=None, choices=P_VALUES, help="default: per risk")
    p.add_argument("--recall", default="none", choices=RECALLS)
    p.add_argument("--calibrator", help="calibrator file (.json) to apply first")
    p.add_argument("--split", type=float, default=0.5, help="calibration share")
    p.add_argument("--out", help="policy file (.json) with its guarantee")
    p.set_defaults(run=_certify)


def add_monitor(sub: Any) -> None:
    help_text = (
        "check request logs (JSON lines) against a certified policy; exit status 1 on an "
        "alarm (risk or exit-rate drift), 3 when no request has a reference answer"
    )
    p = sub.add_parser("monitor", help=help_text, description=help_text)
    p.add_argument(
        "log",
        nargs="+",
        help="JSON lines: exit, confidence, prediction[, full_prediction, label, time]; several "
        "logs (one per server or rank) are merged by time",
    )
    p.add_argument("--policy", required=True, help="policy file from `exitwise certify --out`")
    from exitwise.cli._common import DeprecatedFlag, confidence_option

    confidence_option(p, 0.95, "1 - the false-alarm probability (default: 0.95)", old="alpha")
    p.add_argument(
        "--watch",
        default=None,
        choices=("disagreement", "error"),
        help="the risk to watch (default: the policy's certified one)",
    )
    p.add_argument(
        "--risk",
        dest="watch",
        action=DeprecatedFlag,
        new="--watch NAME",
        choices=("disagreement", "error"),
        help=argparse.SUPPRESS,
    )
    p.add_argument("--window", type=int, default=2000, help="requests in the drift window")
    p.add_argument("--plot", help="PNG of the risk bound over time")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=_monitor)
