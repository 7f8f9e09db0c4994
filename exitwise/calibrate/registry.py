"""Calibrators by short method name, beside the one registry of estimator classes
(:data:`~exitwise.calibrate._estimator.REGISTRY`): :func:`methods` and
:func:`make_calibrator`, which everything that builds a calibrator from a name uses (the
comparison, cross-fitting, per-exit calibration, the report and the CLI)."""

from __future__ import annotations

from typing import Any

from exitwise._checks import check_choice
from exitwise.calibrate._estimator import REGISTRY
from exitwise.calibrate.base import Calibrator

__all__ = ["make_calibrator", "methods"]


def methods() -> dict[str, type[Calibrator]]:
    """Calibrator classes by short method name (``"temperature"``, ``"isotonic"``, ...), from
    the one registry of estimator classes (each class names itself with ``method_name``)."""
    return {
        cls.method_name: cls
        for cls in REGISTRY.values()
        if cls.method_name is not None and issubclass(cls, Calibrator)
    }


def make_calibrator(method: str | Calibrator, **params: Any) -> Calibrator:
    """A new calibrator from a method name (see :func:`methods`) or a calibrator instance."""
    if isinstance(method, Calibrator):
        from sklearn.base import clone

        return clone(method).set_params(**params) if params else clone(method)
    known = methods()
    check_choice(method, "method", tuple(known))
    return known[method](**params)
