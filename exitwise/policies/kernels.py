"""The evaluator's exact kernels and sufficient statistics.

``first_exit`` is the whole idea; ``_dense_totals`` (torch, any device, chunked by memory)
and the CPU bitset kernel (:mod:`exitwise.policies._bitset`) compute the same integer counts
and float64 sums per candidate; ``_all_reduce`` sums them over a ``torch.distributed``
group; ``finish`` turns them into a :class:`ThresholdEvaluation`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from exitwise._chunk_threads import chunk_workers, map_chunks
from exitwise._chunks import row_slices
from exitwise._distributed import all_reduce_sum, group_active

__all__ = ["ThresholdEvaluation", "first_exit", "quantiles_from_counts"]

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

    @property
    def relative_cost(self) -> torch.Tensor:
        """Each candidate's mean cost as a share of the full model's ``[K]`` (the one owner of
        ``mean_cost / full_cost``)."""
        return self.mean_cost / self.full_cost

    @property
    def percentiles(self) -> tuple[float, ...]:
        """The requested cost percentiles (0-100), aligned with ``cost_quantiles``' columns."""
        return tuple(round(100.0 * q, 10) for q in self.quantiles)

    def __len__(self) -> int:
        return int(self.thresholds.shape[0])


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
    workers = chunk_workers(device)
    # sample chunks in worker threads (fast on a busy machine): a few per worker, to balance
    n_chunk = n if keep_sample_costs else min(n, 1 << 16, max(1024, -(-n // (4 * workers))))
    k_chunk = max(1, min(k, memory_budget // max(1, workers * n_chunk * per_pair)))
    sum_dtype = torch.int64 if outcome.dtype == torch.bool else torch.float64
    parts = []
    for k0 in range(0, k, k_chunk):
        thr = thresholds[k0 : k0 + k_chunk]

        def block(rows: slice, _: None, thr: torch.Tensor = thr) -> _Totals:
            exits = first_exit(scores[rows], thr)  # [kc, nc]
            chunk_costs = costs[rows] if costs.ndim == 2 else costs
            return _reduce_exits(exits, outcome[rows], chunk_costs, sum_dtype, keep_sample_costs)

        pieces = map_chunks(block, list(row_slices(n, 1, n_chunk)), device)
        part = pieces[0]
        for piece in pieces[1:]:  # in chunk order (one chunk when keeping costs)
            part.add(piece)
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
    answers: torch.Tensor | None = None,
) -> _Totals:
    """Sufficient statistics of exit decisions ``[K, n]`` on ``n`` samples (``answers``
    ``[K, n]``: the exit whose outcome counts, when it is not the exit itself)."""
    k, n = exits.shape
    e = outcome.shape[1]
    counts = torch.zeros(k, e, dtype=torch.int64, device=exits.device)
    counts.scatter_add_(1, exits, torch.ones_like(exits))
    at = exits if answers is None else answers
    picked = outcome.unsqueeze(0).expand(k, -1, -1).gather(2, at.unsqueeze(-1)).squeeze(-1)
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
    from exitwise.policies._bitset import (
        bitset_block_size,
        bitset_block_stats,
        checkpoint_interval,
    )

    n, e = scores.shape
    dtype = torch.promote_types(scores.dtype, thresholds.dtype)
    s_np = scores.to(dtype).numpy()
    o_np = outcome.numpy()
    t_np = thresholds.to(dtype).numpy()
    every = checkpoint_interval(n, thresholds.shape[0])
    block = bitset_block_size(e, memory_budget, every)
    counts = np.zeros((thresholds.shape[0], e), dtype=np.int64)
    hits = np.zeros(thresholds.shape[0], dtype=np.int64)
    threads = max(1, torch.get_num_threads())
    for n0 in range(0, n, block):
        c, h = bitset_block_stats(
            s_np[n0 : n0 + block],
            o_np[n0 : n0 + block],
            t_np,
            threads=threads,
            checkpoint_every=every,
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
    if not group_active(distributed):
        return
    if totals.sample_costs:
        raise ValueError(
            "Cost quantiles of per-sample costs [N, E] cannot be combined across processes "
            "exactly; pass per-exit costs [E] or no quantiles when running distributed."
        )
    all_reduce_sum(totals.counts, totals.outcome_sum, totals.cost_sum, totals.num_samples, full)


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
