"""Input conversion and validation shared by every public function.

Every check raises a ``TypeError`` (wrong type) or ``ValueError`` (wrong value) whose message
names the argument, says what was expected and what was found.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__: list[str] = []

_AXIS_NAMES = ("sample", "exit", "class")


def as_tensor(value: Any, name: str, *, device: torch.device | None = None) -> torch.Tensor:
    """Convert a numpy array, torch tensor or nested sequence to a tensor (no copy if possible)."""
    if isinstance(value, torch.Tensor):
        tensor = value
    elif isinstance(value, np.ndarray):
        if value.dtype == object:
            raise TypeError(f"Expected `{name}` to be a numeric array, got an object array.")
        tensor = torch.from_numpy(np.ascontiguousarray(value))
    elif isinstance(value, (Sequence, int, float, np.generic)) and not isinstance(value, str):
        try:
            tensor = torch.as_tensor(np.asarray(value))
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"Expected `{name}` to be a torch.Tensor or numpy array, got {type(value).__name__}"
                f" that cannot be converted ({err})."
            ) from None
    else:
        raise TypeError(
            f"Expected `{name}` to be a torch.Tensor or numpy array, got {type(value).__name__}."
        )
    if device is not None and tensor.device != device:
        tensor = tensor.to(device)
    return tensor


def check_ndim(tensor: torch.Tensor, name: str, allowed: Sequence[int], shape_doc: str) -> None:
    if tensor.ndim not in allowed:
        raise ValueError(
            f"Expected `{name}` to have shape {shape_doc}, got {tensor.ndim} dimensions "
            f"(shape {tuple(tensor.shape)})."
        )


def check_floating(tensor: torch.Tensor, name: str) -> None:
    if not tensor.is_floating_point():
        raise TypeError(
            f"Expected `{name}` to be a floating-point tensor, got dtype {tensor.dtype}."
        )


def _location(flat_index: int, shape: Sequence[int], axis_names: Sequence[str]) -> str:
    coords = np.unravel_index(flat_index, tuple(shape))
    names = list(axis_names)[: len(shape)]
    names += [f"dim {i}" for i in range(len(names), len(shape))]
    return ", ".join(f"{n} {int(c)}" for n, c in zip(names, coords, strict=True))


def check_finite(
    tensor: torch.Tensor,
    name: str,
    axis_names: Sequence[str] = _AXIS_NAMES,
    *,
    allow_inf: bool = False,
) -> None:
    """Raise naming the count and first location of NaN (and, unless allowed, inf) values."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return
    low, high = torch.aminmax(tensor)  # NaN propagates through min/max: one cheap pass
    if bool(torch.isfinite(low) & torch.isfinite(high)):
        return
    if allow_inf and not bool(torch.isnan(low) | torch.isnan(high)):
        return
    nan = torch.isnan(tensor)
    n_nan = int(nan.sum())
    bad = nan if n_nan else ~torch.isfinite(tensor)
    kind = "NaN" if n_nan else "infinite"
    count = n_nan if n_nan else int(bad.sum())
    first = int(torch.nonzero(bad.reshape(-1))[0, 0])
    expected = "no NaN values" if allow_inf else "finite values"
    raise ValueError(
        f"`{name}` has {count} {kind} value{'s' if count != 1 else ''}, first at "
        f"{_location(first, tensor.shape, axis_names)}; expected {expected}."
    )


def check_labels(labels: torch.Tensor, name: str, n: int, num_classes: int) -> torch.Tensor:
    """Validate integer class labels ``[N]`` in ``[0, num_classes)``; return them as int64."""
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        if labels.is_floating_point() and labels.numel() and bool((labels == labels.round()).all()):
            raise TypeError(
                f"Expected `{name}` to be an integer tensor of class indices, got dtype "
                f"{labels.dtype}; convert with `.long()` if the values are class indices."
            )
        raise TypeError(
            f"Expected `{name}` to be an integer tensor of class indices, got dtype {labels.dtype}."
        )
    if labels.ndim != 1:
        raise ValueError(f"Expected `{name}` to have shape [N], got shape {tuple(labels.shape)}.")
    if labels.shape[0] != n:
        raise ValueError(
            f"Expected `{name}` to hold one label per sample ({n}), got {labels.shape[0]}."
        )
    labels = labels.long()
    if labels.numel():
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_classes:
            bad = int(torch.nonzero((labels < 0) | (labels >= num_classes))[0, 0])
            raise ValueError(
                f"Expected `{name}` in [0, {num_classes - 1}] (there are {num_classes} classes), "
                f"got {int(labels[bad])} at sample {bad}."
            )
    return labels


