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
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from exitwise._checks import as_tensor, check_choice, check_finite, check_int

__all__ = [
    "ThresholdEvaluation",
    "evaluate",
    "evaluate_thresholds",
    "evaluate_thresholds_streaming",
    "first_exit",
]

Backend = Literal["auto", "dense", "bitset"]
DEFAULT_MEMORY_BUDGET = 1 << 30
_BITSET_MIN_CANDIDATES = 16


@dataclass(frozen=True)
class ThresholdEvaluation:
    """What each of K candidate policies does on the data.

    Attributes
    ----------
    thresholds : torch.Tensor
        The candidates ``[K, E]``.
    exit_counts : torch.Tensor
        Samples leaving at each exit ``[K, E]`` (int64).
    num_samples : int
        N (summed over chunks and processes).
    accuracy : torch.Tensor or None
        Share of correct answers ``[K]`` (float64) when the outcome is bool, else ``None``.
    mean_loss : torch.Tensor
        Mean loss ``[K]``: the error rate ``1 - accuracy`` for a bool outcome.
    mean_cost : torch.Tensor
        Mean cost per sample ``[K]`` (float64).
    cost_quantiles : torch.Tensor or None
        Cost at each requested quantile ``[K, Q]`` (inverted CDF: the smallest cost that at
        least a share ``q`` of the samples do not exceed, numpy's ``method="inverted_cdf"``).
    quantiles : tuple of float
        The requested quantiles.
    full_cost : float
        Mean cost of running every sample to the last exit.
    """

    thresholds: torch.Tensor
    exit_counts: torch.Tensor
    num_samples: int
    accuracy: torch.Tensor | None
    mean_loss: torch.Tensor
    mean_cost: torch.Tensor
    cost_quantiles: torch.Tensor | None
    quantiles: tuple[float, ...]
    full_cost: float

    @property
    def exit_fractions(self) -> torch.Tensor:
        """Share of samples leaving at each exit ``[K, E]``."""
        return self.exit_counts.to(torch.float64) / self.num_samples

    @property
    def speed_up(self) -> torch.Tensor:
        """Full-model cost divided by each candidate's mean cost ``[K]``."""
        return self.full_cost / self.mean_cost

    def __len__(self) -> int:
        return int(self.thresholds.shape[0])


# ----------------------------------------------------------------------------- validation
def _scores(scores: Any) -> torch.Tensor:
    s = as_tensor(scores, "scores")
    if s.ndim != 2:
        raise ValueError(f"Expected `scores` to have shape [N, E], got shape {tuple(s.shape)}.")
    if not s.is_floating_point():
        s = s.to(torch.float64)
    if s.shape[0] == 0 or s.shape[1] == 0:
        raise ValueError(f"Expected `scores` with N >= 1 and E >= 1, got {tuple(s.shape)}.")
    check_finite(s, "scores", ("sample", "exit"), allow_inf=True)
    return s


def _outcome(outcome: Any, shape: tuple[int, int], device: torch.device) -> torch.Tensor:
    o = as_tensor(outcome, "correct", device=device)
    if tuple(o.shape) != shape:
        raise ValueError(
            f"Expected `correct` (bool) or loss (float) of shape [N, E] = {list(shape)}, got "
            f"{list(o.shape)}."
        )
    if o.dtype != torch.bool and not o.is_floating_point():
        raise TypeError(
            f"Expected `correct` to be bool (right/wrong) or floating (a loss), got {o.dtype}."
        )
    if o.is_floating_point():
        check_finite(o, "correct", ("sample", "exit"))
    return o


def _costs(costs: Any, shape: tuple[int, int], device: torch.device) -> torch.Tensor:
    n, e = shape
    c = as_tensor(costs, "costs", device=device)
    if c.dtype == torch.bool or c.is_complex():
        raise TypeError(f"Expected `costs` to be real numbers, got dtype {c.dtype}.")
    c = c.to(torch.float64)
    if tuple(c.shape) not in ((e,), (n, e)):
        raise ValueError(
            f"Expected `costs` of shape [E] = [{e}] or [N, E] = [{n}, {e}], got {list(c.shape)}."
        )
    check_finite(c, "costs", ("sample", "exit") if c.ndim == 2 else ("exit",))
    if c.ndim == 1 and e > 1 and bool((c[1:] < c[:-1]).any()):
        raise ValueError(
            f"Expected per-exit `costs` [E] to be cumulative (non-decreasing), got {c.tolist()}."
        )
    return c


