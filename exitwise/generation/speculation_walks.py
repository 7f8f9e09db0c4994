r"""The rounds of self-speculative decoding, counted over teacher-forced sequences.

A round that starts at position :math:`p` of a sequence of :math:`T` tokens drafts

.. math:: m(p) = \min\bigl(k,\; s(p) + 1,\; T - p - 1\bigr)

tokens: at most ``k``; drafting stops *after* the first draft token whose confidence is below
the threshold (:math:`s(p)`: how many tokens in a row from :math:`p` are confident; the
unconfident token is still verified, as Hugging Face's ``ConfidenceCriteria`` does); and never
past the end (Hugging Face drafts at most ``max_length - cur_len - 1`` tokens, so the last
round's verification produces the last token). The verification accepts
:math:`J \le m(p)` drafts and produces :math:`J + 1` tokens; the next round starts at
:math:`p + J + 1`. Over a sequence the rounds produce exactly :math:`T` tokens, so the accepted
drafts are :math:`T - V` for :math:`V` verifications.

The end cap never changes the number of verifications (a round that would run past the end
ends the sequence either way), only the number of draft steps.

Three walks:

* :func:`greedy_walk`: acceptances are 0 or 1 (greedy decoding); the walk is deterministic and
  counted for every sequence and draft exit at once by pointer doubling.
* :func:`expected_walk`: acceptances are probabilities (sampling); the expected counts by the
  backward recursion :math:`V(p) = 1 + \sum_{j \le m} P(J = j)\,V(p + j + 1)` and
  :math:`S(p) = m(p) + \sum_{j \le m} P(J = j)\,S(p + j + 1)`.
* :func:`heuristic_walk`: Hugging Face's ``"heuristic"`` schedules, where ``k`` changes from
  round to round (``k + 2`` after a round whose every draft was accepted, ``max(1, k - 1)``
  otherwise), one sequence after another.

Draft steps after a rejected draft: the draft model goes on drafting from its own wrong token,
whose confidences the teacher-forced data does not hold; the walks use the teacher-forced
confidences there. Verifications and accepted tokens do not depend on it (they are exact for
greedy decoding); draft steps with a confidence threshold are an estimate.
"""

from __future__ import annotations

import numpy as np

__all__ = ["expected_walk", "greedy_walk", "heuristic_walk"]


