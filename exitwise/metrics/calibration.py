r"""Calibration metrics, batched over exits: ECE and its variants, Brier score, NLL.

Every function takes probabilities (or logits with ``input="logits"``) of shape ``[N, C]``
(one head, returns a scalar) or ``[N, E, C]`` (all exits at once, returns ``[E]``), and integer
labels ``[N]``. Results keep the device of the input; sums inside bins are float64.

The metric spec
---------------
*Top-label* confidence is the largest probability of a row, ``hit`` whether its class is the
label. *Classwise* treats every class ``c`` as a binary problem with confidence ``p_c`` and
``hit = [label == c]`` and averages the per-class errors (Kull et al. 2019).

Bins, gaps and norms follow :mod:`exitwise.metrics.binning` (uniform bins ``[a, b)`` with exact
edges ``k / n_bins``, the last bin closed so a confidence of exactly 1.0 lands in it; this
equals netcal's ``ECE(bins=n)`` and ``np.histogram``; torchmetrics puts exactly 1.0 into a
hidden extra bin, and ``uncertainty-calibration`` uses ``(a, b]`` bins, which differ only for
confidences exactly on an edge; quantile bins keep ties together).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from exitwise._checks import check_choice, check_int
from exitwise._distributed import sample_mean
from exitwise.metrics._inputs import finish, log_probabilities, probabilities, top_label
from exitwise.metrics.binning import (
    Binning,
    Norm,
    bin_totals,
    calibration_error_from_confidence,
    gaps,
    uniform_bin_edges,
    wilson_interval,
)
from exitwise.metrics.smooth import smooth_calibration_error

__all__ = [
    "ReliabilityBins",
    "adaptive_calibration_error",
    "brier_score",
    "debiased_calibration_error",
    "expected_calibration_error",
    "maximum_calibration_error",
    "negative_log_likelihood",
    "reliability_bins",
    "smooth_calibration_error",
]

Mode = Literal["top_label", "classwise"]
Input = Literal["probs", "logits"]


# --------------------------------------------------------------------------- helpers
def _at_label(values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``values[n, e, labels[n]]`` as ``[N, E]``."""
    index = labels[:, None, None].expand(-1, values.shape[1], 1)
    return values.gather(-1, index).squeeze(-1)


