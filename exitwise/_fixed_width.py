r"""Fixed-width vocabulary reduction (``collect(..., reduce="fixed:K")``).

``reduce="topk:K"`` spreads the remaining mass over as many equal "rest" columns as the
flattest token needs to keep every argmax exact, so its width follows the data. This form has
the same width for every token, ``W + 1`` columns:

* ``W = K + E (+ 1 with labels)`` kept classes per token (``E`` exits): the label, every
  exit's argmax, then the last exit's most likely classes until ``W`` distinct ones, in class
  order (their exact log-probabilities in every exit);
* one rest column: in exit :math:`e`'s row, the log-sum-exp :math:`\log r_e` of its other
  classes, so every row still sums to 1. The outputs say so
  (:attr:`ExitOutputs.rest_columns <exitwise.ExitOutputs.rest_columns>` ``= 1``), and the
  argmax and the maximum are taken over the class columns only.

Exact on every token, however flat an exit: every exit's argmax and maximum probability
(hence greedy agreement with the last exit, patience, and the draft confidence a speculation
plan reads), the label's probability (NLL), the correctness. Not determined, so refused
(``ValueError``): the margin and the entropies of a non-last exit, and calibrators and metrics
that need every class (their second class may lie in the rest). Sampling acceptance
:math:`\sum_c \min(p_{d,c}, p_{L,c})` over the class columns is a lower bound on the true
value, below it by at most :math:`\min(r_d, r_L)` (the rest classes contribute between 0 and
that).
"""

from __future__ import annotations

import torch

__all__ = ["first_occurrences", "kept_columns", "reduce_fixed_width"]

_EMPTY = -1e4  # log-probability of an empty rest: exp() is 0 in float32 and float64


def first_occurrences(candidates: torch.Tensor, width: int) -> torch.Tensor:
    """The first ``width`` distinct entries of each row of ``candidates`` ``[B, M]``, in
    order (each row must hold at least ``width`` distinct values).

    Examples
    --------
    >>> first_occurrences(torch.tensor([[3, 1, 3, 2, 1]]), 3).tolist()
    [[3, 1, 2]]
    """
    m = candidates.shape[1]
    earlier = torch.ones(m, m, dtype=torch.bool, device=candidates.device).tril(-1)
    dup = ((candidates[:, :, None] == candidates[:, None, :]) & earlier).any(dim=2)
    order = torch.argsort(dup.to(torch.int8), dim=1, stable=True)  # first occurrences first
    return candidates.gather(1, order)[:, :width]


def kept_columns(
    lp: torch.Tensor, kept: torch.Tensor, labels: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """What both reductions keep of log-probabilities ``lp`` ``[B, E, V]`` given the kept
    class ids ``kept`` ``[B, W]``: their log-probabilities ``[B, E, W]``, the log of each
    exit's remaining mass ``[B, E]`` (``-inf`` when every class is kept) and the labels as
    kept positions.

    Examples
    --------
    >>> lp = torch.log(torch.tensor([[[0.5, 0.3, 0.2]]]))
    >>> kept_lp, rest, labels = kept_columns(lp, torch.tensor([[1, 0]]), torch.tensor([0]))
    >>> kept_lp.exp().round(decimals=6).tolist(), round(float(rest.exp()), 6), labels.tolist()
    ([[[0.3, 0.5]]], 0.2, [1])
    """
    b, e, _ = lp.shape
    index = kept[:, None, :].expand(b, e, kept.shape[1])
    rest = lp.scatter(2, index, float("-inf")).logsumexp(dim=-1)
    new_labels = None
    if labels is not None:
        new_labels = (kept == labels[:, None]).to(torch.int64).argmax(dim=1)
    return lp.gather(2, index), rest, new_labels


def reduce_fixed_width(
    logits: torch.Tensor, labels: torch.Tensor | None, k: int
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """One batch ``[B, E, V]`` reduced to ``[B, E, W + 1]`` (see the module docstring).

    Returns the reduced log-probabilities (kept classes, then the rest column), the labels as
    kept positions and the kept class ids ``[B, W]``.

    Examples
    --------
    >>> z = torch.zeros(5, 2, 100); z[:, 1, 4] = 8.0  # exit 0 is flat: its rest is 0.97
    >>> out, labels, kept = reduce_fixed_width(z, torch.tensor([7, 8, 9, 10, 11]), 4)
    >>> tuple(out.shape)  # 4 + 2 + 1 kept classes and 1 rest column
    (5, 2, 8)
    >>> kept.gather(1, out[..., :-1].argmax(-1))[0].tolist()  # each exit's argmax, exactly
    [0, 4]
    >>> round(float(out[0, 0, -1].exp()), 2), round(float(out[0, 0, :-1].exp().max()), 2)
    (0.93, 0.01)
    """
    _, e, v = logits.shape
    width = min(v, k + e + (labels is not None))
    lp = torch.log_softmax(logits.to(torch.float32), dim=-1)
    parts = [] if labels is None else [labels.clamp(min=0)[:, None]]
    parts += [lp.argmax(dim=-1), lp[:, -1].topk(width, dim=-1).indices]
    # in class order, so that ties resolve to the lowest class id as a full argmax does
    kept = first_occurrences(torch.cat(parts, dim=1), width).sort(dim=1).values  # [B, W]
    kept_lp, rest, new_labels = kept_columns(lp, kept, labels)
    rest = rest.clamp(min=_EMPTY)  # every class kept: an empty rest
    return torch.cat([kept_lp, rest[..., None]], dim=-1), new_labels, kept
