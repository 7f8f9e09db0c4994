r"""The exact accuracy–cost curve of one threshold shared by all exits.

With one threshold :math:`\tau` for every exit, a sample leaves at the first exit whose score
reaches :math:`\tau`, which is the first exit whose *running maximum*
:math:`M_{n,e} = \max_{j \le e} s_{n,j}` reaches :math:`\tau`. So a sample's exit changes only
when :math:`\tau` passes one of its running-maximum records: lowering :math:`\tau` to a record
value :math:`M_{n,e}` moves the sample from its next deeper record (or the last exit) to exit
:math:`e`. Sorting all records once and taking cumulative sums of the changes in outcome and
cost gives the whole curve, at every breakpoint, in :math:`O(NE \log NE)` time and
:math:`O(NE)` memory: no grid, nothing missed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from exitwise._distributed import all_gather_rows, group_active
from exitwise.policies.inputs import check_outcome, check_scores, costs_for
from exitwise.policies.kernels import first_exit

__all__ = [
    "ExitThresholdSweep",
    "SharedThresholdSweep",
    "sweep_exit_threshold",
    "sweep_shared_threshold",
]


@dataclass(frozen=True)
class SharedThresholdSweep:
    """Every distinct outcome of a shared threshold, as aligned 1-D tensors.

    ``thresholds`` is increasing; entry ``i`` holds the statistics of any threshold in
    ``(thresholds[i - 1], thresholds[i]]``. The last entry is ``+inf`` (every sample runs to
    the last exit); the first is the lowest score at the first exit (every sample leaves
    there).

    Attributes
    ----------
    thresholds : torch.Tensor
        ``[T]`` float64, increasing, ending in ``+inf``.
    accuracy : torch.Tensor or None
        ``[T]`` for a bool outcome, else ``None``.
    mean_loss : torch.Tensor
        ``[T]``; the error rate for a bool outcome.
    mean_cost : torch.Tensor
        ``[T]``.
    exit_counts : torch.Tensor or None
        ``[T, E]`` when asked for (``return_exit_counts=True``).
    num_samples : int
    full_cost : float
        Mean cost of running every sample to the last exit.
    """

    thresholds: torch.Tensor
    accuracy: torch.Tensor | None
    mean_loss: torch.Tensor
    mean_cost: torch.Tensor
    exit_counts: torch.Tensor | None
    num_samples: int
    full_cost: float

    @property
    def speed_up(self) -> torch.Tensor:
        return self.full_cost / self.mean_cost

    def __len__(self) -> int:
        return int(self.thresholds.shape[0])


def sweep_shared_threshold(
    scores: Any, correct: Any, costs: Any, *, return_exit_counts: bool = False
) -> SharedThresholdSweep:
    """Exact accuracy (or loss) and cost of every shared threshold, from all breakpoints.

    Parameters
    ----------
    scores : array-like of shape (N, E)
    correct : array-like of shape (N, E)
        bool (right/wrong) or float (a loss).
    costs : array-like of shape (E,) or (N, E)
    return_exit_counts : bool, default=False
        Also return how many samples leave at each exit for every breakpoint (``[T, E]``
        int64; T can be up to N * (E - 1) + 1).

    Returns
    -------
    SharedThresholdSweep
        In an initialised ``torch.distributed`` group of several processes, of every rank's
        rows (gathered in rank order: ``O(N E)`` memory on each rank), the same on every rank.

    Examples
    --------
    >>> import torch
    >>> scores = torch.tensor([[0.2, 0.9], [0.8, 0.1]])
    >>> correct = torch.tensor([[False, True], [True, True]])
    >>> sw = sweep_shared_threshold(scores, correct, torch.tensor([1.0, 2.0]))
    >>> sw.thresholds
    tensor([0.2000, 0.8000,    inf], dtype=torch.float64)
    >>> sw.accuracy
    tensor([0.5000, 1.0000, 1.0000], dtype=torch.float64)
    >>> sw.mean_cost
    tensor([1.0000, 1.5000, 2.0000], dtype=torch.float64)
    """
    s = check_scores(scores)
    n, e = int(s.shape[0]), int(s.shape[1])
    o = check_outcome(correct, (n, e), s.device)
    c = costs_for(costs, (n, e), s.device)
    if group_active():  # every breakpoint of every rank: the rows, gathered in rank order
        s, o = all_gather_rows(s.contiguous()), all_gather_rows(o.contiguous())
        c = c if c.ndim == 1 else all_gather_rows(c.contiguous())
        n = int(s.shape[0])
    device = s.device
    bool_outcome = o.dtype == torch.bool
    o_sum = o.to(torch.int8 if bool_outcome else torch.float64)
    base_outcome = o_sum[:, -1].sum()
    base_cost = c[:, -1].sum() if c.ndim == 2 else c[-1] * n
    if e == 1:
        thresholds = torch.tensor([float("inf")], dtype=torch.float64, device=device)
        outcome_curve = base_outcome.reshape(1)
        cost_curve = base_cost.reshape(1)
        counts = None
        if return_exit_counts:
            counts = torch.full((1, 1), n, dtype=torch.int64, device=device)
        return _result(thresholds, outcome_curve, cost_curve, counts, n, bool_outcome, base_cost)

    flat, to_exit, from_exit = _record_events(s)
    flat_from = flat + (from_exit - to_exit)

    def delta(table: torch.Tensor) -> torch.Tensor:
        """``table[n, to] - table[n, from]`` per event, for a per-sample table [N, E]."""
        entries = table.reshape(-1)
        return entries.index_select(0, flat) - entries.index_select(0, flat_from)

    d_outcome = delta(o_sum)
    d_cost = c.index_select(0, to_exit) - c.index_select(0, from_exit) if c.ndim == 1 else delta(c)
    groups = _EventGroups(s.reshape(-1).index_select(0, flat))
    outcome_dtype = torch.int64 if bool_outcome else torch.float64
    outcome_curve = groups.curve(d_outcome, base_outcome, outcome_dtype)
    cost_curve = groups.curve(d_cost, base_cost, torch.float64)
    counts = groups.exit_counts(to_exit, from_exit, n, e) if return_exit_counts else None
    return _result(groups.thresholds, outcome_curve, cost_curve, counts, n, bool_outcome, base_cost)


def _record_events(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The running-maximum records of every sample, in row-major order: flat indices into
    ``[N, E]`` tables, the record's exit, and the exit the sample leaves at just above the
    record's value (its next deeper record, or the last exit). Exit 0 is always a record."""
    n, e = s.shape
    running = s[:, : e - 1].cummax(dim=1).values
    record = torch.zeros(n, e, dtype=torch.bool, device=s.device)  # the last exit: no events
    record[:, 0] = True
    torch.gt(running[:, 1:], running[:, :-1], out=record[:, 1 : e - 1])
    del running
    flat = torch.nonzero(record.reshape(-1), as_tuple=True)[0]
    del record
    to_exit = torch.remainder(flat, e)
    # an event at exit 0 starts a new sample: the next event belongs to the same sample
    # unless it is at exit 0
    next_is_new_row = torch.ones_like(flat, dtype=torch.bool)
    torch.eq(to_exit[1:], 0, out=next_is_new_row[:-1])
    from_exit = torch.full_like(to_exit, e - 1)
    from_exit[:-1] = torch.where(next_is_new_row[:-1], from_exit[:-1], to_exit[1:])
    return flat, to_exit, from_exit


