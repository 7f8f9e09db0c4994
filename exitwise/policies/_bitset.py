"""Exact CPU kernel of the threshold evaluator on bitsets (64 samples per machine word).

For K candidate threshold vectors over N samples and E exits, a dense evaluation compares
K * N * E pairs. This kernel gets the same exact counts with word-parallel set operations:

* Samples are laid out in the order of their exit-0 score, so "still running after exit 0"
  for threshold ``t`` is the first ``r0 = #{s_0 < t}`` samples: a prefix of the bitset.
* For a deeper exit ``e`` the samples with ``s_e < t`` are the first ``r`` samples of exit
  ``e``'s sorted order; as a bitset (in the exit-0 layout) that is a stored checkpoint
  (every ``B``-th prefix) plus fewer than ``B`` extra bits.
* "Still running after e" is the AND of these sets; the samples leaving at ``e`` are the
  difference of two consecutive sets, and counts are popcounts. The right answers of the
  leavers of every exit are disjoint sets, OR-ed together and popcounted once.

Each candidate costs O(E * N / 64) word operations instead of O(E * N) comparisons. Results
are integers and equal a naive loop exactly.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np

_ONE = np.uint64(1)


def _pack(bits: np.ndarray, words: int) -> np.ndarray:
    """Bool ``[n]`` -> uint64 ``[words]``; sample ``p`` is bit ``p % 64`` of word ``p // 64``."""
    packed = np.packbits(bits, bitorder="little")
    out = np.zeros(words * 8, dtype=np.uint8)
    out[: packed.size] = packed
    return out.view("<u8").astype(np.uint64, copy=False)


def _popcount_rows(words: np.ndarray) -> np.ndarray:
    # uint32 accumulation of the per-word counts is faster than int64 and cannot overflow
    # (a row holds at most 2^32 / 64 words)
    return np.bitwise_count(words).sum(axis=1, dtype=np.uint32).astype(np.int64)


