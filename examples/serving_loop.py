"""A real serving loop for an early-exit CNN, for ``serving_check.py``.

``WideDigits`` is an early-exit CNN for scikit-learn's digits (upsampled to 16x16; three conv
blocks, an exit head after each; wide enough that a segment takes about a millisecond, so that
Python's own overhead is small beside it). ``Server`` runs it one segment at a time with an
``ExitController``'s decisions, by one of the four schedulers of
:func:`exitwise.serving.simulate_serving`, in one thread: ``replay`` serves a trace of arrival
times in real time (a request can be taken once the wall clock has passed its arrival time; the
server sleeps when there is none) and records every answer's time, every segment's time and,
batch by batch, the same :class:`~exitwise.serving.BatchLog` the simulator writes.
"""

from __future__ import annotations

import queue
import time

import numpy as np
import torch
from torch import nn

from exitwise.policies import ExitController
from exitwise.serving import BatchLog, BatchRecorder

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
        self.idle = 0.0  # seconds the server slept before its current batch

    def segment(self, e: int, x: torch.Tensor, state):
        """Block ``e``, its head and the exit decision; the survivors' rows kept."""
        h = self.model.blocks[e](x)
        done, state = self.controller.decide(e, self.model.heads[e](h), state)
        return h, done, state

    def probe(self, images: torch.Tensor, repeats: int = 25) -> float:
        """Median seconds of a fixed job (every segment at batch 4, back to back): the
        machine's speed right now, measured outside any trace."""
        x, times = images[:4], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            h, state = x, self.controller.initial_state(4)
            for e in range(self.num_segments):
                h, _, state = self.segment(e, h, state)
            times.append(time.perf_counter() - t0)
        return float(np.median(times))

    def serve(self, scheduler, images, arrivals, exits_out, answers, inbox):
        """Serve ``len(arrivals)`` requests from ``inbox`` (request ids) with ``scheduler``;
        ``self.batches`` records each batch (times from the inbox's start)."""
        n, e_last = len(arrivals), self.num_segments - 1
        self.batches = BatchRecorder(self.num_segments)
        self.inbox = inbox
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
                done_count += self._refill_step(slots, exits_out, answers, len(waiting))
                continue
            self._take(inbox, waiting, MAX_BATCH, True)
            batch, waiting = waiting[:MAX_BATCH], waiting[MAX_BATCH:]
            done_count += self._run_batch(
                scheduler, batch, images, exits_out, answers, e_last, len(waiting)
            )

    def _take(self, inbox, waiting, room, block):
        if block and not waiting:
            waiting.append(inbox.get())
            self.idle = inbox.slept
        while len(waiting) < room:
            try:
                waiting.append(inbox.get_nowait())
            except queue.Empty:
                break

    def _run_batch(self, scheduler, batch, images, exits_out, answers, e_last, left):
        mark = time.perf_counter()
        formed, queued = mark - self.inbox.start, left + self.inbox.due()
        idle, sizes, seconds = float(self.idle), [], []
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
            sizes.append(size)
            seconds.append(now - mark)
            self.idle = 0.0
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
        end = now - self.inbox.start
        self.batches.add(0, formed, len(batch), queued, sizes, seconds, end, idle)
        return len(batch)

    def _refill_step(self, slots, exits_out, answers, left):
        finished = 0
        by_segment: dict[int, list] = {}
        for item in slots:
            by_segment.setdefault(item[1], []).append(item)
        results = []
        mark = time.perf_counter()
        formed, queued, idle = mark - self.inbox.start, left + self.inbox.due(), float(self.idle)
        sizes, seconds = np.zeros(self.num_segments, int), np.zeros(self.num_segments)
        for e, items in sorted(by_segment.items()):
            x = torch.cat([it[2] for it in items])
            state = (torch.cat([it[3][0] for it in items]), torch.cat([it[3][1] for it in items]))
            h, done, state = self.segment(e, x, state)
            results.append((e, items, h, done, state))
            t = time.perf_counter()
            sizes[e], seconds[e] = len(items), t - mark
            self.idle = 0.0
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
        self.batches.add(
            0, formed, len(slots), queued, sizes, seconds, now - self.inbox.start, idle
        )
        slots[:] = keep
        return finished


class TraceInbox:
    """Requests of a trace in real time, for a single-threaded server: request ``i`` can be
    taken once the clock has passed ``start + trace[i]``; waiting for the next one sleeps."""

    def __init__(self, trace: np.ndarray, start: float) -> None:
        self.trace, self.start, self.next = trace, start, 0
        self.slept = 0.0

    def _due(self) -> bool:
        return self.next < len(self.trace) and (
            time.perf_counter() - self.start >= self.trace[self.next]
        )

    def get(self) -> int:
        """The next request, sleeping until it arrives."""
        delay = self.start + self.trace[self.next] - time.perf_counter()
        self.slept = max(delay, 0.0)  # seconds the server waits idle
        if delay > 0:
            time.sleep(delay)
        self.next += 1
        return self.next - 1

    def due(self) -> int:
        """Requests that have arrived and are not taken yet."""
        now = time.perf_counter() - self.start
        return int(np.searchsorted(self.trace, now, side="right")) - self.next

    def get_nowait(self) -> int:
        if not self._due():
            raise queue.Empty
        self.next += 1
        return self.next - 1


def replay(server, scheduler, images, trace) -> tuple[np.ndarray, np.ndarray, np.ndarray, BatchLog]:
    """Serve a trace in real time; returns (arrival, answer, exit) arrays (seconds) and the
    server's batch log."""
    n = len(trace)
    answers, exits = np.zeros(n), np.zeros(n, dtype=np.int64)
    start = time.perf_counter() + 0.01
    server.serve(scheduler, images, trace, exits, answers, TraceInbox(trace, start))
    return trace.copy(), answers - start, exits, server.batches.finish()
