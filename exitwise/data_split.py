"""The random splits of :meth:`ExitOutputs.split <exitwise.ExitOutputs.split>`: stratified by
label for samples, whole sequences for token-level data. Both draw one CPU
``torch.Generator`` permutation from the seed, so a split is the same on any device.
"""

from __future__ import annotations

import torch

from exitwise._checks import check_open_unit

__all__ = ["sequence_split", "split_indices", "stratified_split"]


def _first_count(fraction: float, total: int, what: str) -> int:
    """``round(fraction * total)``, which must leave both parts of a split non-empty."""
    first = round(fraction * total)
    if first == 0 or first == total:
        raise ValueError(
            f"Expected `fraction` to leave both parts non-empty, got {fraction} of {total} "
            f"{what} ({first} in the first part)."
        )
    return first


def stratified_split(
    n: int, labels: torch.Tensor | None, num_classes: int, fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted CPU indices of both parts: ``round(fraction * n)`` samples first, each class
    split in the same proportion (largest-remainder rounding); unstratified without labels.

    Examples
    --------
    >>> first, rest = stratified_split(6, torch.tensor([0, 0, 0, 1, 1, 1]), 2, 0.5, seed=0)
    >>> len(first), len(rest)
    (3, 3)
    """
    n_first = _first_count(fraction, n, "samples")
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=gen)
    if labels is None:
        first_idx, rest_idx = perm[:n_first], perm[n_first:]
    else:
        labels = labels.cpu()[perm]
        order = torch.argsort(labels, stable=True)
        perm = perm[order]
        counts = torch.bincount(labels, minlength=num_classes).double()
        exact = counts * n_first / n
        take = torch.floor(exact).long()
        remainder = n_first - int(take.sum())
        if remainder > 0:
            frac_part = exact - take
            extra = torch.argsort(-frac_part, stable=True)[:remainder]
            take[extra] += 1
        starts = torch.cumsum(counts.long(), 0) - counts.long()
        position = torch.arange(n) - torch.repeat_interleave(starts, counts.long())
        in_first = position < torch.repeat_interleave(take, counts.long())
        first_idx, rest_idx = perm[in_first], perm[~in_first]
    return first_idx.sort().values, rest_idx.sort().values


def sequence_split(
    groups: torch.Tensor, fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted CPU indices of both parts, whole sequences to each side:
    ``round(fraction * G)`` random sequences (of the ``G`` distinct ``groups``) go first.

    Examples
    --------
    >>> first, rest = sequence_split(torch.tensor([0, 0, 1, 1, 2]), 0.34, seed=0)
    >>> sorted(set(first.tolist()) | set(rest.tolist()))
    [0, 1, 2, 3, 4]
    """
    uniq, inverse = torch.unique(groups.cpu(), return_inverse=True)
    g = uniq.numel()
    g_first = _first_count(fraction, g, "sequences")
    gen = torch.Generator().manual_seed(int(seed))
    first_group = torch.zeros(g, dtype=torch.bool)
    first_group[torch.randperm(g, generator=gen)[:g_first]] = True
    in_first = first_group[inverse]
    return torch.nonzero(in_first).flatten(), torch.nonzero(~in_first).flatten()


def split_indices(
    n: int,
    labels: torch.Tensor | None,
    num_classes: int,
    groups: torch.Tensor | None,
    fraction: float,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The split of every data type (in memory, tables, a sharded directory): whole
    sequences with ``groups`` (:func:`sequence_split`), else stratified by label
    (:func:`stratified_split`). Sorted CPU indices of both parts.

    Examples
    --------
    >>> first, rest = split_indices(4, None, 2, None, 0.5, seed=1)
    >>> len(first), len(rest)
    (2, 2)
    """
    fraction = check_open_unit(fraction, "fraction")
    if groups is not None:
        return sequence_split(groups.cpu(), fraction, seed)
    return stratified_split(n, labels, num_classes, fraction, seed)