class _ExitIndex:
    """Sorted scores and prefix checkpoints of one exit (e >= 1) within a block."""

    def __init__(self, scores: np.ndarray, every: int, words: int) -> None:
        n = scores.shape[0]
        self.order = np.argsort(scores)  # ties never straddle a rank r = #{s < t}
        self.sorted = scores[self.order]
        self.every = every
        # the word and the bit of each sample, in sorted order
        self.word = self.order >> 6
        self.bit = _ONE << (self.order & 63).astype(np.uint64)
        segments = math.ceil(n / every)
        seg = np.zeros((segments + 1, words), dtype=np.uint64)
        flat = (np.arange(n) // every + 1) * words + self.word
        np.add.at(seg.reshape(-1), flat, self.bit)
        np.bitwise_or.accumulate(seg, axis=0, out=seg)  # running OR: prefix sets
        self.checkpoints = seg

    def prefix(self, ranks: np.ndarray, width: int) -> np.ndarray:
        """Bitsets (first ``width`` words) of the first ``ranks[k]`` samples in sorted order."""
        base = ranks // self.every
        out = self.checkpoints[base, :width]
        extra = ranks - base * self.every
        rows = np.repeat(np.arange(ranks.size), extra)  # candidate k, extra[k] times
        if rows.size:
            ends = np.cumsum(extra)
            jj = np.arange(rows.size) - np.repeat(ends - extra, extra)  # 0..extra[k]-1
            at = base[rows] * self.every + jj  # sorted positions of the extra samples
            word = self.word[at]
            keep = word < width
            flat = rows[keep] * width + word[keep]  # disjoint bits: adding is OR-ing
            np.add.at(out.reshape(-1), flat, self.bit[at[keep]])
        return out


def bitset_block_stats(
    scores: np.ndarray,
    correct: np.ndarray,
    thresholds: np.ndarray,
    *,
    checkpoint_every: int = 128,
    candidate_chunk: int = 256,
    threads: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Exit counts ``[K, E]`` and number of correct answers ``[K]`` for one block of samples.

    ``scores`` ``[n, E]`` and ``thresholds`` ``[K, E]`` share a float dtype; ``correct`` is
    bool ``[n, E]``. Sample ``n`` leaves at the first ``e`` with ``scores[n, e] >=
    thresholds[k, e]``; the last exit always answers.
    """
    n, num_exits = scores.shape
    k_total = thresholds.shape[0]
    counts = np.zeros((k_total, num_exits), dtype=np.int64)
    hits = np.zeros(k_total, dtype=np.int64)
    if num_exits == 1:
        counts[:, 0] = n
        hits[:] = int(correct[:, 0].sum())
        return counts, hits

    order0 = np.argsort(scores[:, 0])
    s = scores[order0]
    c = correct[order0]
    words = math.ceil(n / 64)
    r0 = np.searchsorted(s[:, 0], thresholds[:, 0], side="left")
    counts[:, 0] = n - r0
    prefix_hits0 = np.concatenate([[0], np.cumsum(c[:, 0], dtype=np.int64)])
    hits += prefix_hits0[n] - prefix_hits0[r0]

    correct_bits = [_pack(c[:, e], words) for e in range(num_exits)]

    def build(e: int) -> _ExitIndex:
        return _ExitIndex(s[:, e], checkpoint_every, words)

    if threads > 1 and num_exits > 3:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            indexes = list(pool.map(build, range(1, num_exits - 1)))
    else:
        indexes = [build(e) for e in range(1, num_exits - 1)]

    def run(rows: np.ndarray) -> None:
        _run_candidates(rows, r0, thresholds, indexes, correct_bits, counts, hits)

    # group candidates of similar exit-0 rank so each chunk touches few words
    by_rank = np.argsort(r0, kind="stable")
    chunks = [by_rank[i : i + candidate_chunk] for i in range(0, k_total, candidate_chunk)]
    if threads > 1 and len(chunks) > 1:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(run, chunks))
    else:
        for rows in chunks:
            run(rows)
    return counts, hits


def _prefix_bits(ranks: np.ndarray, width: int) -> np.ndarray:
    """Bitsets ``[K, width]`` of the first ``ranks[k]`` positions (the exit-0 prefix)."""
    all_ones = np.uint64(0xFFFFFFFFFFFFFFFF)
    full = ranks // 64
    bits = np.where(np.arange(width)[None, :] < full[:, None], all_ones, np.uint64(0))
    partial = ranks % 64
    has_partial = (partial > 0) & (full < width)
    bits[np.nonzero(has_partial)[0], full[has_partial]] = (
        _ONE << partial[has_partial].astype(np.uint64)
    ) - _ONE
    return bits


def _run_candidates(
    rows: np.ndarray,
    r0: np.ndarray,
    thresholds: np.ndarray,
    indexes: list[_ExitIndex],
    correct_bits: list[np.ndarray],
    counts: np.ndarray,
    hits: np.ndarray,
) -> None:
    """Counts and hits of the candidates ``rows`` at exits 1..E-1 (exit 0 is done): the
    samples still running are a bitset, narrowed exit by exit; leavers are popcounted."""
    num_exits = counts.shape[1]
    ranks0 = r0[rows]
    width = max(1, math.ceil(int(ranks0.max()) / 64))
    alive = _prefix_bits(ranks0, width)
    alive_count = ranks0.astype(np.int64)
    answered = np.zeros_like(alive)  # right answers at exits >= 1: disjoint, so OR-ed
    for e, index in enumerate(indexes, start=1):
        ranks = np.searchsorted(index.sorted, thresholds[rows, e], side="left")
        staying = index.prefix(ranks, width)
        np.bitwise_and(staying, alive, out=staying)
        stay_count = _popcount_rows(staying)
        counts[rows, e] = alive_count - stay_count
        np.bitwise_xor(alive, staying, out=alive)  # alive now holds the leavers
        np.bitwise_and(alive, correct_bits[e][None, :width], out=alive)
        np.bitwise_or(answered, alive, out=answered)
        alive, alive_count = staying, stay_count
    counts[rows, num_exits - 1] = alive_count
    np.bitwise_and(alive, correct_bits[-1][None, :width], out=alive)
    np.bitwise_or(answered, alive, out=answered)
    hits[rows] += _popcount_rows(answered)


def checkpoint_interval(num_samples: int, num_candidates: int) -> int:
    """Ranks between stored prefix bitsets, balancing building them (memory and time
    ~ N^2 / (64 every) per exit) against completing them per candidate (~ every / 2 bits):
    the power of two nearest ``0.12 N / sqrt(K)``, in [64, 1024] (measured on 2 cores:
    256 at N = 100,000 and K = 2,000; 128 at K = 10,000).

    Examples
    --------
    >>> checkpoint_interval(100_000, 2_000), checkpoint_interval(100_000, 10_000)
    (256, 128)
    """
    ideal = 0.12 * num_samples / math.sqrt(max(1, num_candidates))
    return int(min(1024, max(64, 2 ** round(math.log2(max(ideal, 1.0))))))


def bitset_block_size(num_exits: int, memory_budget: int, checkpoint_every: int = 128) -> int:
    """Largest block of samples whose checkpoints fit in half the memory budget."""
    per_exit = max(num_exits - 2, 1)
    # checkpoints: (n / every + 1) * (n / 64) * 8 bytes per exit
    n = int(math.sqrt(memory_budget / 2 / per_exit * 8 * checkpoint_every))
    return max(4096, n)
