"""`ExitOutputs`: the layer-wise logits of an early-exit model, with labels and per-exit costs.

This is the one data structure every other module reads: logits ``[N, E, C]`` (samples, exits
ordered shallow to deep, classes), optional integer labels ``[N]`` and cumulative per-exit costs
``[E]``.  Files are ``.safetensors`` or ``.npz`` (never pickle).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from exitwise._checks import (
    as_tensor,
    check_choice,
    check_costs,
    check_finite,
    check_floating,
    check_int,
    check_labels,
    check_ndim,
    check_sequences,
    compute_dtype,
    row_index,
)
from exitwise.data_files import read_arrays, write_arrays
from exitwise.data_split import split_indices

__all__ = ["ExitOutputs", "load"]

#: the arrays of an ExitOutputs file (see :mod:`exitwise.data_files`)
_ARRAYS = ("logits", "labels", "costs", "groups", "positions")


class ExitOutputs:
    """Per-exit logits of an early-exit model on N samples.

    Parameters
    ----------
    logits : array-like of shape (N, E, C)
        Logits of every exit (ordered shallow to deep; the last exit is the full model).
        numpy or torch, any floating dtype. float16/bfloat16 are stored as given and upcast to
        float32 for arithmetic.
    labels : array-like of shape (N,), optional
        Integer class labels in ``[0, C)``. ``None`` when the data is unlabelled; then use
        ``correct(reference="final")``.
    costs : array-like of shape (E,), optional
        Cumulative cost of reaching and evaluating exit ``e`` (FLOPs, milliseconds, layers...):
        positive and non-decreasing. Default ``(e + 1) / E``, so the full model costs 1.
    exit_names : sequence of str, optional
        One unique name per exit. Default ``exit_0 ... exit_{E-1}``.
    groups : array-like of shape (N,), optional
        Integer id of the sequence each sample (token) belongs to. With groups, ``split``
        keeps whole sequences on one side and bootstrap intervals resample sequences.
    positions : array-like of shape (N,), optional
        Position (>= 0) of each token in its sequence; needs ``groups``.
    rest_columns : int, default=0
        How many trailing columns hold remaining probability mass rather than a class (the
        ``reduce="fixed:K"`` form of :func:`~exitwise.collect`). They count in every
        normalisation, but predictions, correctness and the signals take the argmax and the
        maximum over the class columns only; labels lie in the class columns.

    Raises
    ------
    TypeError
        If an argument is not an array, or logits are not floating point, or labels not integer.
    ValueError
        On wrong shapes, NaN/inf logits (with the first location), labels out of range,
        non-positive or decreasing costs, or an empty input.

    Examples
    --------
    >>> import torch
    >>> out = ExitOutputs(torch.tensor([[[2.0, 0.0], [0.0, 3.0]]]), labels=torch.tensor([1]))
    >>> out.num_samples, out.num_exits, out.num_classes
    (1, 2, 2)
    >>> out.correct()
    tensor([[False,  True]])
    >>> out.costs
    tensor([0.5000, 1.0000], dtype=torch.float64)
    """

    def __init__(
        self,
        logits: Any,
        labels: Any = None,
        costs: Any = None,
        exit_names: Sequence[str] | None = None,
        groups: Any = None,
        positions: Any = None,
        rest_columns: int = 0,
    ) -> None:
        logits_t = as_tensor(logits, "logits")
        check_floating(logits_t, "logits")
        check_ndim(logits_t, "logits", (3,), "[N, E, C] (samples, exits, classes)")
        n, e, c = logits_t.shape
        if n == 0:
            raise ValueError("Expected `logits` to hold at least one sample, got N = 0.")
        if e == 0:
            raise ValueError("Expected `logits` to hold at least one exit, got E = 0.")
        if c < 2:
            raise ValueError(f"Expected `logits` to hold at least 2 classes, got C = {c}.")
        check_finite(logits_t, "logits")
        device = logits_t.device

        rest = check_int(rest_columns, "rest_columns", minimum=0)
        if rest > c - 2:
            raise ValueError(
                f"Expected `rest_columns` to leave at least 2 class columns of C = {c}, got {rest}."
            )
        labels_t: torch.Tensor | None = None
        if labels is not None:
            labels_t = as_tensor(labels, "labels", device=device)
            labels_t = check_labels(labels_t, "labels", n, c - rest)

        if costs is None:
            costs_t = torch.arange(1, e + 1, dtype=torch.float64, device=device) / e
        else:
            costs_t = check_costs(costs, "costs", e, positive=True, device=device)

        if exit_names is None:
            names = [f"exit_{i}" for i in range(e)]
        else:
            if isinstance(exit_names, str) or not isinstance(exit_names, (Sequence, np.ndarray)):
                raise TypeError(
                    f"Expected `exit_names` to be a sequence of strings, got "
                    f"{type(exit_names).__name__}."
                )
            names = [str(x) for x in exit_names]
            if len(names) != e:
                raise ValueError(
                    f"Expected `exit_names` to hold one name per exit ({e}), got {len(names)}."
                )
            if len(set(names)) != e:
                raise ValueError(f"Expected `exit_names` to be unique, got {names}.")

        self._groups, self._positions = check_sequences(groups, positions, n, device)
        self._logits = logits_t
        self._labels = labels_t
        self._costs = costs_t
        self._exit_names = names
        self._rest = rest

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def _trusted(
        cls,
        logits: torch.Tensor,
        labels: torch.Tensor | None,
        costs: torch.Tensor,
        exit_names: list[str],
        groups: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        rest_columns: int = 0,
    ) -> ExitOutputs:
        """Build without validation from parts that were already validated."""
        obj = cls.__new__(cls)
        obj._logits, obj._labels, obj._costs, obj._exit_names = logits, labels, costs, exit_names
        obj._groups, obj._positions, obj._rest = groups, positions, rest_columns
        return obj

    def with_logits(self, logits: Any) -> ExitOutputs:
        """Return a copy with new logits ``[N, E, C]`` (same labels, costs and names).

        Calibrators use this to return calibrated log-probabilities as logits.

        Examples
        --------
        >>> out = ExitOutputs(torch.zeros(4, 2, 3))
        >>> out.with_logits(torch.ones(4, 2, 3)).logits.sum().item()
        24.0
        """
        new = as_tensor(logits, "logits")
        if tuple(new.shape) != tuple(self._logits.shape):
            raise ValueError(
                f"Expected `logits` to have shape {tuple(self._logits.shape)}, got "
                f"{tuple(new.shape)}."
            )
        return ExitOutputs(
            new,
            self._labels,
            self._costs,
            self._exit_names,
            self._groups,
            self._positions,
            self._rest,
        )

    # ------------------------------------------------------------------ properties
    @property
    def logits(self) -> torch.Tensor:
        """Logits ``[N, E, C]`` as stored (the given floating dtype)."""
        return self._logits

    @property
    def labels(self) -> torch.Tensor | None:
        """Labels ``[N]`` (int64) or ``None``."""
        return self._labels

    @property
    def groups(self) -> torch.Tensor | None:
        """Sequence id of every sample ``[N]`` (int64), or None."""
        return self._groups

    @property
    def positions(self) -> torch.Tensor | None:
        """Position of every token in its sequence ``[N]`` (int64), or None."""
        return self._positions

    @property
    def num_groups(self) -> int | None:
        """Number of distinct sequences, or None without groups."""
        return None if self._groups is None else int(torch.unique(self._groups).numel())

    @property
    def costs(self) -> torch.Tensor:
        """Cumulative per-exit costs ``[E]`` (float64)."""
        return self._costs

    @property
    def exit_names(self) -> list[str]:
        """One name per exit."""
        return list(self._exit_names)

    @property
    def num_samples(self) -> int:
        return int(self._logits.shape[0])

    @property
    def num_exits(self) -> int:
        return int(self._logits.shape[1])

    @property
    def num_classes(self) -> int:
        """Number of columns ``C`` (classes, then :attr:`rest_columns`)."""
        return int(self._logits.shape[2])

    @property
    def rest_columns(self) -> int:
        """Trailing columns that hold remaining mass, not a class (0 for full logits)."""
        return self._rest

    @property
    def device(self) -> torch.device:
        return self._logits.device

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        labelled = "labelled" if self._labels is not None else "unlabelled"
        seqs = "" if self._groups is None else f"num_groups={self.num_groups}, "
        rest = f"rest_columns={self._rest}, " if self._rest else ""
        return (
            f"ExitOutputs(num_samples={self.num_samples}, num_exits={self.num_exits}, "
            f"num_classes={self.num_classes}, {rest}{seqs}{labelled}, dtype={self._logits.dtype}, "
            f"device={self.device}, exit_names={self._exit_names})"
        )

    # ------------------------------------------------------------------ derived quantities
    def log_probs(self) -> torch.Tensor:
        """Log-softmax of the logits, ``[N, E, C]``, in float32 (float64 if stored in float64)."""
        return torch.log_softmax(self._logits.to(compute_dtype(self._logits)), dim=-1)

    def probs(self) -> torch.Tensor:
        """Softmax probabilities ``[N, E, C]``, in float32 (float64 if stored in float64)."""
        return torch.softmax(self._logits.to(compute_dtype(self._logits)), dim=-1)

    def predictions(self) -> torch.Tensor:
        """Predicted class per sample and exit, ``[N, E]`` (int64, ties to the lowest index;
        the argmax over the class columns)."""
        return self._logits[..., : self.num_classes - self._rest].argmax(dim=-1)

    def correct(self, reference: Literal["labels", "final"] = "labels") -> torch.Tensor:
        """Whether each exit's prediction is right, ``[N, E]`` bool.

        Parameters
        ----------
        reference : {"labels", "final"}, default="labels"
            ``"labels"``: prediction equals the label. ``"final"``: prediction equals the last
            exit's prediction (consistency; needs no labels).
        """
        check_choice(reference, "reference", ("labels", "final"))
        pred = self.predictions()
        if reference == "final":
            return pred == pred[:, -1:]
        if self._labels is None:
            raise ValueError(
                "`reference='labels'` needs labels, but these ExitOutputs have none; "
                "pass labels or use reference='final'."
            )
        return pred == self._labels[:, None]

    # ------------------------------------------------------------------ indexing and devices
    def __getitem__(self, index: Any) -> ExitOutputs:
        """Select samples with a slice, an integer, integer indices or a boolean mask."""
        index = row_index(index, self.num_samples, self.device)
        logits = self._logits[index]
        if logits.shape[0] == 0:
            raise ValueError("`index` selects no samples; ExitOutputs cannot be empty.")
        labels = None if self._labels is None else self._labels[index]
        groups = None if self._groups is None else self._groups[index]
        positions = None if self._positions is None else self._positions[index]
        return ExitOutputs._trusted(
            logits, labels, self._costs, list(self._exit_names), groups, positions, self._rest
        )

    def to(self, device: str | torch.device) -> ExitOutputs:
        """Move logits, labels and costs to ``device`` (returns a new object)."""
        device = torch.device(device)

        def moved(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return ExitOutputs._trusted(
            self._logits.to(device),
            moved(self._labels),
            self._costs.to(device),
            list(self._exit_names),
            moved(self._groups),
            moved(self._positions),
            self._rest,
        )

    def split(self, fraction: float, seed: int = 0) -> tuple[ExitOutputs, ExitOutputs]:
        """Random split into ``(first, rest)``; ``first`` holds ``fraction`` of the samples.

        Stratified by label when labels exist: each class is split in the same proportion
        (largest-remainder rounding so ``first`` has exactly ``round(fraction * N)`` samples).
        With ``groups`` (token-level data) whole sequences go to one side instead:
        ``fraction`` counts sequences (``round(fraction * G)`` of them go first), and there is
        no stratification, since a sequence holds tokens of many labels.
        :meth:`split_indices` gives the sample indices of both parts.

        Parameters
        ----------
        fraction : float in (0, 1)
            Share of samples in the first part.
        seed : int, default=0
            Seed of the permutation (a CPU ``torch.Generator``; the split is the same on any
            device).

        Examples
        --------
        >>> out = ExitOutputs(torch.zeros(10, 1, 2), labels=torch.tensor([0] * 5 + [1] * 5))
        >>> first, rest = out.split(0.4, seed=0)
        >>> len(first), len(rest), int(first.labels.sum())
        (4, 6, 2)
        """
        first_idx, rest_idx = self.split_indices(fraction, seed)
        return self[first_idx], self[rest_idx]

    def split_indices(self, fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Sorted sample indices of ``split(fraction, seed)``'s two parts (on the device).

        Examples
        --------
        >>> out = ExitOutputs(torch.zeros(4, 1, 2))
        >>> [len(i) for i in out.split_indices(0.5, seed=1)]
        [2, 2]
        """
        first_idx, rest_idx = split_indices(
            self.num_samples, self._labels, self.num_classes, self._groups, fraction, seed
        )
        return first_idx.to(self.device), rest_idx.to(self.device)

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> None:
        """Write to ``.safetensors`` or ``.npz`` (chosen by the suffix; no pickle).

        Arrays ``logits``, ``labels`` (if any), ``costs``, and ``groups``/``positions`` (if
        any); exit names in the safetensors metadata, or as a unicode array ``exit_names`` in
        npz. bfloat16 logits are written as float32 to npz (numpy has no bfloat16).
        """
        arrays = {k: getattr(self, k) for k in _ARRAYS}
        if self._rest:
            arrays["rest_columns"] = torch.tensor([self._rest])
        write_arrays(path, arrays, self.exit_names)


