"""What a server did, batch by batch: the record the simulator writes and a real server can
write too, so that the two can be compared batch by batch (``examples/serving_check.py``).

A *batch* is what one server takes from the queue and runs: for ``"full"``, ``"static"`` and
``"compact"`` a batch of requests run to their exits; for ``"refill"`` one step (every request
in the slots runs its next segment). Per batch the log keeps when the server formed it, how many
requests it held and how many it left waiting, and per segment how many requests ran it and for
how long.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["BatchLog", "BatchRecorder"]


@dataclass(frozen=True)
class BatchLog:
    """One row per batch, in the order the batches were formed.

    Attributes
    ----------
    server : numpy.ndarray of int, shape (B,)
        The replica that ran it.
    formed : numpy.ndarray, shape (B,)
        When the server took the batch from the queue (seconds).
    idle : numpy.ndarray, shape (B,)
        Seconds the server waited with nothing to do just before forming it (0: it went
        straight on from its previous batch).
    size : numpy.ndarray of int, shape (B,)
        Requests in the batch (``"refill"``: requests in the slots during the step).
    queue : numpy.ndarray of int, shape (B,)
        Requests that had arrived and were still waiting after the batch was formed.
    segment_sizes : numpy.ndarray of int, shape (B, E)
        Requests that ran each segment in the batch (0: the segment did not run).
    segment_seconds : numpy.ndarray, shape (B, E)
        Seconds each segment took in the batch (0 where it did not run).
    end : numpy.ndarray, shape (B,)
        When the batch's last segment finished.

    Examples
    --------
    >>> rec = BatchRecorder(2)
    >>> rec.add(0, 0.0, 3, 1, [3, 1], [0.002, 0.001], 0.003, idle=0.01)
    >>> rec.add(0, 0.004, 2, 0, [2, 0], [0.0015, 0.0], 0.0055)
    >>> log = rec.finish()
    >>> log.service.round(4).tolist(), log.overhead().round(4).tolist()
    ([0.003, 0.0015], [0.001, nan])
    """

    server: np.ndarray = field(repr=False)
    formed: np.ndarray = field(repr=False)
    idle: np.ndarray = field(repr=False)
    size: np.ndarray = field(repr=False)
    queue: np.ndarray = field(repr=False)
    segment_sizes: np.ndarray = field(repr=False)
    segment_seconds: np.ndarray = field(repr=False)
    end: np.ndarray = field(repr=False)

    def __len__(self) -> int:
        return int(self.formed.size)

    @property
    def service(self) -> np.ndarray:
        """Seconds from forming each batch to its end (its segments and anything between)."""
        return self.end - self.formed

    def previous(self) -> np.ndarray:
        """Per batch: the row of its server's previous batch (-1 for each server's first)."""
        out = np.full(self.formed.size, -1, dtype=np.int64)
        for s in np.unique(self.server):
            rows = np.flatnonzero(self.server == s)
            out[rows[1:]] = rows[:-1]
        return out

    def overhead(self) -> np.ndarray:
        """Per batch: seconds from its end to its server forming the next batch, less the time
        the server waited idle in between: the bookkeeping after a batch (answering, taking
        requests, refilling slots). NaN for each server's last batch."""
        prev = self.previous()
        out = np.full(self.formed.size, np.nan)
        has = prev >= 0
        out[prev[has]] = self.formed[has] - self.end[prev[has]] - self.idle[has]
        return out

    def idle_after(self) -> np.ndarray:
        """Per batch: seconds its server waited idle before forming its next batch (NaN for
        each server's last batch)."""
        prev = self.previous()
        out = np.full(self.formed.size, np.nan)
        out[prev[prev >= 0]] = self.idle[prev >= 0]
        return out


class BatchRecorder:
    """Collects :class:`BatchLog` rows one batch at a time (a real server's loop or the
    simulator's)."""

    def __init__(self, num_segments: int) -> None:
        self.num_segments = int(num_segments)
        self.rows: list[tuple] = []
        self.sizes: list = []
        self.seconds: list = []

    def add(
        self,
        server: int,
        formed: float,
        size: int,
        queue: int,
        segment_sizes,
        segment_seconds,
        end: float,
        idle: float = 0.0,
    ) -> None:
        """One batch: see :class:`BatchLog` for the fields (segment arrays of length ``E`` or
        shorter, zero-padded). The arrays are kept as given (not copied): pass fresh ones."""
        self.rows.append((server, formed, idle, size, queue, end))
        self.sizes.append(segment_sizes)
        self.seconds.append(segment_seconds)

    def finish(self) -> BatchLog:
        """The rows added so far, as a :class:`BatchLog`."""
        e = self.num_segments
        if not self.rows:
            empty = np.empty(0)
            return BatchLog(
                empty.astype(np.int64), empty, empty, empty.astype(np.int64),
                empty.astype(np.int64), np.empty((0, e), np.int64), np.empty((0, e)), empty,
            )  # fmt: skip
        columns = np.array(self.rows, dtype=np.float64).T
        server, formed, idle, size, queue, end = columns
        sizes = np.zeros((len(self.rows), e), dtype=np.int64)
        seconds = np.zeros((len(self.rows), e))
        lengths = np.fromiter((len(v) for v in self.sizes), np.int64, len(self.sizes))
        for k in np.unique(lengths):  # one stack per length: no loop over batches
            rows = np.flatnonzero(lengths == k)
            if k:
                sizes[rows, :k] = np.array([self.sizes[i] for i in rows])
                seconds[rows, :k] = np.array([self.seconds[i] for i in rows])
        return BatchLog(
            server.astype(np.int64), formed, idle, size.astype(np.int64),
            queue.astype(np.int64), sizes, seconds, end,
        )  # fmt: skip
