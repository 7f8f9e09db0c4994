"""The one way exitwise cuts rows into k folds: a seeded random partition."""

from __future__ import annotations

import torch

from exitwise._checks import check_int

__all__ = ["fold_ids"]


def fold_ids(n: int, folds: int, seed: int = 0, device: torch.device | str = "cpu") -> torch.Tensor:
    """Fold of every row ``[n]`` (int64 in ``0..folds-1``): a seeded random permutation cut
    into ``folds`` parts whose sizes differ by at most one.

    Examples
    --------
    >>> fold_ids(7, 3, seed=0).bincount().tolist()
    [3, 2, 2]
    """
    check_int(folds, "folds", minimum=2)
    if n < folds:
        raise ValueError(f"Expected at least `folds`={folds} samples to cut into folds, got {n}.")
    gen = torch.Generator().manual_seed(int(seed))
    ids = torch.empty(n, dtype=torch.long)
    ids[torch.randperm(n, generator=gen)] = torch.arange(n) % folds
    return ids.to(device)
