r"""Sequence-level risk control: Learn-then-Test with the sequence as the statistical unit.

Tokens of one sequence are dependent, so a guarantee computed over tokens treats dependent
samples as independent. Here each sequence :math:`g` gets one loss in [0, 1] from its tokens'
losses :math:`\ell_{n}` at the exits the policy chose:

* ``"fraction"``: :math:`L_g = \frac{1}{|g|}\sum_{n \in g} \ell_n` (e.g. the share of tokens
  whose early answer differs from the final exit's);
* ``"any"``: :math:`L_g = \max_{n \in g} \ell_n` (for 0/1 losses: "any token differs").

The guarantee :math:`P(\mathbb{E}[L_g] \le \delta) \ge 1 - \epsilon` is then over sequences
drawn i.i.d., tested along a fixed threshold order with p-values for bounded losses
(Hoeffding–Bentkus, Waudby-Smith–Ramdas betting; the exact binomial tail for "any" of 0/1
losses) on the :math:`G` sequence losses.
"""

from __future__ import annotations

import torch

from exitwise._distributed import all_gather_rows, group_active, sample_mean
from exitwise.policies.kernels import first_exit
from exitwise.policies.p_values import binomial_p_value, hoeffding_bentkus_p_value, wsr_p_value

__all__ = ["SEQUENCE_LOSSES", "sequence_losses", "sequence_risk_path"]

#: how token losses become one loss per sequence
SEQUENCE_LOSSES = ("fraction", "any")


def sequence_losses(token_losses: torch.Tensor, groups: torch.Tensor, how: str) -> torch.Tensor:
    """One loss per sequence ``[G]`` (sequences in increasing id order) from token losses
    ``[N]``: their mean (``"fraction"``) or maximum (``"any"``).

    Examples
    --------
    >>> import torch
    >>> losses = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0])
    >>> groups = torch.tensor([7, 7, 2, 2, 2])
    >>> sequence_losses(losses, groups, "fraction"), sequence_losses(losses, groups, "any")
    (tensor([0.3333, 0.5000], dtype=torch.float64), tensor([1., 1.], dtype=torch.float64))
    """
    _, inverse = torch.unique(groups, return_inverse=True)
    g = int(inverse.max()) + 1 if inverse.numel() else 0
    values = token_losses.to(torch.float64)
    if how == "any":
        out = torch.full((g,), -torch.inf, dtype=torch.float64, device=values.device)
        return out.scatter_reduce(0, inverse, values, "amax")
    sums = torch.zeros(g, dtype=torch.float64, device=values.device).index_add_(0, inverse, values)
    counts = torch.bincount(inverse, minlength=g).to(torch.float64)
    return sums / counts


def sequence_risk_path(
    scores: torch.Tensor,
    table: torch.Tensor,
    groups: torch.Tensor,
    order: torch.Tensor,
    *,
    delta: float,
    epsilon: float,
    how: str,
    p_value: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int | None, int]:
    """Fixed-sequence testing of the shared thresholds ``order`` on sequence losses.

    Returns p-values and empirical sequence risks per tested threshold (NaN after the stop),
    the share of tokens leaving early, the index of the last certified threshold (None when
    the first fails) and the number of sequences.
    """
    k = order.numel()
    p_values = torch.full((k,), float("nan"), dtype=torch.float64)
    risks = torch.full((k,), float("nan"), dtype=torch.float64)
    early = torch.full((k,), float("nan"), dtype=torch.float64)
    ids = torch.unique(groups)  # sequence_losses' order
    distributed = group_active()
    if distributed:  # every rank's sequences (whole within a rank), in the order of their ids
        ids = all_gather_rows(ids)
        by_id = torch.argsort(ids)
    g = int(ids.numel())
    shuffled = torch.randperm(g, generator=torch.Generator().manual_seed(0)).to(scores.device)
    certified = None
    last = scores.shape[1] - 1
    for i in range(k):
        exits = first_exit(scores, order[i].to(scores).expand(scores.shape[1]))
        per_token = table.gather(1, exits[:, None])[:, 0]
        losses = sequence_losses(per_token, groups, how)
        if distributed:
            losses = all_gather_rows(losses)[by_id]
        risks[i] = losses.mean()
        early[i] = sample_mean((exits < last).double())
        if p_value == "binomial":
            p = binomial_p_value(int(torch.round(losses.sum())), g, delta)
        elif p_value == "hoeffding_bentkus":
            p = hoeffding_bentkus_p_value(float(risks[i]), g, delta)
        else:
            p = wsr_p_value(losses[shuffled], delta, epsilon)
        p_values[i] = p
        if p > epsilon:
            break
        certified = i
    return p_values, risks, early, certified, g
