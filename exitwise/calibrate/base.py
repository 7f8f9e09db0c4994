"""The calibrator contract: scikit-learn estimators over per-exit logits, JSON + safetensors.

``fit`` takes an :class:`~exitwise.ExitOutputs` (labels inside) or ``(logits, labels)`` with
logits ``[N, C]`` (one head) or ``[N, E, C]`` (one calibration per exit, fitted together).
``transform`` returns the same kind: an ``ExitOutputs`` whose logits are the calibrated
log-probabilities (so metrics, signals and policies work unchanged), or a tensor of
calibrated log-probabilities of the input's shape. Everything runs on the input's device.
"""

from __future__ import annotations

from typing import Any

import torch

from exitwise._checks import as_tensor, batched_logits, check_finite, check_labels
from exitwise._chunks import CHUNK_BYTES, rows_per_chunk
from exitwise._distributed import shard_offset
from exitwise.calibrate._estimator import FittedEstimator, load_estimator
from exitwise.data import ExitOutputs, require_class_columns

__all__ = ["Calibrator", "load_calibrator"]

#: read any calibrator (or halting network) file written by ``save``
load_calibrator = load_estimator


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
        require_class_columns(outputs, "Calibration")
        return outputs.logits.detach(), outputs.labels, False, outputs
    logits, single = batched_logits(outputs, "logits")
    logits = logits.detach()  # calibrators are fitted and applied outside autograd
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


class Calibrator(FittedEstimator, abstract=True):
    """Base class: subclasses implement ``_fit(logits, labels)`` and ``_transform(logits)``.

    ``logits`` is ``[N, E, C]`` (any float dtype, on any device); ``_transform`` returns
    calibrated log-probabilities ``[N, E, C]``. Fitted state lives in attributes ending in
    ``_``; parameters, the not-fitted check and files come from
    :class:`~exitwise.calibrate._estimator.FittedEstimator`.
    """

    #: minimum number of samples a fit needs (subclasses raise it, e.g. to the bin count)
    _min_samples = 2

    # -- subclass hooks --------------------------------------------------------------------
    def _fit(self, logits: torch.Tensor, labels: torch.Tensor) -> None:  # pragma: no cover
        raise NotImplementedError

    def _transform(self, logits: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

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
        # a shard of a process group: the samples of every rank count
        n = shard_offset(logits.shape[0], logits.device)[1]
        if n < self._min_samples:
            raise ValueError(
                f"Expected at least {self._min_samples} samples to fit "
                f"{type(self).__name__}, got {n}."
            )
        _check_fit_data(logits, y)
        self.num_exits_ = int(logits.shape[1])
        self.num_classes_ = int(logits.shape[2])
        self._fit(logits, y)
        return self

    def transform(self, outputs: Any) -> Any:
        """Calibrated log-probabilities, in the kind of the input (ExitOutputs or tensor)."""
        self._check_fitted()
        if self.num_classes_ is None:
            raise ValueError(
                f"This {type(self).__name__} was fitted with fit_pairs on confidences: "
                "use confidence_map; transform needs a fit on logits."
            )
        logits, _, single, exit_outputs = _as_batched(outputs, None, need_labels=False)
        if logits.shape[1] != self.num_exits_ or logits.shape[2] != self.num_classes_:
            raise ValueError(
                f"{type(self).__name__} was fitted on {self.num_exits_} exit(s) x "
                f"{self.num_classes_} classes, got {logits.shape[1]} x {logits.shape[2]}."
            )
        log_probs = _by_row_chunks(self._transform, logits)
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


def _by_row_chunks(transform: Any, logits: torch.Tensor) -> torch.Tensor:
    """``transform(logits)`` applied to chunks of whole rows, written into one output: every
    calibrator maps each sample on its own, so the peak memory is the output plus one chunk's
    work arrays (not the two or three full-size temporaries of one big call)."""
    n = logits.shape[0]
    row_bytes = logits[0].numel() * 8
    # work arrays of a chunk: at most 1/64 of the input's float64 size (a chunk's scaled copy
    # and log-softmax, plus what the allocator keeps, stay well inside the 1.3x bound)
    step = rows_per_chunk(row_bytes, min(CHUNK_BYTES, max(1 << 22, n * row_bytes // 64)))
    if step >= n:
        return transform(logits)
    first = transform(logits[:step])
    out = torch.empty((n, *first.shape[1:]), dtype=first.dtype, device=first.device)
    out[:step] = first
    del first
    for start in range(step, n, step):
        out[start : start + step] = transform(logits[start : start + step])
    return out
