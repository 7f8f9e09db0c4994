r"""Binning of confidences: the one owner of bin edges, bin indices, per-bin totals and the
binned calibration error computed from them.

*Uniform bins*: ``n_bins`` equal-width bins ``[a, b)`` over ``[0, 1]`` with the edges
:math:`k / n_{bins}` computed exactly (a correctly rounded float64 division, as netcal and
``np.histogram`` place them, not a ``linspace`` whose rounding can put edge 11/15 one ulp
high); the last bin is closed, ``[a, 1]``. A confidence exactly on an edge belongs to the bin
that starts there.

*Quantile (equal-mass) bins*: a confidence ``x`` goes to bin ``floor(n_bins * r / N)``, where
``r`` is the number of confidences strictly below ``x`` in its column: ties share a bin.

With :math:`B_b` the samples of bin :math:`b`, :math:`\mathrm{acc}_b` their mean hit and
:math:`\mathrm{conf}_b` their mean confidence, the gap is :math:`g_b = \mathrm{acc}_b -
\mathrm{conf}_b` and the error is :math:`\sum_b \frac{|B_b|}{N}|g_b|` (``"l1"``, ECE),
:math:`\sqrt{\sum_b \frac{|B_b|}{N} g_b^2}` (``"l2"``) or :math:`\max_{|B_b|>0}|g_b|`
(``"max"``, MCE). Per-bin sums are float64.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from exitwise._checks import as_tensor, check_choice, check_int
from exitwise._distributed import all_gather_rows, all_reduce_sum, group_active

__all__ = [
    "bin_indices",
    "bin_totals",
    "calibration_error_from_confidence",
    "norm_of_gaps",
    "uniform_bin_edges",
    "wilson_interval",
]

Binning = Literal["uniform", "quantile"]
Norm = Literal["l1", "l2", "max"]


def uniform_bin_edges(n_bins: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The ``n_bins + 1`` edges ``k / n_bins`` (float64, each correctly rounded).

    Examples
    --------
    >>> float(uniform_bin_edges(15)[11])            # linspace gives 0.7333333333333334
    0.7333333333333333
    """
    return torch.arange(n_bins + 1, dtype=torch.float64, device=device) / n_bins


def bin_indices(conf: torch.Tensor, n_bins: int, binning: Binning = "uniform") -> torch.Tensor:
    """Bin index (int64) of every entry of ``conf`` ``[N]`` or ``[N, K]`` (binning per column).

    Examples
    --------
    >>> import torch
    >>> bin_indices(torch.tensor([0.0, 0.1, 0.2, 0.5, 1.0], dtype=torch.float64), 5)
    tensor([0, 0, 1, 2, 4])
    """
    if binning == "uniform":
        inner = uniform_bin_edges(n_bins, conf.device)[1:-1]
        return torch.bucketize(conf.to(torch.float64), inner, right=True)
    column = conf.ndim == 1
    columns = (conf[None, :] if column else conf.T).contiguous()
    below = torch.searchsorted(columns.sort(dim=1).values, columns, right=False)
    index = below * n_bins // conf.shape[0]
    return index[0] if column else index.T


