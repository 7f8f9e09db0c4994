"""Confidence signals ``[N, E]`` of every exit: higher always means more confident.

A signal plus a threshold per exit is an exit policy (see :mod:`exitwise.policies`). Signals
are computed from log-probabilities in float64 (``log_softmax`` of the logits), so they do not
saturate where float32 softmax rounds to exactly 1.0.

=============================== ======================================= ==================
name                            value                                   from
=============================== ======================================= ==================
``max_probability``             largest class probability               CALM (softmax
                                                                        response)
``log_max_probability``         its logarithm (no saturation near 1)    CALM
``margin``                      top-1 minus top-2 probability           CALM, SDN
``negative_entropy``            :math:`\\sum_c p_c \\log p_c`             DeeBERT
``normalized_entropy_confidence`` :math:`1 - H(p) / \\log C`            FastBERT
``patience``                    PABEE's counter: consecutive earlier    PABEE
                                exits agreeing with this exit
``agreement_with_previous``     1 if the prediction equals the          BERxiT-style
                                previous exit's, else 0
=============================== ======================================= ==================

A learned halting network's ``predict_proba(outputs)`` ``[N, E]`` is a signal too: pass the
tensor (or a callable) wherever a signal name is accepted.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from exitwise._checks import as_tensor, check_finite, check_floating, check_ndim
from exitwise.data import ExitOutputs

__all__ = [
    "SIGNALS",
    "agreement_with_previous",
    "compute_signal",
    "log_max_probability",
    "margin",
    "max_probability",
    "negative_entropy",
    "normalized_entropy_confidence",
    "patience",
    "register_signal",
]

SignalFunction = Callable[[ExitOutputs], torch.Tensor]
SignalLike = str | SignalFunction | torch.Tensor


def _logits(outputs: ExitOutputs | Any) -> torch.Tensor:
    if isinstance(outputs, ExitOutputs):
        return outputs.logits
    logits = as_tensor(outputs, "outputs")
    check_floating(logits, "outputs")
    check_ndim(logits, "outputs", (3,), "[N, E, C] logits (or an ExitOutputs)")
    check_finite(logits, "outputs")
    return logits


def _log_probs64(outputs: ExitOutputs | Any) -> torch.Tensor:
    return torch.log_softmax(_logits(outputs).to(torch.float64), dim=-1)


def log_max_probability(outputs: ExitOutputs | Any) -> torch.Tensor:
    """Log of the largest class probability, ``[N, E]`` float64 (in ``(-log C, 0]``).

    Examples
    --------
    >>> import torch
    >>> out = ExitOutputs(torch.tensor([[[0.0, 40.0]]]))
    >>> float(log_max_probability(out))    # max-prob rounds to 1.0, even in float64
    -4.248354255291589e-18
    """
    # log p_max = -log(1 + sum_{j != max} exp(z_j - z_max)) = -softplus(logsumexp(others))
    z = _logits(outputs).to(torch.float64)
    top = z.amax(dim=-1, keepdim=True)
    is_top = torch.zeros_like(z, dtype=torch.bool).scatter_(-1, z.argmax(-1, keepdim=True), True)
    others = torch.logsumexp(torch.where(is_top, -torch.inf, z - top), dim=-1)
    return -torch.nn.functional.softplus(others)


def max_probability(outputs: ExitOutputs | Any) -> torch.Tensor:
    """Largest class probability (softmax response), ``[N, E]`` float64.

    Examples
    --------
    >>> import torch
    >>> max_probability(ExitOutputs(torch.tensor([[[0.0, 0.0], [0.0, 2.0]]])))
    tensor([[0.5000, 0.8808]], dtype=torch.float64)
    """
    return log_max_probability(outputs).exp()


def margin(outputs: ExitOutputs | Any) -> torch.Tensor:
    """Top-1 minus top-2 class probability, ``[N, E]`` float64 in ``[0, 1]``.

    Examples
    --------
    >>> import torch
    >>> margin(ExitOutputs(torch.log(torch.tensor([[[0.7, 0.2, 0.1]]]))))
    tensor([[0.5000]], dtype=torch.float64)
    """
    top2 = _log_probs64(outputs).topk(2, dim=-1).values.exp()
    return top2[..., 0] - top2[..., 1]


def negative_entropy(outputs: ExitOutputs | Any) -> torch.Tensor:
    r"""Negative Shannon entropy :math:`\sum_c p_c \log p_c` (nats), ``[N, E]``, in
    ``[-log C, 0]``; DeeBERT exits when the entropy is below a threshold.

    Examples
    --------
    >>> import torch
    >>> negative_entropy(ExitOutputs(torch.zeros(1, 1, 4)))
    tensor([[-1.3863]], dtype=torch.float64)
    """
    log_p = _log_probs64(outputs)
    return (log_p.exp() * log_p).sum(dim=-1)


def normalized_entropy_confidence(outputs: ExitOutputs | Any) -> torch.Tensor:
    r"""FastBERT's uncertainty turned into a confidence: :math:`1 - H(p)/\log C` in [0, 1].

    Examples
    --------
    >>> import torch
    >>> normalized_entropy_confidence(ExitOutputs(torch.zeros(1, 1, 4)))
    tensor([[0.]], dtype=torch.float64)
    """
    logits = _logits(outputs)
    return 1.0 + negative_entropy(logits) / math.log(logits.shape[-1])


def patience(outputs: ExitOutputs | Any) -> torch.Tensor:
    """PABEE's patience counter: how many consecutive earlier exits agree with exit ``e``.

    0 at the first exit and wherever the prediction changed; ``k`` when exits
    ``e-k, ..., e`` all predict the same class. Thresholding it at ``t`` (exit at the first
    exit whose counter reaches ``t``) is PABEE with patience ``t``. Float64 ``[N, E]``.

    Examples
    --------
    >>> import torch
    >>> logits = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0], [0.0, 1.0]]])
    >>> patience(ExitOutputs(logits))
    tensor([[0., 1., 0., 1., 2.]], dtype=torch.float64)
    """
    same = agreement_with_previous(outputs)
    # run length of ones ending at each exit: cumsum minus the cumsum at the last zero
    csum = same.cumsum(dim=1)
    reset = torch.where(same == 0, csum, torch.zeros_like(csum)).cummax(dim=1).values
    return csum - reset


def agreement_with_previous(outputs: ExitOutputs | Any) -> torch.Tensor:
    """1.0 where exit ``e`` predicts the same class as exit ``e - 1`` (0.0 at the first exit).

    Examples
    --------
    >>> import torch
    >>> logits = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]]])
    >>> agreement_with_previous(ExitOutputs(logits))
    tensor([[0., 1., 0.]], dtype=torch.float64)
    """
    pred = _logits(outputs).argmax(dim=-1)
    agree = torch.zeros(pred.shape, dtype=torch.float64, device=pred.device)
    agree[:, 1:] = (pred[:, 1:] == pred[:, :-1]).to(torch.float64)
    return agree


SIGNALS: dict[str, SignalFunction] = {
    "agreement_with_previous": agreement_with_previous,
    "log_max_probability": log_max_probability,
    "margin": margin,
    "max_probability": max_probability,
    "negative_entropy": negative_entropy,
    "normalized_entropy_confidence": normalized_entropy_confidence,
    "patience": patience,
}


def register_signal(name: str, function: SignalFunction, *, overwrite: bool = False) -> None:
    """Make ``function(outputs) -> [N, E]`` available to policies and the CLI as ``name``."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"Expected `name` to be a non-empty string, got {name!r}.")
    if not callable(function):
        raise TypeError(f"Expected `function` to be callable, got {type(function).__name__}.")
    if name in SIGNALS and not overwrite:
        raise ValueError(f"A signal named {name!r} exists; pass overwrite=True to replace it.")
    SIGNALS[name] = function