def require_class_columns(outputs: ExitOutputs, what: str) -> None:
    """Raise a ``ValueError`` when ``what`` needs every class as a column but ``outputs``
    holds :attr:`~ExitOutputs.rest_columns` (their mass is not split into classes).

    Examples
    --------
    >>> require_class_columns(ExitOutputs(torch.zeros(2, 1, 3), rest_columns=1), "Brier")
    Traceback (most recent call last):
    ...
    ValueError: Brier needs every class as a column, but these ExitOutputs hold 1 rest ...
    """
    if outputs.rest_columns:
        raise ValueError(
            f"{what} needs every class as a column, but these ExitOutputs hold "
            f"{outputs.rest_columns} rest column(s) (collect(reduce='fixed:K')); collect with "
            "reduce='topk:K' or keep full logits."
        )


def load(path: str | Path) -> ExitOutputs:
    """Read an :class:`ExitOutputs` from ``.safetensors`` or ``.npz`` (validated, no pickle).

    Examples
    --------
    >>> import tempfile, os
    >>> out = ExitOutputs(torch.randn(5, 2, 3), labels=torch.tensor([0, 1, 2, 0, 1]))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     out.save(os.path.join(d, "x.npz"))
    ...     back = load(os.path.join(d, "x.npz"))
    >>> torch.equal(back.logits, out.logits)
    True
    """
    arrays, names = read_arrays(path)  # validated by the public constructor
    parts = {k: arrays.get(k) for k in _ARRAYS if k != "logits"}
    rest = arrays.get("rest_columns")
    if rest is not None:
        rest = np.asarray(rest).reshape(-1)
        if rest.shape != (1,) or rest.dtype.kind not in "iu":
            raise ValueError(f"'{path}': `rest_columns` must hold one integer, got {rest!r}.")
        rest = int(rest[0])
    return ExitOutputs(arrays["logits"], exit_names=names, rest_columns=rest or 0, **parts)
