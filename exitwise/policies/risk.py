r"""Risk-controlled exit thresholds with a statistical guarantee (Learn-then-Test).

As in CALM (Schuster et al. 2022), with Learn-then-Test (Angelopoulos et al. 2021): find the
lowest shared threshold :math:`\lambda` whose risk is certified,

.. math:: P\big(R(\hat\lambda) \le \text{limit}\big) \ge \text{confidence},

where the risk is the mean of a per-sample loss in [0, 1]
(:mod:`~exitwise.policies.losses`): the share of samples whose early answer is wrong
(``risk="error"``) or disagrees with the full model (``risk="disagreement"``), a clipped
excess NLL, or the cost as a share of the full model's. Several risks and per-exit thresholds
at once: :func:`~exitwise.policies.certify` (Pareto Testing).

**Naming**: exitwise says ``limit`` for the risk limit and ``confidence`` for one minus the
failure probability, everywhere. The old ``delta`` (CALM's risk tolerance) and ``epsilon``
(CALM's failure probability; Learn-then-Test, MAPIE and RC-EENN use the reverse names) keep
working for one release with a ``DeprecationWarning``.

The procedure (fixed-sequence testing):

1. The candidate thresholds and their order are fixed *before* the calibration data is seen:
   a fixed grid, walked from the most conservative threshold (``+inf``, the full model)
   downwards. The default grid for signals in [0, 1] (:func:`default_risk_grid`) is dense
   where overconfident heads need it: 101 evenly spaced values plus values uniform in
   :math:`\log(1 - p)` from :math:`1 - 10^{-6}` down (100 per decade); a 101-point grid has
   nothing between 0.99 and 1 and certifies only the full model on such heads.
2. For each threshold, a valid p-value of :math:`H_0: R(\lambda) > \text{limit}` from the
   per-sample losses of the calibration split (:mod:`~exitwise.policies.p_values`): the exact
   binomial tail (default for 0/1 losses), Hoeffding–Bentkus, or Waudby-Smith–Ramdas betting
   (default for the other losses).
3. Reject while :math:`p \le 1 - \text{confidence}`; stop at the first larger p-value. The
   answer is
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
from typing import Any, Literal

import numpy as np
import torch

from exitwise._checks import as_tensor, check_choice, check_open_unit
from exitwise._deprecation import (
    MISSING,
    confidence_or_failure_probability,
    moved_names,
    renamed_argument,
)
from exitwise._distributed import all_gather_rows, all_reduce_sum, group_active, local_only
from exitwise.data import ExitOutputs
from exitwise.exceptions import VacuousGuaranteeWarning
from exitwise.policies.entry import as_scores
from exitwise.policies.evaluate_policies import evaluate_policy
from exitwise.policies.kernels import first_exit
from exitwise.policies.losses import RISKS, ZERO_ONE_RISKS
from exitwise.policies.p_values import (
    binomial_p_value,
    hoeffding_bentkus_p_value,
    resolve_p_value,
    wsr_p_value,
)
from exitwise.policies.positions import DecayedSignal
from exitwise.policies.recall import Recall
from exitwise.policies.results import Guarantee, PolicyResult, TestingPath
from exitwise.policies.scores import ExitScores, signal_label
from exitwise.policies.sequence_risk import SEQUENCE_LOSSES, sequence_risk_path
from exitwise.policies.sweep import sweep_shared_threshold
from exitwise.policies.threshold import ThresholdPolicy
from exitwise.signals import get_signal

__all__ = [
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


# the old result type of risk control, one release with a warning
__getattr__ = moved_names(__name__, {"RiskControlResult": ("PolicyResult", lambda: PolicyResult)})


def grid_statistics(
    scores: torch.Tensor, grid: torch.Tensor, losses: torch.Tensor, zero_one: bool
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Summed losses and share of early exits ``[G]`` at each shared grid threshold.

    One exact sweep over all breakpoints (O(N E) memory), read at the grid: sweep entry ``i``
    holds every threshold in ``(t[i-1], t[i]]``. In a ``torch.distributed`` group of several
    processes (a shard per rank) the sums, the early counts and N are all-reduced. ``losses``
    is the loss table ``[N, E]``; sums of 0/1 losses (``zero_one``) are whole numbers.

    Examples
    --------
    >>> import torch
    >>> scores = torch.tensor([[0.2, 0.9], [0.8, 0.1]], dtype=torch.float64)
    >>> losses = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    >>> sums, early, n = grid_statistics(scores, torch.tensor([0.1, 0.5, 0.9]), losses, True)
    >>> sums.tolist(), early.tolist(), n
    ([1.0, 0.0, 0.0], [1.0, 0.5, 0.0], 2)
    """
    e = scores.shape[1]
    at_last = torch.zeros(e, dtype=torch.float64, device=scores.device)
    at_last[-1] = 1.0  # the "cost" of a sample = whether it reaches the last exit
    with local_only():  # this rank's sweep: only its sums at the grid are combined, below
        sweep = sweep_shared_threshold(scores, losses.to(scores.device), at_last)
    where = torch.searchsorted(sweep.thresholds, grid.to(sweep.thresholds.device), side="left")
    n = sweep.num_samples
    sums = sweep.mean_loss[where] * n
    if zero_one:
        sums = torch.round(sums)
    early = n - torch.round(sweep.mean_cost[where] * n)
    if group_active():  # a shard per rank: the sums, counts and N add up
        total = torch.tensor(float(n), dtype=torch.float64, device=sums.device)
        all_reduce_sum(sums, early, total)
        n = int(total)
    return sums.cpu(), (early / n).cpu(), n


