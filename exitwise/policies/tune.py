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

from exitwise._checks import check_choice, check_costs, check_int, check_open_unit
from exitwise.data import ExitOutputs
from exitwise.policies.constraints import (
    AccuracyAtLeast,
    CostAtMost,
    CostQuantileAtMost,
    RiskAtMost,
    _Stats,
    accuracy_lower_bound,
)
from exitwise.policies.evaluate import evaluate_thresholds
from exitwise.policies.evaluate_policies import evaluate
from exitwise.policies.kernels import ThresholdEvaluation
from exitwise.policies.recall import Recall, recalled_outcome
from exitwise.policies.sweep import sweep_exit_threshold, sweep_shared_threshold
from exitwise.policies.threshold import ThresholdPolicy
from exitwise.signals import compute_signal

__all__ = [
    "AccuracyAtLeast",
    "CostAtMost",
    "CostQuantileAtMost",
    "RiskAtMost",
    "TunedPolicy",
    "tune",
    "tune_for_accuracy",
    "tune_for_budget",
    "tune_for_latency",
]


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
        Accuracy, mean cost, speed-up, exit fractions (and cost quantiles) on the tuning split,
        and ``accuracy_lower_bound``: the one-sided Clopper–Pearson lower bound of the accuracy
        at ``confidence`` (the tuner's, else 0.95): what new data can be expected to show.
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
        "relative_cost": float(ev.mean_cost[row]) / ev.full_cost,
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
    n = scores.shape[0]
    shared = _Stats(sweep.accuracy, sweep.mean_cost, sweep.exit_counts, costs, disagree)
    best = _pick(shared, feasible(shared), objective)
    if best is None:
        return None, math.inf
    shared_tau = float(sweep.thresholds[best])
    current = torch.full((e,), shared_tau, dtype=torch.float64)
    cur_acc, cur_cost = shared.accuracy[best], shared.mean_cost[best]
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
    recall: Recall = "none",
    min_exit: int = 0,
    progress: bool | None = None,
) -> TunedPolicy:
    """General tuner: minimise mean cost (``objective="cost"``) or maximise accuracy
    (``"accuracy"``) subject to ``constraints``, on ``outputs`` (the tuning split).

    Parameters
    ----------
    outputs : ExitOutputs
        Tuning split (labels needed unless ``reference="final"``).
    signal : str or DecayedSignal
        Signal name (see :mod:`exitwise.signals`), or a position-aware
        :class:`~exitwise.policies.positions.DecayedSignal` (CALM's decaying thresholds).
    constraints : list
        :class:`AccuracyAtLeast`, :class:`CostAtMost`, :class:`CostQuantileAtMost`,
        :class:`RiskAtMost`.
    per_exit : bool, default=True
        Improve per-exit thresholds after the shared one (``rounds`` coordinate passes, each
        an exact line search per exit: :func:`~exitwise.policies.sweep_exit_threshold`).
    recall : {"none", "most_confident"}, default="none"
        Tune a recall policy (the most confident exit computed so far answers); the search
        stays exact (:func:`~exitwise.policies.recall.recalled_outcome`).
    min_exit : int, default=0
        Never exit before exit ``min_exit``: the search runs on exits ``min_exit..E-1`` (with
        their cumulative costs; signals are computed on all exits), which is exact.
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
    correct = recalled_outcome(outputs.correct(reference).cpu(), scores, recall)
    costs = outputs.costs.cpu()
    needs_agreement = any(
        isinstance(c, RiskAtMost) and c.risk == "disagreement" for c in constraints
    )
    agree = (
        recalled_outcome(outputs.correct("final").cpu(), scores, recall)
        if needs_agreement
        else None
    )
    m = check_int(min_exit, "min_exit", minimum=0)
    if m >= scores.shape[1]:
        raise ValueError(f"Expected `min_exit` below the number of exits ({scores.shape[1]}).")
    thresholds, shared_tau = _search(
        scores[:, m:],
        correct[:, m:],
        costs[m:],
        list(constraints),
        objective,
        rounds if per_exit else 0,
        None if agree is None else agree[:, m:],
        progress,
    )
    if thresholds is None:
        return TunedPolicy(None, False, {}, math.inf, tuple(quantiles))
    thresholds = torch.cat([torch.full((m,), math.inf, dtype=torch.float64), thresholds])
    policy = ThresholdPolicy(signal, thresholds.tolist(), recall=recall, min_exit=m)
    ev = evaluate_thresholds(
        scores,
        correct,
        costs,
        thresholds[None],
        quantiles=tuple(quantiles) or None,
        distributed=False,
    )
    achieved = _with_lower_bound(_summary(ev), scores.shape[0], 0.95)
    return TunedPolicy(policy, True, achieved, shared_tau, tuple(quantiles))


def _with_lower_bound(achieved: dict[str, Any], n: int, confidence: float) -> dict[str, Any]:
    """Add the accuracy's one-sided Clopper–Pearson lower bound at ``confidence``."""
    if achieved.get("accuracy") is not None:
        bound = accuracy_lower_bound(torch.tensor([achieved["accuracy"]]), n, confidence)
        achieved.update(confidence=confidence, accuracy_lower_bound=float(bound[0]))
    return achieved


