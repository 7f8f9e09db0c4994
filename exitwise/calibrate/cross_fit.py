r"""Out-of-fold calibrated outputs: every calibration sample calibrated by a map that never saw
it (k-fold cross-fitting), so the calibration split alone can score calibrators honestly.

Rows are cut into ``folds`` parts by :func:`~exitwise.calibrate._folds.fold_ids` (whole
sequences when the outputs have groups); for each
part, a fresh calibrator is fitted on the other parts and transforms this one. The scores of
the result estimate how the method does on new data at a calibration-set size of
:math:`(k-1)/k` of the split.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from exitwise.calibrate._folds import fold_ids
from exitwise.data import ExitOutputs

__all__ = ["cross_fitted"]


def cross_fitted(
    outputs: ExitOutputs,
    method: Any,
    *,
    folds: int = 5,
    seed: int = 0,
) -> ExitOutputs:
    """``outputs`` with every row's logits replaced by out-of-fold calibrated log-probabilities.

    Parameters
    ----------
    outputs : ExitOutputs
        A labelled calibration split.
    method : str or Calibrator
        Anything :func:`~exitwise.calibrate.make_calibrator` accepts (``"uncalibrated"``
        returns ``outputs`` unchanged).
    folds : int, default=5
    seed : int, default=0

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> cal, _ = load_default().split(0.5, seed=0)
    >>> cross_fitted(cal[:1000], "temperature").logits.shape
    torch.Size([1000, 4, 10])
    """
    from exitwise.calibrate.registry import make_calibrator

    if outputs.labels is None:
        raise ValueError("`outputs` needs labels to cross-fit a calibrator.")
    if isinstance(method, str) and method == "uncalibrated":
        return outputs
    fold_of = fold_ids(outputs.num_samples, folds, seed, outputs.logits.device, outputs.groups)
    result: torch.Tensor | None = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # per-fold warnings repeat the full fit's
        for k in range(folds):
            train = torch.nonzero(fold_of != k).flatten()
            held = torch.nonzero(fold_of == k).flatten()
            fitted = make_calibrator(method).fit(outputs[train])
            part = fitted.transform(outputs[held]).logits
            if result is None:
                result = torch.empty(
                    (outputs.num_samples, *part.shape[1:]), dtype=part.dtype, device=part.device
                )
            result[held] = part
    return outputs.with_logits(result)
