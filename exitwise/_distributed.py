"""Shards across a ``torch.distributed`` process group: when a step combines them.

The rule of every step that accepts sharded data: inside an initialised process group of
more than one process, each rank passes its shard and every rank gets the answer of one
process on the concatenated shards (in rank order). Sums (counts, bin totals, gradients and
Hessians) are all-reduced; what needs an order (AUROC, AURC, quantile bins, isotonic fits)
gathers the per-sample values every rank needs, in rank order. Every rank must make the same
calls in the same order (they are collectives): computing a metric on one rank only, inside
a group, waits for the others forever; pass ``distributed=False`` where a step offers it, or
compute outside the group.

Gloo carries CPU tensors, NCCL CUDA tensors; the tensors are reduced where they are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

__all__ = [
    "all_gather_rows",
    "all_reduce_max",
    "all_reduce_sum",
    "barrier",
    "broadcast_from_first",
    "broadcast_object",
    "first_rank",
    "gather_rows_to_first",
    "group_active",
    "local_only",
    "on_first_rank",
    "sample_mean",
    "shard_offset",
]


def _in_place(tensor: torch.Tensor, collective) -> None:
    """Run ``collective`` on ``tensor`` in place; a strided tensor (a solver's output, say)
    goes through a contiguous copy, which the collectives need."""
    if tensor.is_contiguous():
        collective(tensor)
    else:
        buffer = tensor.contiguous()
        collective(buffer)
        tensor.copy_(buffer)


_LOCAL = {"depth": 0}  # of the process, not a thread: chunks run in worker threads too


@contextmanager
def local_only() -> Iterator[None]:
    """Inside, :func:`group_active` is False in this process: for a step that has gathered
    every rank's data (the scores and outcome tables a threshold search needs) and now runs
    the one-process code on it, on every rank alike, without combining anything again.

    Examples
    --------
    >>> with local_only():
    ...     group_active()
    False
    """
    _LOCAL["depth"] += 1
    try:
        yield
    finally:
        _LOCAL["depth"] -= 1


def on_first_rank(compute: Callable[[], Any]) -> Any:
    """``compute()`` on rank 0 of an active group (inside :func:`local_only`: its data is
    already every rank's), its result broadcast to every rank; alone, ``compute()``. An error
    on rank 0 is raised on every rank (the others would otherwise wait for a result forever).

    Examples
    --------
    >>> on_first_rank(lambda: 6 * 7)
    42
    """
    if not group_active():
        return compute()
    outcome: tuple[str, Any, Any] | None = None
    failure: BaseException | None = None
    if first_rank():
        with local_only():
            try:
                outcome = ("result", compute(), None)
            except Exception as err:  # every rank must leave the broadcast below
                failure = err
                outcome = ("error", type(err).__name__, str(err))
    outcome = broadcast_object(outcome)
    if failure is not None:
        raise failure
    kind, value, message = outcome
    if kind == "error":
        raise (TypeError if value == "TypeError" else ValueError)(f"on rank 0: {value}: {message}")
    return value


def group_active(distributed: bool | None = None) -> bool:
    """Whether to combine over the process group: ``None`` when one of more than one process
    is initialised (and not inside :func:`local_only`), ``True`` (which needs one) or
    ``False`` (never).

    Examples
    --------
    >>> group_active(), group_active(False)
    (False, False)
    """
    import torch.distributed as dist

    active = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if distributed and not active:
        raise ValueError("`distributed=True` needs an initialised torch.distributed process group.")
    return active and distributed is not False and not _LOCAL["depth"]


def first_rank() -> bool:
    """Whether this process is rank 0 of an active group, or runs alone.

    Examples
    --------
    >>> first_rank()
    True
    """
    if not group_active():
        return True
    import torch.distributed as dist

    return dist.get_rank() == 0


def all_reduce_sum(*tensors: torch.Tensor) -> None:
    """Sum each tensor over the process group, in place (every rank gets the sum)."""
    import torch.distributed as dist

    for tensor in tensors:
        _in_place(tensor, lambda t: dist.all_reduce(t, op=dist.ReduceOp.SUM))


def all_reduce_max(*tensors: torch.Tensor) -> None:
    """The element-wise maximum of each tensor over the process group, in place."""
    import torch.distributed as dist

    for tensor in tensors:
        _in_place(tensor, lambda t: dist.all_reduce(t, op=dist.ReduceOp.MAX))


def barrier() -> None:
    """Wait for every rank of an active group (nothing outside one)."""
    if group_active():
        import torch.distributed as dist

        dist.barrier()


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` (a picklable Python object: a result, an error message) on every
    rank of an active group; ``value`` itself outside one. Any backend.

    It travels pickled between the processes of the group only (never through a file).
    A broadcast returns on rank 0 as soon as its data is sent; when it is the last
    collective of a script, rank 0 could tear the group down with the data still on its way
    (a gloo run of the tests aborted on rank 0 once so). So every broadcast here ends with a
    barrier: no rank leaves before all have the value.

    Examples
    --------
    >>> broadcast_object("done")
    'done'
    """
    if not group_active():
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    dist.barrier()  # rank 0 leaves once every rank has it (see the docstring)
    return box[0]


def broadcast_from_first(*tensors: torch.Tensor) -> None:
    """Overwrite each tensor with rank 0's, in place, when the group is active.

    An iterative fit reduces its sums, so every rank sees the same numbers; but a local step
    computed from them (a Cholesky solve, a line search) may differ in the last bit between
    processes (BLAS kernels pick code paths by memory alignment), and a last-bit difference
    can turn a later branch, after which the ranks wait in different collectives forever.
    Taking rank 0's step keeps the ranks in lockstep.
    """
    if not group_active():
        return
    import torch.distributed as dist

    for tensor in tensors:
        _in_place(tensor, lambda t: dist.broadcast(t, src=0))
    dist.barrier()  # rank 0 leaves once every rank has them (see broadcast_object)


def _padded_rows(tensor: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """``tensor`` padded to the most rows any rank has (collectives need one shape), and
    every rank's row count."""
    import torch.distributed as dist

    rows = torch.tensor([tensor.shape[0]], dtype=torch.int64, device=tensor.device)
    sizes = [torch.zeros_like(rows) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, rows)
    counts = [int(s) for s in sizes]
    padded = tensor.new_zeros((max(counts), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    return padded.contiguous(), counts


def _unpadded(parts: list[torch.Tensor], counts: list[int]) -> torch.Tensor:
    return torch.cat([part[:count] for part, count in zip(parts, counts, strict=True)])


def all_gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated along dim 0 in rank order (the ranks' row counts
    may differ; the other dims must agree), on every rank."""
    import torch.distributed as dist

    padded, counts = _padded_rows(tensor)
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return _unpadded(parts, counts)


def gather_rows_to_first(tensor: torch.Tensor) -> torch.Tensor | None:
    """Every rank's ``tensor`` concatenated along dim 0 in rank order on rank 0 (``None`` on
    the other ranks, which hold nothing more than their own rows)."""
    import torch.distributed as dist

    padded, counts = _padded_rows(tensor)
    parts = [torch.empty_like(padded) for _ in counts] if dist.get_rank() == 0 else None
    dist.gather(padded, parts, dst=0)
    return None if parts is None else _unpadded(parts, counts)


def sample_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean over dim 0 (float64), over every rank's samples when the group is active: the
    sums and the counts are all-reduced, then divided.

    Examples
    --------
    >>> sample_mean(torch.tensor([[1.0, 2.0], [3.0, 6.0]])).tolist()
    [2.0, 4.0]
    """
    if not group_active():
        return values.to(torch.float64).mean(dim=0)
    total = values.to(torch.float64).sum(dim=0)
    count = torch.tensor(float(values.shape[0]), dtype=torch.float64, device=values.device)
    all_reduce_sum(total, count)
    return total / count


def shard_offset(n: int, device: torch.device) -> tuple[int, int]:
    """``(offset, total)``: where this rank's ``n`` rows start in the concatenation of every
    rank's rows (rank order), and how many there are in all; ``(0, n)`` outside a group.

    Examples
    --------
    >>> shard_offset(5, torch.device("cpu"))
    (0, 5)
    """
    if not group_active():
        return 0, n
    import torch.distributed as dist

    sizes = all_gather_rows(torch.tensor([n], dtype=torch.int64, device=device))
    rank = dist.get_rank()
    return int(sizes[:rank].sum()), int(sizes.sum())