def check_int(value: Any, name: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"Expected argument `{name}` to be an integer, got {value!r}.")
    if minimum is not None and value < minimum:
        raise ValueError(f"Expected argument `{name}` to be an integer >= {minimum}, got {value}.")
    return int(value)


def check_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    if value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise ValueError(f"Expected argument `{name}` to be one of {options}, got {value!r}.")
    return value


def check_open_unit(value: Any, name: str) -> float:
    """A float strictly between 0 and 1."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"Expected argument `{name}` to be a number in (0, 1), got {value!r}.")
    if not 0.0 < float(value) < 1.0:
        raise ValueError(f"Expected argument `{name}` to be in (0, 1), got {value}.")
    return float(value)


def compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """float64 stays float64; every other float dtype is computed in float32."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def batched_logits(value: Any, name: str, *, allow_2d: bool = True) -> tuple[torch.Tensor, bool]:
    """The one batched-input normaliser: ``[N, C]`` or ``[N, E, C]`` floats as ``[N, E, C]``
    (N >= 1, C >= 2) and whether the input was ``[N, C]`` (results then drop the exit axis).

    Examples
    --------
    >>> x, squeeze = batched_logits(torch.zeros(4, 3), "logits")
    >>> tuple(x.shape), squeeze
    ((4, 1, 3), True)
    """
    tensor = as_tensor(value, name)
    check_floating(tensor, name)
    allowed = (2, 3) if allow_2d else (3,)
    check_ndim(tensor, name, allowed, "[N, C] or [N, E, C]" if allow_2d else "[N, E, C]")
    squeeze = tensor.ndim == 2
    if squeeze:
        tensor = tensor.unsqueeze(1)
    if tensor.shape[0] == 0:
        raise ValueError(f"Expected `{name}` to hold at least one sample, got N = 0.")
    if tensor.shape[2] < 2:
        raise ValueError(
            f"Expected `{name}` to hold at least 2 classes, got C = {tensor.shape[2]}."
        )
    return tensor, squeeze


def check_costs(
    costs: Any,
    name: str,
    num_exits: int,
    *,
    num_samples: int | None = None,
    positive: bool = False,
    device: torch.device | None = None,
) -> torch.Tensor:
    """The one validator of costs: cumulative per-exit costs ``[E]`` (finite, non-decreasing
    over exits; ``positive`` for a model's costs) or, with ``num_samples``, per-sample costs
    ``[N, E]`` too. Returns float64.

    Examples
    --------
    >>> check_costs([1, 2, 2], "costs", 3).tolist()
    [1.0, 2.0, 2.0]
    """
    c = as_tensor(costs, name, device=device)
    if c.dtype == torch.bool or c.is_complex():
        raise TypeError(f"Expected `{name}` to be real numbers, got dtype {c.dtype}.")
    c = c.to(torch.float64)
    shapes = [(num_exits,)] + ([(num_samples, num_exits)] if num_samples is not None else [])
    if tuple(c.shape) not in shapes:
        expected = f"[E] = [{num_exits}]" + (
            f" or [N, E] = [{num_samples}, {num_exits}]" if num_samples is not None else ""
        )
        raise ValueError(
            f"Expected `{name}` to have shape {expected} (cumulative cost per exit), got shape "
            f"{tuple(c.shape)}."
        )
    check_finite(c, name, ("exit",) if c.ndim == 1 else ("sample", "exit"))
    if positive and bool((c <= 0).any()):
        bad = int(torch.nonzero(c.reshape(-1) <= 0)[0, 0])
        raise ValueError(
            f"Expected `{name}` to be positive, got {float(c.reshape(-1)[bad])} "
            f"at exit {bad % num_exits}."
        )
    if c.ndim == 1 and num_exits > 1 and bool((c[1:] < c[:-1]).any()):
        bad = int(torch.nonzero(c[1:] < c[:-1])[0, 0]) + 1
        raise ValueError(
            f"Expected `{name}` to be cumulative (non-decreasing over exits), got "
            f"{float(c[bad])} at exit {bad} after {float(c[bad - 1])} at exit {bad - 1}."
        )
    return c