def compute_signal(outputs: ExitOutputs, signal: SignalLike) -> torch.Tensor:
    """Scores ``[N, E]`` of ``signal`` on ``outputs``.

    Parameters
    ----------
    outputs : ExitOutputs
    signal : str, callable or tensor
        A name from :data:`SIGNALS`, a callable ``outputs -> [N, E]`` (e.g. a fitted halting
        network's ``predict_proba``), or precomputed scores ``[N, E]``.

    Examples
    --------
    >>> import torch
    >>> out = ExitOutputs(torch.zeros(3, 2, 4))
    >>> compute_signal(out, "max_probability").shape
    torch.Size([3, 2])
    """
    if isinstance(signal, str):
        if signal not in SIGNALS:
            names = ", ".join(sorted(SIGNALS))
            raise ValueError(f"Unknown signal {signal!r}; expected one of {names}.")
        scores = SIGNALS[signal](outputs)
    elif isinstance(signal, torch.Tensor):
        scores = signal
    elif callable(signal):
        scores = signal(outputs)
    else:
        raise TypeError(
            f"Expected `signal` to be a name, a callable or a tensor, got {type(signal).__name__}."
        )
    scores = as_tensor(scores, "signal scores")
    shape = (outputs.num_samples, outputs.num_exits)
    if tuple(scores.shape) != shape:
        raise ValueError(
            f"Expected signal scores of shape [N, E] = {list(shape)}, got {list(scores.shape)}."
        )
    check_finite(scores, "signal scores", ("sample", "exit"))  # integer scores pass
    return scores