def _padded(
    values: np.ndarray, lengths: np.ndarray, pad: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tokens (sorted by sequence, then position) with ``pad`` zero rows after every sequence,
    ``[N + S pad, D]``, each sequence's first row and every token's row. Memory is linear in
    the tokens (no padding to the longest sequence)."""
    starts = np.cumsum(lengths + pad) - (lengths + pad)
    rows = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(lengths.sum())
    out = np.zeros((int(lengths.sum()) + lengths.size * pad, values.shape[1]))
    out[rows] = values
    return out, starts, rows


def _run_to_zero(values: np.ndarray) -> np.ndarray:
    """How many rows in a row from each row on are non-zero (a zero row ends every run)."""
    index = np.arange(values.shape[0])[:, None]
    big = np.iinfo(np.int64).max
    zero_at = np.where(values == 0.0, index, big)
    return np.minimum.accumulate(zero_at[::-1], axis=0)[::-1] - index


def _draft_limits(
    confident: np.ndarray, lengths: np.ndarray, k: int, pad: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``m(p)`` of the module docstring for every padded row ``[N + S pad, D]`` (0 on padding),
    with the padded layout's sequence starts and token rows."""
    c, starts, rows = _padded(confident, lengths, pad)
    remaining = np.zeros(c.shape[0], dtype=np.int64)
    ends = np.repeat(starts + lengths, lengths)
    remaining[rows] = ends - rows - 1
    limit = np.minimum(np.minimum(_run_to_zero(c) + 1, k), remaining[:, None])
    inside = np.zeros(c.shape[0], dtype=bool)
    inside[rows] = True
    return np.where(inside[:, None], limit, 0), starts, rows


def greedy_walk(
    accepted: np.ndarray, confident: np.ndarray, lengths: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Verifications and draft steps per sequence and draft exit, ``([S, D], [S, D])``.

    ``accepted`` and ``confident`` are ``[N, D]`` zeros and ones (tokens sorted by sequence,
    then position; ``lengths`` ``[S]``): the draft's token equals the full model's, and the
    draft's confidence is at or above the threshold. From ``p`` the walk jumps to
    ``p + min(run(p), m(p)) + 1``; the jumps are summed by pointer doubling over all tokens at
    once (``O(N D log T)`` time, ``O(N D)`` memory).

    Examples
    --------
    >>> import numpy as np
    >>> acc = np.array([[1.0], [1.0], [0.0], [1.0], [1.0]])
    >>> greedy_walk(acc, np.ones_like(acc), np.array([5]), 2)  # rounds: 0-2, 3-4
    (array([[2.]]), array([[3.]]))
    >>> unsure = np.array([[0.0], [1.0], [1.0], [1.0], [1.0]])  # stop after the first draft
    >>> greedy_walk(acc, unsure, np.array([5]), 2)  # rounds: 0-1, 2, 3-4
    (array([[3.]]), array([[4.]]))
    """
    a, starts, rows = _padded(accepted, lengths, 2)  # a walk ends at the first padding row
    limit, _, _ = _draft_limits(confident, lengths, k, 2)
    n = a.shape[0]
    index = np.arange(n)[:, None]
    inside = np.zeros(n, dtype=bool)
    inside[rows] = True
    inside = np.broadcast_to(inside[:, None], a.shape)
    step = np.minimum(_run_to_zero(a), limit)
    jump = np.where(inside, np.minimum(index + step + 1, n - 1), index)
    count = inside.astype(np.int64)
    drafts = np.where(inside, limit, 0).astype(np.int64)
    for _ in range(int(np.ceil(np.log2(max(int(lengths.max()), 1) + 1))) + 1):
        count = count + np.take_along_axis(count, jump, axis=0)
        drafts = drafts + np.take_along_axis(drafts, jump, axis=0)
        jump = np.take_along_axis(jump, jump, axis=0)
    return count[starts].astype(np.float64), drafts[starts].astype(np.float64)


def expected_walk(
    acceptance: np.ndarray, confident: np.ndarray, lengths: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Expected verifications and draft steps per sequence and draft exit ``([S, D], [S, D])``
    when acceptances are probabilities: the backward recursions of the module docstring, one
    position rank at a time over the sequences still that long (``O(N D k)`` time,
    ``O(N D)`` memory).

    Examples
    --------
    >>> import numpy as np
    >>> acc = np.array([[0.5], [0.5], [0.5]])
    >>> v, s = expected_walk(acc, np.ones_like(acc), np.array([3]), 1)
    >>> float(v[0, 0]), float(s[0, 0])  # V(2) = 1, V(1) = 1.5, V(0) = 1 + (V(1) + V(2)) / 2
    (2.25, 1.5)
    """
    a, starts, _ = _padded(acceptance, lengths, k + 1)
    limit, _, _ = _draft_limits(confident, lengths, k, k + 1)
    v = np.zeros_like(a)
    s = np.zeros_like(a)
    by_length = np.argsort(-lengths, kind="stable")
    ordered = np.sort(lengths)[::-1]
    for p in range(int(lengths.max()) - 1, -1, -1):
        active = starts[by_length[: int(np.searchsorted(-ordered, -p, side="left"))]] + p
        m = limit[active]
        alive = np.ones((active.size, a.shape[1]))  # P(J >= j)
        total_v = np.zeros_like(alive)
        total_s = m.astype(np.float64)
        for j in range(k + 1):
            at = a[active + j]
            weight = np.where(j < m, alive * (1.0 - at), np.where(j == m, alive, 0.0))
            total_v += weight * v[active + j + 1]
            total_s += weight * s[active + j + 1]
            alive *= at
        v[active] = 1.0 + total_v
        s[active] = total_s
    return v[starts], s[starts]


def heuristic_walk(
    accepted: np.ndarray,
    confident: np.ndarray,
    lengths: np.ndarray,
    k: int,
    *,
    persistent: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Verifications and draft steps per sequence ``([S], [S])`` for one draft exit
    (``accepted``, ``confident``: ``[N]`` zeros and ones, tokens sorted by sequence, then
    position) under Hugging Face's heuristic schedule, starting from ``k`` drafts: ``k + 2``
    after a round that accepted all its ``m`` drafts (also ``m = 0`` at a sequence's end),
    ``max(1, k - 1)`` otherwise. ``persistent``: ``"heuristic"`` (the length carries over to
    the next sequence, as Hugging Face keeps it on the model's generation config) rather than
    ``"heuristic_transient"`` (back to ``k`` for every sequence). A plain loop over rounds.

    Examples
    --------
    >>> import numpy as np
    >>> acc = np.array([1.0, 1.0, 1.0, 1.0, 0.0, 1.0])
    >>> heuristic_walk(acc, np.ones(6), np.array([6]), 1, persistent=False)
    (array([3.]), array([4.]))
    """
    ends = np.cumsum(lengths)
    verifications = np.zeros(lengths.size)
    drafts = np.zeros(lengths.size)
    current = k
    for i, (start, end) in enumerate(zip(ends - lengths, ends, strict=True)):
        if not persistent:
            current = k
        p = int(start)
        while p < end:
            m = min(current, int(end) - p - 1)
            stop = 0
            while stop < m and confident[p + stop] != 0.0:
                stop += 1
            m = min(m, stop + 1)
            run = 0
            while run < m and accepted[p + run] != 0.0:
                run += 1
            verifications[i] += 1
            drafts[i] += m
            current = current + 2 if run == m else max(1, current - 1)
            p += run + 1
    return verifications, drafts
