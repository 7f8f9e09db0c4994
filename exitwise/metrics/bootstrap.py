"""Bootstrap confidence intervals for any metric of per-sample data."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from exitwise._checks import as_tensor, check_choice, check_int, check_open_unit

__all__ = ["BootstrapResult", "bootstrap", "cluster_bootstrap_indices"]


@dataclass(frozen=True)
class BootstrapResult:
    """A metric's value on the full data and its bootstrap interval.

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
    method : str
        How the interval was formed.
    """

    estimate: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor
    confidence: float
    samples: torch.Tensor
    method: str = "percentile"

    @property
    def excludes_estimate(self) -> torch.Tensor:
        """Where the interval does not contain the estimate (bool, shape of ``estimate``).

        It happens, legitimately, for a metric biased under resampling: binned ECE is biased
        upwards on finite samples, so a bias-corrected interval for the true value can lie
        below the plug-in estimate. Whoever prints such an interval should say so.
        """
        est = self.estimate.to(device=self.low.device, dtype=torch.float64)
        return (est < self.low) | (est > self.high)


def bootstrap_indices(n: int, n_resamples: int, seed: int, device: torch.device) -> torch.Tensor:
    """The resampling indices ``[n_resamples, n]`` used by :func:`bootstrap` (CPU generator)."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randint(0, n, (n_resamples, n), generator=gen).to(device)


def cluster_bootstrap_indices(
    groups: torch.Tensor, n_resamples: int, seed: int, device: torch.device
) -> list[torch.Tensor]:
    """Row indices of ``n_resamples`` cluster resamples: each draws the G groups (sequences)
    with replacement and takes every row of each drawn group (so sizes vary).

    Examples
    --------
    >>> rows = cluster_bootstrap_indices(torch.tensor([7, 7, 3]), 2, 0, torch.device("cpu"))
    >>> all(set(r.tolist()) in ({0, 1}, {2}, {0, 1, 2}) for r in rows)
    True
    """
    uniq, inverse = torch.unique(groups.cpu(), return_inverse=True)
    order = torch.argsort(inverse, stable=True)
    counts = torch.bincount(inverse, minlength=uniq.numel())
    starts = torch.cumsum(counts, 0) - counts
    gen = torch.Generator().manual_seed(int(seed))
    picks = torch.randint(0, uniq.numel(), (n_resamples, uniq.numel()), generator=gen)
    out = []
    for pick in picks:
        sizes = counts[pick]
        first = torch.repeat_interleave(starts[pick], sizes)
        offset = torch.arange(int(sizes.sum())) - torch.repeat_interleave(
            torch.cumsum(sizes, 0) - sizes, sizes
        )
        out.append(order[first + offset].to(device))
    return out


