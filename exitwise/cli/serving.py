"""The ``serve-plan`` command of the ``exitwise`` CLI: a policy under load, per scheduler."""

from __future__ import annotations

import argparse
import math
from typing import Any

__all__ = ["add_serve_plan"]


def _ms(value: float) -> str:
    return "unstable" if not math.isfinite(value) else f"{value * 1e3:.2f}"


def _serve_plan(args: argparse.Namespace) -> None:
    from exitwise.cli._common import held_out_part, in_memory, load_calibrated, print_payload
    from exitwise.policies import load_policy
    from exitwise.serving import (
        SCHEDULERS,
        LatencyModel,
        latency_floor,
        max_rate,
        replicas_needed,
        simulate_serving,
    )

    out = in_memory(load_calibrated(args))
    policy = load_policy(args.policy)
    latency = LatencyModel.load(args.latency)
    if latency.num_segments != out.num_exits:
        raise ValueError(
            f"The latency model has {latency.num_segments} segments but the outputs have "
            f"{out.num_exits} exits; measure it on the same model."
        )
    out, part = held_out_part(out, policy.context, args)
    exits = policy.exit_indices(out).cpu().numpy()
    if args.p99 is not None:
        floor = latency_floor(exits, latency, 99.0)
        if args.p99 < floor:
            raise ValueError(
                f"--p99 {args.p99:g} s is below the p99 latency of this policy's requests run "
                f"alone at batch 1 ({floor * 1e3:.3g} ms): no rate and no number of replicas "
                "meets it"
            )
    common = {
        "max_batch": args.max_batch,
        "num_requests": args.requests,
        "seed": args.simulation_seed,
    }
    rows: list[dict[str, Any]] = []
    for scheduler in SCHEDULERS:
        res = simulate_serving(
            exits, latency, rate=args.rate, scheduler=scheduler, replicas=args.replicas, **common
        )
        row = res.summary()
        low, high = res.percentile_intervals((99,), n_resamples=100)[99]
        row["p99_interval"] = [low, high]
        if args.p99 is not None:
            row["max_rate"] = max_rate(
                exits,
                latency,
                limit=args.p99,
                scheduler=scheduler,
                replicas=args.replicas,
                **common,
            )
            row["replicas_needed"] = need = replicas_needed(
                exits, latency, rate=args.rate, limit=args.p99, scheduler=scheduler, **common
            )
            row["max_rate_interval"] = [row["max_rate"].low, row["max_rate"].high]
            row["replicas_interval"] = None if need is None else [need.low, need.high]
        rows.append(row)
    head = f"{'scheduler':<9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} "
    head += f"{'req/s':>8} {'busy':>5}"
    if args.p99 is not None:
        head += f" {'max rate (range)':>18} {'replicas (range)':>16}"
    lines = [
        f"{policy!r} at {args.rate:g} requests/s, {args.replicas} replica(s), batches of at "
        f"most {args.max_batch} ({args.requests} simulated requests; exits of the policy on "
        f"{out.num_samples} samples: {part}); latencies in ms",
        head,
    ]
    for r in rows:
        line = (
            f"{r['scheduler']:<9} {_ms(r['p50']):>8} {_ms(r['p90']):>8} {_ms(r['p99']):>8} "
            f"{_ms(r['p99.9']):>9} {r['throughput']:8.0f} {r['utilisation']:5.0%}"
        )
        if args.p99 is not None:
            need = r["replicas_needed"]
            line += f" {r['max_rate']!s:>18} {need if need is not None else '-'!s:>16}"
        lines.append(line)
    if args.p99 is not None:
        lines.append(
            f"max rate: highest rate with p99 <= {args.p99 * 1e3:g} ms on {args.replicas} "
            f"replica(s); replicas: fewest meeting it at {args.rate:g} requests/s; (range): "
            f"the same at the latency model's slowest and fastest measured speed "
            f"({latency.speed_range[0]:g}x-{latency.speed_range[1]:g}x its table) with another seed"
        )
    payload = {"rate": args.rate, "evaluated_on": part, "unit": "s", "schedulers": rows}
    print_payload(args, payload, "\n".join(lines))


def add_serve_plan(sub: Any) -> None:
    from exitwise.cli._common import command, held_out_options

    help_text = "latency percentiles, throughput and capacity of a policy under load"
    p = command(sub, "serve-plan", help_text, seed=False)
    p.add_argument("--policy", required=True, help="policy file (.json)")
    p.add_argument("--latency", required=True, help="latency model (.json, LatencyModel.save)")
    p.add_argument("--rate", type=float, required=True, help="arrival rate (requests/s)")
    p.add_argument("--p99", type=float, help="p99 latency limit in seconds: adds capacity")
    p.add_argument("--max-batch", type=int, default=32, help="largest batch (default: 32)")
    p.add_argument("--replicas", type=int, default=1, help="servers (default: 1)")
    p.add_argument("--requests", type=int, default=20000, help="simulated requests")
    p.add_argument("--calibrator", help="calibrator file (.json) to apply first")
    held_out_options(p)
    p.add_argument("--simulation-seed", type=int, default=0, help="seed of the simulated arrivals")
    p.set_defaults(run=_serve_plan)
