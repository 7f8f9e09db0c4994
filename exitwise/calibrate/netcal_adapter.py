"""Any netcal calibration method, one instance per exit, behind the exitwise contract.

netcal (Küppers et al.) calibrates numpy probabilities one head at a time. The adapter feeds
it float64 softmax probabilities of each exit (netcal's scaling fits silently fail on
float32, netcal #61/#48), fits one instance per exit and turns the calibrated probabilities
back into log-probabilities (floored at 1e-12 so they stay finite). netcal models can only be
saved with pickle, which exitwise never uses: ``save`` raises a ``TypeError``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exitwise.calibrate.base import Calibrator

__all__ = ["NetcalCalibrator"]


class NetcalCalibrator(Calibrator):
    """Wrap a netcal calibrator class (or a factory returning instances), one per exit.

    Parameters
    ----------
    method : type or callable
        e.g. ``netcal.scaling.TemperatureScaling`` or ``lambda: netcal.binning.BBQ()``.
    **method_kwargs
        Passed to ``method`` for every exit.

    Attributes
    ----------
    calibrators_ : list
        The fitted netcal objects, one per exit.

    Examples
    --------
    >>> from netcal.binning import HistogramBinning
    >>> from exitwise.datasets import load_default
    >>> cal, test = load_default().split(0.5, seed=0)
    >>> nc = NetcalCalibrator(HistogramBinning, bins=10).fit(cal)
    >>> len(nc.calibrators_)
    4
    """

    savable = False  # netcal models need pickle

    def __init__(self, method: type | Callable[..., Any] | None = None, **method_kwargs: Any):
        self.method = method
        self.method_kwargs = method_kwargs

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"method": self.method, **self.method_kwargs}

    def set_params(self, **params: Any) -> NetcalCalibrator:
        if "method" in params:
            self.method = params.pop("method")
        self.method_kwargs.update(params)
        return self

    def _fit(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        if self.method is None or not callable(self.method):
            raise TypeError(
                f"Expected `method` to be a netcal calibrator class or factory, got "
                f"{self.method!r}."
            )
        probs = torch.softmax(logits.to(torch.float64), dim=-1).cpu().numpy()
        y = labels.cpu().numpy()
        self.calibrators_ = []
        for e in range(probs.shape[1]):
            model = self.method(**self.method_kwargs)
            if not hasattr(model, "fit") or not hasattr(model, "transform"):
                raise TypeError(
                    f"`method` made a {type(model).__name__}, which has no fit/transform."
                )
            model.fit(probs[:, e], y)
            self.calibrators_.append(model)

    def _transform(self, logits: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits.to(torch.float64), dim=-1).cpu().numpy()
        n, _e, c = probs.shape
        out = np.empty_like(probs)
        for i, model in enumerate(self.calibrators_):
            calibrated = np.asarray(model.transform(probs[:, i]), dtype=np.float64)
            if calibrated.ndim == 1:  # binary methods return P(class 1)
                calibrated = np.stack([1.0 - calibrated, calibrated], axis=1)
            out[:, i] = calibrated.reshape(n, c)
        out = np.clip(out, 1e-12, None)
        out /= out.sum(axis=-1, keepdims=True)
        return torch.log(torch.from_numpy(out)).to(logits.device)

    def save(self, path: str | Path) -> None:
        raise TypeError(
            "netcal calibrators can only be stored with pickle, which exitwise refuses for "
            "files a user may receive; refit NetcalCalibrator from the calibration data, or "
            "use an exitwise calibrator (same methods: TemperatureScaling, HistogramBinning, "
            "Isotonic, ...) which saves to JSON + safetensors."
        )