class _EventGroups:
    """Events sorted by value, grouped by equal value: one breakpoint per group.

    A threshold tau applies every event with value >= tau (a suffix of the ascending order),
    so the state at a group's threshold is base + (total - the sum of the events before it).
    """

    def __init__(self, values: torch.Tensor) -> None:
        values, self.order = _sort(values)
        first_of_group = torch.ones_like(values, dtype=torch.bool)
        torch.ne(values[1:], values[:-1], out=first_of_group[1:])
        self.keep = torch.nonzero(first_of_group, as_tuple=True)[0]
        self.size = self.keep.shape[0] + 1
        self.thresholds = torch.full(
            (self.size,), float("inf"), dtype=torch.float64, device=values.device
        )
        self.thresholds[:-1] = values.index_select(0, self.keep)

    def curve(self, d: torch.Tensor, base: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The summed state at every breakpoint, from per-event changes ``d``."""
        d = d.index_select(0, self.order)
        out = torch.empty(self.size, dtype=dtype, device=d.device)
        out[-1] = base
        total = d.sum(dtype=dtype)
        csum = d.cumsum(0, dtype=dtype)
        out[:-1] = csum.index_select(0, self.keep)
        out[:-1] -= d.index_select(0, self.keep)
        torch.sub(total + base, out[:-1], out=out[:-1])
        return out

    def exit_counts(
        self, to_exit: torch.Tensor, from_exit: torch.Tensor, n: int, e: int
    ) -> torch.Tensor:
        """Samples leaving at each exit ``[T, E]`` at every breakpoint."""
        m = self.order.shape[0]
        device = to_exit.device
        delta_counts = torch.zeros(m, e, dtype=torch.int64, device=device)
        ones = torch.ones(m, 1, dtype=torch.int64, device=device)
        delta_counts.scatter_add_(1, to_exit[self.order].unsqueeze(1), ones)
        delta_counts.scatter_add_(1, from_exit[self.order].unsqueeze(1), -ones)
        before = delta_counts.cumsum(0)[self.keep] - delta_counts[self.keep]
        counts = torch.zeros(self.size, e, dtype=torch.int64, device=device)
        counts[:-1] = delta_counts.sum(0, keepdim=True) - before
        counts[:, -1] += n
        return counts


def _sort(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort floats ascending through order-preserving integer keys; return values and order.

    Integer sorts run as radix sorts on CPU (several times faster than float sorts). For
    IEEE floats, flipping the magnitude bits of negative numbers makes signed-integer order
    equal float order; -0.0 is first made +0.0 so equal floats get equal keys.
    """
    if values.dtype == torch.float64:
        int_type, mask = torch.int64, 0x7FFFFFFFFFFFFFFF
    else:
        values = values.to(torch.float32)
        int_type, mask = torch.int32, 0x7FFFFFFF
    key = (values + 0.0).view(int_type)
    key = torch.where(key < 0, key ^ mask, key)
    key, order = torch.sort(key)
    key = torch.where(key < 0, key ^ mask, key)
    return key.view(values.dtype), order


def _result(
    thresholds: torch.Tensor,
    outcome_sum: torch.Tensor,
    cost_sum: torch.Tensor,
    counts: torch.Tensor | None,
    n: int,
    bool_outcome: bool,
    full_cost_sum: torch.Tensor,
) -> SharedThresholdSweep:
    mean = outcome_sum.to(torch.float64) / n
    accuracy = mean if bool_outcome else None
    mean_loss = 1.0 - mean if bool_outcome else mean
    return SharedThresholdSweep(
        thresholds=thresholds,
        accuracy=accuracy,
        mean_loss=mean_loss,
        mean_cost=cost_sum.to(torch.float64) / n,
        exit_counts=counts,
        num_samples=n,
        full_cost=float(full_cost_sum) / n,
    )


@dataclass(frozen=True)
class ExitThresholdSweep:
    """Every distinct outcome of one exit's threshold, the others fixed (aligned ``[T]``).

    ``thresholds`` is decreasing from ``+inf`` (nobody leaves at the exit); entry ``i`` holds
    any threshold in ``(thresholds[i + 1], thresholds[i]]``. ``outcome_sums`` is ``[T, O]``:
    the summed outcome (hits or losses) of each outcome column; ``cost_sum`` ``[T]``;
    ``exit_counts`` ``[T, E]`` when asked for.
    """

    thresholds: torch.Tensor
    outcome_sums: torch.Tensor
    cost_sum: torch.Tensor
    exit_counts: torch.Tensor | None
    num_samples: int


def sweep_exit_threshold(
    scores: torch.Tensor,
    outcomes: list[torch.Tensor],
    costs: torch.Tensor,
    thresholds: torch.Tensor,
    exit_index: int,
    *,
    return_exit_counts: bool = False,
) -> ExitThresholdSweep:
    r"""Exact line search over exit ``j``'s threshold with the other thresholds fixed.

    Samples leaving before ``j`` are unaffected. A sample reaching ``j`` leaves there when
    :math:`s_{n,j} \ge t_j`, else at its first later exit (under the fixed thresholds), so
    lowering :math:`t_j` past :math:`s_{n,j}` moves it from that later exit to ``j``. Sorting
    the reaching samples by :math:`s_{n,j}` and taking cumulative sums of the changes gives
    every distinct outcome in :math:`O(N \log N)` time and :math:`O(N)` memory (the tuner's
    per-exit search; a batched evaluation of all N candidates would cost
    :math:`O(N^2 E / 64)`).

    Parameters
    ----------
    scores : torch.Tensor of shape (N, E)
    outcomes : list of torch.Tensor of shape (N, E)
        Bool or float outcome tables (e.g. correctness and agreement with the final exit).
    costs : torch.Tensor of shape (E,)
        Cumulative per-exit costs.
    thresholds : torch.Tensor of shape (E,)
        The current thresholds; entry ``exit_index`` is the one swept.
    exit_index : int
        ``j`` in ``[0, E - 2]``.

    Examples
    --------
    >>> import torch
    >>> scores = torch.tensor([[0.9, 0.0], [0.4, 0.0], [0.4, 0.0]], dtype=torch.float64)
    >>> correct = torch.tensor([[True, False], [False, True], [True, True]])
    >>> sw = sweep_exit_threshold(scores, [correct], torch.tensor([1.0, 2.0]),
    ...                           torch.tensor([1.0, -1.0]), 0)
    >>> sw.thresholds.tolist(), sw.outcome_sums[:, 0].tolist(), sw.cost_sum.tolist()
    ([inf, 0.9, 0.4], [2.0, 3.0, 2.0], [6.0, 5.0, 3.0])
    """
    n, e = scores.shape
    device = scores.device
    thr = thresholds.to(device=device, dtype=scores.dtype).clone()
    thr[exit_index] = torch.inf
    stay = first_exit(scores, thr)  # exits with nobody leaving at j
    reach = torch.nonzero(stay >= exit_index, as_tuple=True)[0]
    later = stay[reach]  # where reaching samples leave when they do not leave at j
    values, order = scores[reach, exit_index].to(torch.float64).sort(descending=True, stable=True)
    reach, later = reach[order], later[order]
    first_of_group = torch.ones_like(values, dtype=torch.bool)
    torch.ne(values[1:], values[:-1], out=first_of_group[1:])
    last_of_group = torch.ones_like(first_of_group)
    last_of_group[:-1] = first_of_group[1:]
    ends = torch.nonzero(last_of_group, as_tuple=True)[0]  # include every tie of a value
    candidates = torch.cat(
        [torch.tensor([torch.inf], dtype=torch.float64, device=device), values[ends]]
    )

    def curve(base: torch.Tensor, delta: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        out = torch.empty(ends.numel() + 1, dtype=dtype, device=device)
        out[0] = base
        out[1:] = base + delta.to(dtype).cumsum(0).index_select(0, ends)
        return out

    sums = []
    for table in outcomes:
        dtype = torch.int64 if table.dtype == torch.bool else torch.float64
        t = table.to(dtype)
        base = t.gather(1, stay[:, None]).sum()
        sums.append(curve(base, t[reach, exit_index] - t[reach, later], dtype))
    c = costs.to(device=device, dtype=torch.float64)
    cost_sum = curve(c[stay].sum(), c[exit_index] - c[later], torch.float64)
    counts = None
    if return_exit_counts:
        base_counts = torch.bincount(stay, minlength=e)
        delta = torch.zeros(reach.numel(), e, dtype=torch.int64, device=device)
        delta[:, exit_index] = 1
        delta.scatter_add_(1, later[:, None], -torch.ones_like(later)[:, None])
        counts = torch.cat([base_counts[None], base_counts + delta.cumsum(0)[ends]])
    outcome_sums = torch.stack([s.to(torch.float64) for s in sums], dim=1)
    return ExitThresholdSweep(candidates, outcome_sums, cost_sum, counts, n)