def _check_losses(losses: Any, scores: ExitScores) -> torch.Tensor:
    table = as_tensor(losses, "losses", device=scores.device).to(torch.float64)
    shape = [scores.num_samples, scores.num_exits]
    if list(table.shape) != shape:
        raise ValueError(f"Expected `losses` of shape [N, E] = {shape}, got {list(table.shape)}.")
    if not bool(((table >= 0) & (table <= 1)).all()):
        raise ValueError("Expected `losses` in [0, 1].")
    return table


def resolve_unit(unit: str | None, groups: torch.Tensor | None) -> str:
    """``"sample"`` or ``"sequence"`` (``"token"`` is read as ``"sample"``: each token is a
    unit); default ``"sequence"`` when the data has ``groups``."""
    if unit is None:
        return "sequence" if groups is not None else "sample"
    check_choice(unit, "unit", ("sample", "token", "sequence"))
    if unit == "sequence" and groups is None:
        raise ValueError("`unit='sequence'` needs outputs with `groups` (sequence ids).")
    return "sample" if unit == "token" else unit


def testing_order(grid: Any, direction: str, signal: Any) -> torch.Tensor:
    """The fixed testing order: ``+inf`` then the grid downwards (``"down"``), or ``-inf``
    then upwards (``"up"``); the default grid for signals in [0, 1]."""
    if grid is None:
        name = signal.name if isinstance(signal, DecayedSignal) else signal
        if not isinstance(name, str) or not get_signal(name).unit_interval:
            raise ValueError(
                f"Signal {signal_label(signal)!r} is not known to lie in [0, 1]: pass a `grid` "
                "of thresholds fixed before seeing the calibration data (e.g. quantiles of a "
                "separate split)."
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
    return order[torch.cat([torch.tensor([True]), order[1:] != order[:-1]])]


def risk_controlled_threshold(
    outputs: ExitOutputs | ExitScores,
    signal: Any = None,
    *,
    risk: str = "disagreement",
    limit: float | None = None,
    confidence: float | None = None,
    grid: Any = None,
    p_value: Literal["binomial", "hoeffding_bentkus", "wsr"] | None = None,
    recall: Recall = "none",
    nll_bound: float = 1.0,
    losses: Any = None,
    direction: Literal["down", "up"] = "down",
    unit: Literal["sample", "token", "sequence"] | None = None,
    sequence_loss: Literal["fraction", "any"] = "fraction",
    delta: Any = MISSING,
    epsilon: Any = MISSING,
) -> PolicyResult:
    """The lowest shared threshold whose risk is certified (Learn-then-Test, CALM).

    Parameters
    ----------
    outputs : ExitOutputs or ExitScores
        The calibration split (labels needed for ``risk="error"``); ``ExitScores`` carry their
        signal (pass ``signal=None``).
    signal : str, DecayedSignal, callable or array-like of shape (N, E)
        The one signal contract (:func:`~exitwise.policies.scores.resolve_signal`).
    risk : {"error", "disagreement", "nll_excess", "cost"}, default="disagreement"
        The per-sample loss in [0, 1] (:func:`~exitwise.policies.losses.loss_table`): wrong
        answer, answer different from the final exit's, clipped excess NLL over the final
        exit, or cost as a share of the full model's.
    limit : float in (0, 1)
        The risk limit (``delta`` is its deprecated name).
    confidence : float in (0, 1)
        The guarantee holds with probability >= ``confidence`` over the calibration data
        (``epsilon = 1 - confidence`` is the deprecated spelling).
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
    unit : {"sample", "token", "sequence"}, optional
        The statistical unit of the guarantee. Default: ``"sequence"`` when the data has
        ``groups`` (token-level data: tokens of one sequence are dependent), else
        ``"sample"`` (``"token"`` means the same: each token a unit). With sequences, each
        sequence's loss is ``sequence_loss`` of its tokens' losses and the guarantee is over
        sequences drawn i.i.d. (:mod:`~exitwise.policies.sequence_risk`).
    sequence_loss : {"fraction", "any"}, default="fraction"
        The share of a sequence's tokens with a loss (their mean), or whether any token has
        one (their maximum; 0/1 for 0/1 losses, tested with the exact binomial tail).

    Returns
    -------
    PolicyResult
        ``guarantee`` states the risk, limit, confidence, unit and p-value; ``path`` the tested
        thresholds. With no threshold certified, ``reason`` says why and
        ``best_achievable`` holds the least p-value and risk of any tested threshold.
        ``vacuous`` is True (with a :class:`~exitwise.exceptions.VacuousGuaranteeWarning`)
        when the certified threshold lets no calibration unit leave early.

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> cal, test = load_default().split(0.5, seed=0)
    >>> res = risk_controlled_threshold(cal, "max_probability", limit=0.05, confidence=0.95)
    >>> res.certified, 0.0 < res.shared_threshold < 1.0, res.guarantee.unit
    (True, True, 'sample')
    """
    check_choice(direction, "direction", ("down", "up"))
    limit = renamed_argument(
        MISSING if limit is None else limit, "limit", delta, "delta", stacklevel=3
    )
    confidence = confidence_or_failure_probability(
        confidence, epsilon, "epsilon", strict=confidence is not None
    )
    if limit is MISSING or confidence is None:
        raise TypeError(
            "Expected a risk `limit` and a `confidence`, e.g. limit=0.05, confidence=0.9."
        )
    limit = check_open_unit(limit, "limit")
    confidence = check_open_unit(confidence, "confidence")
    data = as_scores(outputs, signal)
    if losses is not None:
        table = _check_losses(losses, data)
        zero_one = bool(((table == 0) | (table == 1)).all())
    else:
        check_choice(risk, "risk", RISKS)
        zero_one = risk in ZERO_ONE_RISKS
    unit = resolve_unit(unit, data.groups)
    check_choice(sequence_loss, "sequence_loss", SEQUENCE_LOSSES)
    if unit == "sequence":
        zero_one = zero_one and sequence_loss == "any"
    p_value = resolve_p_value(p_value, zero_one, risk)
    order = testing_order(grid, direction, data.signal)
    if losses is None:
        table = data.losses(risk, recall=recall, nll_bound=nll_bound)
    scores = data.scores
    alpha = 1.0 - confidence
    if unit == "sequence":
        p_values, risks, early, certified, n = sequence_risk_path(
            scores,
            table.to(scores.device),
            data.groups.to(scores.device),
            order,
            delta=limit,
            epsilon=alpha,
            how=sequence_loss,
            p_value=p_value,
        )
    else:
        p_values, risks, early, certified, n = _sample_path(
            scores, table, order, limit, alpha, p_value, zero_one
        )
    return _result(
        data,
        risk,
        recall,
        order,
        p_values,
        risks,
        limit,
        confidence,
        n,
        early,
        certified,
        p_value,
        unit,
    )


def _sample_path(
    scores: torch.Tensor,
    table: torch.Tensor,
    order: torch.Tensor,
    limit: float,
    alpha: float,
    p_value: str,
    zero_one: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int | None, int]:
    """Fixed-sequence testing over i.i.d. samples: p-values and risks per tested threshold
    (NaN after the stop), early-exit shares, the last passed index, N."""
    sums, early, n = grid_statistics(scores, order.to(scores.device), table, zero_one)
    risks = sums / n
    p_values = torch.full((order.numel(),), float("nan"), dtype=torch.float64)
    certified = None
    shuffled = torch.randperm(n, generator=torch.Generator().manual_seed(0)).to(scores.device)
    for i in range(order.numel()):
        if p_value == "binomial":
            p = binomial_p_value(int(sums[i]), n, limit)
        elif p_value == "hoeffding_bentkus":
            p = hoeffding_bentkus_p_value(float(risks[i]), n, limit)
        else:  # the order: every rank's samples in rank order, then a seeded permutation
            exits = first_exit(scores, order[i].to(scores).expand(scores.shape[1]))
            chosen = table.to(scores.device).gather(1, exits[:, None])[:, 0]
            if group_active():
                chosen = all_gather_rows(chosen)
            p = wsr_p_value(chosen[shuffled], limit, alpha)
        p_values[i] = p
        if p > alpha:
            break
        certified = i
    return p_values, risks, early, certified, n


def _result(
    data: ExitScores,
    risk: str,
    recall: Recall,
    order: torch.Tensor,
    p_values: torch.Tensor,
    risks: torch.Tensor,
    limit: float,
    confidence: float,
    n: int,
    early: torch.Tensor,
    certified: int | None,
    method: str,
    unit: str,
) -> PolicyResult:
    """The result of the fixed-sequence test (warning when the certificate is vacuous)."""
    tested = int((~torch.isnan(p_values)).sum())
    path = TestingPath(
        order, p_values, risks, early, tested, 0 if certified is None else certified + 1
    )
    common = {
        "limits": {risk: limit},
        "confidence": confidence,
        "num_units": n,
        "unit": unit,
        "path": path,
    }
    units = "sequences" if unit == "sequence" else "samples"
    if certified is None:
        seen = ~torch.isnan(p_values)
        best = {
            "p_value": float(p_values[seen].min()),
            risk: float(risks[seen].min()),
        }
        reason = (
            f"no threshold is certified for {risk} <= {limit:g} at confidence {confidence:g} on "
            f"{n} {units}: the first tested threshold ({float(order[0]):g}) has p-value "
            f"{float(p_values[0]):.3g} > {1 - confidence:.3g} (empirical {risk} "
            f"{float(risks[0]):.4f}); more calibration data, a looser limit or a lower "
            "confidence may certify one"
        )
        return PolicyResult(None, None, reason=reason, best_achievable=best, **common)
    threshold = float(order[certified])
    vacuous = float(early[certified]) == 0.0
    guarantee = Guarantee(
        limits={risk: limit},
        confidence=confidence,
        unit=unit,
        num_units=n,
        p_values={risk: float(p_values[certified])},
        p_value_methods={risk: method},
        empirical_risks={risk: float(risks[certified])},
        procedure="learn_then_test",
        vacuous=vacuous,
    )
    policy = ThresholdPolicy(data.signal, threshold, recall=recall)
    evaluation = evaluate_policy(policy, data)
    if vacuous:
        warnings.warn(
            f"The certified threshold {threshold:g} lets no calibration {unit} leave early: "
            "the guarantee holds for the full model only (no speed-up). A finer grid near the "
            "top of the signal's range, more calibration data or a looser limit or lower "
            "confidence may certify an earlier exit.",
            VacuousGuaranteeWarning,
            stacklevel=3,
        )
    return PolicyResult(policy, evaluation, guarantee, shared_threshold=threshold, **common)
