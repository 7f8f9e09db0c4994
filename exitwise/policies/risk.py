r"""Risk-controlled exit thresholds with a statistical guarantee (Learn-then-Test).

As in CALM (Schuster et al. 2022), with Learn-then-Test (Angelopoulos et al. 2021): find the
lowest shared threshold :math:`\lambda` whose risk is certified,

.. math:: P\big(R(\hat\lambda) \le \delta\big) \ge 1 - \epsilon,

where the risk is the share of samples whose early answer is wrong (``risk="error"``) or
disagrees with the full model (``risk="disagreement"``).

**Naming**: exitwise follows CALM: ``delta`` is the *risk tolerance* and ``epsilon`` the
*failure probability*. Learn-then-Test, MAPIE and RC-EENN use the reverse names.

The procedure (fixed-sequence testing):

1. The candidate thresholds and their order are fixed *before* the calibration data is seen:
   a fixed grid (default: 101 evenly spaced values for signals in [0, 1]), walked from the
   most conservative threshold (``+inf``, the full model) downwards.
2. For each threshold, a valid p-value of :math:`H_0: R(\lambda) > \delta` from the
   per-sample 0/1 losses of the calibration split: the exact binomial tail
   :math:`P[\mathrm{Bin}(n, \delta) \le n\hat R]` (default), or Hoeffding–Bentkus
   :math:`\min(e^{-n h_1(\min(\hat R, \delta), \delta)}, e\,P[\mathrm{Bin}(n, \delta) \le
   \lceil n \hat R\rceil])`.
3. Reject while :math:`p \le \epsilon`; stop at the first :math:`p > \epsilon`. The answer is
   the *last rejected* threshold (not the first non-rejected one: RC-EENN's off-by-one), or
   "no threshold certified".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from scipy.stats import binom

from exitwise._checks import check_choice, check_open_unit
from exitwise.data import ExitOutputs
from exitwise.policies.evaluate import first_exit
from exitwise.policies.threshold import ThresholdPolicy
from exitwise.signals import compute_signal

__all__ = [
    "RiskControlResult",
    "binomial_p_value",
    "hoeffding_bentkus_p_value",
    "risk_controlled_threshold",
]

_UNIT_SIGNALS = {
    "max_probability",
    "margin",
    "normalized_entropy_confidence",
    "agreement_with_previous",
}


def binomial_p_value(losses: int, n: int, delta: float) -> float:
    r"""Exact p-value of :math:`H_0: R > \delta` for ``losses`` 0/1 losses out of ``n``:
    :math:`P[\mathrm{Bin}(n, \delta) \le \text{losses}]`.

    Examples
    --------
    >>> round(binomial_p_value(0, 100, 0.05), 6)    # (1 - 0.05) ** 100
    0.005921
    """
    return float(binom.cdf(losses, n, delta))


def hoeffding_bentkus_p_value(mean_loss: float, n: int, delta: float) -> float:
    r"""Hoeffding–Bentkus p-value of :math:`H_0: R > \delta` for losses in [0, 1].

    Examples
    --------
    >>> hoeffding_bentkus_p_value(0.0, 100, 0.05) <= 1.0
    True
    """
    a = min(mean_loss, delta)

    def h1(x: float, y: float) -> float:
        left = x * math.log(x / y) if x > 0 else 0.0
        right = (1 - x) * math.log((1 - x) / (1 - y)) if x < 1 else 0.0
        return left + right

    hoeffding = math.exp(-n * h1(a, delta))
    bentkus = math.e * float(binom.cdf(math.ceil(n * mean_loss), n, delta))
    return min(hoeffding, bentkus, 1.0)


@dataclass(frozen=True)
class RiskControlResult:
    """Outcome of :func:`risk_controlled_threshold`.

    Attributes
    ----------
    policy : ThresholdPolicy or None
        ``None`` when no threshold is certified.
    threshold : float
        The certified shared threshold (``inf`` when none).
    grid : torch.Tensor
        The tested thresholds, in testing order (from ``+inf`` down).
    p_values, empirical_risk : torch.Tensor
        Per tested threshold (NaN after the stop).
    delta, epsilon : float
        Risk tolerance and failure probability (CALM's naming).
    num_samples : int
    """

    policy: ThresholdPolicy | None
    threshold: float
    grid: torch.Tensor
    p_values: torch.Tensor
    empirical_risk: torch.Tensor
    delta: float
    epsilon: float
    num_samples: int

    @property
    def certified(self) -> bool:
        return self.policy is not None


def _losses(outputs: ExitOutputs, scores: torch.Tensor, grid: torch.Tensor, risk: str):
    """0/1 losses ``[G, N]`` of the early answer at each grid threshold."""
    pred = outputs.predictions()
    reference = pred[:, -1] if risk == "disagreement" else outputs.labels
    exits = first_exit(scores, grid[:, None].expand(-1, scores.shape[1]).contiguous())
    answer = pred.gather(1, exits.T).T  # [G, N]
    return (answer != reference[None, :]).to(torch.float64)


def risk_controlled_threshold(
    outputs: ExitOutputs,
    signal: str,
    *,
    risk: Literal["error", "disagreement"] = "disagreement",
    delta: float,
    epsilon: float,
    grid: Any = None,
    p_value: Literal["binomial", "hoeffding_bentkus"] = "binomial",
) -> RiskControlResult:
    """The lowest shared threshold whose risk is certified (Learn-then-Test, CALM).

    Parameters
    ----------
    outputs : ExitOutputs
        The calibration split (labels needed for ``risk="error"``).
    signal : str
    risk : {"error", "disagreement"}, default="disagreement"
        0/1 loss per sample: wrong answer, or answer different from the final exit's.
    delta : float in (0, 1)
        Risk tolerance (CALM's delta).
    epsilon : float in (0, 1)
        Failure probability (CALM's epsilon): the guarantee holds with probability
        >= 1 - epsilon over the calibration data.
    grid : array-like, optional
        Candidate thresholds, fixed before seeing the data. Default: 101 values in [0, 1]
        for signals in [0, 1]; other signals need an explicit grid.
    p_value : {"binomial", "hoeffding_bentkus"}, default="binomial"

    Returns
    -------
    RiskControlResult

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> cal, test = load_default().split(0.5, seed=0)
    >>> res = risk_controlled_threshold(cal, "max_probability", delta=0.05, epsilon=0.05)
    >>> res.certified, 0.0 < res.threshold < 1.0
    (True, True)
    """
    check_choice(risk, "risk", ("error", "disagreement"))
    check_choice(p_value, "p_value", ("binomial", "hoeffding_bentkus"))
    delta = check_open_unit(delta, "delta")
    epsilon = check_open_unit(epsilon, "epsilon")
    if risk == "error" and outputs.labels is None:
        raise ValueError("risk='error' needs labels; use risk='disagreement' without them.")
    if grid is None:
        if signal not in _UNIT_SIGNALS:
            raise ValueError(
                f"Signal {signal!r} is not in [0, 1]: pass a `grid` of thresholds fixed before "
                "seeing the calibration data (e.g. quantiles of a separate split)."
            )
        grid = np.linspace(0.0, 1.0, 101)
    values = torch.as_tensor(np.asarray(grid, dtype=np.float64))
    if values.ndim != 1 or values.numel() == 0 or bool(torch.isnan(values).any()):
        raise ValueError("Expected `grid` to be a non-empty 1-D sequence of thresholds.")
    order = torch.cat([torch.tensor([math.inf], dtype=torch.float64), torch.unique(values).flip(0)])
    order = order[torch.cat([torch.tensor([True]), order[1:] != order[:-1]])]
    scores = compute_signal(outputs, signal).double()
    losses = _losses(outputs, scores, order.to(scores.device), risk).cpu()
    n = losses.shape[1]
    counts = losses.sum(dim=1)
    risks = counts / n
    p_values = torch.full((order.numel(),), float("nan"), dtype=torch.float64)
    certified = None
    for i in range(order.numel()):
        if p_value == "binomial":
            p = binomial_p_value(int(counts[i]), n, delta)
        else:
            p = hoeffding_bentkus_p_value(float(risks[i]), n, delta)
        p_values[i] = p
        if p > epsilon:
            break
        certified = i
    if certified is None:
        return RiskControlResult(None, math.inf, order, p_values, risks, delta, epsilon, n)
    threshold = float(order[certified])
    policy = ThresholdPolicy(signal, threshold)
    return RiskControlResult(policy, threshold, order, p_values, risks, delta, epsilon, n)
