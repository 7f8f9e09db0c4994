"""Check the serving simulator against a real serving loop on this machine.

1. Train an early-exit CNN on scikit-learn's digits (``serving_loop.WideDigits``), calibrate it
   and tune a max-probability policy for 99 % of the final exit's accuracy.
2. For each scheduler (``full``, ``static``, ``compact``, ``refill``), serve calibration traces
   with the real loop (``serving_loop.Server``, one thread, real time): a burst, whose
   throughput is the scheduler's *measured capacity*, and Poisson traces at 30, 60 and 90 % of
   it. The server logs every batch (:class:`~exitwise.serving.BatchLog`).
3. For each scheduler and three rates (25, 55 and 85 % of its measured capacity), replay
   Poisson traces in chunks of ``--requests`` until the real p99's bootstrap interval is
   within +-10 % (at most ``--max-chunks`` chunks): the server takes the requests (held-out
   images) whose arrival time has passed, sleeping when there are none, batches them by the
   scheduler, lets the ``ExitController`` decide exits, and records every answer's time. The
   rows take turns (a random order in each round), and a fixed job is timed just before and
   after every chunk: the machine's speed drifts by +-20 % over minutes.
4. Simulate each chunk (its arrival times and the exit depths the controller chose) with a
   latency model fitted (:func:`~exitwise.serving.fit_latency_model`) to the batch logs of
   the same scheduler's calibration traces and its *other* rows, never the row's own, scaled by
   the speed probed around the chunk; compare p50 and p99. A p99 error inside the real p99's
   interval is not a miss. Beside it, the simulation at the model's slowest and fastest
   measured speed (its ``speed_range``: what ``max_rate``'s interval uses).
5. Batch by batch, near saturation: mean batch size, queue, service time and the bookkeeping
   between batches, real against simulated.

Run: ``python examples/serving_check.py [--requests 2000] [--plot comparison.png]``
(about five minutes on 2 cores; ``--out DIR`` keeps every batch log as ``.npz``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from exitwise.calibrate import TemperatureScaling
from exitwise.collect import collect
from exitwise.policies import ExitController, tune_for_accuracy
from exitwise.serving import (
    fit_latency_model,
    latency_percentile_intervals,
    simulate_serving,
)

sys.path.insert(0, str(Path(__file__).parent))
from serving_loop import MAX_BATCH, Server, replay, train

SCHEDULERS = ("full", "static", "compact", "refill")
SHARES = (0.25, 0.55, 0.85)


def trained_server() -> tuple[Server, torch.Tensor]:
    """The CNN, its calibrated controller and the held-out images it serves."""
    torch.set_num_threads(2)
    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32)[:, None]
    x = nn.functional.interpolate(x, size=16, mode="bilinear", align_corners=False)
    y = torch.tensor(digits.target)
    tr, rest = train_test_split(
        np.arange(len(y)), test_size=0.5, random_state=0, stratify=digits.target
    )
    model = train(x[tr], y[tr])
    torch.set_num_threads(1)  # one server on one core
    outputs = collect(model, [(x[rest], y[rest])], progress=False)
    cal, _ = outputs.split(0.5, seed=0)
    calibrator = TemperatureScaling().fit(cal)
    tuned = tune_for_accuracy(calibrator.transform(cal), "max_probability", 0.99, relative=True)
    print(f"policy {tuned.policy!r}")
    return Server(model, ExitController.from_policy(tuned.policy, calibrator)), x[rest]


def probed_replay(server, scheduler, images, trace, probe_images):
    """``replay`` with the machine's speed probed just before and just after it:
    (arrivals, answers, exits, batch log, mean probe seconds, start time)."""
    started = time.time()
    before = server.probe(probe_images)
    arr, ans, ex, log = replay(server, scheduler, images, trace)
    return arr, ans, ex, log, 0.5 * (before + server.probe(probe_images)), started


def narrow_enough(chunks) -> bool:
    """Whether the real p99's bootstrap interval is within +-10 % of it, on at least 4,000
    requests (a p99 of fewer rests on too few of them for its interval to mean much)."""
    real = np.concatenate([c[1] - c[0] for c in chunks])
    if real.size < 4000:
        return False
    lo, hi = latency_percentile_intervals(real, (99,))[99]
    return (hi - lo) / 2 <= 0.10 * np.percentile(real, 99)


def serve_rows(server, images, capacity, rng, requests, max_chunks) -> list[dict]:
    """Rounds: in each, every row whose p99 interval is still wider than +-10 % serves one
    chunk of its Poisson trace, the rows in a random order (so that drift of the machine's
    speed falls on every row alike and each row has neighbours in time)."""
    rows = [
        {"scheduler": s, "share": share, "rate": share * capacity[s], "chunks": []}
        for s in SCHEDULERS
        for share in SHARES
    ]
    for _ in range(max_chunks):
        todo = [r for r in rows if not r["chunks"] or not narrow_enough(r["chunks"])]
        if not todo:
            break
        for i in rng.permutation(len(todo)):
            row = todo[i]
            trace = np.cumsum(rng.exponential(1 / row["rate"], requests))
            which = images[rng.integers(0, len(images), requests)]
            row["chunks"].append(probed_replay(server, row["scheduler"], which, trace, images))
    return rows


def simulate_row(row, rows, calibration) -> None:
    """Simulate each chunk of ``row`` with a model fitted to the batch logs of the
    calibration traces and the other rows of its scheduler (never the row's own), each log
    divided by the machine's speed probed around it, then scaled by the speed probed around
    the chunk (speeds relative to the median probe of the logs fitted)."""
    same = [r for r in rows if r is not row and r["scheduler"] == row["scheduler"]]
    fit_on = calibration[row["scheduler"]] + [c for r in same for c in r["chunks"]]
    reference = float(np.median([c[4] for c in fit_on]))
    latency = fit_latency_model([c[3] for c in fit_on], speeds=[c[4] / reference for c in fit_on])
    row["latency"], row["sims"], row["speeds"], ends = latency, [], [], ([], [])
    for k, (arr, _, ex, _, probe, _) in enumerate(row["chunks"]):
        row["speeds"].append(probe / reference)
        for model, out in [(latency.scaled(probe / reference), row["sims"])] + [
            (latency.scaled(f), ends[i]) for i, f in enumerate(latency.speed_range)
        ]:
            out.append(simulate_serving(ex, model, arrivals=arr, scheduler=row["scheduler"],
                                        max_batch=MAX_BATCH, seed=k))  # fmt: skip
    # the answer's own range: the model at the fastest and slowest speed it was measured at
    row["p99_range"] = tuple(
        float(np.percentile(np.concatenate([s.latency for s in sims]), 99)) for sims in ends
    )


def main(
    requests: int = 2000,
    max_chunks: int = 8,
    plot: str | None = None,
    seed: int = 0,
    out: str | None = None,
) -> list[dict]:
    server, images = trained_server()
    rng = np.random.default_rng(seed + 1)
    calibration, capacity = {}, {}
    with torch.inference_mode():
        for scheduler in SCHEDULERS:
            burst = images[rng.integers(0, len(images), requests)]
            chunk = probed_replay(server, scheduler, burst, np.zeros(requests), images)
            capacity[scheduler] = requests / chunk[1].max()
            calibration[scheduler] = [chunk]
            for share in (0.3, 0.6, 0.9):
                trace = np.cumsum(rng.exponential(1 / (share * capacity[scheduler]), requests))
                which = images[rng.integers(0, len(images), requests)]
                calibration[scheduler].append(
                    probed_replay(server, scheduler, which, trace, images)
                )
        rows = serve_rows(
            server, images, capacity, np.random.default_rng(seed), requests, max_chunks
        )
    if out:
        save_logs(out, calibration, rows)
    for row in rows:
        simulate_row(row, rows, calibration)
        real = np.concatenate([c[1] - c[0] for c in row["chunks"]])
        sim = np.concatenate([s.latency for s in row["sims"]])
        row["p50_sim"], row["p99_sim"] = np.percentile(sim, [50, 99])
        row["p50_real"], row["p99_real"] = np.percentile(real, [50, 99])
        row["p99_interval"] = latency_percentile_intervals(real, (99,))[99]
        row["requests"] = real.size
    print_table(rows, capacity)
    print_batches(rows)
    if plot:
        comparison_plot(rows, plot)
    return rows


def save_logs(out, calibration, rows) -> None:
    """Every batch log and trace as ``.npz`` files (no pickle) in ``out``."""
    from dataclasses import asdict

    Path(out).mkdir(parents=True, exist_ok=True)
    for scheduler, logs in calibration.items():
        for k, chunk in enumerate(logs):
            np.savez(
                Path(out) / f"calibration_{scheduler}_{k}.npz", probe=chunk[4], **asdict(chunk[3])
            )
    for i, row in enumerate(rows):
        for k, (arr, ans, ex, log, probe, _) in enumerate(row["chunks"]):
            np.savez(
                Path(out) / f"row{i}_{row['scheduler']}_{k}.npz",
                arrivals=arr, answers=ans, exits=ex, probe=probe, **asdict(log),
            )  # fmt: skip


def print_table(rows, capacity) -> None:
    print("measured capacity (req/s): " + ", ".join(f"{s} {c:.0f}" for s, c in capacity.items()))
    print(
        f"{'scheduler':<8} {'load':>4} {'rate/s':>7} {'N':>6} {'p50 sim':>8} {'p50 real':>8} "
        f"{'err':>5} {'p99 sim':>8} {'p99 real':>8} {'p99 interval':>15} {'err':>5} "
        f"{'speed':>10} {'p99 sim range':>15}"
    )
    for r in rows:
        lo, hi = r["p99_interval"]
        inside = lo <= r["p99_sim"] <= hi
        r["p50_ok"] = abs(r["p50_sim"] / r["p50_real"] - 1) <= 0.15
        r["p99_ok"] = abs(r["p99_sim"] / r["p99_real"] - 1) <= 0.15 or inside
        print(
            f"{r['scheduler']:<8} {r['share']:4.0%} {r['rate']:7.0f} {r['requests']:6d} "
            f"{r['p50_sim'] * 1e3:8.3f} {r['p50_real'] * 1e3:8.3f} "
            f"{r['p50_sim'] / r['p50_real'] - 1:+5.0%} {r['p99_sim'] * 1e3:8.3f} "
            f"{r['p99_real'] * 1e3:8.3f} {lo * 1e3:7.2f}-{hi * 1e3:<7.2f} "
            f"{r['p99_sim'] / r['p99_real'] - 1:+5.0%}{'*' if inside else ' '} "
            f"{min(r['speeds']):.2f}-{max(r['speeds']):.2f} "
            f"{r['p99_range'][0] * 1e3:7.2f}-{r['p99_range'][1] * 1e3:<7.2f}"
            f"{'+' if r['p99_range'][0] <= r['p99_real'] <= r['p99_range'][1] else ''}"
        )
    n = len(rows)
    print(
        f"within 15 % of measured: p50 {sum(r['p50_ok'] for r in rows)} of {n}, "
        f"p99 {sum(r['p99_ok'] for r in rows)} of {n} (or inside the real p99's interval: *); "
        "speed: the machine's speed probed around each chunk, over its median in the logs fitted"
    )
    covered = sum(r["p99_range"][0] <= r["p99_real"] <= r["p99_range"][1] for r in rows)
    print(
        f"p99 sim range: the simulation at the fitted model's fastest and slowest measured "
        f"speed (its speed_range, what max_rate's interval uses); it holds the real p99 in "
        f"{covered} of {n} rows (+)"
    )


def print_batches(rows) -> None:
    """Batch by batch near saturation: real against simulated."""
    print("batch by batch at the highest rate (real / simulated):")
    for r in rows:
        if r["share"] != max(SHARES):
            continue
        real = [c[3] for c in r["chunks"]]
        sim = [s.batches for s in r["sims"]]

        def mean(logs, get):
            return float(np.nanmean(np.concatenate([get(g) for g in logs])))

        print(
            f"  {r['scheduler']:<8} batches {sum(map(len, real))} / {sum(map(len, sim))}, "
            f"mean size {mean(real, lambda g: g.size):.2f} / {mean(sim, lambda g: g.size):.2f}, "
            f"queue {mean(real, lambda g: g.queue):.2f} / {mean(sim, lambda g: g.queue):.2f}, "
            f"service {mean(real, lambda g: g.service) * 1e3:.3f} / "
            f"{mean(sim, lambda g: g.service) * 1e3:.3f} ms, bookkeeping "
            f"{mean(real, lambda g: g.overhead()) * 1e6:.0f} / "
            f"{mean(sim, lambda g: g.overhead()) * 1e6:.0f} us"
        )


def comparison_plot(rows, path) -> None:
    """Four panels: batch sizes over time near saturation, real and simulated; each real
    batch's service time against the model's for the same batch; the bookkeeping between
    batches; the machine's speed per chunk over the run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 2, figsize=(11, 8))
    top = [r for r in rows if r["share"] == max(SHARES)]
    worst = max(top, key=lambda r: abs(r["p50_sim"] / r["p50_real"] - 1))
    real, sim = worst["chunks"][0][3], worst["sims"][0].batches
    for log, name in ((real, "real"), (sim, "simulated")):
        keep = log.formed < 1.0
        ax[0, 0].step(log.formed[keep], log.size[keep], where="post", label=name, lw=0.8)
    ax[0, 0].set(
        title=f"{worst['scheduler']} at {worst['share']:.0%} of capacity: batch sizes",
        xlabel="seconds into the trace", ylabel="requests in the batch",
    )  # fmt: skip
    ax[0, 0].legend()
    for r in top:
        for chunk, speed in zip(r["chunks"], r["speeds"], strict=True):
            log = chunk[3]
            hot = log.idle == 0
            predicted = r["latency"].batch_times(log.segment_sizes) * speed
            ax[0, 1].scatter(predicted[hot] * 1e3, log.segment_seconds.sum(axis=1)[hot] * 1e3,
                             s=2, alpha=0.3, label=r["scheduler"],
                             color=f"C{SCHEDULERS.index(r['scheduler'])}")  # fmt: skip
    lim = ax[0, 1].get_xlim()
    ax[0, 1].plot(lim, lim, "k--", lw=0.8)
    ax[0, 1].set(
        title="busy batches at the highest rate: service time",
        xlabel="model (table x probed speed), ms", ylabel="real, ms",
    )  # fmt: skip
    handles, labels = ax[0, 1].get_legend_handles_labels()
    seen = dict(zip(labels, handles, strict=True))
    ax[0, 1].legend(seen.values(), seen.keys(), markerscale=4)
    for s in SCHEDULERS:
        gaps = np.concatenate(
            [c[3].overhead() for r in rows if r["scheduler"] == s for c in r["chunks"]]
        )
        gaps = gaps[np.isfinite(gaps)] * 1e6
        color = f"C{SCHEDULERS.index(s)}"
        ax[1, 0].hist(gaps, bins=np.linspace(0, 400, 81), histtype="step", label=s, color=color)
        a, b = next(r for r in rows if r["scheduler"] == s)["latency"].overhead * 1e6
        ax[1, 0].axvline(a + b * 4, lw=0.8, ls=":", color=color)
    ax[1, 0].set(
        title="bookkeeping between batches (dotted: fitted, at 4 requests)",
        xlabel="microseconds (real)", ylabel="batches",
    )  # fmt: skip
    ax[1, 0].legend()
    chunks = sorted((c[5], c[4], r["scheduler"]) for r in rows for c in r["chunks"])
    start, reference = chunks[0][0], np.median([c[1] for c in chunks])
    ax[1, 1].plot([(t - start) / 60 for t, _, _ in chunks], [p / reference for _, p, _ in chunks],
                  "o-", ms=3, lw=0.6)  # fmt: skip
    ax[1, 1].set(
        title="the machine's speed: a fixed job's time around each chunk",
        xlabel="minutes into the check", ylabel="time over its median",
    )  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per chunk")
    parser.add_argument("--max-chunks", type=int, default=8)
    parser.add_argument("--plot", default=None, help="write the batch-by-batch comparison")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="save every batch log (.npz) here")
    args = parser.parse_args()
    main(args.requests, args.max_chunks, args.plot, args.seed, args.out)