def tune_for_accuracy(
    outputs: ExitOutputs,
    signal: str,
    target: float,
    *,
    relative: bool = False,
    confidence: float | None = None,
    grid: Any = None,
    **kwargs: Any,
) -> TunedPolicy:
    """Least mean cost with accuracy >= ``target`` (x the final exit's accuracy if
    ``relative``).

    By default the target is met on the tuning split, and new data misses it about half the
    time when the chosen policy sits right on it (``achieved["accuracy_lower_bound"]``, the
    one-sided 95 % Clopper–Pearson bound, says how far it may fall). With ``confidence``
    (e.g. 0.9) the target holds on new data with at least that probability: the policy is a
    shared threshold certified by Learn-then-Test
    (:func:`~exitwise.policies.risk_controlled_threshold` with ``risk="error"``, ``delta = 1 -
    target`` and ``epsilon = 1 - confidence``; a relative target takes the final exit's
    accuracy on this split as known). Per-exit thresholds picked on the same data would not
    keep the guarantee: picking the cheapest of many candidates whose bound clears the target
    met it on new data only 66 % of the time at confidence 0.9 on the bundled data.
    ``grid`` is passed on for signals outside [0, 1].

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
    if confidence is None:
        return tune(outputs, signal, "cost", [AccuracyAtLeast(target, relative)], **kwargs)
    from exitwise.policies.certified_tuning import certified_tuning

    reference = kwargs.get("reference", "labels")
    final = float(outputs.correct(reference)[:, -1].double().mean())
    absolute = target * final if relative else target
    if not 0.0 < absolute < 1.0:
        raise ValueError(f"Expected an accuracy target in (0, 1), got {absolute!r}.")
    tuned = certified_tuning(
        outputs,
        signal,
        confidence,
        grid,
        kwargs,
        risk="error" if reference == "labels" else "disagreement",
        delta=1.0 - absolute,
        recall=kwargs.get("recall", "none"),
        quantiles=tuple(kwargs.get("quantiles", ())),
    )
    if tuned.feasible:
        tuned.achieved["target"] = absolute
    return tuned


def tune_for_budget(
    outputs: ExitOutputs,
    signal: str,
    budget: float,
    *,
    relative: bool = True,
    confidence: float | None = None,
    grid: Any = None,
    **kwargs: Any,
) -> TunedPolicy:
    """Best accuracy with mean cost <= ``budget`` (a fraction of the final exit's cost by
    default).

    With ``confidence`` the budget holds on new data with at least that probability: a shared
    threshold certified by Learn-then-Test on the cost over the full cost (a loss in [0, 1],
    WSR p-values), walking the thresholds up from "everyone leaves at the first exit".

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> cal, test = load_default().split(0.5, seed=0)
    >>> tune_for_budget(cal, "max_probability", 0.5).achieved["speed_up"] >= 2.0
    True
    """
    if confidence is None:
        return tune(outputs, signal, "accuracy", [CostAtMost(budget, relative)], **kwargs)
    share = budget if relative else budget / float(outputs.costs[..., -1].max())
    from exitwise.policies.certified_tuning import certified_tuning

    return certified_tuning(
        outputs, signal, confidence, grid, kwargs, risk="cost", delta=share, direction="up"
    )


def tune_for_latency(
    outputs: ExitOutputs,
    signal: str,
    latencies: Any,
    percentile: float,
    limit: float,
    *,
    confidence: float | None = None,
    grid: Any = None,
    **kwargs: Any,
) -> TunedPolicy:
    """Best accuracy with the ``percentile`` (e.g. 99) of per-sample latency <= ``limit``.

    ``latencies`` are cumulative per-exit latencies ``[E]`` (e.g. milliseconds); they replace
    ``outputs.costs`` for this tuning. With ``confidence`` the percentile holds on new data with
    at least that probability: a shared threshold certified by Learn-then-Test on the 0/1 loss
    "latency > limit" with tolerance ``1 - percentile / 100`` (binomial p-values), walking the
    thresholds up from "everyone leaves at the first exit".
    """
    lat = check_costs(
        latencies, "latencies", outputs.num_exits, positive=True, device=outputs.device
    )
    q = percentile / 100.0
    with_latency = ExitOutputs._trusted(outputs.logits, outputs.labels, lat, outputs.exit_names)
    if confidence is None:
        return tune(
            with_latency,
            signal,
            "accuracy",
            [CostQuantileAtMost(q, limit)],
            quantiles=(q,),
            **kwargs,
        )
    slow = (lat > limit).to(torch.float64).expand(outputs.num_samples, -1)
    from exitwise.policies.certified_tuning import certified_tuning

    return certified_tuning(
        with_latency,
        signal,
        confidence,
        grid,
        kwargs,
        risk="latency",
        delta=1.0 - q,
        direction="up",
        losses=slow,
        quantiles=(q,),
    )
