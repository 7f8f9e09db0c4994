r"""Bounded per-sample losses ``[N, E]`` in [0, 1]: the risks that can be certified.

A loss table ``L[n, e]`` is the loss of sample ``n`` if it stops at exit ``e``; a policy's risk
is the mean of ``L[n, exit(n)]``, which the evaluator computes for thousands of threshold
vectors at once (a float outcome gives ``mean_loss``). The risks:

* ``"error"``: 1 if the answer is wrong (needs labels).
* ``"disagreement"``: 1 if the answer differs from the final exit's.
* ``"nll_excess"``: :math:`\min(1, \max(0, \ell_e - \ell_{E-1}) / b)` with
  :math:`\ell_e = -\log p_e(y)` the answering exit's negative log-likelihood of the label and
  ``b = nll_bound`` nats: how much worse the early answer's probabilities are than the full
  model's, clipped so that the loss is bounded.
* ``"cost"``: the cost of stopping at ``e`` over the full cost, :math:`c_e / c_{E-1}`, so that
  "mean cost <= 40 % of the full model" is a certifiable risk like any other.

With ``recall="most_confident"`` the answering exit is the most confident one computed so far
(:mod:`exitwise.policies.recall`); costs do not change with recall.
"""

from __future__ import annotations

import torch

from exitwise._checks import check_choice
from exitwise.data import ExitOutputs
from exitwise.policies.recall import RECALLS, Recall, recall_indices

__all__ = ["RISKS", "ZERO_ONE_RISKS", "cost_losses", "loss_table"]

#: the risks :func:`loss_table` knows
RISKS: tuple[str, ...] = ("error", "disagreement", "nll_excess", "cost")
#: risks whose losses are 0/1 (the exact binomial p-value applies)
ZERO_ONE_RISKS: tuple[str, ...] = ("error", "disagreement")


def cost_losses(costs: torch.Tensor, num_samples: int) -> torch.Tensor:
    """The ``"cost"`` loss table ``[N, E]``: each exit's cost over the full cost
    (:math:`c_e / c_{E-1}`), from per-exit ``[E]`` or per-sample ``[N, E]`` costs.

    Examples
    --------
    >>> cost_losses(torch.tensor([1.0, 4.0]), 2)
    tensor([[0.2500, 1.0000],
            [0.2500, 1.0000]], dtype=torch.float64)
    """
    costs = costs.to(torch.float64)
    return (costs / costs[..., -1:]).expand(num_samples, -1).clone()


def loss_table(
    outputs: ExitOutputs,
    risk: str,
    *,
    scores: torch.Tensor | None = None,
    recall: Recall = "none",
    nll_bound: float = 1.0,
) -> torch.Tensor:
    """Per-sample loss at every exit, ``[N, E]`` float64 in [0, 1].

    Parameters
    ----------
    outputs : ExitOutputs
    risk : {"error", "disagreement", "nll_excess", "cost"}
    scores : torch.Tensor of shape (N, E), optional
        The policy's signal; needed with ``recall="most_confident"``.
    recall : {"none", "most_confident"}, default="none"
    nll_bound : float > 0, default=1.0
        ``"nll_excess"`` only: the excess (in nats) that counts as a full loss of 1.

    Examples
    --------
    >>> import torch
    >>> from exitwise import ExitOutputs
    >>> out = ExitOutputs(torch.tensor([[[2.0, 0.0], [0.0, 2.0]]]), labels=torch.tensor([1]),
    ...                   costs=torch.tensor([1.0, 4.0]))
    >>> loss_table(out, "error"), loss_table(out, "cost")
    (tensor([[1., 0.]], dtype=torch.float64), tensor([[0.2500, 1.0000]], dtype=torch.float64))
    """
    check_choice(risk, "risk", RISKS)
    check_choice(recall, "recall", RECALLS)
    if risk in ("error", "nll_excess") and outputs.labels is None:
        raise ValueError(f"risk={risk!r} needs labels; use risk='disagreement' without them.")
    if risk == "cost":
        return cost_losses(outputs.costs, outputs.num_samples)
    answer = None
    if recall != "none":
        if scores is None or tuple(scores.shape) != (outputs.num_samples, outputs.num_exits):
            raise ValueError(
                "recall='most_confident' needs the policy's `scores` of shape [N, E] = "
                f"{[outputs.num_samples, outputs.num_exits]}."
            )
        answer = recall_indices(scores).to(outputs.device)
    if risk == "nll_excess":
        if not nll_bound > 0.0:
            raise ValueError(f"Expected `nll_bound` > 0 (nats), got {nll_bound!r}.")
        nll = (
            -outputs.log_probs()
            .gather(2, outputs.labels[:, None, None].expand(-1, outputs.num_exits, 1))[..., 0]
            .to(torch.float64)
        )
        at = nll if answer is None else nll.gather(1, answer)
        return ((at - nll[:, -1:]).clamp(min=0.0) / nll_bound).clamp(max=1.0)
    pred = outputs.predictions()
    reference = pred[:, -1:] if risk == "disagreement" else outputs.labels[:, None]
    answered = pred if answer is None else pred.gather(1, answer)
    return (answered != reference).to(torch.float64)
