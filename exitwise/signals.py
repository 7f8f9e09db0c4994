r"""Confidence signals ``[N, E]`` of every exit: higher always means more confident.

A signal plus a threshold per exit is an exit policy (see :mod:`exitwise.policies`).

This module is the **only owner of the signal formulas**. Each built-in signal is one branch
of :func:`exit_signal`, a TorchScript-safe function of one exit's logits ``[..., C]`` and the
state carried from the previous exit (its prediction and PABEE's run length). Offline scoring
(:func:`compute_signal`), the runtime :class:`~exitwise.policies.ExitController`, the halting
network's features and risk control all call it, so an offline decision and a runtime
decision on the same logits are the same decision, bit for bit. Scores are float64, computed
from float64 logits without ever forming a saturated probability (``log_max_probability`` of
a logit gap of 40 is ``-4.2e-18``, not ``0``).

=============================== ======================================= ========== ========
name                            value                                   range      stateful
=============================== ======================================= ========== ========
``max_probability``             largest class probability (CALM)        [0, 1]     no
``log_max_probability``         its logarithm (no saturation near 1)    (-inf, 0]  no
``margin``                      top-1 minus top-2 probability (CALM)    [0, 1]     no
``negative_entropy``            :math:`\sum_c p_c \log p_c` (DeeBERT)   (-inf, 0]  no
``normalized_entropy_confidence`` :math:`1 - H(p) / \log C` (FastBERT)  [0, 1]     no
``patience``                    PABEE's counter: consecutive earlier    [0, inf)   yes
                                exits agreeing with this exit
``agreement_with_previous``     1 if the prediction equals the          [0, 1]     yes
                                previous exit's, else 0
=============================== ======================================= ========== ========

A learned halting network's ``predict_proba(outputs)`` ``[N, E]`` is a signal too: pass the
callable (or its scores ``[N, E]``) wherever a signal is accepted (the one contract:
:func:`exitwise.policies.scores.resolve_signal`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from exitwise._checks import as_tensor, batched_logits, check_finite
from exitwise._chunks import CHUNK_BYTES, rows_per_chunk
from exitwise.data import ExitOutputs, require_class_columns

__all__ = [
    "SIGNALS",
    "Signal",
    "agreement_with_previous",
    "compute_signal",
    "exit_signal",
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

# codes of the built-in branches of `exit_signal` (TorchScript needs plain ints)
MAX_PROBABILITY = 0
LOG_MAX_PROBABILITY = 1
MARGIN = 2
NEGATIVE_ENTROPY = 3
NORMALIZED_ENTROPY = 4
PATIENCE = 5
AGREEMENT = 6


def _others_relative_to_top(z: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """``z_j - z_top`` for every class, ``-inf`` at the top class (``pred``) itself."""
    top = z.gather(-1, pred.unsqueeze(-1))
    w = z - top
    return w.scatter_(-1, pred.unsqueeze(-1), -math.inf)


def _minus_inf_like(index: torch.Tensor) -> torch.Tensor:
    """``-inf`` (float64) of the shape of ``index``."""
    return torch.full(index.shape, -math.inf, dtype=torch.float64, device=index.device)


def exit_signal(
    code: int, logits: torch.Tensor, previous: torch.Tensor, run: torch.Tensor, rest: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Score, prediction and PABEE run length of one exit: the formula of every signal.

    Parameters
    ----------
    code : int
        The signal's ``Signal.code``.
    logits : torch.Tensor of shape (..., C)
        One exit's logits (or log-probabilities), any float dtype; computed in float64.
    previous : torch.Tensor of shape (...)
        The previous exit's prediction (int64), ``-1`` before the first exit.
    run : torch.Tensor of shape (...)
        The previous exit's run length (int64).
    rest : int, default=0
        Trailing columns of remaining mass (:attr:`ExitOutputs.rest_columns
        <exitwise.ExitOutputs.rest_columns>`): they count in the normalisation, never as the
        top class. The margin and the entropies need ``rest = 0`` (the classes behind the
        rest mass are unknown).

    Returns
    -------
    score : float64 ``(...)``; prediction : int64 ``(...)``; run length : int64 ``(...)``

    Examples
    --------
    >>> import torch
    >>> z = torch.tensor([[0.0, 40.0]])
    >>> start = torch.tensor([-1]), torch.tensor([0])
    >>> float(exit_signal(LOG_MAX_PROBABILITY, z, *start)[0])    # max-prob rounds to 1.0
    -4.248354255291589e-18
    """
    if rest != 0 and (code == 2 or code == 3 or code == 4):
        raise ValueError("The margin and the entropies need every class as a column (rest = 0).")
    z = logits.to(torch.float64)
    classes = z.shape[-1] - rest
    pred = torch.argmax(z[..., :classes], dim=-1)
    agree = (pred == previous) & (previous >= 0)
    new_run = torch.where(agree, run + 1, torch.zeros_like(run))
    if code <= 2:
        # log p_max = -log(1 + S), S = sum_{j != top} exp(z_j - z_top): exact where p_max
        # rounds to 1 (S = 4e-18 at a gap of 40); margin p1 - p2 = p1 * (1 - exp(z2 - z1))
        w = _others_relative_to_top(z, pred)
        second = w.amax(dim=-1) if code == 2 else _minus_inf_like(pred)
        log_top = -torch.log1p(w.exp_().sum(dim=-1))
        if code == 0:  # MAX_PROBABILITY (TorchScript needs literals)
            score = log_top.exp()
        elif code == 1:  # LOG_MAX_PROBABILITY
            score = log_top
        else:  # MARGIN
            score = log_top.exp() * -torch.expm1(second)
    elif code == 3 or code == 4:  # NEGATIVE_ENTROPY, NORMALIZED_ENTROPY
        log_p = torch.log_softmax(z, dim=-1)
        score = (log_p.exp() * log_p).sum(dim=-1)
        if code == 4:
            score = 1.0 + score / math.log(z.shape[-1])
    elif code == 5:  # PATIENCE
        score = new_run.to(torch.float64)
    elif code == 6:  # AGREEMENT
        score = agree.to(torch.float64)
    else:
        raise ValueError("Unknown signal code.")
    return score, pred, new_run