def _thresholds(thresholds: Any, num_exits: int, device: torch.device) -> torch.Tensor:
    t = as_tensor(thresholds, "thresholds", device=device)
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"Expected `thresholds` to be real numbers, got dtype {t.dtype}.")
    t = t.to(torch.float64)
    if t.ndim == 1:
        t = t[None, :]
    if t.ndim != 2 or t.shape[1] != num_exits:
        raise ValueError(
            f"Expected `thresholds` of shape [K, E] with E = {num_exits} (one threshold per "
            f"exit; the last exit always answers), got {list(t.shape)}."
        )
    if t.shape[0] == 0:
        raise ValueError("Expected at least one candidate in `thresholds`, got K = 0.")
    if bool(torch.isnan(t).any()):
        first = torch.nonzero(torch.isnan(t))[0].tolist()
        raise ValueError(
            f"`thresholds` has NaN at candidate {first[0]}, exit {first[1]}; use +inf for "
            "'never exit here' and -inf for 'always exit here'."
        )
    return t


def _quantiles(quantiles: Sequence[float] | None) -> tuple[float, ...]:
    if quantiles is None:
        return ()
    qs = tuple(float(q) for q in quantiles)
    for q in qs:
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"Expected `quantiles` in [0, 1], got {q}.")
    return qs


