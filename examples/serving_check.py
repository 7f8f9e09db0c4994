"""Check the serving simulator against a real serving loop on this machine.

1. Train an early-exit CNN on scikit-learn's digits (upsampled to 16x16; three conv blocks,
   an exit head after each; wider than ``digits_early_exit.py`` so that a segment takes about
   a millisecond and Python's own overhead is small beside it), calibrate it and tune a
   max-probability policy for 99 % of the final exit's accuracy.
2. Measure the latency model of the server's own segment step (block, head and the
   ``ExitController``'s decision) at batch sizes 1..64.
3. For each scheduler (``full``, ``static``, ``compact``, ``refill``) and three Poisson arrival
   rates (light, medium, near saturation: 25 %, 55 % and 80 % of that scheduler's simulated
   capacity), replay a trace in real time: the server loop takes the requests (held-out
   images) whose arrival time has passed on the wall clock, sleeping when there are none,
   batches them by the scheduler, lets the controller decide exits, and records every
   answer's time. (One thread: a request generator thread would add Python's thread hand-over
   and GIL delays, which belong to the load generator, not to the model being planned.)
4. Simulate the same trace (its arrival times, and the exit depths the controller chose)
   with a latency model fitted to the segment timings the server logged during the
   calibration traces and all the *other* check runs (never the run's own: the VM's speed
   drifts by up to 20 % over minutes, and this tracks it without peeking), and compare p50
   and p99 latency.

Run: ``python examples/serving_check.py [--requests 2000]`` (about three minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import queue
import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from exitwise.calibrate import TemperatureScaling
from exitwise.collect import collect
from exitwise.policies import ExitController, tune_for_accuracy
from exitwise.serving import LatencyModel, measure_wake_up, simulate_serving

CHANNELS = (64, 128, 256)
MAX_BATCH = 16


class WideDigits(nn.Module):
    """Three conv blocks on digits (upsampled to 16x16) with an exit head after each."""

    def __init__(self) -> None:
        super().__init__()
        c1, c2, c3 = CHANNELS
        self.blocks = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(1, 32, 3, padding=1),
                    nn.ReLU(),
                    nn.Conv2d(32, c1, 3, padding=1),
                    nn.ReLU(),
                ),
                nn.Sequential(nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
                nn.Sequential(nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
            ]
        )
        self.heads = nn.ModuleList(
            [
                nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * c, 10))
                for c in CHANNELS
            ]
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for block, head in zip(self.blocks, self.heads, strict=True):
            x = block(x)
            outs.append(head(x))
        return outs


def train(x: torch.Tensor, y: torch.Tensor, epochs: int = 8) -> WideDigits:
    torch.manual_seed(0)
    model = WideDigits()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        perm = torch.randperm(len(y))
        for i in range(0, len(perm), 64):
            rows = perm[i : i + 64]
            loss = sum(loss_fn(out, y[rows]) for out in model(x[rows]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


class Server:
    """Runs the model one segment at a time with the controller's decisions."""

    def __init__(self, model: WideDigits, controller: ExitController) -> None:
        self.model, self.controller = model, controller
        self.num_segments = len(model.blocks)
        # (segment, batch size, seconds, whether the server sat idle just before, run tag)
        self.log: list[tuple[int, int, float, bool, int]] = []
        self.idle = False
        self.tag = -1

    def segment(self, e: int, x: torch.Tensor, state):
        """Block ``e``, its head and the exit decision; the survivors' rows kept."""
        h = self.model.blocks[e](x)
        done, state = self.controller.decide(e, self.model.heads[e](h), state)
        return h, done, state

    def measure(self, images: torch.Tensor, batch_sizes, repeats: int = 30) -> LatencyModel:
        """Each segment's median time per batch size, timed the way the server runs it:
        segment 0 includes taking the batch's rows and the controller state, every segment
        the decision and dropping the rows that left, and each repeat starts after a 1 ms
        pause (a server that waits for requests starts with colder caches)."""
        rows = []
        rng = np.random.default_rng(0)
        for b in batch_sizes:
            times = np.zeros((repeats, self.num_segments))
            for r in range(repeats + 5):
                ids = torch.as_tensor(rng.integers(0, len(images), b))
                time.sleep(0.001)
                t0 = time.perf_counter()
                h, state = images[ids], self.controller.initial_state(b)
                for e in range(self.num_segments):
                    h, done, state = self.segment(e, h, state)
                    keep = ~done
                    _ = h[keep], ids[keep]  # what compaction does after each exit
                    t1 = time.perf_counter()
                    if r >= 5:
                        times[r - 5, e] = t1 - t0
                    t0 = t1
            rows.append(np.median(times, axis=0))
        return LatencyModel(list(batch_sizes), np.array(rows))

    def one_request(self, images):
        """A callable serving one request alone (all segments at batch 1)."""
        count = iter(range(10**9))

        def run() -> None:
            r = next(count) % len(images)
            h, state = images[r][None], self.controller.initial_state(1)
            for e in range(self.num_segments):
                h, _, state = self.segment(e, h, state)

        return run

    def serve(self, scheduler, images, arrivals, exits_out, answers, inbox):
        """Serve ``len(arrivals)`` requests from ``inbox`` (request ids) with ``scheduler``."""
        n, e_last = len(arrivals), self.num_segments - 1
        done_count = 0
        waiting: list[int] = []
        slots: list[list] = []  # refill: [request, next segment, hidden, state rows]
        while done_count < n:
            if scheduler == "refill":
                block = not slots and not waiting
                self._take(inbox, waiting, MAX_BATCH - len(slots), block)
                while waiting and len(slots) < MAX_BATCH:
                    i = waiting.pop(0)
                    slots.append([i, 0, images[i : i + 1], self.controller.initial_state(1)])
                done_count += self._refill_step(slots, exits_out, answers)
                continue
            self._take(inbox, waiting, MAX_BATCH, True)
            batch, waiting = waiting[:MAX_BATCH], waiting[MAX_BATCH:]
            done_count += self._run_batch(scheduler, batch, images, exits_out, answers, e_last)

    def _take(self, inbox, waiting, room, block):
        if block and not waiting:
            waiting.append(inbox.get())
            self.idle = inbox.slept
        while len(waiting) < room:
            try:
                waiting.append(inbox.get_nowait())
            except queue.Empty:
                break

    def _run_batch(self, scheduler, batch, images, exits_out, answers, e_last):
        mark = time.perf_counter()
        ids = torch.tensor(batch)
        x = images[ids]
        state = self.controller.initial_state(len(batch))
        alive = torch.ones(len(batch), dtype=torch.bool)
        for e in range(self.num_segments):
            size = len(ids)
            x, done, state = self.segment(e, x, state)
            if scheduler == "full":
                done = torch.full_like(done, e == e_last)
            now = time.perf_counter()
            self.log.append((e, size, now - mark, self.idle, self.tag))
            self.idle = False
            mark = now
            if scheduler == "compact":
                left = ids[done]
                for i in left.tolist():
                    exits_out[i], answers[i] = e, now
                keep = ~done
                ids, x, state = ids[keep], x[keep], (state[0][keep], state[1][keep])
                if len(ids) == 0:
                    break
            else:  # static / full: remember exits; everyone answers when all are done
                newly = done & alive
                for i in ids[newly].tolist():
                    exits_out[i] = e
                alive &= ~done
                if not alive.any():
                    for i in ids.tolist():
                        answers[i] = now
                    break
        return len(batch)

    def _refill_step(self, slots, exits_out, answers):
        finished = 0
        by_segment: dict[int, list] = {}
        for item in slots:
            by_segment.setdefault(item[1], []).append(item)
        results = []
        mark = time.perf_counter()
        for e, items in sorted(by_segment.items()):
            x = torch.cat([it[2] for it in items])
            state = (torch.cat([it[3][0] for it in items]), torch.cat([it[3][1] for it in items]))
            h, done, state = self.segment(e, x, state)
            results.append((e, items, h, done, state))
            t = time.perf_counter()
            self.log.append((e, len(items), t - mark, self.idle, self.tag))
            self.idle = False
            mark = t
        now = time.perf_counter()
        keep = []
        for e, items, h, done, state in results:
            for k, it in enumerate(items):
                if bool(done[k]):
                    exits_out[it[0]], answers[it[0]] = e, now
                    finished += 1
                else:
                    keep.append(
                        [it[0], e + 1, h[k : k + 1], (state[0][k : k + 1], state[1][k : k + 1])]
                    )
        slots[:] = keep
        return finished


