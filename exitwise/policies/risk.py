r"""Risk-controlled exit thresholds with a statistical guarantee (Learn-then-Test).

As in CALM (Schuster et al. 2022), with Learn-then-Test (Angelopoulos et al. 2021): find the
lowest shared threshold :math:`\lambda` whose risk is certified,

.. math:: P\big(R(\hat\lambda) \le \delta\big) \ge 1 - \epsilon,

where the risk is the mean of a per-sample loss in [0, 1]
(:mod:`~exitwise.policies.losses`): the share of samples whose early answer is wrong
(``risk="error"``) or disagrees with the full model (``risk="disagreement"``), a clipped
excess NLL, or the cost as a share of the full model's. Several risks and per-exit thresholds
at once: :func:`~exitwise.policies.certify` (Pareto Testing).

**Naming**: exitwise follows CALM: ``delta`` is the *risk tolerance* and ``epsilon`` the
*failure probability*. Learn-then-Test, MAPIE and RC-EENN use the reverse names.

The procedure (fixed-sequence testing):

1. The candidate thresholds and their order are fixed *before* the calibration data is seen:
   a fixed grid, walked from the most conservative threshold (``+inf``, the full model)
   downwards. The default grid for signals in [0, 1] (:func:`default_risk_grid`) is dense
   where overconfident heads need it: 101 evenly spaced values plus values uniform in
   :math:`\log(1 - p)` from :math:`1 - 10^{-6}` down (100 per decade); a 101-point grid has
   nothing between 0.99 and 1 and certifies only the full model on such heads.
2. For each threshold, a valid p-value of :math:`H_0: R(\lambda) > \delta` from the
   per-sample losses of the calibration split (:mod:`~exitwise.policies.p_values`): the exact
   binomial tail (default for 0/1 losses), Hoeffding–Bentkus, or Waudby-Smith–Ramdas betting
   (default for the other losses).
3. Reject while :math:`p \le \epsilon`; stop at the first :math:`p > \epsilon`. The answer is
   the *last rejected* threshold (not the first non-rejected one: RC-EENN's off-by-one), or
   "no threshold certified". A certified threshold at which no calibration sample leaves
   early is *vacuous* (the full model, no speed-up): the result says so and warns.

The risks of all grid thresholds come from one exact shared-threshold sweep
(:func:`~exitwise.policies.sweep_shared_threshold`), in :math:`O(NE)` memory whatever the
grid's size.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from exitwise._checks import as_tensor, check_choice, check_open_unit
from exitwise.data import ExitOutputs
from exitwise.exceptions import VacuousGuaranteeWarning
from exitwise.policies.kernels import first_exit
from exitwise.policies.losses import RISKS, ZERO_ONE_RISKS, loss_table
from exitwise.policies.p_values import (
    binomial_p_value,
    hoeffding_bentkus_p_value,
    resolve_p_value,
    wsr_p_value,
)
from exitwise.policies.positions import DecayedSignal
from exitwise.policies.recall import Recall
from exitwise.policies.sequence_risk import SEQUENCE_LOSSES, sequence_risk_path
from exitwise.policies.sweep import sweep_shared_threshold
from exitwise.policies.threshold import ThresholdPolicy
from exitwise.signals import compute_signal, get_signal

__all__ = [
    "RiskControlResult",
    "binomial_p_value",
    "default_risk_grid",
    "hoeffding_bentkus_p_value",
    "risk_controlled_threshold",
]


def default_risk_grid() -> np.ndarray:
    """The fixed default grid for signals in [0, 1], increasing (699 values).

    ``linspace(0, 1, 101)`` together with :math:`1 - 10^{-x}` for ``x`` in ``[0, 6]`` at
    100 values per decade, so thresholds such as 0.995 or 0.9993 are there.

    Examples
    --------
    >>> grid = default_risk_grid()
    >>> bool(((grid > 0.99) & (grid < 1.0)).sum() >= 400), float(grid[-1]), len(grid)
    (True, 1.0, 699)
    """
    dense = 1.0 - np.logspace(-6.0, 0.0, 601)
    return np.unique(np.concatenate([np.linspace(0.0, 1.0, 101), dense]))


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
    early_exit_fraction : torch.Tensor
        Per tested threshold, the share of calibration samples leaving before the last exit.
    """

    policy: ThresholdPolicy | None
    threshold: float
    grid: torch.Tensor
    p_values: torch.Tensor
    empirical_risk: torch.Tensor
    delta: float
    epsilon: float
    num_samples: int
    early_exit_fraction: torch.Tensor | None = None

    @property
    def certified(self) -> bool:
        return self.policy is not None

    @property
    def certified_index(self) -> int | None:
        """Position of the certified threshold in ``grid`` (``None`` when none is)."""
        if self.policy is None:
            return None
        return int(torch.nonzero(self.grid == self.threshold)[0, 0])

    def __repr__(self) -> str:
        head = (
            f"RiskControlResult(delta={self.delta:g}, epsilon={self.epsilon:g}, "
            f"n={self.num_samples}, "
        )
        i = self.certified_index
        if i is None:
            return head + "certified=False)"
        return head + (
            f"threshold={self.threshold:.6g}, empirical_risk={float(self.empirical_risk[i]):.4f}, "
            f"p_value={float(self.p_values[i]):.3g}, vacuous={self.vacuous})"
        )

    @property
    def vacuous(self) -> bool:
        """A threshold is certified, but no calibration sample leaves early with it: the
        guarantee holds only because the policy is the full model (no speed-up)."""
        i = self.certified_index
        if i is None or self.early_exit_fraction is None:
            return False
        return float(self.early_exit_fraction[i]) == 0.0