def _quantiles(samples: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Per-column linear-interpolation quantiles of ``samples`` ``[B, K]`` at ``levels``
    ``[K]`` (NaN resamples ignored; a column without values gives NaN)."""
    ordered = samples.sort(dim=0).values  # NaN last
    valid = (~torch.isnan(samples)).sum(dim=0)
    pos = levels.clamp(0.0, 1.0) * (valid - 1).clamp(min=0)
    below = pos.floor().long()
    above = torch.minimum(below + 1, (valid - 1).clamp(min=0))
    frac = pos - below
    lo = ordered.gather(0, below[None])[0]
    hi = ordered.gather(0, above[None])[0]
    out = lo + (hi - lo) * frac
    return torch.where(valid > 0, out, torch.full_like(out, math.nan))


def _jackknife_acceleration(
    metric: Callable[..., Any],
    tensors: list[torch.Tensor],
    kwargs: dict,
    groups: int,
    clusters: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""BCa's acceleration :math:`a = \sum_g d_g^3 / (6 (\sum_g d_g^2)^{3/2})` with
    :math:`d_g = \bar\theta - \theta_{(g)}`, from a delete-a-group jackknife: the metric
    without each of ``groups`` contiguous blocks of a fixed random permutation (of the
    ``clusters`` when given, so a block holds whole sequences)."""
    n = tensors[0].shape[0]
    units = n if clusters is None else int(torch.unique(clusters).numel())
    g = min(groups, units)
    perm = torch.randperm(units, generator=torch.Generator().manual_seed(12345))
    blocks = torch.tensor_split(perm, g)
    unit_of = (
        torch.arange(n)
        if clusters is None
        else torch.unique(clusters.cpu(), return_inverse=True)[1]
    )
    values = []
    for block in blocks:
        dropped = torch.zeros(units, dtype=torch.bool)
        dropped[block] = True
        keep = ~dropped[unit_of]
        idx = torch.nonzero(keep).flatten()
        values.append(
            torch.as_tensor(metric(*[t[idx.to(t.device)] for t in tensors], **kwargs))
            .to(torch.float64)
            .cpu()
        )
    theta = torch.stack(values)
    d = theta.mean(dim=0) - theta
    num = (d**3).sum(dim=0)
    den = 6.0 * (d**2).sum(dim=0) ** 1.5
    return torch.where(den > 0, num / den, torch.zeros_like(num))


def bootstrap(
    metric: Callable[..., Any],
    *args: Any,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    method: str = "percentile",
    jackknife_groups: int = 100,
    bounds: tuple[float, float] | None = None,
    groups: Any = None,
    **kwargs: Any,
) -> BootstrapResult:
    r"""Bootstrap interval of ``metric(*args, **kwargs)``: percentile, basic, BC or BCa.

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
    method : {"percentile", "basic", "bc", "bca"}, default="percentile"
        ``"percentile"``: the :math:`\alpha/2` and :math:`1-\alpha/2` quantiles
        :math:`q_{\alpha/2}, q_{1-\alpha/2}` of the resampled values. ``"basic"`` (the
        reflected or pivotal interval): :math:`[2\hat\theta - q_{1-\alpha/2},
        2\hat\theta - q_{\alpha/2}]`; it moves against the bias the resampling shows, and
        is the one with the best coverage for binned ECE in our simulations (see
        ``tests/metrics/test_bootstrap.py``: at N = 1,000 and a true ECE of 0.02, 0.83 against
        0.52 for ``"bc"``/``"bca"`` and 0.20 for ``"percentile"``; no method reaches the
        nominal coverage when the true ECE is near 0, where the plug-in bias is of the size
        of the spread). ``"bc"`` (Efron's bias-corrected percentile): with
        :math:`z_0 = \Phi^{-1}(\text{share of resamples below the estimate})`, the
        quantiles at :math:`\Phi(2 z_0 \pm z_{1-\alpha/2})`. ``"bca"`` (bias-corrected and
        accelerated, Efron 1987): the quantiles at
        :math:`\Phi\big(z_0 + \frac{z_0 + z}{1 - a (z_0 + z)}\big)` for
        :math:`z = \pm z_{1-\alpha/2}`, with the acceleration :math:`a` from a jackknife
        over ``jackknife_groups`` blocks of samples. Metrics biased under resampling (ECE
        grows when samples repeat) fall outside their percentile interval; the corrected
        ones move with the bias and can lie below the estimate
        (:attr:`BootstrapResult.excludes_estimate`).
    jackknife_groups : int, default=100
        Blocks of the delete-a-group jackknife behind ``"bca"`` (``N`` gives the full
        jackknife; each block costs one metric evaluation).
    bounds : (float, float), optional
        The metric's range (e.g. ``(0, 1)`` for ECE); interval ends are clipped to it.
    groups : array-like of shape (N,), optional
        Cluster (sequence) id of every sample: resample whole groups with replacement (a
        cluster bootstrap, for dependent samples such as the tokens of a sequence); the BCa
        jackknife then deletes whole groups too.
    **kwargs
        Passed to ``metric`` as they are (``n_bins=...``).

    Returns
    -------
    BootstrapResult

    References
    ----------
    Efron, "Better bootstrap confidence intervals", JASA 1987. DiCiccio & Efron,
    "Bootstrap confidence intervals", Statistical Science 1996.

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
    jackknife_groups = check_int(jackknife_groups, "jackknife_groups", minimum=2)
    check_choice(method, "method", ("percentile", "basic", "bc", "bca"))
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
    clusters = None
    if groups is None:
        indices = bootstrap_indices(n, n_resamples, seed, tensors[0].device)
    else:
        clusters = as_tensor(groups, "groups")
        if clusters.shape != (n,) or clusters.is_floating_point():
            raise ValueError(
                f"Expected `groups` to be integer ids of shape [{n}], got dtype "
                f"{clusters.dtype} with shape {tuple(clusters.shape)}."
            )
        indices = cluster_bootstrap_indices(clusters, n_resamples, seed, tensors[0].device)
    samples = torch.stack(
        [
            torch.as_tensor(metric(*[t[idx.to(t.device)] for t in tensors], **kwargs))
            for idx in indices
        ]
    ).to(torch.float64)
    alpha = (1.0 - confidence) / 2.0
    flat = samples.reshape(n_resamples, -1)
    shape = samples.shape[1:]
    normal = torch.distributions.Normal(0.0, 1.0)
    z = float(normal.icdf(torch.tensor(1.0 - alpha, dtype=torch.float64)))
    if method in ("percentile", "basic"):
        q_low = torch.full((flat.shape[1],), alpha, dtype=torch.float64)
        q_high = torch.full((flat.shape[1],), 1.0 - alpha, dtype=torch.float64)
    else:
        est = estimate.to(device=samples.device, dtype=torch.float64).reshape(-1)
        # share below the estimate, ties counted half (a discrete metric sits on its estimate)
        share = ((flat < est).to(torch.float64) + 0.5 * (flat == est).to(torch.float64)).mean(0)
        edge = 1.0 / (2 * n_resamples)
        z0 = normal.icdf(share.clamp(edge, 1.0 - edge)).cpu()
        a = torch.zeros_like(z0)
        if method == "bca":
            a = _jackknife_acceleration(
                metric, tensors, kwargs, jackknife_groups, clusters
            ).reshape(-1)
        q_low = normal.cdf(z0 + (z0 - z) / (1.0 - a * (z0 - z)))
        q_high = normal.cdf(z0 + (z0 + z) / (1.0 - a * (z0 + z)))
    low = _quantiles(flat.cpu(), q_low).reshape(shape).to(samples.device)
    high = _quantiles(flat.cpu(), q_high).reshape(shape).to(samples.device)
    if method == "basic":
        twice = 2.0 * estimate.to(device=samples.device, dtype=torch.float64)
        low, high = twice - high, twice - low
    if bounds is not None:
        low, high = low.clamp(*bounds), high.clamp(*bounds)
    return BootstrapResult(estimate, low, high, confidence, samples, method)