class TraceInbox:
    """Requests of a trace in real time, for a single-threaded server: request ``i`` can be
    taken once the clock has passed ``start + trace[i]``; waiting for the next one sleeps."""

    def __init__(self, trace: np.ndarray, start: float) -> None:
        self.trace, self.start, self.next = trace, start, 0
        self.slept = False

    def _due(self) -> bool:
        return self.next < len(self.trace) and (
            time.perf_counter() - self.start >= self.trace[self.next]
        )

    def get(self) -> int:
        """The next request, sleeping until it arrives."""
        delay = self.start + self.trace[self.next] - time.perf_counter()
        self.slept = delay > 0
        if delay > 0:
            time.sleep(delay)
        self.next += 1
        return self.next - 1

    def get_nowait(self) -> int:
        if not self._due():
            raise queue.Empty
        self.next += 1
        return self.next - 1


def replay(server, scheduler, images, trace):
    """Serve a trace in real time; returns (arrival, answer, exit) arrays (seconds)."""
    n = len(trace)
    answers, exits = np.zeros(n), np.zeros(n, dtype=np.int64)
    start = time.perf_counter() + 0.01
    server.serve(scheduler, images, trace, exits, answers, TraceInbox(trace, start))
    return trace.copy(), answers - start, exits


def main(requests: int = 2000) -> list[dict]:
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
    controller = ExitController.from_policy(tuned.policy, calibrator)
    server = Server(model, controller)
    images = x[rest]
    with torch.inference_mode():
        bench = server.measure(images, (1, 2, 4, 8, 16))
        depths_offline = tuned.policy.exit_indices(calibrator.transform(outputs)).numpy()
        # the latency model the check uses: segment timings logged by the server itself while
        # serving calibration traces (other seeds than the check's) at three loads, with the
        # compact and the static scheduler
        rng = np.random.default_rng(1)
        capacity = simulate_serving(
            depths_offline,
            bench,
            rate=1e6,
            num_requests=4000,
            scheduler="compact",
            max_batch=MAX_BATCH,
        ).throughput
        server.log.clear()
        for scheduler in ("compact", "static"):  # static keeps big batches in deep segments
            for share in (0.3, 0.6, 0.9):
                trace = np.cumsum(rng.exponential(1 / (share * capacity), requests // 2))
                which = images[rng.integers(0, len(images), requests // 2)]
                replay(server, scheduler, which, trace)
        # a core that sleeps between requests comes back slower the longer it slept
        wake_up = measure_wake_up(server.one_request(images), repeats=40)

        def fitted(exclude: int) -> LatencyModel:
            """The model from every logged segment except those of run ``exclude``."""
            seg, size, secs, idle, tag = (np.array(v) for v in zip(*server.log, strict=True))
            keep = tag != exclude
            busy = LatencyModel.from_observations(
                seg[keep], size[keep], secs[keep], server.num_segments, idle[keep]
            )
            return LatencyModel(busy.batch_sizes, busy.seconds, wake_up=wake_up, jitter=busy.jitter)

        latency = fitted(exclude=-2)  # the calibration runs (tag -1) only, so far
        print(f"policy {tuned.policy!r}")
        for name, lm in (("micro-benchmark", bench), ("logged while serving", latency)):
            print(
                f"latency model, {name} (ms per segment, batch 1 / 16): "
                f"{np.round(lm.table(17)[1] * 1e3, 3).tolist()} / "
                f"{np.round(lm.table(17)[16] * 1e3, 3).tolist()}; "
                f"wake-up after idling 1 / 4 / 16 ms: {lm.wake_up_time(0.001) * 1e3:.3f} / "
                f"{lm.wake_up_time(0.004) * 1e3:.3f} / {lm.wake_up_time(0.016) * 1e3:.3f} ms"
            )
        depths_offline = tuned.policy.exit_indices(calibrator.transform(outputs)).numpy()
        rows = []
        rng = np.random.default_rng(0)
        header = (
            f"{'scheduler':<8} {'rate/s':>7} {'p50 sim':>8} {'p50 real':>8} {'err':>6} "
            f"{'p99 sim':>8} {'p99 real':>8} {'err':>6} {'thr real':>8}"
        )
        print(header)
        runs = []
        for scheduler in ("full", "static", "compact", "refill"):
            capacity = simulate_serving(
                depths_offline,
                latency,
                rate=1e6,
                num_requests=4000,
                scheduler=scheduler,
                max_batch=MAX_BATCH,
            ).throughput
            for share in (0.25, 0.55, 0.8):
                rate = share * capacity
                trace = np.cumsum(rng.exponential(1 / rate, requests))
                which = rng.integers(0, len(images), requests)
                server.tag = len(runs)
                runs.append((scheduler, rate, *replay(server, scheduler, images[which], trace)))
        # each run is simulated with the model logged during all the other runs and the
        # calibration runs (never its own timings): the machine's speed drifts over minutes
        for tag, (scheduler, rate, arr, ans, ex) in enumerate(runs):
            real = ans - arr
            sim = simulate_serving(
                ex if scheduler != "full" else np.full_like(ex, 2),
                fitted(exclude=tag),
                arrivals=arr,
                scheduler=scheduler,
                max_batch=MAX_BATCH,
            )
            s50, s99 = np.percentile(sim.latency, [50, 99])
            r50, r99 = np.percentile(real, [50, 99])
            row = {
                "scheduler": scheduler,
                "rate": rate,
                "p50_sim": s50,
                "p50_real": r50,
                "p99_sim": s99,
                "p99_real": r99,
                "throughput_real": requests / (ans.max() - arr.min()),
            }
            rows.append(row)
            print(
                f"{scheduler:<8} {rate:7.0f} {s50 * 1e3:8.3f} {r50 * 1e3:8.3f} "
                f"{s50 / r50 - 1:+6.0%} {s99 * 1e3:8.3f} {r99 * 1e3:8.3f} "
                f"{s99 / r99 - 1:+6.0%} {row['throughput_real']:8.0f}"
            )
    errors = np.array(
        [[r["p50_sim"] / r["p50_real"] - 1, r["p99_sim"] / r["p99_real"] - 1] for r in rows]
    )
    print(
        f"within 15 % of measured: p50 {int((abs(errors[:, 0]) <= 0.15).sum())} of "
        f"{len(rows)}, p99 {int((abs(errors[:, 1]) <= 0.15).sum())} of {len(rows)}"
    )
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    main(parser.parse_args().requests)