# ----------------------------------------------------------------------------- kernels
def first_exit(scores: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Exit index of every sample for every candidate: ``[N]`` for ``[E]``, ``[K, N]`` for
    ``[K, E]`` thresholds. The first exit whose score reaches its threshold; else the last.

    Examples
    --------
    >>> import torch
    >>> scores = torch.tensor([[0.2, 0.9, 0.5], [0.8, 0.1, 0.3]])
    >>> first_exit(scores, torch.tensor([0.5, 0.5, 0.5]))
    tensor([1, 0])
    >>> first_exit(scores, torch.tensor([[float("inf")] * 3, [-float("inf")] * 3]))
    tensor([[2, 2],
            [0, 0]])
    """
    single = thresholds.ndim == 1
    thr = thresholds[None] if single else thresholds
    fire = scores.unsqueeze(0) >= thr.unsqueeze(1)  # [K, N, E]
    fire[..., -1] = True
    exits = fire.to(torch.uint8).argmax(dim=-1)  # first maximum = first True
    return exits[0] if single else exits


@dataclass
class _Totals:
    """Sufficient statistics of K candidates, summed over chunks (and processes)."""

    counts: torch.Tensor  # [K, E] int64
    outcome_sum: torch.Tensor  # [K] int64 (bool outcome) or float64 (loss)
    cost_sum: torch.Tensor  # [K] float64 (per-sample costs only; else from counts)
    num_samples: torch.Tensor  # [] int64
    sample_costs: list[torch.Tensor]  # [K, n] per chunk, only when quantiles of [N, E] costs

    def add(self, other: _Totals) -> _Totals:
        self.counts += other.counts
        self.outcome_sum += other.outcome_sum
        self.cost_sum += other.cost_sum
        self.num_samples += other.num_samples
        self.sample_costs.extend(other.sample_costs)
        return self


def _dense_totals(
    scores: torch.Tensor,
    outcome: torch.Tensor,
    costs: torch.Tensor,
    thresholds: torch.Tensor,
    memory_budget: int,
    keep_sample_costs: bool,
) -> _Totals:
    n, e = scores.shape
    k = thresholds.shape[0]
    device = scores.device
    per_pair = 2 * e + 32  # fire mask, uint8 copy, exit index, gathered outcome and cost
    n_chunk = n if keep_sample_costs else min(n, 1 << 16)
    k_chunk = max(1, min(k, memory_budget // max(1, n_chunk * per_pair)))
    sum_dtype = torch.int64 if outcome.dtype == torch.bool else torch.float64
    parts = []
    for k0 in range(0, k, k_chunk):
        thr = thresholds[k0 : k0 + k_chunk]
        part = None
        for n0 in range(0, n, n_chunk):
            exits = first_exit(scores[n0 : n0 + n_chunk], thr)  # [kc, nc]
            chunk_costs = costs[n0 : n0 + n_chunk] if costs.ndim == 2 else costs
            piece = _reduce_exits(
                exits, outcome[n0 : n0 + n_chunk], chunk_costs, sum_dtype, keep_sample_costs
            )
            part = piece if part is None else part.add(piece)  # one chunk when keeping costs
        parts.append(part)
    return _Totals(
        torch.cat([p.counts for p in parts]),
        torch.cat([p.outcome_sum for p in parts]),
        torch.cat([p.cost_sum for p in parts]),
        torch.tensor(n, dtype=torch.int64, device=device),
        [torch.cat([p.sample_costs[0] for p in parts])] if keep_sample_costs else [],
    )


def _reduce_exits(
    exits: torch.Tensor,
    outcome: torch.Tensor,
    costs: torch.Tensor,
    sum_dtype: torch.dtype,
    keep_sample_costs: bool,
) -> _Totals:
    """Sufficient statistics of exit decisions ``[K, n]`` on ``n`` samples."""
    k, n = exits.shape
    e = outcome.shape[1]
    counts = torch.zeros(k, e, dtype=torch.int64, device=exits.device)
    counts.scatter_add_(1, exits, torch.ones_like(exits))
    picked = outcome.unsqueeze(0).expand(k, -1, -1).gather(2, exits.unsqueeze(-1)).squeeze(-1)
    outcome_sum = picked.sum(dim=1, dtype=sum_dtype)
    cost_sum = torch.zeros(k, dtype=torch.float64, device=exits.device)
    kept: list[torch.Tensor] = []
    if costs.ndim == 2:
        c = costs.unsqueeze(0).expand(k, -1, -1).gather(2, exits.unsqueeze(-1)).squeeze(-1)
        cost_sum = c.sum(dim=1)
        if keep_sample_costs:
            kept = [c]
    num = torch.tensor(n, dtype=torch.int64, device=exits.device)
    return _Totals(counts, outcome_sum, cost_sum, num, kept)


def _bitset_totals(
    scores: torch.Tensor, outcome: torch.Tensor, thresholds: torch.Tensor, memory_budget: int
) -> _Totals:
    from exitwise.policies._bitset import bitset_block_size, bitset_block_stats

    n, e = scores.shape
    dtype = torch.promote_types(scores.dtype, thresholds.dtype)
    s_np = scores.to(dtype).numpy()
    o_np = outcome.numpy()
    t_np = thresholds.to(dtype).numpy()
    block = bitset_block_size(e, memory_budget)
    counts = np.zeros((thresholds.shape[0], e), dtype=np.int64)
    hits = np.zeros(thresholds.shape[0], dtype=np.int64)
    threads = max(1, torch.get_num_threads())
    for n0 in range(0, n, block):
        c, h = bitset_block_stats(
            s_np[n0 : n0 + block], o_np[n0 : n0 + block], t_np, threads=threads
        )
        counts += c
        hits += h
    return _Totals(
        torch.from_numpy(counts),
        torch.from_numpy(hits),
        torch.zeros(thresholds.shape[0], dtype=torch.float64),
        torch.tensor(n, dtype=torch.int64),
        [],
    )


def _chunk_totals(
    scores: torch.Tensor,
    outcome: torch.Tensor,
    costs: torch.Tensor,
    thresholds: torch.Tensor,
    backend: str,
    memory_budget: int,
    keep_sample_costs: bool,
) -> _Totals:
    bitset_ok = scores.device.type == "cpu" and outcome.dtype == torch.bool and costs.ndim == 1
    if backend == "bitset" and not bitset_ok:
        raise ValueError(
            "backend='bitset' needs CPU tensors, a bool `correct` and per-exit `costs` [E]; "
            "use backend='dense' (or 'auto') for losses, per-sample costs or GPU tensors."
        )
    few = thresholds.shape[0] < _BITSET_MIN_CANDIDATES  # the index would cost more than it saves
    if backend == "bitset" or (backend == "auto" and bitset_ok and not few):
        return _bitset_totals(scores, outcome, thresholds, memory_budget)
    return _dense_totals(scores, outcome, costs, thresholds, memory_budget, keep_sample_costs)


def _full_cost_sum(costs: torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    """Total cost of running ``n`` samples to the last exit (a fresh float64 scalar)."""
    full = costs[:, -1].sum() if costs.ndim == 2 else costs[-1] * n
    return torch.as_tensor(full, dtype=torch.float64).to(device).clone()


def _all_reduce(totals: _Totals, full: torch.Tensor, distributed: bool | None) -> None:
    """Sum the statistics (and the full-model cost ``full``) over the process group."""
    import torch.distributed as dist

    active = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if distributed is False or not active:
        if distributed and not active:
            raise ValueError(
                "`distributed=True` needs an initialised torch.distributed process group."
            )
        return
    if totals.sample_costs:
        raise ValueError(
            "Cost quantiles of per-sample costs [N, E] cannot be combined across processes "
            "exactly; pass per-exit costs [E] or no quantiles when running distributed."
        )
    for tensor in (totals.counts, totals.outcome_sum, totals.cost_sum, totals.num_samples, full):
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


def _order_statistic(quantiles: Sequence[float], n: int, device: torch.device) -> torch.Tensor:
    """1-based rank of the inverted-CDF quantile: the smallest r with r / n >= q."""
    q = torch.tensor(list(quantiles), dtype=torch.float64, device=device)
    return torch.clamp(torch.ceil(q * n), min=1).to(torch.int64)


def quantiles_from_counts(
    counts: torch.Tensor, costs: torch.Tensor, quantiles: Sequence[float]
) -> torch.Tensor:
    """Cost quantiles ``[K, Q]`` from exit counts ``[K, E]`` and non-decreasing costs ``[E]``.

    With per-exit costs the cost distribution of a candidate is its exit histogram, so the
    inverted-CDF quantile is the cost of the first exit whose cumulative count reaches the
    quantile's order statistic.
    """
    n = int(counts[0].sum())
    rank = _order_statistic(quantiles, n, counts.device)
    cum = counts.cumsum(dim=1)
    idx = torch.searchsorted(cum, rank.expand(cum.shape[0], -1).contiguous())
    return costs.to(counts.device)[idx.clamp(max=counts.shape[1] - 1)]


def _finish(
    totals: _Totals,
    thresholds: torch.Tensor,
    costs: torch.Tensor | None,
    quantiles: tuple[float, ...],
    bool_outcome: bool,
    full_cost_sum: torch.Tensor,
) -> ThresholdEvaluation:
    n = int(totals.num_samples)
    counts = totals.counts
    if costs is not None and costs.ndim == 1:
        cost_sum = counts.to(torch.float64) @ costs.to(counts.device)
    else:
        cost_sum = totals.cost_sum
    mean_cost = cost_sum / n
    if bool_outcome:
        accuracy = totals.outcome_sum.to(torch.float64) / n
        mean_loss = 1.0 - accuracy
    else:
        accuracy = None
        mean_loss = totals.outcome_sum.to(torch.float64) / n
    cost_q = None
    if quantiles:
        if costs is not None and costs.ndim == 1:
            cost_q = quantiles_from_counts(counts, costs, quantiles)
        else:
            values = torch.cat(totals.sample_costs, dim=1).sort(dim=1).values
            cost_q = values[:, _order_statistic(quantiles, n, counts.device) - 1]
    return ThresholdEvaluation(
        thresholds=thresholds,
        exit_counts=counts,
        num_samples=n,
        accuracy=accuracy,
        mean_loss=mean_loss,
        mean_cost=mean_cost,
        cost_quantiles=cost_q,
        quantiles=quantiles,
        full_cost=float(full_cost_sum) / n,
    )


# ----------------------------------------------------------------------------- public API
def evaluate_thresholds(
    scores: Any,
    correct: Any,
    costs: Any,
    thresholds: Any,
    *,
    quantiles: Sequence[float] | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    backend: Backend = "auto",
    distributed: bool | None = None,
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
    quantiles : sequence of float in [0, 1], optional
        Also report these quantiles of the per-sample cost (e.g. ``(0.5, 0.99)``).
    memory_budget : int, default=2**30
        Bytes of working memory; candidates and samples are processed in chunks to stay in it.
    backend : {"auto", "dense", "bitset"}, default="auto"
        Kernel; all give identical results. "auto" takes the bitset kernel on CPU when the
        outcome is bool, costs are per exit and there are at least 16 candidates.
    distributed : bool, optional
        Sum statistics across the processes of an initialised ``torch.distributed`` group
        (each rank passes its own shard of samples). ``None``: when a group is initialised.

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
    s = _scores(scores)
    shape = (int(s.shape[0]), int(s.shape[1]))
    o = _outcome(correct, shape, s.device)
    c = _costs(costs, shape, s.device)
    t = _thresholds(thresholds, shape[1], s.device)
    qs = _quantiles(quantiles)
    keep = bool(qs) and c.ndim == 2
    totals = _chunk_totals(s, o, c, t, backend, memory_budget, keep)
    full = _full_cost_sum(c, shape[0], totals.counts.device)
    _all_reduce(totals, full, distributed)
    return _finish(totals, t.to(totals.counts.device), c, qs, o.dtype == torch.bool, full)


def evaluate_thresholds_streaming(
    chunks: Iterable[tuple[Any, Any, Any]],
    thresholds: Any,
    *,
    quantiles: Sequence[float] | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    backend: Backend = "auto",
    distributed: bool | None = None,
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
    qs = _quantiles(quantiles)
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
        s = _scores(chunk[0])
        shape = (int(s.shape[0]), int(s.shape[1]))
        o = _outcome(chunk[1], shape, s.device)
        c = _costs(chunk[2], shape, s.device)
        if t is None:
            t = _thresholds(thresholds, shape[1], s.device)
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


def evaluate(
    policies: Any,
    outputs: Any,
    *,
    reference: Literal["labels", "final"] = "labels",
    quantiles: Sequence[float] | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> ThresholdEvaluation:
    """Evaluate one policy or a list of policies on :class:`~exitwise.ExitOutputs`.

    Threshold policies sharing a signal are evaluated together by
    :func:`evaluate_thresholds`; other policies (fixed exit, oracle, SDN fallback) through
    their exit indices. Correctness is against the labels, or agreement with the final exit
    with ``reference="final"``; costs are ``outputs.costs``.

    Returns
    -------
    ThresholdEvaluation
        One row per policy, in order; ``thresholds`` is NaN for policies without thresholds.

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> from exitwise.policies import FixedExitPolicy, ThresholdPolicy
    >>> out = load_default()
    >>> r = evaluate([ThresholdPolicy("max_probability", 0.9), FixedExitPolicy(-1)], out)
    >>> [round(a, 4) for a in r.accuracy.tolist()]
    [0.8811, 0.8809]
    """
    from exitwise.policies.base import ExitPolicy
    from exitwise.policies.threshold import ThresholdPolicy
    from exitwise.signals import compute_signal

    items = [policies] if isinstance(policies, ExitPolicy) else list(policies)
    if not items:
        raise ValueError("Expected at least one policy, got none.")
    for i, policy in enumerate(items):
        if not isinstance(policy, ExitPolicy):
            raise TypeError(f"Expected ExitPolicy objects, got {type(policy).__name__} at {i}.")
    correct = outputs.correct(reference)
    e = outputs.num_exits
    qs = _quantiles(quantiles)
    simple = [
        type(p) is ThresholdPolicy and p.fallback == "last" and p.signal == items[0].signal
        for p in items
    ]
    if all(simple):
        scores = compute_signal(outputs, items[0].signal)
        thresholds = torch.stack([p.threshold_vector(e, scores.device) for p in items])
        return evaluate_thresholds(
            scores,
            correct,
            outputs.costs,
            thresholds,
            quantiles=qs,
            memory_budget=memory_budget,
            distributed=False,
        )
    exits = torch.stack([p.exit_indices(outputs) for p in items])
    totals = _reduce_exits(exits, correct, outputs.costs, torch.int64, False)
    thresholds = torch.full((len(items), e), float("nan"), dtype=torch.float64, device=exits.device)
    for i, policy in enumerate(items):
        if isinstance(policy, ThresholdPolicy):
            thresholds[i] = policy.threshold_vector(e, exits.device)
    full = _full_cost_sum(outputs.costs, outputs.num_samples, exits.device)
    return _finish(totals, thresholds, outputs.costs, qs, True, full)
