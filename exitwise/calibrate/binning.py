"""Non-parametric calibrators: isotonic regression and histogram binning.

Fitted with scikit-learn / numpy on the calibration split, applied with torch (interpolation
and ``searchsorted``), so ``transform`` runs on the device of its input.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from exitwise._checks import check_choice, check_int
from exitwise.calibrate._toplabel import TopLabelCalibrator, interpolate

__all__ = ["HistogramBinning", "Isotonic"]


def _fit_isotonic(x: np.ndarray, y: np.ndarray) -> dict[str, torch.Tensor]:
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    iso.fit(x, y)
    return {
        "x": torch.as_tensor(iso.X_thresholds_, dtype=torch.float64),
        "y": torch.as_tensor(iso.y_thresholds_, dtype=torch.float64),
    }


class Isotonic(TopLabelCalibrator):
    """Isotonic regression per exit (Zadrozny & Elkan 2002), fitted by scikit-learn.

    Parameters
    ----------
    mode : {"top_label", "one_vs_rest"}, default="top_label"
        ``"top_label"``: a monotone map of the top-label confidence; the other classes are
        rescaled, rows sum to 1 and the argmax is kept. ``"one_vs_rest"``: one map per class
        on its probability, then rows are renormalised (the argmax may change; mapped values
        are floored at 1e-12 so log-probabilities stay finite).

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> cal, test = load_default().split(0.5, seed=0)
    >>> iso = Isotonic().fit(cal)
    >>> calibrated = iso.transform(test)
    >>> bool((calibrated.predictions() == test.predictions()).all())
    True
    """

    method_name = "isotonic"

    def __init__(self, mode: Literal["top_label", "one_vs_rest"] = "top_label") -> None:
        self.mode = mode

    def _fit_exit(self, confidence: np.ndarray, hit: np.ndarray) -> dict[str, torch.Tensor]:
        return _fit_isotonic(confidence, hit)

    def _apply(self, state: dict[str, torch.Tensor], confidence: torch.Tensor) -> torch.Tensor:
        return interpolate(confidence, state["x"], state["y"])


class HistogramBinning(TopLabelCalibrator):
    """Histogram binning of the top-label confidence (Zadrozny & Elkan 2001), per exit.

    The calibration confidences are split into ``n_bins`` bins; a test confidence gets the
    accuracy of its bin. Equal-mass bins by default (ties share a bin, as in
    :func:`exitwise.metrics.expected_calibration_error`), or equal-width bins ``[a, b)``
    (empty ones dropped). Rows are rescaled so they sum to 1 and the argmax is kept.

    Parameters
    ----------
    n_bins : int, default=15
    binning : {"quantile", "uniform"}, default="quantile"

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> cal, test = load_default().split(0.5, seed=0)
    >>> hb = HistogramBinning(n_bins=10).fit(cal)
    >>> hb.confidence_map([0.05, 0.99], exit=3).shape
    torch.Size([2])
    """

    method_name = "histogram"

    def __init__(
        self, n_bins: int = 15, binning: Literal["quantile", "uniform"] = "quantile"
    ) -> None:
        self.n_bins = n_bins
        self.binning = binning

    def fit(self, outputs, labels=None):
        check_int(self.n_bins, "n_bins", minimum=1)
        check_choice(self.binning, "binning", ("quantile", "uniform"))
        self._min_samples = self.n_bins
        return super().fit(outputs, labels)

    def _fit_exit(self, confidence: np.ndarray, hit: np.ndarray) -> dict[str, torch.Tensor]:
        from exitwise.metrics.binning import bin_indices, bin_totals, uniform_bin_edges

        conf = torch.as_tensor(confidence, dtype=torch.float64)
        counts, _, sum_hit = bin_totals(
            conf[:, None], torch.as_tensor(hit)[:, None], self.n_bins, self.binning
        )
        used = torch.nonzero(counts[0] > 0).flatten()
        value = (sum_hit[0, used] / counts[0, used]).numpy()
        if self.binning == "uniform":
            lower = uniform_bin_edges(self.n_bins)[used].numpy()
        else:  # the smallest confidence of each used bin
            ids = bin_indices(conf, self.n_bins, "quantile")
            lower = torch.full((self.n_bins,), torch.inf, dtype=torch.float64)
            lower = lower.scatter_reduce(0, ids, conf, "amin")[used].numpy()
        # a test confidence x falls in the last bin whose lower edge is <= x
        return {
            "edges": torch.as_tensor(lower[1:], dtype=torch.float64),
            "values": torch.as_tensor(value, dtype=torch.float64),
        }

    def _map_exit(self, e: int, confidence: torch.Tensor) -> torch.Tensor:
        m = self.exit_maps_[e]
        edges = m["edges"].to(confidence.device)
        idx = torch.searchsorted(edges, confidence.contiguous(), right=True)
        return m["values"].to(confidence.device)[idx]
