"""One policy's typed evaluation on one data set (:class:`Evaluation`): what every result,
the CLI and the report read, in place of dicts whose keys change by mode."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from exitwise.policies.kernels import ThresholdEvaluation

__all__ = ["Evaluation"]


@dataclass(frozen=True)
class Evaluation:
    """What one policy does on one data set.

    Attributes
    ----------
    accuracy : float or None
        Share of right answers against the labels (``None`` without labels).
    agreement : float or None
        Share of answers equal to the final exit's (``None`` when not computed).
    mean_cost : float
    relative_cost : float
        ``mean_cost`` over the full model's mean cost.
    speed_up : float
        The full model's mean cost over ``mean_cost``.
    exit_fractions : tuple of float
        Share of samples leaving at each exit.
    cost_percentiles : dict
        Percentile (0-100) -> per-sample cost at that percentile (inverted CDF).
    num_samples : int
    accuracy_lower_bound : float or None
        One-sided Clopper–Pearson lower bound of ``accuracy`` at ``confidence``: what new
        data can be expected to show.
    confidence : float or None
        The level of ``accuracy_lower_bound``.

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> from exitwise.policies import ThresholdPolicy, evaluate_policy
    >>> ev = evaluate_policy(ThresholdPolicy("max_probability", 0.9), load_default())
    >>> round(ev.accuracy, 4), len(ev.exit_fractions), round(ev.speed_up * ev.relative_cost, 12)
    (0.8811, 4, 1.0)
    """

    accuracy: float | None
    agreement: float | None
    mean_cost: float
    relative_cost: float
    speed_up: float
    exit_fractions: tuple[float, ...]
    cost_percentiles: dict[float, float]
    num_samples: int
    accuracy_lower_bound: float | None = None
    confidence: float | None = None

    @classmethod
    def from_rows(
        cls,
        ev: ThresholdEvaluation,
        row: int = 0,
        *,
        correct_is: str = "labels",
        agreement: ThresholdEvaluation | None = None,
        confidence: float | None = 0.95,
    ) -> Evaluation:
        """Row ``row`` of an evaluator result. ``correct_is`` says what its ``accuracy``
        measured (``"labels"`` or ``"final"``: then it is the agreement); ``agreement`` is an
        evaluation of the same policies against the final exit."""
        acc = None if ev.accuracy is None else float(ev.accuracy[row])
        agree = None
        if correct_is == "final":
            acc, agree = None, acc
        elif agreement is not None and agreement.accuracy is not None:
            agree = float(agreement.accuracy[row])
        percentiles: dict[float, float] = {}
        if ev.cost_quantiles is not None:
            percentiles = {
                round(100.0 * q, 10): float(v)
                for q, v in zip(ev.quantiles, ev.cost_quantiles[row].tolist(), strict=True)
            }
        bound = None
        if acc is not None and confidence is not None:
            from exitwise.policies.constraints import accuracy_lower_bound

            bound = float(accuracy_lower_bound(torch.tensor([acc]), ev.num_samples, confidence)[0])
        return cls(
            accuracy=acc,
            agreement=agree,
            mean_cost=float(ev.mean_cost[row]),
            relative_cost=float(ev.relative_cost[row]),
            speed_up=float(ev.speed_up[row]),
            exit_fractions=tuple(ev.exit_fractions[row].tolist()),
            cost_percentiles=percentiles,
            num_samples=ev.num_samples,
            accuracy_lower_bound=bound,
            confidence=None if bound is None else confidence,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (percentile keys as strings)."""
        out = asdict(self)
        out["exit_fractions"] = list(self.exit_fractions)
        out["cost_percentiles"] = {f"{k:g}": v for k, v in self.cost_percentiles.items()}
        return out
