"""Validation of the evaluator's inputs (scores, outcomes, costs, thresholds, quantiles):
the public helpers every policy module uses (sweeps, risk control, tuners).

Each returns the validated tensor or raises a ``ValueError``/``TypeError`` naming the
argument, what was expected and what was found. Costs share their rules with
:class:`~exitwise.ExitOutputs` (one validator, :func:`exitwise._checks.check_costs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from exitwise._checks import as_tensor, check_costs, check_finite
from exitwise._deprecation import MISSING, renamed_argument

__all__ = [
    "check_outcome",
    "check_percentiles",
    "check_quantiles",
    "check_scores",
    "check_thresholds",
    "costs_for",
    "percent_levels",
]


def check_scores(scores: Any) -> torch.Tensor:
    """Confidence scores ``[N, E]`` (N, E >= 1; +-inf allowed, NaN not); ints become float64."""
    s = as_tensor(scores, "scores")
    if s.ndim != 2:
        raise ValueError(f"Expected `scores` to have shape [N, E], got shape {tuple(s.shape)}.")
    if not s.is_floating_point():
        s = s.to(torch.float64)
    if s.shape[0] == 0 or s.shape[1] == 0:
        raise ValueError(f"Expected `scores` with N >= 1 and E >= 1, got {tuple(s.shape)}.")
    check_finite(s, "scores", ("sample", "exit"), allow_inf=True)
    return s


def check_outcome(outcome: Any, shape: tuple[int, int], device: torch.device) -> torch.Tensor:
    """``correct`` (bool) or a loss (float, finite) of shape ``[N, E]``."""
    o = as_tensor(outcome, "correct", device=device)
    if tuple(o.shape) != shape:
        raise ValueError(
            f"Expected `correct` (bool) or loss (float) of shape [N, E] = {list(shape)}, got "
            f"{list(o.shape)}."
        )
    if o.dtype != torch.bool and not o.is_floating_point():
        raise TypeError(
            f"Expected `correct` to be bool (right/wrong) or floating (a loss), got {o.dtype}."
        )
    if o.is_floating_point():
        check_finite(o, "correct", ("sample", "exit"))
    return o


def costs_for(costs: Any, shape: tuple[int, int], device: torch.device) -> torch.Tensor:
    """Per-exit ``[E]`` (cumulative) or per-sample ``[N, E]`` costs as float64."""
    n, e = shape
    return check_costs(costs, "costs", e, num_samples=n, device=device)


def check_thresholds(thresholds: Any, num_exits: int, device: torch.device) -> torch.Tensor:
    """Candidate threshold vectors ``[K, E]`` (or one ``[E]``) as float64, no NaN."""
    t = as_tensor(thresholds, "thresholds", device=device)
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"Expected `thresholds` to be real numbers, got dtype {t.dtype}.")
    t = t.to(torch.float64)
    if t.ndim == 1:
        t = t[None, :]
    if t.ndim != 2 or t.shape[1] != num_exits:
        raise ValueError(
            f"Expected `thresholds` of shape [K, E] with E = {num_exits} (one threshold per "
            f"exit; the last exit always answers), got {list(t.shape)}."
        )
    if t.shape[0] == 0:
        raise ValueError("Expected at least one candidate in `thresholds`, got K = 0.")
    if bool(torch.isnan(t).any()):
        first = torch.nonzero(torch.isnan(t))[0].tolist()
        raise ValueError(
            f"`thresholds` has NaN at candidate {first[0]}, exit {first[1]}; use +inf for "
            "'never exit here' and -inf for 'always exit here'."
        )
    return t


def check_quantiles(quantiles: Sequence[float] | None) -> tuple[float, ...]:
    """Quantile levels in [0, 1] as a tuple (empty for ``None``)."""
    if quantiles is None:
        return ()
    qs = tuple(float(q) for q in quantiles)
    for q in qs:
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"Expected `quantiles` in [0, 1], got {q}.")
    return qs


def check_percentiles(percentiles: Any = None, quantiles: Any = MISSING) -> tuple[float, ...]:
    """Cost percentiles in [0, 100] (the one style: ``percentiles=(50, 99)``) as quantile
    fractions for the kernels; the deprecated ``quantiles=(0.5, 0.99)`` still works.

    Examples
    --------
    >>> check_percentiles((50, 99))
    (0.5, 0.99)
    """
    if quantiles is not MISSING:
        fractions = renamed_argument(
            MISSING if percentiles is None else percentiles,
            "percentiles",
            quantiles,
            "quantiles",
            hint=" (in percent, e.g. percentiles=(99,))",
        )
        if percentiles is None:
            return check_quantiles(fractions)
    if percentiles is None:
        return ()
    if isinstance(percentiles, (int, float)):
        percentiles = (percentiles,)
    out = []
    for p in percentiles:
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 100.0:
            raise ValueError(f"Expected `percentiles` in [0, 100] (e.g. 99), got {p!r}.")
        out.append(round(float(p) / 100.0, 12))
    return tuple(out)


def percent_levels(percentiles: Any = None, quantiles: Any = MISSING) -> tuple[float, ...]:
    """:func:`check_percentiles` in percent again, for the layers above the kernels (tuners,
    evaluations) that pass percentiles on.

    Examples
    --------
    >>> percent_levels((50, 99))
    (50.0, 99.0)
    """
    return tuple(round(100.0 * q, 10) for q in check_percentiles(percentiles, quantiles))
