r"""Certify several risks at once with per-exit thresholds: Pareto Testing.

Laufer-Goldshtein, Fisch, Barzilay and Jaakkola (ICLR 2023). Given risk limits such as
``{"disagreement": 0.02, "cost": 0.4}`` and a ``confidence`` :math:`1 - \epsilon`,
:func:`certify` returns a threshold vector :math:`\hat\tau` with

.. math:: P\big(R_r(\hat\tau) \le \text{limit}_r \text{ for every risk } r\big)
   \ge \text{confidence}

over the draw of the calibration data (i.i.d. samples, or i.i.d. sequences for token data:
each sequence's loss is the share of its tokens with a loss), or no policy. The procedure:

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
from typing import Any, Literal

import numpy as np
import torch

from exitwise._checks import check_choice, check_int, check_open_unit
from exitwise._deprecation import (
    MISSING,
    confidence_or_failure_probability,
    moved_names,
    renamed_argument,
)
from exitwise._distributed import group_active
from exitwise.data import ExitOutputs
from exitwise.policies.constraints import AccuracyAtLeast
from exitwise.policies.entry import as_scores
from exitwise.policies.evaluate import evaluate_thresholds
from exitwise.policies.evaluate_policies import evaluate_policy
from exitwise.policies.gathered import search_on_first_rank
from exitwise.policies.kernels import first_exit
from exitwise.policies.losses import RISKS, ZERO_ONE_RISKS
from exitwise.policies.p_values import (
    hoeffding_bentkus_p_value,
    p_value_of_losses,
    resolve_p_value,
)
from exitwise.policies.recall import Recall
from exitwise.policies.results import Guarantee, PolicyResult, TestingPath
from exitwise.policies.risk import default_risk_grid, resolve_unit
from exitwise.policies.scores import ExitScores
from exitwise.policies.sequence_risk import sequence_losses
from exitwise.policies.threshold import ThresholdPolicy
from exitwise.signals import get_signal

__all__ = ["certify", "non_dominated"]


# the old result type of certify, one release with a warning
__getattr__ = moved_names(__name__, {"CertifiedPolicy": ("PolicyResult", lambda: PolicyResult)})


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
    scores: torch.Tensor, search: str, num_candidates: int, seed: int, signal: Any
) -> torch.Tensor:
    """Threshold vectors ``[K, E]`` built from the optimisation part only."""
    n, e = scores.shape
    if isinstance(signal, str) and get_signal(signal).unit_interval:
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
    from exitwise.policies.search import search_thresholds

    relative = tables["cost"][0]
    rows = []
    for name, limit in limits.items():
        if name not in ZERO_ONE_RISKS:
            continue
        keep = tables[name] == 0.0
        for level in np.linspace(0.2, 1.0, levels) * limit:
            found, _ = search_thresholds(
                scores, keep, relative, [AccuracyAtLeast(1.0 - level, relative=False)], "cost", 2
            )
            if found is not None:
                rows.append(found)
    if not rows:
        return torch.empty(0, scores.shape[1], dtype=torch.float64)
    return torch.stack(rows)


def _risks_of_candidates(
    scores: torch.Tensor,
    tables: dict[str, torch.Tensor],
    names: list[str],
    candidates: torch.Tensor,
) -> torch.Tensor:
    """Every risk of every candidate ``[K, len(names)]`` on the optimisation part, one pass of
    the evaluator per risk other than cost: the cost table rides along as the costs, and 0/1
    tables go in as bool outcomes (the bitset kernel)."""
    cost = tables["cost"]
    per_exit = bool((cost == cost[:1]).all())
    costs = cost[0] if per_exit else cost
    columns: dict[str, torch.Tensor] = {}
    for r in [r for r in names if r != "cost"] or ["cost"]:
        table = tables[r]
        zero_one = bool(((table == 0) | (table == 1)).all())
        outcome = table == 0 if zero_one else table
        ev = evaluate_thresholds(scores, outcome, costs, candidates, distributed=False)
        columns[r] = 1.0 - ev.accuracy if zero_one else ev.mean_loss
        columns["cost"] = ev.mean_cost
    return torch.stack([columns[r] for r in names], dim=1)


def _check_limits(limits: Any) -> dict[str, float]:
    if not isinstance(limits, dict) or not limits:
        raise TypeError(
            "Expected `limits` to be a non-empty dict of risk name -> limit, e.g. "
            f'{{"disagreement": 0.02, "cost": 0.4}}, got {limits!r}.'
        )
    out = {}
    for name, limit in limits.items():
        check_choice(name, "limits", RISKS)
        out[name] = check_open_unit(limit, f"limits[{name!r}]")
    return out


def certify(
    outputs: ExitOutputs | ExitScores,
    signal: Any = None,
    limits: dict[str, float] | None = None,
    epsilon: Any = MISSING,
    *,
    confidence: float = 0.95,
    search: Literal["per_exit", "shared"] = "per_exit",
    split: float = 0.5,
    seed: int = 0,
    num_candidates: int = 2000,
    tuned_levels: int = 12,
    p_value: str | None = None,
    recall: Recall = "none",
    nll_bound: float = 1.0,
    unit: Literal["sample", "token", "sequence"] | None = None,
    max_optimisation: int = 200_000,
    progress: bool | None = None,
    risks: Any = MISSING,
) -> PolicyResult:
    """Per-exit thresholds whose risks are all certified at once (Pareto Testing).

    Parameters
    ----------
    outputs : ExitOutputs or ExitScores
        The calibration data (labels needed for ``"error"`` and ``"nll_excess"``).
    signal : str, DecayedSignal, callable or array-like of shape (N, E)
        The one signal contract (:func:`~exitwise.policies.scores.resolve_signal`).
    limits : dict
        Risk name (``"error"``, ``"disagreement"``, ``"nll_excess"``, ``"cost"``; see
        :func:`~exitwise.policies.losses.loss_table`) -> limit in (0, 1) (``risks`` is the old
        name of this argument).
    confidence : float in (0, 1), default=0.95
        Probability that every certified statement holds (``epsilon = 1 - confidence``, the
        old fourth argument, is deprecated).
    search : {"per_exit", "shared"}, default="per_exit"
        Candidates: random per-exit quantile vectors plus shared thresholds, or shared only.
    split : float in (0, 1), default=0.5
        Share of the data used to find and order the front (the rest tests it); sequences
        stay whole on one side.
    seed : int, default=0
        The split, the candidates and the testing order.
    num_candidates : int, default=2000
        Random per-exit candidates (``search="per_exit"``).
    tuned_levels : int, default=12
        Also, per risk other than cost, the least-cost per-exit thresholds (exact line
        searches, as :func:`~exitwise.policies.tune`) with that risk on the optimisation part
        at this many levels from 20 % to 100 % of its limit (``search="per_exit"``).
    p_value : {"binomial", "hoeffding_bentkus", "wsr"}, optional
        One method for every risk; default: binomial for 0/1 risks, WSR for the others (and
        for every risk over sequences, whose losses are shares).
    recall : {"none", "most_confident"}, default="none"
    nll_bound : float, default=1.0
    unit : {"sample", "token", "sequence"}, optional
        Default ``"sequence"`` when the data has ``groups``.
    max_optimisation : int, default=200_000
        The front is found and ordered on at most this many samples of the optimisation part
        (a random subset, seeded by ``seed``). The guarantee rests on the testing part alone,
        which is always used whole, so this bounds the time at large N without weakening it
        (N = 2,000,000 x 4 exits: about 30 s on 2 cores).
    progress : bool, optional
        A progress bar over the testing walk (default: when N * E >= 10^7).

    Returns
    -------
    PolicyResult
        With ``guarantee`` (procedure ``"pareto_testing"``) and ``path`` (the ordered front);
        or no policy with the reason and, per risk, the least p-value reached.

    Notes
    -----
    In an initialised ``torch.distributed`` group of several processes each rank passes its
    shard (sequences whole within a rank, ids unique across ranks) and every rank gets the
    one-process answer on the concatenated shards: the scores and the risks' loss tables are
    gathered on rank 0 (:func:`~exitwise.policies.gathered.search_on_first_rank`), which runs
    the split, the front and the testing walk and hands every rank the result.

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> cal, test = load_default().split(0.5, seed=0)
    >>> res = certify(cal, "max_probability", {"disagreement": 0.05, "cost": 0.6})
    >>> res.certified, res.evaluation.relative_cost <= 0.6, res.guarantee.p_values["cost"] <= 0.05
    (True, True, True)
    """
    limits = renamed_argument(
        MISSING if limits is None else limits, "limits", risks, "risks", stacklevel=3
    )
    if limits is MISSING:
        raise TypeError('Expected `limits`, e.g. {"disagreement": 0.02, "cost": 0.4}.')
    limits = _check_limits(limits)
    confidence = confidence_or_failure_probability(confidence, epsilon, "epsilon")
    confidence = check_open_unit(confidence, "confidence")
    alpha = 1.0 - confidence
    check_choice(search, "search", ("per_exit", "shared"))
    split = check_open_unit(split, "split")
    num_candidates = check_int(num_candidates, "num_candidates", minimum=1)
    tuned_levels = check_int(tuned_levels, "tuned_levels", minimum=0)
    max_optimisation = check_int(max_optimisation, "max_optimisation", minimum=1)
    data = as_scores(outputs, signal)
    if group_active():  # the split, the front and the walk read every rank's tables: rank 0's
        return search_on_first_rank(
            lambda every: certify(
                every,
                limits=limits,
                confidence=confidence,
                search=search,
                split=split,
                seed=seed,
                num_candidates=num_candidates,
                tuned_levels=tuned_levels,
                p_value=p_value,
                recall=recall,
                nll_bound=nll_bound,
                unit=unit,
                max_optimisation=max_optimisation,
                progress=progress,
            ),
            data,
            losses=list(limits),
            recall=recall,
            nll_bound=nll_bound,
        )
    unit = resolve_unit(unit, data.groups)
    methods = {
        name: resolve_p_value(p_value, name in ZERO_ONE_RISKS and unit == "sample", name)
        for name in limits
    }
    opt_idx, test_idx = data.split_indices(split, seed)
    if len(opt_idx) == 0 or len(test_idx) == 0:
        raise ValueError(
            f"`split`={split} leaves an empty part of {data.num_samples} samples; pass more "
            "calibration data or a split nearer 0.5."
        )
    gen = torch.Generator().manual_seed(int(seed))
    test_idx = test_idx[torch.randperm(len(test_idx), generator=gen).to(test_idx.device)]
    n_opt_units = len(opt_idx) if unit == "sample" else int(data.groups[opt_idx].unique().numel())
    if len(opt_idx) > max_optimisation:  # the front only needs a good sample of this part
        keep = torch.randperm(len(opt_idx), generator=gen)[:max_optimisation]
        opt_idx = opt_idx[keep.to(opt_idx.device)]
    scores = data.scores
    names = list(limits) + ([] if "cost" in limits else ["cost"])
    tables = {r: data.losses(r, recall=recall, nll_bound=nll_bound) for r in names}
    s_opt = scores[opt_idx].cpu()
    opt_tables = {r: t[opt_idx].cpu() for r, t in tables.items()}
    candidates = _candidates(s_opt, search, num_candidates, seed, data.signal)
    if search == "per_exit":
        tuned = _tuned_candidates(s_opt, opt_tables, limits, tuned_levels)
        candidates = torch.unique(torch.cat([candidates, tuned]), dim=0)
    opt_risk = _risks_of_candidates(s_opt, opt_tables, names, candidates)
    front = non_dominated(opt_risk)
    thresholds, front_risk = candidates[front], opt_risk[front]
    test_groups = None if unit == "sample" else data.groups[test_idx]
    n_test = len(test_idx) if test_groups is None else int(torch.unique(test_groups).numel())
    guess = np.max(  # the order is fixed on the optimisation part only
        np.stack(
            [
                hoeffding_bentkus_p_value(front_risk[:, j].numpy(), n_test, limits[r])
                for j, r in enumerate(limits)
            ]
        ),
        axis=0,
    )
    cost_col = names.index("cost")
    order = np.lexsort((front_risk[:, cost_col].numpy(), guess))
    thresholds = thresholds[torch.as_tensor(order)]
    s_test = scores[test_idx]
    test_tables = {r: tables[r][test_idx] for r in names}

    def unit_losses(r: str, exits: torch.Tensor) -> torch.Tensor:
        token = test_tables[r].gather(1, exits.to(test_tables[r].device))[:, 0]
        if test_groups is None:
            return token
        return sequence_losses(token, test_groups.to(token.device), "fraction")

    passed: list[tuple[float, int, dict[str, float], dict[str, float]]] = []
    path_p = torch.full((len(thresholds),), math.nan, dtype=torch.float64)
    path_risk = torch.full((len(thresholds),), math.nan, dtype=torch.float64)
    best_p = {r: math.inf for r in limits}
    from tqdm.auto import tqdm

    show = data.num_samples * data.num_exits >= 10**7 if progress is None else progress
    bar = tqdm(total=len(thresholds), desc="certify: testing the front", disable=not show)
    for i in range(len(thresholds)):
        bar.update(1)
        exits = first_exit(s_test, thresholds[i].to(s_test.device))[:, None]
        ps, emp = {}, {}
        for r in limits:
            losses = unit_losses(r, exits)
            ps[r] = p_value_of_losses(losses, limits[r], methods[r], alpha=alpha)
            emp[r] = float(losses.mean())
            best_p[r] = min(best_p[r], ps[r])
        path_p[i], path_risk[i] = max(ps.values()), emp[next(iter(limits))]
        if max(ps.values()) > alpha:
            break
        cost = float(test_tables["cost"].gather(1, exits)[:, 0].mean())
        passed.append((cost, i, ps, emp))
    bar.close()
    path = TestingPath(
        thresholds,
        path_p,
        path_risk,
        None,
        int((~torch.isnan(path_p)).sum()),
        len(passed),
        n_opt_units,
    )
    units = "sequences" if unit == "sequence" else "samples"
    if not passed:
        wanted = ", ".join(f"{k} <= {v:g}" for k, v in limits.items())
        reason = (
            f"no candidate on the Pareto front has every risk ({wanted}) certified at "
            f"confidence {confidence:g} on {n_test} testing {units}: the first candidate's "
            f"p-values are {', '.join(f'{k} {v:.3g}' for k, v in best_p.items())} (each must be "
            f"<= {alpha:.3g}); more calibration data, looser limits or a lower confidence may "
            "certify one"
        )
        return PolicyResult(
            None,
            None,
            reason=reason,
            best_achievable={f"p_value_{k}": v for k, v in best_p.items()},
            path=path,
            limits=limits,
            confidence=confidence,
            num_units=n_test,
            unit=unit,
        )
    cost, i, ps, emp = min(passed, key=lambda item: (item[0], item[1]))
    policy = ThresholdPolicy(data.signal, thresholds[i].tolist(), recall=recall)
    guarantee = Guarantee(
        limits=limits,
        confidence=confidence,
        unit=unit,
        num_units=n_test,
        p_values=ps,
        p_value_methods=methods,
        empirical_risks=emp,
        procedure="pareto_testing",
    )
    evaluation = evaluate_policy(policy, data[test_idx], confidence=confidence)
    return PolicyResult(
        policy,
        evaluation,
        guarantee,
        path=path,
        limits=limits,
        confidence=confidence,
        num_units=n_test,
        unit=unit,
    )
