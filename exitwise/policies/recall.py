r"""Recall policies: a sample that stops at depth ``e`` answers with the most confident exit
among ``0..e`` instead of exit ``e`` itself (T-Tamer, Shallow-Deep Networks' overthinking fix).

The exit *depth* (and so the cost) is still decided by the thresholds; only *which computed
exit answers* changes. That answer depends on the sample and the depth alone,

.. math:: a(n, e) = \max \arg\max_{j \le e} s_{n, j}

(ties go to the deepest of the tied exits), so a recall policy is evaluated exactly by any
kernel of the evaluator after replacing the outcome table ``O[n, e]`` by ``O[n, a(n, e)]``:
:func:`recalled_outcome`. The runtime controller keeps the running best score and answer
(:meth:`~exitwise.policies.ExitController.decide_with_recall`).
"""

from __future__ import annotations

from typing import Literal

import torch

from exitwise._checks import check_choice

__all__ = ["RECALLS", "Recall", "recall_indices", "recalled_outcome"]

Recall = Literal["none", "most_confident"]
#: the recall rules policies know
RECALLS: tuple[str, ...] = ("none", "most_confident")


def recall_indices(scores: torch.Tensor) -> torch.Tensor:
    """``[N, E]`` int64: the exit that answers a sample stopping at each depth.

    Examples
    --------
    >>> import torch
    >>> recall_indices(torch.tensor([[0.9, 0.5, 0.9, 0.2]]))
    tensor([[0, 0, 2, 2]])
    """
    if scores.ndim != 2:
        raise ValueError(f"Expected `scores` of shape [N, E], got {tuple(scores.shape)}.")
    n, e = scores.shape
    out = torch.empty(n, e, dtype=torch.int64, device=scores.device)
    best = scores[:, 0].clone()
    index = torch.zeros(n, dtype=torch.int64, device=scores.device)
    out[:, 0] = 0
    for j in range(1, e):
        take = scores[:, j] >= best
        best = torch.where(take, scores[:, j], best)
        index = torch.where(take, torch.full_like(index, j), index)
        out[:, j] = index
    return out


def recalled_outcome(
    outcome: torch.Tensor, scores: torch.Tensor, recall: Recall = "most_confident"
) -> torch.Tensor:
    """The outcome table ``[N, E]`` of a recall policy: ``outcome[n, a(n, e)]``.

    ``recall="none"`` returns ``outcome`` unchanged.

    Examples
    --------
    >>> import torch
    >>> correct = torch.tensor([[True, False, False]])
    >>> recalled_outcome(correct, torch.tensor([[0.8, 0.6, 0.7]]))
    tensor([[True, True, True]])
    """
    check_choice(recall, "recall", RECALLS)
    if recall == "none":
        return outcome
    if outcome.shape != scores.shape:
        raise ValueError(
            f"Expected `outcome` and `scores` of the same shape [N, E], got "
            f"{tuple(outcome.shape)} and {tuple(scores.shape)}."
        )
    return outcome.gather(1, recall_indices(scores).to(outcome.device))
