r"""Certify several risks at once with per-exit thresholds: Pareto Testing.

Laufer-Goldshtein, Fisch, Barzilay and Jaakkola (ICLR 2023). Given risk limits such as
``{"disagreement": 0.02, "cost": 0.4}`` and a failure probability :math:`\epsilon`,
:func:`certify` returns a threshold vector :math:`\hat\tau` with

.. math:: P\big(R_r(\hat\tau) \le \delta_r \text{ for every risk } r\big) \ge 1 - \epsilon

over the draw of the calibration data (i.i.d. samples), or no policy. The procedure:

1. Split the calibration data into an *optimisation* part and a *testing* part.
2. On the optimisation part, score many candidate threshold vectors (random per-exit
   quantiles of the signal, shared thresholds, and the tuners' least-cost per-exit thresholds
   at several levels of each risk) with the exact evaluator, every risk at once, and keep the
   Pareto front of (risks..., relative cost).
3. Order the front by how likely each candidate is to pass, judged on the optimisation part
   only: the largest over risks of the Hoeffding–Bentkus p-value at the testing part's size
   (ties: lower cost first). The order is fixed before the testing part is seen.
4. Fixed-sequence testing on the testing part: walk the order while the candidate's p-value,
   the *maximum over its risks* of each risk's p-value (valid for the intersection of the
   statements), is :math:`\le \epsilon`; stop at the first that is not. Every candidate
   passed is certified simultaneously (family-wise error :math:`\le \epsilon`), so the one
   with the lowest cost on the testing part is returned.

Shared-threshold Learn-then-Test (:func:`~exitwise.policies.risk_controlled_threshold`) is the
one-dimensional case without the split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from exitwise._checks import check_choice, check_int, check_open_unit
from exitwise.data import ExitOutputs
from exitwise.policies.constraints import AccuracyAtLeast
from exitwise.policies.evaluate import evaluate_thresholds
from exitwise.policies.kernels import first_exit
from exitwise.policies.losses import RISKS, ZERO_ONE_RISKS, loss_table
from exitwise.policies.p_values import (
    hoeffding_bentkus_p_value,
    p_value_of_losses,
    resolve_p_value,
)
from exitwise.policies.recall import Recall
from exitwise.policies.risk import default_risk_grid
from exitwise.policies.threshold import ThresholdPolicy
from exitwise.signals import compute_signal, get_signal

__all__ = ["CertifiedPolicy", "certify", "non_dominated"]


@dataclass(frozen=True)
class CertifiedPolicy:
    """Outcome of :func:`certify`.

    Attributes
    ----------
    policy : ThresholdPolicy or None
        ``None`` when not even the first candidate of the sequence passes.
    limits : dict
        Risk name -> limit :math:`\\delta_r`.
    epsilon : float
    p_values, empirical_risks : dict
        Per risk, at the returned policy, on the testing part (empty when none).
    p_value_methods : dict
        Per risk, the p-value used.
    relative_cost : float
        The returned policy's mean cost over the full model's on the testing part (NaN when
        none).
    num_certified, num_tested, front_size : int
        Candidates passed, tested (passed + the one that stopped the walk) and on the front.
    num_optimisation, num_testing : int
        Sizes of the two parts of the calibration data.
    sequence : torch.Tensor
        The ordered front's thresholds ``[F, E]``.
    """

    policy: ThresholdPolicy | None
    limits: dict[str, float]
    epsilon: float
    p_values: dict[str, float]
    empirical_risks: dict[str, float]
    p_value_methods: dict[str, str]
    relative_cost: float
    num_certified: int
    num_tested: int
    front_size: int
    num_optimisation: int
    num_testing: int
    sequence: torch.Tensor = field(repr=False)

    @property
    def certified(self) -> bool:
        return self.policy is not None

    def guarantee(self) -> dict[str, Any]:
        """The guarantee as JSON values, for a policy file's context (the monitor reads it)."""
        return {
            "procedure": "pareto_testing",
            "risks": dict(self.limits),
            "epsilon": self.epsilon,
            "n": self.num_testing,
            "n_optimisation": self.num_optimisation,
            "p_values": dict(self.p_values),
            "p_value_methods": dict(self.p_value_methods),
            "empirical_risks": dict(self.empirical_risks),
            "relative_cost": self.relative_cost,
        }


