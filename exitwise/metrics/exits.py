"""Early-exit metrics: accuracy per exit, agreement with the final exit, overthinking, cost.

``scores`` is either floating probabilities/logits ``[N, E, C]`` (the argmax is taken; both give
the same predictions) or integer predictions ``[N, E]``.
"""

from __future__ import annotations

from typing import Any

import torch

from exitwise._checks import as_tensor, check_finite, check_labels, check_ndim

__all__ = ["consistency", "expected_cost", "overthinking", "per_exit_accuracy", "speed_up"]


def _predictions(scores: Any) -> torch.Tensor:
    tensor = as_tensor(scores, "scores")
    if tensor.is_floating_point():
        check_ndim(tensor, "scores", (3,), "[N, E, C] (floating scores) or [N, E] (predictions)")
        check_finite(tensor, "scores")
        pred = tensor.argmax(dim=-1)
    elif tensor.dtype == torch.bool or tensor.is_complex():
        raise TypeError(
            f"Expected `scores` to be floating scores or integer predictions, got {tensor.dtype}."
        )
    else:
        check_ndim(tensor, "scores", (2,), "[N, E, C] (floating scores) or [N, E] (predictions)")
        pred = tensor.long()
    if pred.shape[0] == 0 or pred.shape[1] == 0:
        raise ValueError(f"Expected at least one sample and one exit, got {tuple(pred.shape)}.")
    return pred


def _labels_for(pred: torch.Tensor, labels: Any, scores: Any) -> torch.Tensor:
    num_classes = int(scores.shape[-1]) if getattr(scores, "ndim", 0) == 3 else int(pred.max()) + 1
    labels_t = as_tensor(labels, "labels", device=pred.device)
    if getattr(scores, "ndim", 0) != 3:
        num_classes = max(num_classes, int(labels_t.max()) + 1 if labels_t.numel() else 1)
    return check_labels(labels_t, "labels", pred.shape[0], num_classes)


def per_exit_accuracy(scores: Any, labels: Any) -> torch.Tensor:
    """Accuracy of every exit, ``[E]`` float64.

    Examples
    --------
    >>> import torch
    >>> pred = torch.tensor([[0, 1], [1, 1], [0, 0]])
    >>> per_exit_accuracy(pred, torch.tensor([1, 1, 0]))
    tensor([0.6667, 1.0000], dtype=torch.float64)
    """
    pred = _predictions(scores)
    y = _labels_for(pred, labels, scores)
    return (pred == y[:, None]).to(torch.float64).mean(dim=0)


def consistency(scores: Any) -> torch.Tensor:
    """Share of samples whose prediction at each exit equals the final exit's, ``[E]``.

    The last entry is 1 by definition. Needs no labels.

    Examples
    --------
    >>> import torch
    >>> consistency(torch.tensor([[0, 1], [1, 1], [0, 0]]))
    tensor([0.6667, 1.0000], dtype=torch.float64)
    """
    pred = _predictions(scores)
    return (pred == pred[:, -1:]).to(torch.float64).mean(dim=0)


def overthinking(scores: Any, labels: Any) -> torch.Tensor:
    """Share of samples that some earlier exit gets right but the final exit gets wrong.

    The "overthinking" of Kaya et al. (Shallow-Deep Networks, ICML 2019): the accuracy an
    oracle exit would recover over the full model. A scalar (float64).

    Examples
    --------
    >>> import torch
    >>> overthinking(torch.tensor([[1, 0], [1, 1], [0, 0]]), torch.tensor([1, 1, 1]))
    tensor(0.3333, dtype=torch.float64)
    """
    pred = _predictions(scores)
    y = _labels_for(pred, labels, scores)
    hit = pred == y[:, None]
    earlier = hit[:, :-1].any(dim=1) if hit.shape[1] > 1 else torch.zeros_like(hit[:, 0])
    return (earlier & ~hit[:, -1]).to(torch.float64).mean()


def _costs_per_sample(exit_indices: Any, costs: Any) -> torch.Tensor:
    idx = as_tensor(exit_indices, "exit_indices")
    if idx.is_floating_point() or idx.dtype == torch.bool or idx.ndim != 1:
        raise TypeError(
            f"Expected `exit_indices` to be a 1-D integer tensor [N], got dtype {idx.dtype} "
            f"with shape {tuple(idx.shape)}."
        )
    c = as_tensor(costs, "costs", device=idx.device).to(torch.float64)
    check_ndim(c, "costs", (1, 2), "[E] or [N, E]")
    num_exits = c.shape[-1]
    if idx.numel() == 0:
        raise ValueError("Expected `exit_indices` to hold at least one sample, got N = 0.")
    if int(idx.min()) < 0 or int(idx.max()) >= num_exits:
        raise ValueError(
            f"Expected `exit_indices` in [0, {num_exits - 1}], got values in "
            f"[{int(idx.min())}, {int(idx.max())}]."
        )
    if c.ndim == 1:
        return c[idx.long()]
    if c.shape[0] != idx.shape[0]:
        raise ValueError(
            f"Expected per-sample `costs` [N, E] with N = {idx.shape[0]}, got {c.shape[0]}."
        )
    return c.gather(1, idx.long()[:, None]).squeeze(1)


def expected_cost(exit_indices: Any, costs: Any) -> torch.Tensor:
    """Mean cost of a set of exit decisions: ``mean(costs[exit_indices])``.

    Parameters
    ----------
    exit_indices : array-like of shape (N,)
        The exit each sample leaves at.
    costs : array-like of shape (E,) or (N, E)
        Cumulative cost of reaching each exit (per sample when 2-D).

    Examples
    --------
    >>> import torch
    >>> expected_cost(torch.tensor([0, 2, 1]), torch.tensor([1.0, 2.0, 4.0]))
    tensor(2.3333, dtype=torch.float64)
    """
    return _costs_per_sample(exit_indices, costs).mean()


def speed_up(exit_indices: Any, costs: Any) -> torch.Tensor:
    """Mean cost of the full model (last exit) divided by the policy's mean cost.

    Examples
    --------
    >>> import torch
    >>> speed_up(torch.tensor([0, 2, 1]), torch.tensor([1.0, 2.0, 4.0]))
    tensor(1.7143, dtype=torch.float64)
    """
    per_sample = _costs_per_sample(exit_indices, costs)
    c = as_tensor(costs, "costs", device=per_sample.device).to(torch.float64)
    return c[..., -1].mean() / per_sample.mean()
