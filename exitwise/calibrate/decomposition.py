r"""How much of a proper score is miscalibration: the calibration–refinement decomposition.

For a proper score :math:`\ell` (log-loss or Brier) and predictions :math:`p`,

.. math:: \underbrace{\mathbb{E}\,\ell(p, y)}_{\text{loss}}
   = \underbrace{\big[\mathbb{E}\,\ell(p, y) - \mathbb{E}\,\ell(g^\star(p), y)\big]}_{
   \text{calibration error}}
   + \underbrace{\mathbb{E}\,\ell(g^\star(p), y)}_{\text{refinement}},

where :math:`g^\star` is the best recalibration map: refinement is what no recalibration can
remove (it depends only on how well :math:`p` separates the classes). Following Berta et al.
(2025, "Rethinking early stopping: refine, then calibrate"), :math:`g^\star` is estimated by
a recalibrator (temperature scaling by default, or isotonic regression) cross-fitted on the
same data (:func:`~exitwise.calibrate.cross_fit.cross_fitted`), so the refinement is not
flattered by fitting and scoring on the same rows. On finite samples the estimated
calibration error can be slightly negative (recalibration estimated from 4/5 of the data can
lose a little); it is reported as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from exitwise._checks import check_choice
from exitwise.calibrate.cross_fit import cross_fitted
from exitwise.data import ExitOutputs, require_class_columns

__all__ = [
    "SCORES",
    "ScoreDecomposition",
    "decompose",
    "proper_score",
    "proper_score_decomposition",
]

#: proper scores by name
SCORES = ("nll", "brier")


def proper_score(outputs: ExitOutputs, score: str = "nll") -> torch.Tensor:
    """Mean ``score`` (``"nll"`` or ``"brier"``) per exit ``[E]`` (float64), from the metrics'
    owners of the formulas."""
    from exitwise import metrics

    check_choice(score, "score", SCORES)
    require_class_columns(outputs, f"The {score} score")
    fn = metrics.negative_log_likelihood if score == "nll" else metrics.brier_score
    return fn(outputs.logits, outputs.labels, input="logits").to(torch.float64)


@dataclass(frozen=True)
class ScoreDecomposition:
    """``loss = calibration + refinement`` per exit (float64 ``[E]`` each)."""

    score: str
    recalibrator: str
    loss: torch.Tensor
    calibration: torch.Tensor
    refinement: torch.Tensor


def proper_score_decomposition(
    outputs: ExitOutputs,
    score: str = "nll",
    *,
    recalibrator: Any = "temperature",
    folds: int = 5,
    seed: int = 0,
) -> ScoreDecomposition:
    """Calibration error and refinement of ``score`` per exit (see the module docstring).

    Parameters
    ----------
    outputs : ExitOutputs
        Labelled predictions to decompose (e.g. a calibrated test split).
    score : {"nll", "brier"}, default="nll"
    recalibrator : str or Calibrator, default="temperature"
        The estimate of the best recalibration map (``"isotonic"`` is the non-parametric one).
    folds, seed : int
        Cross-fitting of the recalibrator.

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> d = proper_score_decomposition(load_default()[:2000])
    >>> bool((d.loss - d.calibration - d.refinement).abs().max() < 1e-12)
    True
    """
    if outputs.labels is None:
        raise ValueError("`outputs` needs labels to decompose a proper score.")
    check_choice(score, "score", SCORES)
    recalibrated = cross_fitted(outputs, recalibrator, folds=folds, seed=seed)
    name = recalibrator if isinstance(recalibrator, str) else type(recalibrator).__name__
    return decompose(outputs, recalibrated, score, name)


def decompose(
    outputs: ExitOutputs, recalibrated: ExitOutputs, score: str, recalibrator: str
) -> ScoreDecomposition:
    """The decomposition from predictions and their (cross-fitted) recalibration."""
    loss = proper_score(outputs, score)
    refinement = proper_score(recalibrated, score)
    return ScoreDecomposition(score, recalibrator, loss, loss - refinement, refinement)