def non_dominated(points: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Mask ``[K]`` of the rows of ``points [K, d]`` that no other row dominates (all
    coordinates lower is better). Of identical rows only the first is kept.

    Examples
    --------
    >>> import torch
    >>> non_dominated(torch.tensor([[1.0, 2.0], [2.0, 1.0], [2.0, 2.0], [1.0, 2.0]]))
    tensor([ True,  True, False, False])
    """
    if points.ndim != 2:
        raise ValueError(f"Expected `points` of shape [K, d], got {tuple(points.shape)}.")
    k = points.shape[0]
    keep = torch.ones(k, dtype=torch.bool, device=points.device)
    index = torch.arange(k, device=points.device)
    for start in range(0, k, chunk):
        p = points[start : start + chunk]  # [c, d]: is row i dominated by some row j?
        le = (points[None, :, :] <= p[:, None, :]).all(dim=2)  # [c, K]
        lt = (points[None, :, :] < p[:, None, :]).any(dim=2)
        same_earlier = ~lt & le & (index[None, :] < index[start : start + chunk, None])
        keep[start : start + chunk] = ~((le & lt) | same_earlier).any(dim=1)
    return keep


def _candidates(
    scores: torch.Tensor, search: str, num_candidates: int, seed: int, signal: str
) -> torch.Tensor:
    """Threshold vectors ``[K, E]`` built from the optimisation part only."""
    n, e = scores.shape
    if get_signal(signal).unit_interval:
        shared = torch.as_tensor(default_risk_grid(), dtype=torch.float64)
    else:
        shared = torch.quantile(scores[:, :-1].reshape(-1), torch.linspace(0, 1, 201).double())
    shared = torch.cat([shared, torch.tensor([math.inf], dtype=torch.float64)])
    rows = [shared[:, None].expand(-1, e)]
    if search == "per_exit" and e > 1:
        gen = np.random.default_rng(seed)
        levels = 1.0 - 10.0 ** (-3.0 * gen.random((num_candidates, e - 1)))
        sorted_scores = torch.sort(scores[:, :-1], dim=0).values.numpy()
        pos = np.minimum((levels * n).astype(np.int64), n - 1)
        picked = np.take_along_axis(sorted_scores, pos, axis=0)
        picked = np.where(gen.random(picked.shape) < 0.15, np.inf, picked)
        rows.append(torch.as_tensor(np.c_[picked, np.full(num_candidates, np.inf)]))
    thresholds = torch.cat(rows).to(torch.float64)
    thresholds[:, -1] = -math.inf
    return torch.unique(thresholds, dim=0)


def _tuned_candidates(
    scores: torch.Tensor, tables: dict[str, torch.Tensor], limits: dict[str, float], levels: int
) -> torch.Tensor:
    """The least-cost per-exit thresholds with each 0/1 risk at ``levels`` levels up to its
    limit, by the tuners' exact line searches (on the optimisation part)."""
    from exitwise.policies.tune import _search

    relative = tables["cost"][0]
    rows = []
    for name, limit in limits.items():
        if name not in ZERO_ONE_RISKS:
            continue
        keep = tables[name] == 0.0
        for level in np.linspace(0.2, 1.0, levels) * limit:
            found, _ = _search(scores, keep, relative, [AccuracyAtLeast(1.0 - level)], "cost", 2)
            if found is not None:
                rows.append(found)
    if not rows:
        return torch.empty(0, scores.shape[1], dtype=torch.float64)
    return torch.stack(rows)


def _check_risks(risks: Any) -> dict[str, float]:
    if not isinstance(risks, dict) or not risks:
        raise TypeError(
            "Expected `risks` to be a non-empty dict of risk name -> limit, e.g. "
            f'{{"disagreement": 0.02, "cost": 0.4}}, got {risks!r}.'
        )
    out = {}
    for name, limit in risks.items():
        check_choice(name, "risks", RISKS)
        out[name] = check_open_unit(limit, f"risks[{name!r}]")
    return out


def certify(
    outputs: ExitOutputs,
    signal: str,
    risks: dict[str, float],
    epsilon: float = 0.05,
    *,
    search: Literal["per_exit", "shared"] = "per_exit",
    split: float = 0.5,
    seed: int = 0,
    num_candidates: int = 2000,
    tuned_levels: int = 12,
    p_value: str | None = None,
    recall: Recall = "none",
    nll_bound: float = 1.0,
) -> CertifiedPolicy:
    """Per-exit thresholds whose risks are all certified at once (Pareto Testing).

    Parameters
    ----------
    outputs : ExitOutputs
        The calibration data (labels needed for ``"error"`` and ``"nll_excess"``).
    signal : str
    risks : dict
        Risk name (``"error"``, ``"disagreement"``, ``"nll_excess"``, ``"cost"``; see
        :func:`~exitwise.policies.losses.loss_table`) -> limit in (0, 1).
    epsilon : float in (0, 1), default=0.05
        Probability that any certified statement is false.
    search : {"per_exit", "shared"}, default="per_exit"
        Candidates: random per-exit quantile vectors plus shared thresholds, or shared only.
    split : float in (0, 1), default=0.5
        Share of ``outputs`` used to find and order the front (the rest tests it).
    seed : int, default=0
        The split, the candidates and the testing order.
    num_candidates : int, default=2000
        Random per-exit candidates (``search="per_exit"``).
    tuned_levels : int, default=12
        Also, per risk other than cost, the least-cost per-exit thresholds (exact line
        searches, as :func:`~exitwise.policies.tune`) with that risk on the optimisation part
        at this many levels from 20 % to 100 % of its limit (``search="per_exit"``).
    p_value : {"binomial", "hoeffding_bentkus", "wsr"}, optional
        One method for every risk; default: binomial for 0/1 risks, WSR for the others.
    recall : {"none", "most_confident"}, default="none"
    nll_bound : float, default=1.0

    Returns
    -------
    CertifiedPolicy

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> cal, test = load_default().split(0.5, seed=0)
    >>> res = certify(cal, "max_probability", {"disagreement": 0.05, "cost": 0.6})
    >>> res.certified, res.relative_cost <= 0.6, res.p_values["cost"] <= 0.05
    (True, True, True)
    """
    limits = _check_risks(risks)
    epsilon = check_open_unit(epsilon, "epsilon")
    check_choice(search, "search", ("per_exit", "shared"))
    split = check_open_unit(split, "split")
    num_candidates = check_int(num_candidates, "num_candidates", minimum=1)
    tuned_levels = check_int(tuned_levels, "tuned_levels", minimum=0)
    methods = {name: resolve_p_value(p_value, name in ZERO_ONE_RISKS, name) for name in limits}
    opt_idx, test_idx = outputs.split_indices(split, seed)
    if len(opt_idx) == 0 or len(test_idx) == 0:
        raise ValueError(
            f"`split`={split} leaves an empty part of {outputs.num_samples} samples; pass more "
            "calibration data or a split nearer 0.5."
        )
    gen = torch.Generator().manual_seed(int(seed))
    test_idx = test_idx[torch.randperm(len(test_idx), generator=gen).to(test_idx.device)]
    scores = compute_signal(outputs, signal).double()
    names = list(limits) + ([] if "cost" in limits else ["cost"])
    tables = {
        r: loss_table(outputs, r, scores=scores, recall=recall, nll_bound=nll_bound) for r in names
    }
    s_opt = scores[opt_idx].cpu()
    candidates = _candidates(s_opt, search, num_candidates, seed, signal)
    if search == "per_exit":
        opt_tables = {r: t[opt_idx].cpu() for r, t in tables.items()}
        tuned = _tuned_candidates(s_opt, opt_tables, limits, tuned_levels)
        candidates = torch.unique(torch.cat([candidates, tuned]), dim=0)
    zero_cost = torch.zeros(outputs.num_exits, dtype=torch.float64)
    opt_risk = torch.stack(
        [
            evaluate_thresholds(
                s_opt, tables[r][opt_idx].cpu(), zero_cost, candidates, distributed=False
            ).mean_loss
            for r in names
        ],
        dim=1,
    )
    front = non_dominated(opt_risk)
    thresholds, front_risk = candidates[front], opt_risk[front]
    n_test = len(test_idx)
    guess = torch.tensor(
        [
            max(
                hoeffding_bentkus_p_value(float(front_risk[i, j]), n_test, limits[r])
                for j, r in enumerate(limits)
            )
            for i in range(len(thresholds))
        ]
    )
    cost_col = names.index("cost")
    order = np.lexsort((front_risk[:, cost_col].numpy(), guess.numpy()))
    thresholds = thresholds[torch.as_tensor(order)]
    s_test = scores[test_idx]
    passed: list[tuple[float, int, dict[str, float], dict[str, float]]] = []
    tested = 0
    for i in range(len(thresholds)):
        tested += 1
        exits = first_exit(s_test, thresholds[i].to(s_test.device))[:, None]
        ps, emp = {}, {}
        for r in limits:
            losses = tables[r][test_idx].gather(1, exits.to(tables[r].device))[:, 0]
            ps[r] = p_value_of_losses(losses, limits[r], methods[r], alpha=epsilon)
            emp[r] = float(losses.mean())
        if max(ps.values()) > epsilon:
            break
        cost = float(tables["cost"][test_idx].gather(1, exits)[:, 0].mean())
        passed.append((cost, i, ps, emp))
    common = {
        "limits": limits,
        "epsilon": epsilon,
        "p_value_methods": methods,
        "num_certified": len(passed),
        "num_tested": tested,
        "front_size": len(thresholds),
        "num_optimisation": len(opt_idx),
        "num_testing": n_test,
        "sequence": thresholds,
    }
    if not passed:
        return CertifiedPolicy(
            None, p_values={}, empirical_risks={}, relative_cost=math.nan, **common
        )
    cost, i, ps, emp = min(passed, key=lambda item: (item[0], item[1]))
    policy = ThresholdPolicy(signal, thresholds[i].tolist(), recall=recall)
    return CertifiedPolicy(policy, p_values=ps, empirical_risks=emp, relative_cost=cost, **common)
