r"""Position-aware thresholds for token-level exits (CALM's decaying threshold).

CALM (Schuster et al. 2022) lets a token at position :math:`t` of a sequence leave exit
:math:`e` when its confidence reaches

.. math:: \lambda_e(t) = 0.9\,\lambda_e + 0.1\,\lambda_e\, e^{-\tau t / T}
   = \lambda_e\, f(t), \qquad f(t) = 0.9 + 0.1\, e^{-\tau t / T} \in (0.9, 1],

with a decay rate :math:`\tau` (CALM's default 4) and a nominal length :math:`T`. Since
:math:`f(t) > 0`, :math:`s \ge \lambda_e f(t) \iff s / f(t) \ge \lambda_e`: dividing every
score by its token's factor turns the family back into one ordinary threshold per exit, so
the exact evaluator, the sweeps and the tuners apply unchanged. :class:`DecayedSignal` is
that adjusted signal: pass it wherever a signal name goes (``ThresholdPolicy``, ``tune_*``,
``risk_controlled_threshold``); the outputs need ``positions``. (For signals that can be
negative, such as ``negative_entropy``, the rule is still exactly :math:`s \ge \lambda_e(t)`;
the decay then makes later tokens stricter, so CALM's intent needs a non-negative signal
such as ``max_probability``.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from exitwise.data import ExitOutputs
from exitwise.signals import SIGNALS, compute_signal

__all__ = ["DecayedSignal", "calm_factor"]

#: CALM's default decay rate
CALM_TAU = 4.0


def calm_factor(positions: torch.Tensor, tau: float, length: float) -> torch.Tensor:
    """:math:`f(t) = 0.9 + 0.1\\,e^{-\\tau t / T}` per token (float64; TorchScript-safe).

    Examples
    --------
    >>> calm_factor(torch.tensor([0, 10, 1000]), 4.0, 10.0)
    tensor([1.0000, 0.9018, 0.9000], dtype=torch.float64)
    """
    t = positions.to(torch.float64)
    return 0.9 + 0.1 * torch.exp(-tau * t / length)


@dataclass(frozen=True)
class DecayedSignal:
    """A signal divided by CALM's position factor: thresholds on it are CALM's decaying
    thresholds :math:`\\lambda_e(t)` (see the module docstring).

    Parameters
    ----------
    name : str
        A signal name from :data:`exitwise.signals.SIGNALS`.
    length : float
        The nominal sequence length :math:`T` (> 0).
    tau : float, default=4.0
        The decay rate :math:`\\tau` (>= 0; 0: no decay).

    Examples
    --------
    >>> import torch
    >>> from exitwise import ExitOutputs
    >>> out = ExitOutputs(torch.tensor([[[2.0, 0.0]], [[2.0, 0.0]]]), groups=[0, 0],
    ...                   positions=[0, 30])
    >>> DecayedSignal("max_probability", length=30.0)(out).squeeze(1)
    tensor([0.8808, 0.9767], dtype=torch.float64)
    """

    name: str
    length: float
    tau: float = CALM_TAU

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or self.name not in SIGNALS:
            raise ValueError(
                f"Unknown signal {self.name!r}; expected one of {', '.join(sorted(SIGNALS))}."
            )
        for key, low in (("length", 0.0), ("tau", 0.0)):
            value = getattr(self, key)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if (
                not ok
                or not math.isfinite(value)
                or value < low
                or (key == "length" and value == low)
            ):
                bound = "> 0" if key == "length" else ">= 0"
                raise ValueError(f"Expected `{key}` to be a finite number {bound}, got {value!r}.")

    def __call__(self, outputs: ExitOutputs) -> torch.Tensor:
        if outputs.positions is None:
            raise ValueError(
                "A position-aware signal needs token positions: these ExitOutputs have no "
                "`positions` (collect fills them for token-level outputs)."
            )
        scores = compute_signal(outputs, self.name).to(torch.float64)
        factor = calm_factor(outputs.positions, float(self.tau), float(self.length))
        return scores / factor.to(scores.device)[:, None]

    def to_json(self) -> dict[str, Any]:
        return {"tau": float(self.tau), "length": float(self.length)}

    @classmethod
    def from_json(cls, name: str, value: Any) -> DecayedSignal:
        if not isinstance(value, dict) or set(value) != {"tau", "length"}:
            raise ValueError(
                f"Expected `position_decay` to be {{'tau': ..., 'length': ...}}, got {value!r}."
            )
        return cls(name, float(value["length"]), float(value["tau"]))
