"""Exception and warning types of exitwise."""

from __future__ import annotations

__all__ = [
    "ConvergenceWarning",
    "InfeasibleTargetError",
    "UndefinedMetricWarning",
    "VacuousGuaranteeWarning",
]


class UndefinedMetricWarning(UserWarning):
    """A metric is undefined for some input (e.g. AUROC when every answer is correct)."""


class ConvergenceWarning(UserWarning):
    """An iterative fit stopped before converging."""


class InfeasibleTargetError(ValueError):
    """No policy meets the requested target (a result of the data, not a usage error)."""


class VacuousGuaranteeWarning(UserWarning):
    """A statistical guarantee holds only for the full model: no sample leaves early."""
