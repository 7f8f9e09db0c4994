r"""The policy evaluator: thousands of per-exit threshold vectors scored at once.

Given confidence scores ``[N, E]``, per-exit outcomes ``[N, E]`` (bool ``correct`` or a float
loss), costs ``[E]`` (cumulative per exit) or ``[N, E]`` (per sample) and ``K`` candidate
threshold vectors ``[K, E]``, every sample leaves at

.. math:: \mathrm{exit}_k(n) = \min\{e : s_{n,e} \ge \tau_{k,e}\} \cup \{E - 1\}

(the last exit always answers; a threshold of ``+inf`` never exits early, ``-inf`` always
does). The evaluator returns per candidate the accuracy (or mean loss), the mean cost, cost
quantiles and how many samples leave at each exit.

It only keeps sufficient statistics (counts and sums per candidate), so it

* works in chunks over candidates and samples sized from ``memory_budget`` (K = 100,000 on
  N = 1,000,000 never allocates K * N * E);
* streams over chunks of data that do not fit in memory
  (:func:`evaluate_thresholds_streaming`);
* sums its statistics over processes with ``torch.distributed`` when a process group is
  initialised, so every rank gets the result of the whole data set.

Two exact kernels: ``"dense"`` (torch, any device; comparisons in chunks) and ``"bitset"``
(CPU, 64 samples per machine word, see :mod:`exitwise.policies._bitset`), used by
``backend="auto"`` for CPU tensors with a bool outcome, per-exit costs and at least 16
candidates (for fewer, building its index costs more than comparing densely). Both equal a naive
per-sample loop exactly (counts are integers; sums are float64).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch

from exitwise._checks import check_choice, check_int
from exitwise._deprecation import MISSING
from exitwise.policies.inputs import (
    check_outcome,
    check_percentiles,
    check_scores,
    check_thresholds,
    costs_for,
)
from exitwise.policies.kernels import (
    DEFAULT_MEMORY_BUDGET,
    ThresholdEvaluation,
    _all_reduce,
    _chunk_totals,
    _finish,
    _full_cost_sum,
    _Totals,
    first_exit,
)

__all__ = [
    "ThresholdEvaluation",
    "evaluate_thresholds",
    "evaluate_thresholds_streaming",
    "first_exit",
]

Backend = Literal["auto", "dense", "bitset"]


def evaluate_thresholds(
    scores: Any,
    correct: Any,
    costs: Any,
    thresholds: Any,
    *,
    percentiles: Sequence[float] | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    backend: Backend = "auto",
    distributed: bool | None = None,
    quantiles: Any = MISSING,
) -> ThresholdEvaluation:
    """Evaluate K per-exit threshold vectors at once, exactly.

    Parameters
    ----------
    scores : array-like of shape (N, E)
        Confidence per sample and exit (higher = more confident), e.g. from
        :func:`exitwise.signals.compute_signal`.
    correct : array-like of shape (N, E)
        bool: whether each exit's answer is right (gives ``accuracy``); or float: a loss per
        sample and exit (gives ``mean_loss``).
    costs : array-like of shape (E,) or (N, E)
        Cumulative cost of answering at each exit (per sample when 2-D).
    thresholds : array-like of shape (K, E) or (E,)
        Candidate threshold vectors. The last column is never used (the last exit always
        answers). ``+inf`` never exits at that exit, ``-inf`` always does.
    percentiles : sequence of float in [0, 100], optional
        Also report these percentiles of the per-sample cost (e.g. ``(50, 99)``), in
        ``cost_quantiles`` (columns aligned with ``percentiles``).
    memory_budget : int, default=2**30
        Bytes of working memory; candidates and samples are processed in chunks to stay in it.
    backend : {"auto", "dense", "bitset"}, default="auto"
        Kernel; all give identical results. "auto" takes the bitset kernel on CPU when the
        outcome is bool, costs are per exit and there are at least 16 candidates.
    distributed : bool, optional
        Sum statistics across the processes of an initialised ``torch.distributed`` group
        (each rank passes its own shard of samples). ``None``: when a group is initialised.
    quantiles : sequence of float in [0, 1], optional
        Deprecated spelling of ``percentiles`` (as fractions).

    Returns
    -------
    ThresholdEvaluation

    Raises
    ------
    ValueError, TypeError
        On shape, dtype or value errors (NaN scores or thresholds, decreasing per-exit costs).

    See Also
    --------
    sweep_shared_threshold : the exact curve of a single threshold shared by all exits.

    Examples
    --------
    >>> import torch
    >>> scores = torch.tensor([[0.2, 0.9], [0.8, 0.1], [0.6, 0.7]])
    >>> correct = torch.tensor([[False, True], [True, False], [False, True]])
    >>> r = evaluate_thresholds(scores, correct, torch.tensor([1.0, 3.0]),
    ...                         torch.tensor([[0.5, 0.0], [0.7, 0.0]]))
    >>> r.accuracy, r.mean_cost
    (tensor([0.6667, 1.0000], dtype=torch.float64), tensor([1.6667, 2.3333], dtype=torch.float64))
    >>> r.exit_counts
    tensor([[2, 1],
            [1, 2]])
    """
    check_choice(backend, "backend", ("auto", "dense", "bitset"))
    memory_budget = check_int(memory_budget, "memory_budget", minimum=1)
    s = check_scores(scores)
    shape = (int(s.shape[0]), int(s.shape[1]))
    o = check_outcome(correct, shape, s.device)
    c = costs_for(costs, shape, s.device)
    t = check_thresholds(thresholds, shape[1], s.device)
    qs = check_percentiles(percentiles, quantiles)
    keep = bool(qs) and c.ndim == 2
    totals = _chunk_totals(s, o, c, t, backend, memory_budget, keep)
    full = _full_cost_sum(c, shape[0], totals.counts.device)
    _all_reduce(totals, full, distributed)
    return _finish(totals, t.to(totals.counts.device), c, qs, o.dtype == torch.bool, full)


def evaluate_thresholds_streaming(
    chunks: Iterable[tuple[Any, Any, Any]],
    thresholds: Any,
    *,
    percentiles: Sequence[float] | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    backend: Backend = "auto",
    distributed: bool | None = None,
    quantiles: Any = MISSING,
) -> ThresholdEvaluation:
    """:func:`evaluate_thresholds` over an iterable of ``(scores, correct, costs)`` chunks.

    Each chunk holds some samples (e.g. slices of memory-mapped arrays); only the
    sufficient statistics are kept, so the data never has to fit in memory at once. The
    result equals one call on the concatenated data. Cost quantiles need per-exit costs
    ``[E]``, the same in every chunk.

    Examples
    --------
    >>> import torch
    >>> scores, correct = torch.rand(100, 3), torch.rand(100, 3) < 0.7
    >>> costs = torch.tensor([1.0, 2.0, 3.0])
    >>> chunks = ((scores[i:i + 30], correct[i:i + 30], costs) for i in range(0, 100, 30))
    >>> thr = torch.rand(5, 3)
    >>> a = evaluate_thresholds_streaming(chunks, thr)
    >>> b = evaluate_thresholds(scores, correct, costs, thr)
    >>> torch.equal(a.exit_counts, b.exit_counts) and torch.equal(a.accuracy, b.accuracy)
    True
    """
    check_choice(backend, "backend", ("auto", "dense", "bitset"))
    memory_budget = check_int(memory_budget, "memory_budget", minimum=1)
    qs = check_percentiles(percentiles, quantiles)
    totals: _Totals | None = None
    first_costs: torch.Tensor | None = None
    per_exit_costs = True
    bool_outcome = True
    full = None
    t: torch.Tensor | None = None
    for i, chunk in enumerate(chunks):
        if not isinstance(chunk, (tuple, list)) or len(chunk) != 3:
            raise TypeError(
                f"Expected every chunk to be a (scores, correct, costs) tuple, got "
                f"{type(chunk).__name__} at chunk {i}."
            )
        s = check_scores(chunk[0])
        shape = (int(s.shape[0]), int(s.shape[1]))
        o = check_outcome(chunk[1], shape, s.device)
        c = costs_for(chunk[2], shape, s.device)
        if t is None:
            t = check_thresholds(thresholds, shape[1], s.device)
            bool_outcome = o.dtype == torch.bool
        elif t.shape[1] != shape[1]:
            raise ValueError(f"Chunk {i} has E = {shape[1]} exits, earlier chunks {t.shape[1]}.")
        if (o.dtype == torch.bool) != bool_outcome:
            raise TypeError(f"Chunk {i} mixes bool `correct` and float losses across chunks.")
        if c.ndim == 1:
            if first_costs is None:
                first_costs = c
            elif not torch.equal(c.to(first_costs.device), first_costs):
                per_exit_costs = False
        else:
            per_exit_costs = False
        if qs and not per_exit_costs:
            raise ValueError(
                "Streaming cost quantiles need the same per-exit costs [E] in every chunk; "
                f"chunk {i} differs."
            )
        part = _chunk_totals(s, o, c, t, backend, memory_budget, keep_sample_costs=False)
        if c.ndim == 1:
            part.cost_sum = part.counts.to(torch.float64) @ c.to(part.counts.device)
        chunk_full = _full_cost_sum(c, shape[0], part.counts.device)
        if totals is None:
            totals, full = part, chunk_full
        else:
            totals.add(part)
            full = full + chunk_full
    if totals is None or t is None or full is None:
        raise ValueError("Expected at least one chunk in `chunks`, got none.")
    _all_reduce(totals, full, distributed)
    costs_for_quantiles = first_costs if qs else None
    return _finish(totals, t.to(totals.counts.device), costs_for_quantiles, qs, bool_outcome, full)