def bin_totals(
    conf: torch.Tensor, hit: torch.Tensor, n_bins: int, binning: Binning = "uniform"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-column, per-bin count, confidence sum and hit sum, each ``[K, n_bins]`` float64.

    ``conf`` and ``hit`` are ``[N, K]`` (``hit`` bool or float).

    Examples
    --------
    >>> import torch
    >>> conf = torch.tensor([[0.2], [0.7], [0.9]], dtype=torch.float64)
    >>> counts, s_conf, s_hit = bin_totals(conf, torch.tensor([[True], [False], [True]]), 2)
    >>> counts, s_hit
    (tensor([[1., 2.]], dtype=torch.float64), tensor([[1., 1.]], dtype=torch.float64))
    """
    k = conf.shape[1]
    index = bin_indices(conf, n_bins, binning)
    flat = (index + torch.arange(k, device=conf.device)[None, :] * n_bins).reshape(-1)
    size = k * n_bins
    counts = torch.bincount(flat, minlength=size).to(torch.float64)
    sum_conf = torch.bincount(flat, weights=conf.reshape(-1).to(torch.float64), minlength=size)
    sum_hit = torch.bincount(flat, weights=hit.reshape(-1).to(torch.float64), minlength=size)
    shape = (k, n_bins)
    return counts.reshape(shape), sum_conf.reshape(shape), sum_hit.reshape(shape)


def gaps(counts: torch.Tensor, sum_conf: torch.Tensor, sum_hit: torch.Tensor) -> torch.Tensor:
    """``acc_b - conf_b`` per bin (0 for empty bins)."""
    return (sum_hit - sum_conf) / counts.clamp(min=1.0)


def norm_of_gaps(counts: torch.Tensor, gap: torch.Tensor, n: int, norm: Norm) -> torch.Tensor:
    """Weighted L1 / L2 norm, or the maximum over non-empty bins, of per-bin gaps ``[K, B]``."""
    weights = counts / n
    if norm == "l1":
        return (weights * gap.abs()).sum(dim=-1)
    if norm == "l2":
        return (weights * gap.square()).sum(dim=-1).sqrt()
    return torch.where(counts > 0, gap.abs(), torch.zeros_like(gap)).amax(dim=-1)


def calibration_error_from_confidence(
    confidence: Any,
    hit: Any,
    n_bins: int = 15,
    *,
    binning: Binning = "uniform",
    norm: Norm = "l1",
) -> torch.Tensor:
    """Binned calibration error of confidences ``[N]`` (scalar) or ``[N, K]`` (``[K]``)
    against hits (bool or 0/1 float) of the same shape.

    The binary core of the binned errors in exitwise: top-label and classwise ECE, MCE and
    the halting network's ECE call it; histogram binning fits on the same ``bin_totals``.
    In a ``torch.distributed`` group of several processes each rank passes its shard and
    gets the error of all of them (:mod:`exitwise._distributed`): uniform bins all-reduce
    the bin totals, quantile bins gather the confidences.

    Examples
    --------
    >>> import torch
    >>> conf = torch.tensor([0.9, 0.6, 0.7])
    >>> calibration_error_from_confidence(conf, torch.tensor([True, False, True]), 2)
    tensor(0.0667, dtype=torch.float64)
    """
    n_bins = check_int(n_bins, "n_bins", minimum=1)
    check_choice(binning, "binning", ("uniform", "quantile"))
    check_choice(norm, "norm", ("l1", "l2", "max"))
    conf = as_tensor(confidence, "confidence")
    hit_t = as_tensor(hit, "hit", device=conf.device)
    if conf.ndim not in (1, 2) or conf.shape[0] == 0:
        raise ValueError(
            f"Expected `confidence` of shape [N] or [N, K] with N >= 1, got {tuple(conf.shape)}."
        )
    if hit_t.shape != conf.shape:
        raise ValueError(
            f"Expected `hit` of the shape of `confidence` {tuple(conf.shape)}, got "
            f"{tuple(hit_t.shape)}."
        )
    conf64 = conf.to(torch.float64)
    low, high = torch.aminmax(conf64)
    if not bool((low >= 0) & (high <= 1)):  # NaN fails both comparisons
        raise ValueError(
            f"Expected `confidence` in [0, 1], got values in [{float(low):.4g}, {float(high):.4g}]."
        )
    column = conf.ndim == 1
    c2 = conf64[:, None] if column else conf64
    h2 = hit_t[:, None] if column else hit_t
    n = conf.shape[0]
    distributed = group_active()
    if distributed and binning == "quantile":  # equal-mass bins need every rank's values
        c2, h2 = all_gather_rows(c2), all_gather_rows(h2.to(torch.float64))
        n, distributed = c2.shape[0], False
    counts, sum_conf, sum_hit = bin_totals(c2, h2, n_bins, binning)
    if distributed:  # uniform bins: the bin totals add up over ranks
        total = torch.tensor(n, dtype=torch.int64, device=counts.device)
        all_reduce_sum(counts, sum_conf, sum_hit, total)
        n = int(total)
    result = norm_of_gaps(counts, gaps(counts, sum_conf, sum_hit), n, norm)
    return result[0] if column else result


def wilson_interval(
    hits: torch.Tensor, counts: torch.Tensor, confidence: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Wilson score interval of a proportion ``hits / counts`` (elementwise, float64):

    .. math:: \frac{\hat p + \frac{z^2}{2n} \pm z\sqrt{\frac{\hat p(1-\hat p)}{n} +
              \frac{z^2}{4n^2}}}{1 + \frac{z^2}{n}}

    NaN where ``counts`` is 0. It stays inside [0, 1] and is sensible for small bins, where
    the normal interval is not (Wilson 1927; scipy's ``binomtest(...).proportion_ci("wilson")``).

    Examples
    --------
    >>> import torch
    >>> low, high = wilson_interval(torch.tensor([8.0]), torch.tensor([10.0]))
    >>> round(float(low), 4), round(float(high), 4)
    (0.4902, 0.9433)
    """
    level = torch.tensor(0.5 + confidence / 2, dtype=torch.float64)
    z = float(torch.special.ndtri(level))
    n = counts.to(torch.float64)
    p = hits.to(torch.float64) / n.clamp(min=1.0)
    denom = 1.0 + z * z / n.clamp(min=1.0)
    center = (p + z * z / (2 * n.clamp(min=1.0))) / denom
    half = z * torch.sqrt(p * (1 - p) / n.clamp(min=1.0) + z * z / (4 * n.clamp(min=1.0) ** 2))
    half = half / denom
    nan = torch.full_like(center, float("nan"))
    return (
        torch.where(n > 0, (center - half).clamp(0.0, 1.0), nan),
        torch.where(n > 0, (center + half).clamp(0.0, 1.0), nan),
    )
