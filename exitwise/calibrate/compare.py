"""One-call calibration, and a comparison of calibrators that picks a winner honestly.

:func:`compare_calibrators` ranks methods per exit by a proper score of their *cross-fitted*
predictions on the calibration split (:func:`~exitwise.calibrate.cross_fit.cross_fitted`):
the test split, when given, is only reported beside, never used to choose.
``calibrate(outputs, "auto")`` fits the per-exit winners.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from exitwise._checks import check_choice
from exitwise.calibrate.base import Calibrator
from exitwise.calibrate.registry import make_calibrator
from exitwise.data import ExitOutputs

__all__ = [
    "AUTO_METHODS",
    "CalibrationTable",
    "calibrate",
    "compare_calibrators",
    "metric_rows",
]

#: the candidates of ``method="auto"``
AUTO_METHODS = (
    "temperature",
    "vector",
    "dirichlet",
    "sms",
    "isotonic",
    "centred_isotonic",
    "venn_abers",
)


def calibrate(outputs: ExitOutputs, method: str | Calibrator = "temperature", **params: Any):
    """Fit a calibrator on ``outputs`` (a labelled calibration split) and return it.

    ``method="auto"`` compares :data:`AUTO_METHODS` (or ``methods=[...]``) by cross-fitted
    NLL (``score="brier"`` to rank by the Brier score) on ``outputs`` and returns a
    :class:`~exitwise.calibrate.PerExitCalibration` of the winner of every exit; its
    ``comparison_`` attribute holds the table (not saved to files).

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> cal, test = load_default().split(0.5, seed=0)
    >>> calibrated_test = calibrate(cal, "temperature").transform(test)
    >>> calibrated_test.num_exits
    4
    >>> auto = calibrate(cal[:2000], "auto", methods=["temperature", "isotonic"])
    >>> len(auto.methods)
    4
    """
    if isinstance(method, str) and method == "auto":
        from exitwise.calibrate.per_exit import PerExitCalibration

        candidates = params.pop("methods", AUTO_METHODS)
        table = compare_calibrators(outputs, None, candidates, **params)
        fitted = PerExitCalibration(list(table.best)).fit(outputs)
        fitted.comparison_ = table
        return fitted
    return make_calibrator(method, **params).fit(outputs)


@dataclass(frozen=True)
class CalibrationTable:
    """Metrics per exit and method (``"uncalibrated"`` first), cross-fitted and held out.

    ``rows`` holds one dict per (split, method, exit): ``split`` (``"cross-fit"``: out-of-fold
    predictions on the calibration data; ``"test"``: fitted on all calibration data, scored on
    the test split), method, exit, exit_name, accuracy, ece, nll, brier, auroc (with
    ``_low``/``_high`` bootstrap intervals when computed) and the calibration/refinement parts
    of NLL and Brier (``nll_calibration``, ``nll_refinement``, ...). ``best`` is the winner of
    every exit by the cross-fitted ``score``.
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    score: str = "nll"
    best: tuple[str, ...] = ()

    def value(self, method: str, exit: int, metric: str, split: str | None = None) -> float:
        """A metric of one method and exit (``split`` defaults to ``"test"`` when present)."""
        if split is None:
            split = "test" if any(r["split"] == "test" for r in self.rows) else "cross-fit"
        for row in self.rows:
            if row["split"] == split and row["method"] == method and row["exit"] == exit:
                return row[metric]
        raise KeyError(f"No {split} row for method {method!r}, exit {exit}.")

    def to_text(self) -> str:
        """An aligned text table per split; ``*`` marks each exit's winner."""
        w = max([14] + [len(r["method"]) for r in self.rows])
        header = (
            f"  {'method':<{w}} {'exit':<10} {'accuracy':>9} {'ECE':>8} {'NLL':>8} "
            f"{'Brier':>8} {'AUROC':>7} {'NLL-cal':>8}"
        )
        lines: list[str] = []
        for split, title in (
            ("cross-fit", f"cross-fitted on the calibration split (ranks by {self.score}):"),
            ("test", "fitted on the calibration split, scored on the test split:"),
        ):
            rows = [r for r in self.rows if r["split"] == split]
            if not rows:
                continue
            lines += [title, header, "  " + "-" * (len(header) - 2)]
            for r in rows:
                mark = "*" if self.best and self.best[r["exit"]] == r["method"] else " "
                lines.append(
                    f"{mark} {r['method']:<{w}} {r['exit_name']:<10} {r['accuracy']:>9.4f} "
                    f"{r['ece']:>8.4f} {r['nll']:>8.4f} {r['brier']:>8.4f} {r['auroc']:>7.4f} "
                    f"{r['nll_calibration']:>8.4f}"
                )
            lines.append("")
        lines.append(
            "NLL-cal: the part of the NLL that cross-fitted temperature scaling removes "
            "(Berta et al. 2025); the rest is refinement."
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()


def metric_rows(
    out: ExitOutputs,
    method: str,
    split: str,
    *,
    n_bins: int = 15,
    n_resamples: int = 0,
    seed: int = 0,
    folds: int = 5,
) -> list[dict[str, Any]]:
    """Rows of :func:`~exitwise.metrics.per_exit_metrics` for labelled ``out``, with ``split``,
    ``method`` and the calibration/refinement parts of NLL and Brier (cross-fitted
    temperature scaling as the recalibrator): the rows of :class:`CalibrationTable` and of the
    report."""
    from exitwise import metrics
    from exitwise.calibrate.cross_fit import cross_fitted
    from exitwise.calibrate.decomposition import decompose

    recalibrated = cross_fitted(out, "temperature", folds=folds, seed=seed)
    parts = {s: decompose(out, recalibrated, s, "temperature") for s in ("nll", "brier")}
    rows = metrics.per_exit_metrics(out, n_bins=n_bins, n_resamples=n_resamples, seed=seed)
    for row in rows:
        e = row["exit"]
        row.update({"split": split, "method": method})
        for s, d in parts.items():
            row[f"{s}_calibration"] = float(d.calibration[e])
            row[f"{s}_refinement"] = float(d.refinement[e])
    return rows


def compare_calibrators(
    outputs_cal: ExitOutputs,
    outputs_test: ExitOutputs | None = None,
    methods: Sequence[str | Calibrator] = ("temperature", "isotonic"),
    n_bins: int = 15,
    *,
    score: str = "nll",
    folds: int = 5,
    n_resamples: int = 0,
    seed: int = 0,
) -> CalibrationTable:
    """Score each method by ``folds``-fold cross-fitting on ``outputs_cal`` and rank them per
    exit by ``score`` (``"nll"`` or ``"brier"``); with ``outputs_test``, also fit each on all
    of ``outputs_cal`` and report test metrics beside (not used to rank).

    Every row has accuracy, ECE, NLL, Brier, AUROC (bootstrap intervals with
    ``n_resamples > 0``) and the calibration/refinement decomposition of NLL and Brier
    (:mod:`exitwise.calibrate.decomposition`). ``"uncalibrated"`` is always a candidate.

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> cal, test = load_default().split(0.5, seed=0)
    >>> table = compare_calibrators(cal, test, ["temperature"])
    >>> table.value("temperature", 0, "ece") < table.value("uncalibrated", 0, "ece")
    True
    >>> table.best
    ('temperature', 'temperature', 'temperature', 'temperature')
    """
    from exitwise.calibrate.cross_fit import cross_fitted
    from exitwise.calibrate.decomposition import SCORES

    check_choice(score, "score", SCORES)
    if outputs_cal.labels is None:
        raise ValueError("`outputs_cal` needs labels to compare calibrators.")
    if outputs_test is not None and outputs_test.labels is None:
        raise ValueError("`outputs_test` needs labels to measure calibration.")
    if not methods:
        raise ValueError("Expected at least one calibrator method in `methods`.")
    options = {"n_bins": n_bins, "n_resamples": n_resamples, "seed": seed, "folds": folds}
    names = ["uncalibrated"] + [m if isinstance(m, str) else type(m).__name__ for m in methods]
    rows: list[dict[str, Any]] = []
    for name, method in zip(names, ["uncalibrated", *methods], strict=True):
        out = cross_fitted(outputs_cal, method, folds=folds, seed=seed)
        rows += metric_rows(out, name, "cross-fit", **options)
    best = []
    for e in range(outputs_cal.num_exits):
        scored = [(r[score], i) for i, r in enumerate(rows) if r["exit"] == e]
        best.append(rows[min(scored)[1]]["method"])
    if outputs_test is not None:
        rows += metric_rows(outputs_test, "uncalibrated", "test", **options)
        for name, method in zip(names[1:], methods, strict=True):
            fitted = make_calibrator(method).fit(outputs_cal)
            rows += metric_rows(fitted.transform(outputs_test), name, "test", **options)
    return CalibrationTable(rows, score, tuple(best))