def grid_statistics(
    outputs: ExitOutputs,
    scores: torch.Tensor,
    grid: torch.Tensor,
    risk: str,
    *,
    losses: torch.Tensor | None = None,
    zero_one: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Summed losses and share of early exits ``[G]`` at each shared grid threshold.

    One exact sweep over all breakpoints (O(N E) memory), read at the grid: sweep entry ``i``
    holds every threshold in ``(t[i-1], t[i]]``. ``losses`` is the loss table ``[N, E]``
    (:func:`~exitwise.policies.losses.loss_table` of ``risk`` by default); sums of 0/1 losses
    (``zero_one``, by default: ``risk`` is a 0/1 risk) are whole numbers.
    """
    table = loss_table(outputs, risk) if losses is None else losses
    e = outputs.num_exits
    at_last = torch.zeros(e, dtype=torch.float64, device=scores.device)
    at_last[-1] = 1.0  # the "cost" of a sample = whether it reaches the last exit
    sweep = sweep_shared_threshold(scores, table.to(scores.device), at_last)
    where = torch.searchsorted(sweep.thresholds, grid.to(sweep.thresholds.device), side="left")
    n = sweep.num_samples
    sums = sweep.mean_loss[where] * n
    if (risk in ZERO_ONE_RISKS) if zero_one is None else zero_one:
        sums = torch.round(sums)
    early = n - torch.round(sweep.mean_cost[where] * n)
    return sums.cpu(), (early / n).cpu(), n


def risk_controlled_threshold(
    outputs: ExitOutputs,
    signal: str,
    *,
    risk: str = "disagreement",
    delta: float,
    epsilon: float,
    grid: Any = None,
    p_value: Literal["binomial", "hoeffding_bentkus", "wsr"] | None = None,
    recall: Recall = "none",
    nll_bound: float = 1.0,
    losses: Any = None,
    direction: Literal["down", "up"] = "down",
    unit: Literal["sample", "sequence"] | None = None,
    sequence_loss: Literal["fraction", "any"] = "fraction",
) -> RiskControlResult:
    """The lowest shared threshold whose risk is certified (Learn-then-Test, CALM).

    Parameters
    ----------
    outputs : ExitOutputs
        The calibration split (labels needed for ``risk="error"``).
    signal : str
    risk : {"error", "disagreement", "nll_excess", "cost"}, default="disagreement"
        The per-sample loss in [0, 1] (:func:`~exitwise.policies.losses.loss_table`): wrong
        answer, answer different from the final exit's, clipped excess NLL over the final
        exit, or cost as a share of the full model's.
    delta : float in (0, 1)
        Risk tolerance (CALM's delta).
    epsilon : float in (0, 1)
        Failure probability (CALM's epsilon): the guarantee holds with probability
        >= 1 - epsilon over the calibration data.
    grid : array-like, optional
        Candidate thresholds, fixed before seeing the data. Default: :func:`default_risk_grid`
        for signals in [0, 1]; other signals need an explicit grid.
    p_value : {"binomial", "hoeffding_bentkus", "wsr"}, optional
        :mod:`~exitwise.policies.p_values`; default: the exact binomial tail for 0/1 risks,
        Waudby-Smith–Ramdas betting for the others (it bets on the samples in a fixed random
        order, so a file sorted by class does not bias it).
    recall : {"none", "most_confident"}, default="none"
        Certify a recall policy (:mod:`~exitwise.policies.recall`).
    nll_bound : float, default=1.0
        ``risk="nll_excess"`` only (see :func:`~exitwise.policies.losses.loss_table`).
    losses : array-like of shape (N, E), optional
        A loss table of your own (values in [0, 1]; ``risk`` is then only its name): e.g.
        ``latency_e > limit`` per exit to certify a latency percentile.
    direction : {"down", "up"}, default="down"
        The testing order: from ``+inf`` (the full model) down, for risks that grow as the
        threshold falls (errors); or from ``-inf`` (everyone leaves at the first exit) up, for
        risks that fall as it rises (cost, latency).
    unit : {"sample", "sequence"}, optional
        The statistical unit of the guarantee. Default: ``"sequence"`` when ``outputs`` has
        ``groups`` (token-level data: tokens of one sequence are dependent), else
        ``"sample"``. With sequences, each sequence's loss is ``sequence_loss`` of its tokens'
        losses and the guarantee is over sequences drawn i.i.d.
        (:mod:`~exitwise.policies.sequence_risk`); ``num_samples`` counts sequences.
    sequence_loss : {"fraction", "any"}, default="fraction"
        The share of a sequence's tokens with a loss (their mean), or whether any token has
        one (their maximum; 0/1 for 0/1 losses, tested with the exact binomial tail).

    Returns
    -------
    RiskControlResult
        ``vacuous`` is True (with a :class:`~exitwise.exceptions.VacuousGuaranteeWarning`)
        when the certified threshold lets no calibration sample leave early.

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> cal, test = load_default().split(0.5, seed=0)
    >>> res = risk_controlled_threshold(cal, "max_probability", delta=0.05, epsilon=0.05)
    >>> res.certified, 0.0 < res.threshold < 1.0
    (True, True)
    """
    check_choice(direction, "direction", ("down", "up"))
    table = None
    if losses is not None:
        table = as_tensor(losses, "losses", device=outputs.device).to(torch.float64)
        if tuple(table.shape) != (outputs.num_samples, outputs.num_exits):
            raise ValueError(
                f"Expected `losses` of shape [N, E] = {[outputs.num_samples, outputs.num_exits]}, "
                f"got {list(table.shape)}."
            )
        if not bool(((table >= 0) & (table <= 1)).all()):
            raise ValueError("Expected `losses` in [0, 1].")
        zero_one = bool(((table == 0) | (table == 1)).all())
    else:
        check_choice(risk, "risk", RISKS)
        zero_one = risk in ZERO_ONE_RISKS
    if unit is None:
        unit = "sequence" if outputs.groups is not None else "sample"
    check_choice(unit, "unit", ("sample", "sequence"))
    check_choice(sequence_loss, "sequence_loss", SEQUENCE_LOSSES)
    if unit == "sequence":
        if outputs.groups is None:
            raise ValueError("`unit='sequence'` needs outputs with `groups` (sequence ids).")
        zero_one = zero_one and sequence_loss == "any"
    p_value = resolve_p_value(p_value, zero_one, risk)
    delta = check_open_unit(delta, "delta")
    epsilon = check_open_unit(epsilon, "epsilon")
    if grid is None:
        name = signal.name if isinstance(signal, DecayedSignal) else signal
        if not get_signal(name).unit_interval:
            raise ValueError(
                f"Signal {signal!r} is not in [0, 1]: pass a `grid` of thresholds fixed before "
                "seeing the calibration data (e.g. quantiles of a separate split)."
            )
        grid = default_risk_grid()
    values = torch.as_tensor(np.asarray(grid, dtype=np.float64))
    if values.ndim != 1 or values.numel() == 0 or bool(torch.isnan(values).any()):
        raise ValueError("Expected `grid` to be a non-empty 1-D sequence of thresholds.")
    if direction == "down":
        start, ordered = math.inf, torch.unique(values).flip(0)
    else:
        start, ordered = -math.inf, torch.unique(values)
    order = torch.cat([torch.tensor([start], dtype=torch.float64), ordered])
    order = order[torch.cat([torch.tensor([True]), order[1:] != order[:-1]])]
    scores = compute_signal(outputs, signal).double()
    if table is None:
        table = loss_table(outputs, risk, scores=scores, recall=recall, nll_bound=nll_bound)
    if unit == "sequence":
        p_values, risks, early, certified, n = sequence_risk_path(
            scores,
            table.to(scores.device),
            outputs.groups.to(scores.device),
            order,
            delta=delta,
            epsilon=epsilon,
            how=sequence_loss,
            p_value=p_value,
        )
        return _result(signal, recall, order, p_values, risks, delta, epsilon, n, early, certified)
    sums, early, n = grid_statistics(
        outputs, scores, order.to(scores.device), risk, losses=table, zero_one=zero_one
    )
    risks = sums / n
    p_values = torch.full((order.numel(),), float("nan"), dtype=torch.float64)
    certified = None
    shuffled = torch.randperm(n, generator=torch.Generator().manual_seed(0)).to(scores.device)
    for i in range(order.numel()):
        if p_value == "binomial":
            p = binomial_p_value(int(sums[i]), n, delta)
        elif p_value == "hoeffding_bentkus":
            p = hoeffding_bentkus_p_value(float(risks[i]), n, delta)
        else:
            exits = first_exit(scores, order[i].to(scores).expand(scores.shape[1]))[shuffled]
            p = wsr_p_value(table[shuffled].gather(1, exits[:, None])[:, 0], delta, epsilon)
        p_values[i] = p
        if p > epsilon:
            break
        certified = i
    return _result(signal, recall, order, p_values, risks, delta, epsilon, n, early, certified)


def _result(
    signal: Any,
    recall: Recall,
    order: torch.Tensor,
    p_values: torch.Tensor,
    risks: torch.Tensor,
    delta: float,
    epsilon: float,
    n: int,
    early: torch.Tensor,
    certified: int | None,
) -> RiskControlResult:
    """The result of the fixed-sequence test (warning when the certificate is vacuous)."""
    if certified is None:
        return RiskControlResult(None, math.inf, order, p_values, risks, delta, epsilon, n, early)
    threshold = float(order[certified])
    policy = ThresholdPolicy(signal, threshold, recall=recall)
    result = RiskControlResult(policy, threshold, order, p_values, risks, delta, epsilon, n, early)
    if result.vacuous:
        warnings.warn(
            f"The certified threshold {threshold:g} lets no calibration sample leave early: "
            "the guarantee holds for the full model only (no speed-up). A finer grid near the "
            "top of the signal's range, more calibration data or a looser delta/epsilon may "
            "certify an earlier exit.",
            VacuousGuaranteeWarning,
            stacklevel=3,
        )
    return result
