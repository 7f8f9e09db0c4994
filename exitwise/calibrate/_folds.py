"""The one way exitwise cuts rows into k folds: a seeded random partition."""

from __future__ import annotations

import torch

from exitwise._checks import check_int

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
    ``[n]``) the groups are cut so, and every row takes its group's fold.

    Examples
    --------
    >>> fold_ids(7, 3, seed=0).bincount().tolist()
    [3, 2, 2]
    """
    check_int(folds, "folds", minimum=2)
    inverse = None
    units = n
    if groups is not None:
        _, inverse = torch.unique(groups.cpu(), return_inverse=True)
        units = int(inverse.max()) + 1
    if units < folds:
        what = "sequences" if groups is not None else "samples"
        raise ValueError(
            f"Expected at least `folds`={folds} {what} to cut into folds, got {units}."
        )
    gen = torch.Generator().manual_seed(int(seed))
    ids = torch.empty(units, dtype=torch.long)
    ids[torch.randperm(units, generator=gen)] = torch.arange(units) % folds
    return (ids if inverse is None else ids[inverse]).to(device)
