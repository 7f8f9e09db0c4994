r"""Centred isotonic regression of the top-label confidence (Oron & Flournoy 2017).

Isotonic regression (pool-adjacent-violators) gives a step function: every block of pooled
calibration points shares one value, so confidences in a wide block all map to the same
probability and the calibrated scores lose their ranking inside it. Centred isotonic
regression keeps the pooled values but places each block's value at the block's centroid
(the mean confidence of its points) and interpolates linearly between those points: the map
is strictly increasing between the first and the last centroid, and constant beyond them.

Reference: A. P. Oron and N. Flournoy, "Centered isotonic regression: point and interval
estimation for dose-response studies", *Statistics in Biopharmaceutical Research* 9(3), 2017.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from exitwise.calibrate._toplabel import TopLabelCalibrator, interpolate

__all__ = ["CentredIsotonic", "centred_isotonic_knots"]


def centred_isotonic_knots(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The knots ``(centroids, values)`` of the centred isotonic fit of ``y`` on ``x``.

    The isotonic fit (scikit-learn, values in [0, 1]; equal ``x`` share a value) is cut into
    its blocks of equal fitted value; each block gives one knot at the mean ``x`` of its points.

    Examples
    --------
    >>> import numpy as np
    >>> centred_isotonic_knots(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.0, 1.0, 0.0, 1.0]))
    (array([0.1 , 0.25, 0.4 ]), array([0. , 0.5, 1. ]))
    """
    from sklearn.isotonic import IsotonicRegression

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape or x.size == 0:
        raise ValueError("Expected `x` and `y`: non-empty 1-D arrays of one length.")
    order = np.argsort(x, kind="stable")
    xs = x[order]
    fitted = IsotonicRegression(y_min=0.0, y_max=1.0).fit(x, y).predict(xs)
    starts = np.r_[0, np.flatnonzero(np.diff(fitted) != 0) + 1]
    counts = np.diff(np.r_[starts, xs.size])
    centroids = np.add.reduceat(xs, starts) / counts
    return centroids, fitted[starts]


class CentredIsotonic(TopLabelCalibrator):
    """Centred isotonic regression of the top-label confidence (or of each class's
    probability), per exit.

    Like :class:`~exitwise.calibrate.Isotonic` (rows rescaled to sum to 1, argmax kept in
    ``"top_label"`` mode), but strictly increasing between the blocks' centroids
    (:func:`centred_isotonic_knots`), so it keeps the ranking that the isotonic steps flatten.

    Parameters
    ----------
    mode : {"top_label", "one_vs_rest"}, default="top_label"
        As for :class:`~exitwise.calibrate.Isotonic`.

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> cal, test = load_default().split(0.5, seed=0)
    >>> cir = CentredIsotonic().fit(cal)
    >>> m = cir.confidence_map([0.5, 0.6, 0.7], exit=0)
    >>> bool((m[1:] > m[:-1]).all())
    True
    """

    method_name = "centred_isotonic"

    def __init__(self, mode: Literal["top_label", "one_vs_rest"] = "top_label") -> None:
        self.mode = mode

    def _fit_exit(self, confidence: np.ndarray, hit: np.ndarray) -> dict[str, torch.Tensor]:
        knots, values = centred_isotonic_knots(confidence, hit)
        return {
            "x": torch.as_tensor(knots, dtype=torch.float64),
            "y": torch.as_tensor(values, dtype=torch.float64),
        }

    def _apply(self, state: dict[str, torch.Tensor], confidence: torch.Tensor) -> torch.Tensor:
        return interpolate(confidence, state["x"], state["y"])
