"""The one way exitwise cuts rows into k folds: a seeded random partition."""

from __future__ import annotations

import torch

from exitwise._checks import check_int
from exitwise._distributed import all_gather_rows, group_active, shard_offset

__all__ = ["fold_ids"]


def fold_ids(
    n: int,
    folds: int,
    seed: int = 0,
    device: torch.device | str = "cpu",
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fold of every row ``[n]`` (int64 in ``0..folds-1``): a seeded random permutation cut
    into ``folds`` parts whose sizes differ by at most one; with ``groups`` (sequence ids
    ``[n]``) the groups are cut so, and every row takes its group's fold. In a
    ``torch.distributed`` group of several processes, each rank's rows get their folds in the
    partition of every rank's rows (in rank order; sequence ids unique across ranks).

    Examples
    --------
    >>> fold_ids(7, 3, seed=0).bincount().tolist()
    [3, 2, 2]
    """
    check_int(folds, "folds", minimum=2)
    # in a process group, the rows of every rank in rank order (sequence ids unique across
    # ranks): each rank gets its part of the one-process partition of the concatenation
    offset, total = shard_offset(n, torch.device(device))
    inverse = None
    units = total
    if groups is not None:
        local = groups.cpu()
        every = torch.unique(local)
        if group_active():
            every = torch.unique(all_gather_rows(every.to(device)).cpu())
        inverse = torch.searchsorted(every, local)
        units = int(every.numel())
    if units < folds:
        what = "sequences" if groups is not None else "samples"
        raise ValueError(
            f"Expected at least `folds`={folds} {what} to cut into folds, got {units}."
        )
    gen = torch.Generator().manual_seed(int(seed))
    ids = torch.empty(units, dtype=torch.long)
    ids[torch.randperm(units, generator=gen)] = torch.arange(units) % folds
    return (ids[offset : offset + n] if inverse is None else ids[inverse]).to(device)