def _classwise(probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class confidence and hit, ``[N, E * C]`` float64 (column ``e * C + c``)."""
    n, e, c = probs.shape
    conf = probs.to(torch.float64).reshape(n, e * c)
    hit = torch.nn.functional.one_hot(labels, c).to(torch.float64)
    return conf, hit[:, None, :].expand(n, e, c).reshape(n, e * c)


def _check_binning_args(n_bins: int, binning: str) -> int:
    n_bins = check_int(n_bins, "n_bins", minimum=1)
    check_choice(binning, "binning", ("uniform", "quantile"))
    return n_bins


# --------------------------------------------------------------------------- public metrics
def expected_calibration_error(
    probs: Any,
    labels: Any,
    n_bins: int = 15,
    *,
    binning: Binning = "uniform",
    norm: Norm = "l1",
    mode: Mode = "top_label",
    input: Input = "probs",
) -> torch.Tensor:
    r"""Binned expected calibration error (ECE), batched over exits.

    See the module docstring for the exact binning convention and norms.

    Parameters
    ----------
    probs : array-like of shape (N, C) or (N, E, C)
        Probabilities (rows sum to 1), or logits with ``input="logits"``.
    labels : array-like of shape (N,)
        Integer class labels.
    n_bins : int, default=15
        Number of bins.
    binning : {"uniform", "quantile"}, default="uniform"
        Equal-width bins ``[a, b)`` (last closed) or equal-mass bins (ties share a bin).
    norm : {"l1", "l2", "max"}, default="l1"
        Weighted L1 (ECE), weighted L2, or maximum gap over non-empty bins (MCE).
    mode : {"top_label", "classwise"}, default="top_label"
        Top-label confidence, or the mean over classes of each class's binary ECE.
    input : {"probs", "logits"}, default="probs"
        What ``probs`` holds; logits are turned into probabilities by softmax.

    Returns
    -------
    torch.Tensor
        Scalar for ``[N, C]`` input, ``[E]`` for ``[N, E, C]``; float64, on the input's device.

    Raises
    ------
    ValueError
        If probabilities are outside [0, 1] or rows do not sum to 1, labels are out of range,
        shapes disagree or an option is unknown.

    See Also
    --------
    reliability_bins : the per-bin data behind this number.

    References
    ----------
    Guo et al., "On Calibration of Modern Neural Networks", ICML 2017.
    Kull et al., "Beyond temperature scaling", NeurIPS 2019 (classwise-ECE).

    Examples
    --------
    >>> import torch
    >>> probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    >>> labels = torch.tensor([0, 1, 1])
    >>> expected_calibration_error(probs, labels, n_bins=2)  # one bin: |2/3 - 2.2/3|
    tensor(0.0667, dtype=torch.float64)
    """
    check_choice(norm, "norm", ("l1", "l2", "max"))
    check_choice(mode, "mode", ("top_label", "classwise"))
    n_bins = _check_binning_args(n_bins, binning)
    if mode == "top_label":
        conf, hit, squeeze = top_label(probs, labels, input)
        e = c = 0
    else:
        p, y, squeeze = probabilities(probs, labels, input)
        _, e, c = p.shape
        conf, hit = _classwise(p, y)
    result = calibration_error_from_confidence(conf, hit, n_bins, binning=binning, norm=norm)
    if mode == "classwise":
        result = result.reshape(e, c).mean(dim=-1)
    return finish(result, squeeze)


def maximum_calibration_error(
    probs: Any,
    labels: Any,
    n_bins: int = 15,
    *,
    binning: Binning = "uniform",
    mode: Mode = "top_label",
    input: Input = "probs",
) -> torch.Tensor:
    """Maximum calibration error: the largest ``|acc_b - conf_b|`` over non-empty bins.

    Same as ``expected_calibration_error(..., norm="max")``.

    Examples
    --------
    >>> import torch
    >>> probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    >>> maximum_calibration_error(probs, torch.tensor([0, 1, 1]), n_bins=4)
    tensor(0.1500, dtype=torch.float64)
    """
    return expected_calibration_error(
        probs, labels, n_bins, binning=binning, norm="max", mode=mode, input=input
    )


def adaptive_calibration_error(
    probs: Any, labels: Any, n_bins: int = 15, *, input: Input = "probs"
) -> torch.Tensor:
    r"""Adaptive calibration error (ACE) of Nixon et al. 2019.

    Classwise, equal-mass bins per class, and an *unweighted* mean over classes and non-empty
    bins: :math:`\mathrm{ACE} = \frac{1}{C R}\sum_c \sum_r |\mathrm{acc}(r,c) -
    \mathrm{conf}(r,c)|` (bins emptied by ties are left out of the mean).

    References
    ----------
    Nixon et al., "Measuring Calibration in Deep Learning", CVPR Workshops 2019.

    Examples
    --------
    >>> import torch
    >>> probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    >>> adaptive_calibration_error(probs, torch.tensor([0, 1, 1, 1]), n_bins=2)
    tensor(0.2500, dtype=torch.float64)
    """
    n_bins = _check_binning_args(n_bins, "quantile")
    p, y, squeeze = probabilities(probs, labels, input)
    e = p.shape[1]
    conf, hit = _classwise(p, y)
    counts, sum_conf, sum_hit = bin_totals(conf, hit, n_bins, "quantile")
    gap = gaps(counts, sum_conf, sum_hit).abs()
    filled = (counts > 0).to(torch.float64)
    per_exit = (gap * filled).reshape(e, -1).sum(-1) / filled.reshape(e, -1).sum(-1)
    return finish(per_exit, squeeze)


def debiased_calibration_error(
    probs: Any,
    labels: Any,
    n_bins: int = 15,
    *,
    binning: Binning = "quantile",
    input: Input = "probs",
) -> torch.Tensor:
    r"""Debiased top-label L2 calibration error of Kumar et al. 2019.

    The plug-in estimate of the squared L2 error is biased upwards by the sampling noise of
    each bin's accuracy. Kumar et al. subtract that noise per bin:

    .. math::
        \widehat{\mathrm{CE}}^2 = \sum_{b:\,|B_b| \ge 2} \frac{|B_b|}{N}
        \Big[(\mathrm{acc}_b - \mathrm{conf}_b)^2 - \frac{\mathrm{acc}_b(1-\mathrm{acc}_b)}
        {|B_b| - 1}\Big]

    and return :math:`\sqrt{\max(\widehat{\mathrm{CE}}^2, 0)}` (bins with fewer than two
    samples contribute 0), as ``calibration.get_calibration_error(p=2, debias=True)`` does.
    Equal-mass bins by default, as in the paper.

    References
    ----------
    Kumar, Liang, Ma, "Verified Uncertainty Calibration", NeurIPS 2019.

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> conf = torch.rand(20000, generator=g) * 0.5 + 0.5
    >>> hit = torch.rand(20000, generator=g) < conf          # perfectly calibrated
    >>> probs = torch.stack([conf, 1 - conf], dim=1)
    >>> labels = (~hit).long()
    >>> float(debiased_calibration_error(probs, labels)) < 0.01
    True
    """
    n_bins = _check_binning_args(n_bins, binning)
    conf, hit, squeeze = top_label(probs, labels, input)
    n = conf.shape[0]
    counts, sum_conf, sum_hit = bin_totals(conf, hit, n_bins, binning)
    safe = counts.clamp(min=1.0)
    acc = sum_hit / safe
    gap2 = ((sum_hit - sum_conf) / safe).square()
    noise = acc * (1.0 - acc) / (counts - 1.0).clamp(min=1.0)
    per_bin = torch.where(counts >= 2, gap2 - noise, torch.zeros_like(gap2))
    squared = (counts / n * per_bin).sum(dim=-1)
    return finish(squared.clamp(min=0.0).sqrt(), squeeze)


def brier_score(probs: Any, labels: Any, *, input: Input = "probs") -> torch.Tensor:
    r"""Multiclass Brier score :math:`\frac{1}{N}\sum_n \sum_c (p_{nc} - [y_n = c])^2`.

    The original definition (Brier 1950), in [0, 2]; scikit-learn's
    ``brier_score_loss(..., scale_by_half=False)`` gives the same value.

    Examples
    --------
    >>> import torch
    >>> brier_score(torch.tensor([[0.8, 0.2], [0.5, 0.5]]), torch.tensor([0, 1]))
    tensor(0.2900, dtype=torch.float64)
    """
    p, y, squeeze = probabilities(probs, labels, input)
    return finish(sample_mean(brier_per_sample(p, y)), squeeze)  # over every rank's samples


def brier_per_sample(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each sample's Brier term ``sum_c (p_c - [y = c])^2`` (float64), of checked
    probabilities ``[N, E, C]`` and labels ``[N]``: ``[N, E]``."""
    sq = p.square().sum(dim=-1, dtype=torch.float64)
    return sq - 2.0 * _at_label(p, y).to(torch.float64) + 1.0


def negative_log_likelihood(probs: Any, labels: Any, *, input: Input = "probs") -> torch.Tensor:
    r"""Mean negative log-likelihood of the labels, :math:`-\frac{1}{N}\sum_n \log p_{n,y_n}`.

    With ``input="logits"`` the log-probabilities come from ``log_softmax`` and stay exact for
    very confident rows; with probabilities a zero probability on the label gives ``inf`` (no
    silent clipping).

    Examples
    --------
    >>> import torch
    >>> negative_log_likelihood(torch.tensor([[0.5, 0.5], [0.25, 0.75]]), torch.tensor([0, 1]))
    tensor(0.4904, dtype=torch.float64)
    """
    if input == "logits":
        log_p, y, squeeze = log_probabilities(probs, labels, input)
        picked = _at_label(log_p, y).to(torch.float64)
    else:
        p, y, squeeze = probabilities(probs, labels, input)
        picked = torch.log(_at_label(p, y).to(torch.float64))
    return finish(-sample_mean(picked), squeeze)  # over every rank's samples


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin data of a reliability diagram; every bin is present, empty ones have count 0.

    Attributes
    ----------
    confidence : torch.Tensor
        Mean confidence per bin, ``[n_bins]`` or ``[E, n_bins]`` (NaN where empty).
    accuracy : torch.Tensor
        Mean hit (accuracy) per bin, same shape (NaN where empty).
    count : torch.Tensor
        Number of samples per bin (float64), same shape.
    edges : torch.Tensor or None
        Bin edges ``[n_bins + 1]`` for uniform bins; ``None`` for quantile bins.
    accuracy_low, accuracy_high : torch.Tensor or None
        95 % Wilson interval of each bin's accuracy (NaN where empty).
    """

    confidence: torch.Tensor
    accuracy: torch.Tensor
    count: torch.Tensor
    edges: torch.Tensor | None
    accuracy_low: torch.Tensor | None = None
    accuracy_high: torch.Tensor | None = None


def reliability_bins(
    probs: Any,
    labels: Any,
    n_bins: int = 15,
    *,
    binning: Binning = "uniform",
    input: Input = "probs",
) -> ReliabilityBins:
    """Top-label confidence, accuracy and count per bin: the data behind a reliability diagram.

    Bins follow the module's convention; the output always has ``n_bins`` entries per exit.

    Examples
    --------
    >>> import torch
    >>> bins = reliability_bins(torch.tensor([[0.9, 0.1], [0.6, 0.4]]), torch.tensor([0, 1]), 2)
    >>> bins.count
    tensor([0., 2.], dtype=torch.float64)
    """
    n_bins = _check_binning_args(n_bins, binning)
    conf, hit, squeeze = top_label(probs, labels, input)
    counts, sum_conf, sum_hit = bin_totals(conf, hit, n_bins, binning)
    nan = torch.full_like(counts, float("nan"))
    mean_conf = torch.where(counts > 0, sum_conf / counts.clamp(min=1.0), nan)
    mean_acc = torch.where(counts > 0, sum_hit / counts.clamp(min=1.0), nan)
    edges = None
    if binning == "uniform":
        edges = uniform_bin_edges(n_bins, conf.device)
    low, high = wilson_interval(sum_hit, counts)
    return ReliabilityBins(
        finish(mean_conf, squeeze),
        finish(mean_acc, squeeze),
        finish(counts, squeeze),
        edges,
        finish(low, squeeze),
        finish(high, squeeze),
    )
