"""Constraints of an SLA for the tuners: each says, for a batch of candidate policies'
statistics, which candidates meet it (bool ``[K]``)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal

import torch

from exitwise._checks import check_choice
from exitwise._deprecation import MISSING, renamed_argument, warn_renamed
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


RELATIVE_DEFAULT_CHANGED = (
    "`relative` now defaults to True in every tuner and constraint (the target is a fraction "
    "of the final exit's accuracy, the budget a fraction of its cost); pass relative=False "
    "for an absolute value, or relative=True to silence this warning."
)


def resolve_relative(relative: bool | None, old: Any = MISSING, *, stacklevel: int = 4) -> bool:
    """``relative`` with the renamed ``relative_to_final`` and the changed default (True,
    with a ``FutureWarning`` where the default used to be False)."""
    relative = renamed_argument(
        MISSING if relative is None else relative,
        "relative",
        old,
        "relative_to_final",
        stacklevel=stacklevel + 1,
    )
    if relative is MISSING or relative is None:
        warnings.warn(RELATIVE_DEFAULT_CHANGED, FutureWarning, stacklevel=stacklevel)
        return True
    if not isinstance(relative, bool):
        raise TypeError(f"Expected `relative` to be True or False, got {relative!r}.")
    return relative


class _Relative:
    """Shared by the constraints: ``relative`` (a fraction of the final exit's value)."""

    value: float
    relative: bool

    def __init__(
        self, value: float, relative: bool | None = None, *, relative_to_final: Any = MISSING
    ) -> None:
        object.__setattr__(self, "value", float(value))
        object.__setattr__(self, "relative", resolve_relative(relative, relative_to_final))

    def _limit(self, full_cost: float) -> float:
        return self.value * full_cost if self.relative else self.value

    @property
    def relative_to_final(self) -> bool:
        """Deprecated name of ``relative``."""
        warn_renamed("relative_to_final", "relative")
        return self.relative


@dataclass(frozen=True, init=False)
class AccuracyAtLeast(_Relative):
    """Accuracy >= ``value`` (or ``value`` x the final exit's accuracy if ``relative``)."""

    value: float
    relative: bool

    def bound(self, final_accuracy: float, full_cost: float) -> float:
        return self.value * final_accuracy if self.relative else self.value

    def ok(self, ev: _Stats, final_accuracy: float, full_cost: float) -> torch.Tensor:
        return ev.accuracy >= self.bound(final_accuracy, full_cost) - 1e-12

    def describe(self, final_accuracy: float, full_cost: float) -> str:
        return f"accuracy >= {self.bound(final_accuracy, full_cost):.4f}" + (
            f" ({self.value:g} x the final exit's)" if self.relative else ""
        )


@dataclass(frozen=True, init=False)
class CostAtMost(_Relative):
    """Mean cost <= ``value`` (as a fraction of the final exit's cost if ``relative``, else
    in cost units)."""

    value: float
    relative: bool

    def ok(self, ev: _Stats, final_accuracy: float, full_cost: float) -> torch.Tensor:
        limit = self._limit(full_cost)
        return ev.mean_cost <= limit + 1e-12 * max(1.0, abs(limit))

    def describe(self, final_accuracy: float, full_cost: float) -> str:
        return f"mean cost <= {self._limit(full_cost):.4g}" + (
            f" ({self.value:g} of the full model's)" if self.relative else ""
        )


@dataclass(frozen=True, init=False)
class CostQuantileAtMost(_Relative):
    """The ``q``-quantile of the per-sample cost (e.g. p99 latency) <= ``value`` (in cost
    units; a fraction of the full cost with ``relative=True``)."""

    q: float
    value: float
    relative: bool

    def __init__(
        self, q: float, value: float, relative: bool = False, *, relative_to_final: Any = MISSING
    ) -> None:
        relative = renamed_argument(
            MISSING if relative is False else relative,
            "relative",
            relative_to_final,
            "relative_to_final",
        )
        object.__setattr__(self, "q", float(q))
        object.__setattr__(self, "value", float(value))
        object.__setattr__(self, "relative", bool(relative) if relative is not MISSING else False)

    def ok(self, ev: _Stats, final_accuracy: float, full_cost: float) -> torch.Tensor:
        limit = self._limit(full_cost)
        return ev.quantile(self.q) <= limit + 1e-12 * max(1.0, abs(limit))

    def describe(self, final_accuracy: float, full_cost: float) -> str:
        return f"p{100 * self.q:g} cost <= {self._limit(full_cost):.4g}"


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

    def describe(self, final_accuracy: float, full_cost: float) -> str:
        return f"{self.risk} <= {self.value:g}"


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