def initial_state(shape: list[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(previous prediction, run length)`` before the first exit: ``-1`` and ``0``."""
    previous = torch.full(shape, -1, dtype=torch.int64, device=device)
    return previous, torch.zeros(shape, dtype=torch.int64, device=device)


def _logits(outputs: ExitOutputs | Any) -> tuple[torch.Tensor, int]:
    """Logits ``[N, E, C]`` and their number of rest columns."""
    if isinstance(outputs, ExitOutputs):
        return outputs.logits, outputs.rest_columns
    logits, _ = batched_logits(outputs, "outputs", allow_2d=False)
    check_finite(logits, "outputs")
    return logits, 0


def _scores_of_code(code: int, logits: torch.Tensor, rest: int = 0) -> torch.Tensor:
    """``[N, E]`` scores: :func:`exit_signal` exit by exit over row chunks (memory stays near
    the input's size: float64 work arrays exist for one chunk only)."""
    n, e, c = logits.shape
    out = torch.empty(n, e, dtype=torch.float64, device=logits.device)
    # float64 work arrays of a few chunks: at most 1/16 of the input's float64 size each
    budget = min(CHUNK_BYTES, max(1 << 23, n * e * c * 8 // 16))
    step = rows_per_chunk(e * c * 8, budget, min_rows=1)
    for start in range(0, n, step):
        rows = slice(start, min(n, start + step))
        previous, run = initial_state([rows.stop - start], logits.device)
        for j in range(e):
            out[rows, j], previous, run = exit_signal(code, logits[rows, j], previous, run, rest)
    return out


@dataclass(frozen=True)
class Signal:
    """A named confidence signal and what is known about it.

    Attributes
    ----------
    name : str
    code : int or None
        Branch of :func:`exit_signal` (built-in signals); ``None`` for registered functions,
        which the runtime controller cannot run.
    low, high : float
        Range of the scores (``-inf``/``inf`` when unbounded).
    stateful : bool
        Whether the score depends on earlier exits (patience, agreement).
    function : callable or None
        ``outputs -> [N, E]`` for registered signals.

    Calling a ``Signal`` on :class:`~exitwise.ExitOutputs` (or ``[N, E, C]`` logits) returns
    its scores ``[N, E]`` float64.
    """

    name: str
    code: int | None
    low: float
    high: float
    stateful: bool = False
    function: SignalFunction | None = None

    @property
    def unit_interval(self) -> bool:
        """Scores lie in [0, 1]."""
        return self.low == 0.0 and self.high == 1.0

    def __call__(self, outputs: ExitOutputs | Any) -> torch.Tensor:
        if self.code is not None:
            logits, rest = _logits(outputs)
            if rest and self.code in (MARGIN, NEGATIVE_ENTROPY, NORMALIZED_ENTROPY):
                require_class_columns(outputs, f"The {self.name!r} signal")
            return _scores_of_code(self.code, logits, rest)
        if self.function is None:  # pragma: no cover - the constructor paths set one
            raise ValueError(f"Signal {self.name!r} has neither a code nor a function.")
        return self.function(outputs)


SIGNALS: dict[str, Signal] = {
    s.name: s
    for s in (
        Signal("max_probability", MAX_PROBABILITY, 0.0, 1.0),
        Signal("log_max_probability", LOG_MAX_PROBABILITY, -math.inf, 0.0),
        Signal("margin", MARGIN, 0.0, 1.0),
        Signal("negative_entropy", NEGATIVE_ENTROPY, -math.inf, 0.0),
        Signal("normalized_entropy_confidence", NORMALIZED_ENTROPY, 0.0, 1.0),
        Signal("patience", PATIENCE, 0.0, math.inf, stateful=True),
        Signal("agreement_with_previous", AGREEMENT, 0.0, 1.0, stateful=True),
    )
}


def log_max_probability(outputs: ExitOutputs | Any) -> torch.Tensor:
    """Log of the largest class probability, ``[N, E]`` float64 (in ``(-log C, 0]``).

    Examples
    --------
    >>> import torch
    >>> out = ExitOutputs(torch.tensor([[[0.0, 40.0]]]))
    >>> float(log_max_probability(out))    # max-prob rounds to 1.0, even in float64
    -4.248354255291589e-18
    """
    return SIGNALS["log_max_probability"](outputs)


def max_probability(outputs: ExitOutputs | Any) -> torch.Tensor:
    """Largest class probability (softmax response), ``[N, E]`` float64.

    Examples
    --------
    >>> import torch
    >>> max_probability(ExitOutputs(torch.tensor([[[0.0, 0.0], [0.0, 2.0]]])))
    tensor([[0.5000, 0.8808]], dtype=torch.float64)
    """
    return SIGNALS["max_probability"](outputs)


def margin(outputs: ExitOutputs | Any) -> torch.Tensor:
    """Top-1 minus top-2 class probability, ``[N, E]`` float64 in ``[0, 1]``.

    Examples
    --------
    >>> import torch
    >>> margin(ExitOutputs(torch.log(torch.tensor([[[0.7, 0.2, 0.1]]]))))
    tensor([[0.5000]], dtype=torch.float64)
    """
    return SIGNALS["margin"](outputs)


def negative_entropy(outputs: ExitOutputs | Any) -> torch.Tensor:
    r"""Negative Shannon entropy :math:`\sum_c p_c \log p_c` (nats), ``[N, E]``, in
    ``[-log C, 0]``; DeeBERT exits when the entropy is below a threshold.

    Examples
    --------
    >>> import torch
    >>> negative_entropy(ExitOutputs(torch.zeros(1, 1, 4)))
    tensor([[-1.3863]], dtype=torch.float64)
    """
    return SIGNALS["negative_entropy"](outputs)


def normalized_entropy_confidence(outputs: ExitOutputs | Any) -> torch.Tensor:
    r"""FastBERT's uncertainty turned into a confidence: :math:`1 - H(p)/\log C` in [0, 1].

    Examples
    --------
    >>> import torch
    >>> normalized_entropy_confidence(ExitOutputs(torch.zeros(1, 1, 4)))
    tensor([[0.]], dtype=torch.float64)
    """
    return SIGNALS["normalized_entropy_confidence"](outputs)


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
    return SIGNALS["patience"](outputs)


def agreement_with_previous(outputs: ExitOutputs | Any) -> torch.Tensor:
    """1.0 where exit ``e`` predicts the same class as exit ``e - 1`` (0.0 at the first exit).

    Examples
    --------
    >>> import torch
    >>> logits = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]]])
    >>> agreement_with_previous(ExitOutputs(logits))
    tensor([[0., 1., 0.]], dtype=torch.float64)
    """
    return SIGNALS["agreement_with_previous"](outputs)


def register_signal(
    name: str,
    function: SignalFunction,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    overwrite: bool = False,
) -> None:
    """Make ``function(outputs) -> [N, E]`` available to policies and the CLI as ``name``.

    ``low``/``high`` state the range of its scores (risk control uses a [0, 1] range to pick
    a default grid). Registered signals run offline; the runtime controller runs built-ins.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"Expected `name` to be a non-empty string, got {name!r}.")
    if not callable(function):
        raise TypeError(f"Expected `function` to be callable, got {type(function).__name__}.")
    if name in SIGNALS and not overwrite:
        raise ValueError(f"A signal named {name!r} exists; pass overwrite=True to replace it.")
    SIGNALS[name] = Signal(name, None, float(low), float(high), function=function)


def built_in_signals() -> list[str]:
    """Names of the signals :func:`exit_signal` computes (the runtime controller runs these).

    Examples
    --------
    >>> "max_probability" in built_in_signals()
    True
    """
    return sorted(name for name, s in SIGNALS.items() if s.code is not None)


def get_signal(name: str) -> Signal:
    """The registered :class:`Signal` called ``name`` (a clear error naming the choices)."""
    if not isinstance(name, str) or name not in SIGNALS:
        names = ", ".join(sorted(SIGNALS))
        raise ValueError(f"Unknown signal {name!r}; expected one of {names}.")
    return SIGNALS[name]


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
        scores = get_signal(signal)(outputs)
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
    # +-inf are meaningful scores ("never" / "always" confident); NaN is not
    check_finite(scores, "signal scores", ("sample", "exit"), allow_inf=True)
    return scores
