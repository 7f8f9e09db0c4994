r"""Parametric top-label calibrators: Platt scaling and beta calibration, per exit.

Both are logistic regressions of "the top-label answer is correct" on features of the
top-label confidence :math:`p`, fitted by scikit-learn without regularisation:

* Platt (1999): :math:`q = \sigma(a \,\mathrm{logit}(p) + b)`;
* beta (Kull et al. 2017): :math:`q = \sigma(a \ln p - b \ln(1 - p) + c)` with
  :math:`a, b \ge 0` (a negative coefficient is dropped and the model refitted, as the
  authors' ``betacal`` package does), which keeps the map monotone.
"""

from __future__ import annotations

import numpy as np
import torch

from exitwise.calibrate._toplabel import TopLabelCalibrator

__all__ = ["BetaCalibration", "PlattScaling"]

_EPS = 1e-12


def _logistic(features: np.ndarray, hit: np.ndarray) -> tuple[np.ndarray, float]:
    if np.unique(hit).size < 2:  # all right or all wrong: a constant map
        rate = float(np.clip(hit.mean(), _EPS, 1 - _EPS))
        return np.zeros(features.shape[1]), float(np.log(rate / (1 - rate)))
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=np.inf, solver="lbfgs", max_iter=1000, tol=1e-10)
    model.fit(features, hit)
    return model.coef_[0].astype(np.float64), float(model.intercept_[0])


class PlattScaling(TopLabelCalibrator):
    """Logistic map of the top-label confidence's logit, per exit (Platt 1999).

    Attributes ``exit_maps_[e]["coef"]`` = ``[a, b]``.

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> cal, test = load_default().split(0.5, seed=0)
    >>> platt = PlattScaling().fit(cal)
    >>> platt.exit_maps_[0]["coef"].shape
    torch.Size([2])
    """

    method_name = "platt"

    def __init__(self) -> None:
        pass

    def _fit_exit(self, confidence: np.ndarray, hit: np.ndarray) -> dict[str, torch.Tensor]:
        p = np.clip(confidence, _EPS, 1 - _EPS)
        coef, intercept = _logistic(np.log(p / (1 - p))[:, None], hit)
        return {"coef": torch.tensor([coef[0], intercept], dtype=torch.float64)}

    def _map_exit(self, e: int, confidence: torch.Tensor) -> torch.Tensor:
        a, b = self.exit_maps_[e]["coef"].to(confidence.device)
        p = confidence.clamp(_EPS, 1 - _EPS)
        return torch.sigmoid(a * torch.logit(p) + b)


class BetaCalibration(TopLabelCalibrator):
    """Beta calibration of the top-label confidence, per exit (Kull et al. 2017).

    Attributes ``exit_maps_[e]["coef"]`` = ``[a, b, c]`` with ``a, b >= 0``.

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> cal, test = load_default().split(0.5, seed=0)
    >>> beta = BetaCalibration().fit(cal)
    >>> bool((beta.exit_maps_[0]["coef"][:2] >= 0).all())
    True
    """

    method_name = "beta"

    def __init__(self) -> None:
        pass

    def _fit_exit(self, confidence: np.ndarray, hit: np.ndarray) -> dict[str, torch.Tensor]:
        p = np.clip(confidence, _EPS, 1 - _EPS)
        features = np.stack([np.log(p), -np.log1p(-p)], axis=1)
        coef, intercept = _logistic(features, hit)
        if coef[0] < 0 or coef[1] < 0:  # drop the negative feature, refit on the other
            keep = 1 if coef[0] < 0 else 0
            single, intercept = _logistic(features[:, keep : keep + 1], hit)
            coef = np.zeros(2)
            coef[keep] = max(single[0], 0.0)
        return {"coef": torch.tensor([coef[0], coef[1], intercept], dtype=torch.float64)}

    def _map_exit(self, e: int, confidence: torch.Tensor) -> torch.Tensor:
        a, b, c = self.exit_maps_[e]["coef"].to(confidence.device)
        p = confidence.clamp(_EPS, 1 - _EPS)
        return torch.sigmoid(a * torch.log(p) - b * torch.log1p(-p) + c)
