"""Token rows laid out per sequence in position order: the one layout the speculation planner
and the KV-cache models read sequences from."""

from __future__ import annotations

import torch

from exitwise._checks import sequence_sort

__all__ = ["by_sequence", "sequence_order"]


def sequence_order(
    groups: torch.Tensor, positions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The token rows sorted by sequence (in id order), then position
    (:func:`exitwise._checks.sequence_sort`): ``(order [N], sequence of each sorted row [N],
    lengths [S])``.

    Examples
    --------
    >>> order, seq, lengths = sequence_order(torch.tensor([4, 4, 1]), torch.tensor([1, 0, 0]))
    >>> order.tolist(), seq.tolist(), lengths.tolist()
    ([2, 1, 0], [0, 1, 1], [1, 2])
    """
    _, seq = torch.unique(groups, return_inverse=True)
    order = sequence_sort(seq, positions.to(groups.device))
    seq_sorted = seq[order]
    return order, seq_sorted, torch.bincount(seq_sorted)


def by_sequence(
    groups: torch.Tensor, positions: torch.Tensor, values: torch.Tensor, fill: float = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``values`` ``[N, ...]`` as ``[S, T_max, ...]`` (sequences in id order, tokens in
    position order, gaps closed up, padding ``fill``), the lengths ``[S]`` and the row of
    every entry ``[S, T_max]`` (-1 for padding).

    Examples
    --------
    >>> table, lengths, rows = by_sequence(torch.tensor([4, 4, 1]), torch.tensor([1, 0, 0]),
    ...                                    torch.tensor([10, 20, 30]), fill=-1)
    >>> table.tolist(), lengths.tolist(), rows.tolist()
    ([[30, -1], [20, 10]], [1, 2], [[2, -1], [1, 0]])
    """
    device = values.device
    order, seq_sorted, lengths = sequence_order(groups.to(device), positions.to(device))
    starts = torch.cumsum(lengths, 0) - lengths
    col = torch.arange(order.numel(), device=device) - starts[seq_sorted]
    shape = (lengths.numel(), int(lengths.max()))
    table = torch.full((*shape, *values.shape[1:]), fill, dtype=values.dtype, device=device)
    table[seq_sorted, col] = values[order]
    rows = torch.full(shape, -1, dtype=torch.long, device=device)
    rows[seq_sorted, col] = order
    return table, lengths, rows
