"""Early-exit generation judged the way users judge it: where a generation first leaves the
full model's greedy text, and how much of each sequence differs.

On the model's *own* greedy continuation (:func:`~exitwise.generation.own_continuations`),
a token whose chosen exit predicts the full model's token keeps the text on the full model's
path; the first token whose chosen exit predicts another one is where early-exit generation
first diverges. Before that point the generated text is the full model's, so the prediction
is exact when the skipped layers' K/V are computed as the full model computes them; with
CALM's K/V copy (or any approximation of skipped layers) later tokens see slightly different
states, and the prediction is an estimate. After the divergence the text is new, so the
per-sequence disagreement on the own continuation is a teacher-forced estimate, and
generation usually differs more (every later token continues a different text).
"""

from __future__ import annotations

import torch

from exitwise.data import ExitOutputs
from exitwise.generation.sequences import by_sequence

__all__ = ["first_divergence", "sequence_disagreement"]


def _differs(outputs: ExitOutputs, exit_indices: torch.Tensor) -> torch.Tensor:
    if outputs.groups is None or outputs.positions is None:
        raise ValueError("Expected token-level outputs with `groups` and `positions`.")
    exit_indices = torch.as_tensor(exit_indices, device=outputs.device).long()
    if exit_indices.shape != (outputs.num_samples,):
        raise ValueError(
            f"Expected `exit_indices` of shape ({outputs.num_samples},), got "
            f"{tuple(exit_indices.shape)}."
        )
    if bool(((exit_indices < 0) | (exit_indices >= outputs.num_exits)).any()):
        raise ValueError(f"Expected `exit_indices` in [0, {outputs.num_exits - 1}].")
    pred = outputs.predictions()
    chosen = pred.gather(1, exit_indices[:, None])[:, 0]
    return chosen != pred[:, -1]


def first_divergence(outputs: ExitOutputs, exit_indices: torch.Tensor) -> torch.Tensor:
    """Per sequence (in id order), the first position (counted in position order from 0)
    whose chosen exit predicts another token than the last exit; the sequence's length where
    none does.

    Examples
    --------
    >>> import torch
    >>> z = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [1.0, 0.0]]] * 2)
    >>> seq, pos = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 0])
    >>> out = ExitOutputs(z, groups=seq, positions=pos)
    >>> first_divergence(out, torch.tensor([0, 0, 1, 1])).tolist()
    [1, 2]
    """
    differs = _differs(outputs, exit_indices)
    table, lengths, _ = by_sequence(outputs.groups, outputs.positions, differs, fill=True)
    return torch.argmax(table.to(torch.int8), dim=1).where(table.any(dim=1), lengths)


def sequence_disagreement(outputs: ExitOutputs, exit_indices: torch.Tensor) -> torch.Tensor:
    """Per sequence (in id order), the share of its tokens whose chosen exit predicts another
    token than the last exit (float64).

    Examples
    --------
    >>> import torch
    >>> z = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [1.0, 0.0]]] * 2)
    >>> seq, pos = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 0])
    >>> out = ExitOutputs(z, groups=seq, positions=pos)
    >>> sequence_disagreement(out, torch.tensor([0, 0, 1, 1])).tolist()
    [0.5, 0.0]
    """
    differs = _differs(outputs, exit_indices).to(torch.float64)
    table, lengths, _ = by_sequence(outputs.groups, outputs.positions, differs)
    return table.sum(dim=1) / lengths.to(torch.float64)