#: the largest token position accepted (a position is an index into a sequence)
MAX_POSITION = 2**31 - 1


def per_sample(
    values: Any, name: str, n: int, device: torch.device, minimum: int | None = None
) -> torch.Tensor:
    """An int64 ``[n]`` tensor of ``values`` on ``device`` (integers, at least ``minimum``)."""
    t = as_tensor(values, name, device=device)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"Expected `{name}` to hold integers, got dtype {t.dtype}.")
    if tuple(t.shape) != (n,):
        raise ValueError(
            f"Expected `{name}` of shape [{n}] (one per sample), got {tuple(t.shape)}."
        )
    t = t.long()
    if minimum is not None and bool((t < minimum).any()):
        first = int(torch.nonzero(t < minimum)[0])
        raise ValueError(f"Expected `{name}` >= {minimum}, got {int(t[first])} at sample {first}.")
    return t


def sequence_sort(groups: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Row order by sequence id, then position: two stable sorts, so any int64 ids and
    positions work (no ``group * (max position + 1)`` key to overflow).

    Examples
    --------
    >>> sequence_sort(torch.tensor([4, 4, 1]), torch.tensor([1, 0, 0])).tolist()
    [2, 1, 0]
    """
    by_position = torch.argsort(positions, stable=True)
    return by_position[torch.argsort(groups[by_position], stable=True)]


def check_sequences(
    groups: Any, positions: Any, n: int, device: torch.device
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Token-level ``groups`` (sequence ids) and ``positions`` ``[n]``: integers, positions in
    ``[0, MAX_POSITION]`` and distinct within each sequence (a token's place in its sequence).

    Examples
    --------
    >>> check_sequences([0, 0, 1], [0, 0, 0], 3, torch.device("cpu"))
    Traceback (most recent call last):
    ...
    ValueError: Expected distinct `positions` within a sequence; sequence 0 has position 0 ...
    """
    if positions is not None and groups is None:
        raise ValueError("`positions` needs `groups` (the sequence of each token).")
    g = None if groups is None else per_sample(groups, "groups", n, device)
    if positions is None:
        return g, None
    p = per_sample(positions, "positions", n, device, 0)
    if bool((p > MAX_POSITION).any()):
        first = int(torch.nonzero(p > MAX_POSITION)[0])
        raise ValueError(
            f"Expected `positions` <= {MAX_POSITION} (a token's index in its sequence), got "
            f"{int(p[first])} at sample {first}."
        )
    order = sequence_sort(g, p)
    same = (g[order][1:] == g[order][:-1]) & (p[order][1:] == p[order][:-1])
    if bool(same.any()):
        i = int(torch.nonzero(same)[0])
        a, b = sorted((int(order[i]), int(order[i + 1])))
        raise ValueError(
            "Expected distinct `positions` within a sequence; sequence "
            f"{int(g[a])} has position {int(p[a])} twice (samples {a} and {b})."
        )
    return g, p


def row_index(index: Any, n: int, device: torch.device) -> slice | torch.Tensor:
    """A sample selection of ``n`` rows as a slice or a tensor: an int (kept as a one-row
    slice), a slice, 1-D integer indices or a boolean mask of length ``n``.

    Examples
    --------
    >>> row_index(-1, 5, torch.device("cpu")), row_index([0, 2], 5, torch.device("cpu"))
    (slice(-1, None, None), tensor([0, 2]))
    """
    if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
        return slice(int(index), int(index) + 1 if int(index) != -1 else None)
    if isinstance(index, slice):
        return index
    index = as_tensor(index, "index", device=device)
    if index.dtype == torch.bool:
        if index.shape != (n,):
            raise ValueError(
                f"Expected a boolean `index` of shape [{n}], got {tuple(index.shape)}."
            )
    elif index.is_floating_point() or index.ndim != 1:
        raise TypeError(
            "Expected `index` to be a slice, an int, a 1-D integer index or a boolean "
            f"mask, got dtype {index.dtype} with shape {tuple(index.shape)}."
        )
    return index
