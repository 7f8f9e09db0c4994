"""One-call calibration and a before/after comparison table per exit and method."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from exitwise._checks import check_choice
from exitwise.calibrate._estimator import REGISTRY
from exitwise.calibrate.base import Calibrator
from exitwise.data import ExitOutputs

__all__ = ["CalibrationTable", "calibrate", "compare_calibrators", "make_calibrator", "methods"]


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


def calibrate(outputs: ExitOutputs, method: str | Calibrator = "temperature", **params: Any):
    """Fit a calibrator on ``outputs`` (a labelled calibration split) and return it.

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> cal, test = load_default().split(0.5, seed=0)
    >>> calibrated_test = calibrate(cal, "temperature").transform(test)
    >>> calibrated_test.num_exits
    4
    """
    return make_calibrator(method, **params).fit(outputs)


@dataclass(frozen=True)
class CalibrationTable:
    """Held-out metrics per exit and method (``"uncalibrated"`` first).

    ``rows`` holds one dict per (method, exit): method, exit, accuracy, ece, nll, brier.
    """

    rows: list[dict[str, Any]] = field(default_factory=list)

    def value(self, method: str, exit: int, metric: str) -> float:
        for row in self.rows:
            if row["method"] == method and row["exit"] == exit:
                return row[metric]
        raise KeyError(f"No row for method {method!r}, exit {exit}.")

    def to_text(self) -> str:
        """An aligned text table."""
        w = max([14] + [len(r["method"]) for r in self.rows])
        header = f"{'method':<{w}} {'exit':<10} {'accuracy':>9} {'ECE':>8} {'NLL':>8} {'Brier':>8}"
        lines = [header, "-" * len(header)]
        for r in self.rows:
            lines.append(
                f"{r['method']:<{w}} {r['exit_name']:<10} {r['accuracy']:>9.4f} "
                f"{r['ece']:>8.4f} {r['nll']:>8.4f} {r['brier']:>8.4f}"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()


def compare_calibrators(
    outputs_cal: ExitOutputs,
    outputs_test: ExitOutputs,
    methods: Sequence[str | Calibrator] = ("temperature", "isotonic"),
    n_bins: int = 15,
) -> CalibrationTable:
    """Fit each method on ``outputs_cal``; report test accuracy, ECE, NLL, Brier per exit.

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> cal, test = load_default().split(0.5, seed=0)
    >>> table = compare_calibrators(cal, test, ["temperature"])
    >>> table.value("temperature", 0, "ece") < table.value("uncalibrated", 0, "ece")
    True
    """
    from exitwise import metrics

    if outputs_test.labels is None:
        raise ValueError("`outputs_test` needs labels to measure calibration.")
    candidates: list[tuple[str, ExitOutputs]] = [("uncalibrated", outputs_test)]
    for method in methods:
        name = method if isinstance(method, str) else type(method).__name__
        fitted = make_calibrator(method).fit(outputs_cal)
        candidates.append((name, fitted.transform(outputs_test)))
    rows = []
    for name, out in candidates:
        for row in metrics.per_exit_metrics(out, n_bins=n_bins):
            rows.append({"method": name, **row})
    return CalibrationTable(rows)
