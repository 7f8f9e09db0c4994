"""The calibrator contract: scikit-learn estimators over per-exit logits, JSON + safetensors.

``fit`` takes an :class:`~exitwise.ExitOutputs` (labels inside) or ``(logits, labels)`` with
logits ``[N, C]`` (one head) or ``[N, E, C]`` (one calibration per exit, fitted together).
``transform`` returns the same kind: an ``ExitOutputs`` whose logits are the calibrated
log-probabilities (so metrics, signals and policies work unchanged), or a tensor of
calibrated log-probabilities of the input's shape. Everything runs on the input's device.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError

from exitwise._checks import as_tensor, check_finite, check_floating, check_labels, check_ndim
from exitwise.data import ExitOutputs

__all__ = ["Calibrator", "load_calibrator"]

_FORMAT = "exitwise.Calibrator/1"


def _as_batched(
    outputs: Any, labels: Any, *, need_labels: bool
) -> tuple[torch.Tensor, torch.Tensor | None, bool, ExitOutputs | None]:
    """Logits ``[N, E, C]``, labels, whether the input was ``[N, C]``, and the ExitOutputs."""
    if isinstance(outputs, ExitOutputs):
        if labels is not None:
            raise ValueError("Pass labels inside the ExitOutputs, not as `labels`, or both.")
        if need_labels and outputs.labels is None:
            raise ValueError(
                "Fitting needs labels, but these ExitOutputs have none; pass labelled outputs."
            )
        return outputs.logits, outputs.labels, False, outputs
    logits = as_tensor(outputs, "logits")
    check_floating(logits, "logits")
    check_ndim(logits, "logits", (2, 3), "[N, C] or [N, E, C]")
    single = logits.ndim == 2
    if single:
        logits = logits.unsqueeze(1)
    if logits.shape[0] == 0:
        raise ValueError("Expected `logits` to hold at least one sample, got N = 0.")
    if logits.shape[2] < 2:
        raise ValueError(f"Expected at least 2 classes, got C = {logits.shape[2]}.")
    check_finite(logits, "logits")
    y = None
    if labels is not None:
        y = check_labels(
            as_tensor(labels, "labels", device=logits.device),
            "labels",
            logits.shape[0],
            logits.shape[2],
        )
    elif need_labels:
        raise ValueError("Fitting needs `labels` [N] beside the logits.")
    return logits, y, single, None


def _check_fit_data(logits: torch.Tensor, labels: torch.Tensor) -> None:
    if labels.unique().numel() < 2:
        raise ValueError(
            f"Expected labels of at least 2 classes to fit a calibrator, got only class "
            f"{int(labels[0])}."
        )


class Calibrator(BaseEstimator):
    """Base class: subclasses implement ``_fit(logits, labels)`` and ``_transform(logits)``.

    ``logits`` is ``[N, E, C]`` (any float dtype, on any device); ``_transform`` returns
    calibrated log-probabilities ``[N, E, C]``. Fitted state lives in attributes ending in
    ``_``; :meth:`_state` / :meth:`_set_state` list them for files.
    """

    #: minimum number of samples a fit needs (subclasses raise it, e.g. to the bin count)
    _min_samples = 2

    # -- subclass hooks --------------------------------------------------------------------
    def _fit(self, logits: torch.Tensor, labels: torch.Tensor) -> None:  # pragma: no cover
        raise NotImplementedError

    def _transform(self, logits: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _state(self) -> dict[str, Any]:
        """Fitted attributes: tensors, lists of tensors, or JSON values."""
        return {k: v for k, v in vars(self).items() if k.endswith("_") and not k.startswith("_")}

    def _set_state(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)

    # -- public API ------------------------------------------------------------------------
    def fit(self, outputs: Any, labels: Any = None) -> Calibrator:
        """Fit one calibration per exit.

        Parameters
        ----------
        outputs : ExitOutputs or array-like of shape (N, C) or (N, E, C)
            Logits of a held-out calibration split (with labels inside an ExitOutputs).
        labels : array-like of shape (N,), optional
            Labels when ``outputs`` is an array.

        Returns
        -------
        self
        """
        logits, y, _, _ = _as_batched(outputs, labels, need_labels=True)
        if y is None:  # pragma: no cover - _as_batched raises first
            raise ValueError("Fitting needs labels.")
        if logits.shape[0] < self._min_samples:
            raise ValueError(
                f"Expected at least {self._min_samples} samples to fit "
                f"{type(self).__name__}, got {logits.shape[0]}."
            )
        _check_fit_data(logits, y)
        self.num_exits_ = int(logits.shape[1])
        self.num_classes_ = int(logits.shape[2])
        self._fit(logits, y)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "num_exits_"):
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with "
                "calibration data before using it."
            )

    def transform(self, outputs: Any) -> Any:
        """Calibrated log-probabilities, in the kind of the input (ExitOutputs or tensor)."""
        self._check_fitted()
        logits, _, single, exit_outputs = _as_batched(outputs, None, need_labels=False)
        if logits.shape[1] != self.num_exits_ or logits.shape[2] != self.num_classes_:
            raise ValueError(
                f"{type(self).__name__} was fitted on {self.num_exits_} exit(s) x "
                f"{self.num_classes_} classes, got {logits.shape[1]} x {logits.shape[2]}."
            )
        log_probs = self._transform(logits)
        if exit_outputs is not None:
            return exit_outputs.with_logits(log_probs)
        return log_probs[:, 0] if single else log_probs

    def fit_transform(self, outputs: Any, labels: Any = None) -> Any:
        return self.fit(outputs, labels).transform(outputs)

    def predict_proba(self, outputs: Any) -> torch.Tensor:
        """Calibrated probabilities ``[N, E, C]`` (or ``[N, C]``)."""
        result = self.transform(outputs)
        log_probs = result.logits if isinstance(result, ExitOutputs) else result
        return log_probs.exp()

    # -- files -----------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write ``path`` (JSON: class, parameters, small state) and, for tensors, a
        ``.safetensors`` file beside it. No pickle."""
        self._check_fitted()
        path = Path(path)
        if path.suffix.lower() != ".json":
            raise ValueError(f"Expected a `.json` path for the calibrator, got '{path}'.")
        tensors: dict[str, torch.Tensor] = {}
        plain: dict[str, Any] = {}
        for key, value in self._state().items():
            if isinstance(value, torch.Tensor):
                tensors[key] = value.detach().cpu().contiguous()
            elif (
                isinstance(value, list)
                and value
                and all(isinstance(v, torch.Tensor) for v in value)
            ):
                for i, v in enumerate(value):
                    tensors[f"{key}.{i}"] = v.detach().cpu().contiguous()
                plain[key] = {"tensor_list": len(value)}
            else:
                plain[key] = value
        doc = {
            "format": _FORMAT,
            "class": type(self).__name__,
            "params": self.get_params(deep=False),
            "state": plain,
            "tensors": path.with_suffix(".safetensors").name if tensors else None,
        }
        if tensors:
            from safetensors.torch import save_file

            save_file(tensors, str(path.with_suffix(".safetensors")))
        path.write_text(json.dumps(doc, indent=2, default=_json_default) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Calibrator:
        """Read a calibrator written by :meth:`save` (any calibrator class)."""
        return load_calibrator(path)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    raise TypeError(f"Cannot write {type(value).__name__} to a calibrator file.")


def load_calibrator(path: str | Path) -> Calibrator:
    """Read any calibrator written by :meth:`Calibrator.save`.

    Examples
    --------
    >>> import tempfile, os, torch
    >>> from exitwise.calibrate import TemperatureScaling
    >>> g = torch.Generator().manual_seed(0)
    >>> labels = torch.arange(200) % 3
    >>> logits = torch.randn(200, 2, 3, generator=g) * 3
    >>> logits[torch.arange(200), :, labels] += 2.0
    >>> ts = TemperatureScaling().fit(logits, labels)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     ts.save(os.path.join(d, "ts.json"))
    ...     back = load_calibrator(os.path.join(d, "ts.json"))
    >>> torch.equal(back.transform(logits), ts.transform(logits))
    True
    """
    from exitwise.calibrate import CALIBRATORS

    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"'{path}' is not a JSON calibrator file: {err}") from None
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
        raise ValueError(f"'{path}' is not an exitwise calibrator file (format {_FORMAT}).")
    name = doc.get("class")
    if name not in CALIBRATORS:
        raise ValueError(f"Unknown calibrator class {name!r} in '{path}'.")
    obj = CALIBRATORS[name](**doc.get("params", {}))
    state = dict(doc.get("state", {}))
    if doc.get("tensors"):
        from safetensors.torch import load_file

        tensors = load_file(str(path.parent / doc["tensors"]))
        for key, value in list(state.items()):
            if isinstance(value, dict) and "tensor_list" in value:
                state[key] = [tensors[f"{key}.{i}"] for i in range(value["tensor_list"])]
        for key, tensor in tensors.items():
            if "." not in key:
                state[key] = tensor
    obj._set_state(state)
    return obj
