"""Constraints of an SLA for the tuners: each says, for a batch of candidate policies'
statistics, which candidates meet it (bool ``[K]``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from exitwise._checks import check_choice
from exitwise.policies.kernels import quantiles_from_counts

__all__ = [
    "AccuracyAtLeast",
    "CostAtMost",
    "CostQuantileAtMost",
    "RiskAtMost",
    "accuracy_lower_bound",
]


def accuracy_lower_bound(accuracy: Any, num_samples: int, confidence: float) -> torch.Tensor:
    """Clopper–Pearson lower bounds of accuracies measured on ``num_samples`` samples
    (:func:`~exitwise.policies.p_values.clopper_pearson_lower`), as float64 tensors.

    Examples
    --------
    >>> import torch
    >>> accuracy_lower_bound(torch.tensor([0.9, 1.0]), 500, 0.9)
    tensor([0.8806, 0.9954], dtype=torch.float64)
    """
    from exitwise.policies.p_values import clopper_pearson_lower

    acc = torch.as_tensor(accuracy, dtype=torch.float64)
    hits = torch.round(acc * num_samples).cpu().numpy()
    return torch.as_tensor(clopper_pearson_lower(hits, num_samples, confidence)).to(acc.device)


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
        if self.counts is None:
            raise ValueError("Cost quantiles need exit counts; the tuner asks for them.")
        return quantiles_from_counts(self.counts, self.costs, [q])[:, 0]
