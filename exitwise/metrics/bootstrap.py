"""Bootstrap confidence intervals for any metric of per-sample data."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from exitwise._checks import as_tensor, check_choice, check_int, check_open_unit

__all__ = ["BootstrapResult", "bootstrap"]


@dataclass(frozen=True)
class BootstrapResult:
    """A metric's value on the full data and its percentile bootstrap interval.

    Attributes
    ----------
    estimate : torch.Tensor
        The metric on the original data (scalar or ``[E]``).
    low, high : torch.Tensor
        Interval bounds, same shape as ``estimate``.
    confidence : float
        The interval's nominal coverage.
    samples : torch.Tensor
        The metric on every resample, ``[n_resamples, ...]``.
    """

    estimate: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor
    confidence: float
    samples: torch.Tensor


def bootstrap_indices(n: int, n_resamples: int, seed: int, device: torch.device) -> torch.Tensor:
    """The resampling indices ``[n_resamples, n]`` used by :func:`bootstrap` (CPU generator)."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randint(0, n, (n_resamples, n), generator=gen).to(device)


def bootstrap(
    metric: Callable[..., Any],
    *args: Any,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    method: str = "percentile",
    **kwargs: Any,
) -> BootstrapResult:
    r"""Bootstrap interval of ``metric(*args, **kwargs)``: percentile or bias-corrected.

    Every positional argument is resampled along its first (sample) axis with the *same*
    indices (so probabilities and labels stay paired); keyword arguments are passed unchanged.
    The resampling indices come from a seeded CPU generator, so the interval is the same on
    any device.

    Parameters
    ----------
    metric : callable
        Returns a tensor (scalar or ``[E]``), e.g. :func:`expected_calibration_error`.
    *args : array-like
        Per-sample arrays with the same first dimension N.
    n_resamples : int, default=1000
    confidence : float in (0, 1), default=0.95
    seed : int, default=0
    method : {"percentile", "bc"}, default="percentile"
        ``"percentile"``: the :math:`\alpha/2` and :math:`1-\alpha/2` quantiles of the
        resampled values. ``"bc"`` (Efron's bias-corrected percentile): with
        :math:`z_0 = \Phi^{-1}(\text{share of resamples below the estimate})`, the
        quantiles at :math:`\Phi(2 z_0 \pm z_{1-\alpha/2})`. Metrics biased under
        resampling (ECE grows when samples repeat) can fall outside their percentile
        interval; the bias-corrected one moves with the bias.
    **kwargs
        Passed to ``metric`` as they are (``n_bins=...``).

    Returns
    -------
    BootstrapResult

    Examples
    --------
    >>> import torch
    >>> from exitwise.metrics import per_exit_accuracy
    >>> pred = torch.tensor([[0, 1], [1, 1], [0, 0], [1, 0]])
    >>> res = bootstrap(per_exit_accuracy, pred, torch.tensor([1, 1, 0, 0]), n_resamples=200)
    >>> res.estimate
    tensor([0.5000, 1.0000], dtype=torch.float64)
    >>> bool((res.low <= res.estimate).all() and (res.estimate <= res.high).all())
    True
    """
    if not callable(metric):
        raise TypeError(f"Expected `metric` to be callable, got {type(metric).__name__}.")
    if not args:
        raise ValueError("Expected at least one per-sample array after `metric`, got none.")
    n_resamples = check_int(n_resamples, "n_resamples", minimum=1)
    check_choice(method, "method", ("percentile", "bc"))
    confidence = check_open_unit(confidence, "confidence")
    tensors = [as_tensor(a, f"args[{i}]") for i, a in enumerate(args)]
    n = tensors[0].shape[0] if tensors[0].ndim else 0
    for i, t in enumerate(tensors):
        if t.ndim == 0 or t.shape[0] != n:
            raise ValueError(
                f"Expected every positional argument to have first dimension N = {n}, got "
                f"shape {tuple(t.shape)} for args[{i}]."
            )
    if n == 0:
        raise ValueError("Expected at least one sample, got N = 0.")
    estimate = torch.as_tensor(metric(*tensors, **kwargs))
    indices = bootstrap_indices(n, n_resamples, seed, tensors[0].device)
    samples = torch.stack(
        [
            torch.as_tensor(metric(*[t[idx.to(t.device)] for t in tensors], **kwargs))
            for idx in indices
        ]
    ).to(torch.float64)
    alpha = (1.0 - confidence) / 2.0
    if method == "percentile":
        q = torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64, device=samples.device)
        low, high = torch.nanquantile(samples, q, dim=0)
        return BootstrapResult(estimate, low, high, confidence, samples)
    normal = torch.distributions.Normal(0.0, 1.0)
    est = estimate.to(device=samples.device, dtype=torch.float64)
    below = (
        (samples < est)
        .to(torch.float64)
        .mean(dim=0)
        .clamp(1.0 / (2 * n_resamples), 1.0 - 1.0 / (2 * n_resamples))
    )
    z0 = normal.icdf(below)
    z = normal.icdf(torch.tensor(1.0 - alpha, dtype=torch.float64))
    q_low = normal.cdf(2 * z0 - z)
    q_high = normal.cdf(2 * z0 + z)
    flat = samples.reshape(n_resamples, -1)
    lows = [torch.nanquantile(flat[:, i], q_low.reshape(-1)[i]) for i in range(flat.shape[1])]
    highs = [torch.nanquantile(flat[:, i], q_high.reshape(-1)[i]) for i in range(flat.shape[1])]
    low = torch.stack(lows).reshape(samples.shape[1:])
    high = torch.stack(highs).reshape(samples.shape[1:])
    return BootstrapResult(estimate, low, high, confidence, samples)
