"""Tune exit thresholds for an SLA: accuracy target, compute budget, latency percentile.

Every tuner works on a tuning (calibration) split and returns a :class:`TunedPolicy` with the
policy, what it achieved there and ``report(test_outputs)`` for a held-out split.

The search: start from the best *shared* threshold (exact, from every breakpoint of
:func:`sweep_shared_threshold`), then improve the per-exit thresholds by exact
coordinate-wise line searches: with the other thresholds fixed, every distinct score at exit
``j`` (and ``+inf``) is a candidate for ``t_j``, all scored at once by one sort and
cumulative sums (:func:`sweep_exit_threshold`, O(N log N) per exit), and the best feasible
one is kept. A move is only taken when it improves the objective, so
the result is never worse than the best shared threshold on the tuning split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from exitwise._checks import check_choice, check_int, check_open_unit
from exitwise.data import ExitOutputs
from exitwise.policies.evaluate import (
    ThresholdEvaluation,
    evaluate,
    evaluate_thresholds,
    quantiles_from_counts,
)
from exitwise.policies.sweep import sweep_exit_threshold, sweep_shared_threshold
from exitwise.policies.threshold import ThresholdPolicy
from exitwise.signals import compute_signal

__all__ = [
    "AccuracyAtLeast",
    "CostAtMost",
    "CostQuantileAtMost",
    "RiskAtMost",
    "TunedPolicy",
    "geometric_budget_policy",
    "pareto_frontier",
    "tune",
    "tune_for_accuracy",
    "tune_for_budget",
    "tune_for_latency",
]


# ----------------------------------------------------------------------------- constraints
@dataclass(frozen=True)
class AccuracyAtLeast:
    """Accuracy >= ``value`` (or ``value`` x the final exit's accuracy if relative)."""

    value: float
    relative_to_final: bool = False

    def bound(self, final_accuracy: float, full_cost: float) -> float:
        return self.value * final_accuracy if self.relative_to_final else self.value

    def ok(self, ev: _Stats, final_accuracy: float, full_cost: float) -> torch.Tensor:
        return ev.accuracy >= self.bound(final_accuracy, full_cost) - 1e-12


@dataclass(frozen=True)
class CostAtMost:
    """Mean cost <= ``value`` (in cost units, or as a fraction of the final exit's cost)."""

    value: float
    relative_to_final: bool = False

    def ok(self, ev: _Stats, final_accuracy: float, full_cost: float) -> torch.Tensor:
        limit = self.value * full_cost if self.relative_to_final else self.value
        return ev.mean_cost <= limit + 1e-12 * max(1.0, abs(limit))


@dataclass(frozen=True)
class CostQuantileAtMost:
    """The ``q``-quantile of the per-sample cost (e.g. p99 latency) <= ``value``."""

    q: float
    value: float
    relative_to_final: bool = False

    def ok(self, ev: _Stats, final_accuracy: float, full_cost: float) -> torch.Tensor:
        limit = self.value * full_cost if self.relative_to_final else self.value
        return ev.quantile(self.q) <= limit + 1e-12 * max(1.0, abs(limit))


@dataclass(frozen=True)
class RiskAtMost:
    """Error rate (``risk="error"``) or disagreement with the final exit
    (``risk="disagreement"``) <= ``value`` on the tuning split (an empirical bound; for a
    statistical guarantee use :func:`~exitwise.policies.risk_controlled_threshold`)."""

    value: float
    risk: Literal["error", "disagreement"] = "error"

    def ok(self, ev: _Stats, final_accuracy: float, full_cost: float) -> torch.Tensor:
        check_choice(self.risk, "risk", ("error", "disagreement"))
        rate = 1.0 - ev.accuracy if self.risk == "error" else ev.disagreement
        return rate <= self.value + 1e-12


@dataclass
class _Stats:
    """Accuracy, mean cost and exit counts of candidates (from the sweep or the evaluator)."""

    accuracy: torch.Tensor
    mean_cost: torch.Tensor
    counts: torch.Tensor | None  # [K, E], only when a quantile constraint needs it
    costs: torch.Tensor  # [E]
    disagreement: torch.Tensor | None = None

    def quantile(self, q: float) -> torch.Tensor:
        return quantiles_from_counts(self.counts, self.costs, [q])[:, 0]


@dataclass
class TunedPolicy:
    """A tuned policy and the evidence.

    Attributes
    ----------
    policy : ThresholdPolicy or None
        ``None`` when no policy meets the constraints on the tuning split (``feasible`` is
        then False: "infeasible" is a result, not an error).
    feasible : bool
    achieved : dict
        Accuracy, mean cost, speed-up, exit fractions (and cost quantiles) on the tuning split.
    shared_threshold : float
        The best shared threshold found first (the per-exit search starts there).
    """

    policy: ThresholdPolicy | None
    feasible: bool
    achieved: dict[str, Any] = field(default_factory=dict)
    shared_threshold: float = math.inf
    quantiles: tuple[float, ...] = ()

    def report(self, outputs: ExitOutputs) -> dict[str, Any]:
        """The policy's accuracy, mean cost, speed-up and exit fractions on ``outputs``."""
        if self.policy is None:
            raise ValueError("This tuning found no feasible policy; there is nothing to report.")
        return _summary(evaluate(self.policy, outputs, quantiles=self.quantiles or None))


def _summary(ev: ThresholdEvaluation, row: int = 0) -> dict[str, Any]:
    out = {
        "accuracy": float(ev.accuracy[row]) if ev.accuracy is not None else None,
        "mean_cost": float(ev.mean_cost[row]),
        "speed_up": float(ev.speed_up[row]),
        "exit_fractions": ev.exit_fractions[row].tolist(),
    }
    if ev.cost_quantiles is not None:
        out["cost_quantiles"] = dict(
            zip(ev.quantiles, ev.cost_quantiles[row].tolist(), strict=True)
        )
    return out


# ----------------------------------------------------------------------------- search
def _progress_bar(total: int, size: int, progress: bool | None) -> Any:
    from tqdm.auto import tqdm

    show = (size >= 10**7 if progress is None else progress) and total > 0
    return tqdm(total=total, desc="per-exit search", unit=" line", disable=not show)


def _better(acc_a, cost_a, acc_b, cost_b, objective: str) -> torch.Tensor:
    """Is candidate a strictly better than b (ties broken by the other criterion)."""
    if objective == "cost":
        return (cost_a < cost_b - 1e-12) | ((cost_a <= cost_b + 1e-12) & (acc_a > acc_b + 1e-12))
    return (acc_a > acc_b + 1e-12) | ((acc_a >= acc_b - 1e-12) & (cost_a < cost_b - 1e-12))


def _pick(stats: _Stats, feasible: torch.Tensor, objective: str) -> int | None:
    if not bool(feasible.any()):
        return None
    idx = torch.nonzero(feasible).flatten()
    acc, cost = stats.accuracy[idx], stats.mean_cost[idx]
    if objective == "cost":
        best_cost = cost.min()
        near = cost <= best_cost + 1e-12
        choice = torch.argmax(torch.where(near, acc, torch.full_like(acc, -1.0)))
    else:
        best_acc = acc.max()
        near = acc >= best_acc - 1e-12
        choice = torch.argmin(torch.where(near, cost, torch.full_like(cost, math.inf)))
    return int(idx[choice])


def _search(
    scores: torch.Tensor,
    correct: torch.Tensor,
    costs: torch.Tensor,
    constraints: list[Any],
    objective: str,
    rounds: int,
    agree: torch.Tensor | None = None,
    progress: bool | None = None,
) -> tuple[torch.Tensor | None, float]:
    """``agree`` [N, E] (agreement with the final exit) is needed by disagreement bounds."""
    e = scores.shape[1]
    final_accuracy = float(correct[:, -1].double().mean())
    full_cost = float(costs[-1])

    def feasible(stats: _Stats) -> torch.Tensor:
        ok = torch.ones_like(stats.accuracy, dtype=torch.bool)
        for c in constraints:
            ok &= c.ok(stats, final_accuracy, full_cost)
        return ok

    need_counts = any(isinstance(c, CostQuantileAtMost) for c in constraints)
    sweep = sweep_shared_threshold(scores, correct, costs, return_exit_counts=need_counts)
    disagree = None
    if agree is not None:  # same scores, so the same breakpoints
        disagree = 1.0 - sweep_shared_threshold(scores, agree, costs).accuracy
    shared = _Stats(sweep.accuracy, sweep.mean_cost, sweep.exit_counts, costs, disagree)
    best = _pick(shared, feasible(shared), objective)
    if best is None:
        return None, math.inf
    shared_tau = float(sweep.thresholds[best])
    current = torch.full((e,), shared_tau, dtype=torch.float64)
    cur_acc, cur_cost = shared.accuracy[best], shared.mean_cost[best]
    n = scores.shape[0]
    tables = [correct] if agree is None else [correct, agree]
    bar = _progress_bar(rounds * (e - 1), n * e, progress)
    for _ in range(rounds):
        improved = False
        for j in range(e - 1):
            bar.update(1)
            line = sweep_exit_threshold(
                scores, tables, costs, current, j, return_exit_counts=need_counts
            )
            stats = _Stats(
                line.outcome_sums[:, 0] / n,
                line.cost_sum / n,
                line.exit_counts,
                costs,
                None if agree is None else 1.0 - line.outcome_sums[:, 1] / n,
            )
            pick = _pick(stats, feasible(stats), objective)
            if pick is None:
                continue
            if bool(
                _better(stats.accuracy[pick], stats.mean_cost[pick], cur_acc, cur_cost, objective)
            ):
                current[j] = line.thresholds[pick]
                cur_acc, cur_cost = stats.accuracy[pick], stats.mean_cost[pick]
                improved = True
        if not improved:
            break
    bar.close()
    current[-1] = -math.inf  # the last exit always answers: make that explicit
    return current, shared_tau


def tune(
    outputs: ExitOutputs,
    signal: str,
    objective: Literal["cost", "accuracy"],
    constraints: list[Any],
    *,
    per_exit: bool = True,
    rounds: int = 3,
    quantiles: tuple[float, ...] = (),
    reference: Literal["labels", "final"] = "labels",
    progress: bool | None = None,
) -> TunedPolicy:
    """General tuner: minimise mean cost (``objective="cost"``) or maximise accuracy
    (``"accuracy"``) subject to ``constraints``, on ``outputs`` (the tuning split).

    Parameters
    ----------
    outputs : ExitOutputs
        Tuning split (labels needed unless ``reference="final"``).
    signal : str
        Signal name (see :mod:`exitwise.signals`).
    constraints : list
        :class:`AccuracyAtLeast`, :class:`CostAtMost`, :class:`CostQuantileAtMost`,
        :class:`RiskAtMost`.
    per_exit : bool, default=True
        Improve per-exit thresholds after the shared one (``rounds`` coordinate passes, each
        an exact line search per exit: :func:`~exitwise.policies.sweep_exit_threshold`).
    progress : bool, optional
        Show a progress bar over the per-exit line searches (default: when N * E >= 10^7).

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> cal, test = load_default().split(0.5, seed=0)
    >>> tuned = tune(cal, "max_probability", "cost", [AccuracyAtLeast(0.87)])
    >>> tuned.feasible, tuned.achieved["accuracy"] >= 0.87
    (True, True)
    """
    check_choice(objective, "objective", ("cost", "accuracy"))
    rounds = check_int(rounds, "rounds", minimum=0)
    scores = compute_signal(outputs, signal).double().cpu()
    correct = outputs.correct(reference).cpu()
    costs = outputs.costs.cpu()
    needs_agreement = any(
        isinstance(c, RiskAtMost) and c.risk == "disagreement" for c in constraints
    )
    agree = outputs.correct("final").cpu() if needs_agreement else None
    thresholds, shared_tau = _search(
        scores,
        correct,
        costs,
        list(constraints),
        objective,
        rounds if per_exit else 0,
        agree,
        progress,
    )
    if thresholds is None:
        return TunedPolicy(None, False, {}, math.inf, tuple(quantiles))
    policy = ThresholdPolicy(signal, thresholds.tolist())
    ev = evaluate_thresholds(
        scores,
        correct,
        costs,
        thresholds[None],
        quantiles=tuple(quantiles) or None,
        distributed=False,
    )
    return TunedPolicy(policy, True, _summary(ev), shared_tau, tuple(quantiles))


def tune_for_accuracy(
    outputs: ExitOutputs, signal: str, target: float, *, relative: bool = False, **kwargs: Any
) -> TunedPolicy:
    """Least mean cost with accuracy >= ``target`` (x the final exit's accuracy if
    ``relative``).

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> cal, test = load_default().split(0.5, seed=0)
    >>> tuned = tune_for_accuracy(cal, "max_probability", 0.99, relative=True)
    >>> tuned.achieved["speed_up"] > 1.0
    True
    """
    if not relative:
        check_open_unit(target, "target")
    return tune(outputs, signal, "cost", [AccuracyAtLeast(target, relative)], **kwargs)


def tune_for_budget(
    outputs: ExitOutputs, signal: str, budget: float, *, relative: bool = True, **kwargs: Any
) -> TunedPolicy:
    """Best accuracy with mean cost <= ``budget`` (a fraction of the final exit's cost by
    default).

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> cal, test = load_default().split(0.5, seed=0)
    >>> tune_for_budget(cal, "max_probability", 0.5).achieved["speed_up"] >= 2.0
    True
    """
    return tune(outputs, signal, "accuracy", [CostAtMost(budget, relative)], **kwargs)


def tune_for_latency(
    outputs: ExitOutputs,
    signal: str,
    latencies: Any,
    percentile: float,
    limit: float,
    **kwargs: Any,
) -> TunedPolicy:
    """Best accuracy with the ``percentile`` (e.g. 99) of per-sample latency <= ``limit``.

    ``latencies`` are cumulative per-exit latencies ``[E]`` (e.g. milliseconds); they replace
    ``outputs.costs`` for this tuning.
    """
    lat = torch.as_tensor(latencies, dtype=torch.float64)
    q = percentile / 100.0
    with_latency = ExitOutputs._trusted(
        outputs.logits, outputs.labels, lat.to(outputs.device), outputs.exit_names
    )
    ExitOutputs(outputs.logits[:1], costs=lat)  # validate the latencies
    return tune(
        with_latency, signal, "accuracy", [CostQuantileAtMost(q, limit)], quantiles=(q,), **kwargs
    )


def pareto_frontier(
    outputs: ExitOutputs,
    signal: str,
    *,
    budgets: Any = None,
    reference: Literal["labels", "final"] = "labels",
) -> dict[str, torch.Tensor]:
    """Non-dominated (mean cost, accuracy) points with their thresholds.

    Exact for the shared-threshold family (every breakpoint of the sweep), plus the per-exit
    search's points at ``budgets`` (fractions of the final cost; default 10 between the
    first and last exits' costs). Returns ``mean_cost``, ``accuracy`` (sorted by cost),
    ``thresholds`` ``[P, E]`` and ``per_exit`` (bool: from the per-exit search).

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> front = pareto_frontier(load_default()[:2000], "max_probability", budgets=[0.5])
    >>> bool((front["accuracy"][1:] > front["accuracy"][:-1]).all())
    True
    """
    scores = compute_signal(outputs, signal).double().cpu()
    correct = outputs.correct(reference).cpu()
    costs = outputs.costs.cpu()
    e = scores.shape[1]
    sweep = sweep_shared_threshold(scores, correct, costs)
    pts_cost = [sweep.mean_cost]
    pts_acc = [sweep.accuracy]
    pts_thr = [sweep.thresholds[:, None].expand(-1, e)]
    pts_kind = [torch.zeros(len(sweep), dtype=torch.bool)]
    if budgets is None:
        lo = float(costs[0] / costs[-1])
        budgets = torch.linspace(lo, 1.0, 12)[1:-1].tolist()
    for b in budgets:
        tuned = tune(outputs, signal, "accuracy", [CostAtMost(float(b), True)], reference=reference)
        if tuned.policy is None:
            continue
        pts_cost.append(torch.tensor([tuned.achieved["mean_cost"]], dtype=torch.float64))
        pts_acc.append(torch.tensor([tuned.achieved["accuracy"]], dtype=torch.float64))
        pts_thr.append(tuned.policy.threshold_vector(e)[None])
        pts_kind.append(torch.ones(1, dtype=torch.bool))
    cost = torch.cat(pts_cost)
    acc = torch.cat(pts_acc)
    thr = torch.cat(pts_thr)
    kind = torch.cat(pts_kind)
    order = torch.argsort(cost * 1.0 - acc * 1e-12, stable=True)
    cost, acc, thr, kind = cost[order], acc[order], thr[order], kind[order]
    best_before = torch.cat(
        [torch.tensor([-math.inf], dtype=torch.float64), acc.cummax(0).values[:-1]]
    )
    keep = acc > best_before + 1e-12
    return {
        "mean_cost": cost[keep],
        "accuracy": acc[keep],
        "thresholds": thr[keep],
        "per_exit": kind[keep],
    }


def geometric_budget_policy(
    outputs: ExitOutputs,
    signal: str,
    budget: float,
    *,
    relative: bool = True,
    reference: Literal["labels", "final"] = "labels",
) -> TunedPolicy:
    r"""MSDNet's budgeted-batch rule, a baseline for :func:`tune_for_budget`.

    Huang et al. (2018) let a share :math:`p_e \propto q^e` of the samples leave at exit
    :math:`e`, with :math:`q` solved (here by bisection) so that the expected cost
    :math:`\sum_e p_e c_e` equals the budget. Thresholds are then set on the tuning split
    so that, exit by exit, the most confident :math:`p_e N` of the remaining samples leave
    (ties may let a few more leave).

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> cal, _ = load_default().split(0.5, seed=0)
    >>> base = geometric_budget_policy(cal, "max_probability", 0.5)
    >>> abs(base.achieved["speed_up"] - 2.0) < 0.1
    True
    """
    costs = outputs.costs.cpu().to(torch.float64)
    e = costs.numel()
    limit = budget * float(costs[-1]) if relative else float(budget)
    if not float(costs[0]) <= limit <= float(costs[-1]):
        raise ValueError(
            f"Expected a budget between the first and last exits' costs ({float(costs[0]):.4g}"
            f" and {float(costs[-1]):.4g}), got {limit:.4g}."
        )
    powers = torch.arange(e, dtype=torch.float64)

    def shares(log_q: float) -> torch.Tensor:
        w = torch.softmax(powers * log_q, dim=0)
        return w

    lo, hi = -50.0, 50.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if float((shares(mid) * costs).sum()) > limit:
            hi = mid
        else:
            lo = mid
    p = shares(lo)
    scores = compute_signal(outputs, signal).double().cpu()
    n = scores.shape[0]
    remaining = torch.ones(n, dtype=torch.bool)
    thresholds = torch.full((e,), -math.inf, dtype=torch.float64)
    for j in range(e - 1):
        take = round(float(p[j]) * n)
        left = int(remaining.sum())
        if take <= 0 or left == 0:
            thresholds[j] = math.inf
            continue
        values = scores[remaining, j].sort(descending=True).values
        thresholds[j] = values[min(take, left) - 1]
        remaining &= ~(scores[:, j] >= thresholds[j])
    policy = ThresholdPolicy(signal, thresholds.tolist())
    achieved = _summary(evaluate(policy, outputs, reference=reference))
    achieved["geometric_shares"] = p.tolist()
    return TunedPolicy(policy, True, achieved, math.inf, ())
