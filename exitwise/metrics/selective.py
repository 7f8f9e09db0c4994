r"""Selective-prediction metrics: how well a confidence ranks correct above wrong answers.

Inputs are a confidence ``[N]`` or ``[N, E]`` (any real score, higher = more confident; a
signal from :mod:`exitwise.signals`) and whether each answer is correct, same shape, bool.
Batched over exits: ``[N, E]`` inputs give ``[E]`` results. In a ``torch.distributed``
group of several processes each rank passes its shard and every rank gets the result on all
of them: the confidences and hits are gathered (9 bytes per sample and exit), so the order is
exact.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from exitwise._checks import as_tensor, check_finite, check_ndim
from exitwise._distributed import all_gather_rows, group_active
from exitwise.exceptions import UndefinedMetricWarning

__all__ = ["aurc", "auroc", "risk_coverage_curve"]


def _pair(confidence: Any, correct: Any) -> tuple[torch.Tensor, torch.Tensor, bool]:
    conf = as_tensor(confidence, "confidence")
    check_ndim(conf, "confidence", (1, 2), "[N] or [N, E]")
    if conf.dtype == torch.bool or conf.is_complex():
        raise TypeError(f"Expected `confidence` to be real-valued, got dtype {conf.dtype}.")
    hit = as_tensor(correct, "correct", device=conf.device)
    if hit.dtype != torch.bool:
        raise TypeError(
            f"Expected `correct` to be a boolean tensor, got dtype {hit.dtype}; use "
            "`outputs.correct()` or `(predictions == labels)`."
        )
    if hit.shape != conf.shape:
        raise ValueError(
            f"Expected `correct` to have the shape of `confidence` {tuple(conf.shape)}, got "
            f"{tuple(hit.shape)}."
        )
    if conf.shape[0] == 0:
        raise ValueError("Expected `confidence` to hold at least one sample, got N = 0.")
    conf = conf.to(torch.float64)
    check_finite(conf, "confidence", ("sample", "exit"))
    squeeze = conf.ndim == 1
    if squeeze:
        conf, hit = conf[:, None], hit[:, None]
    if group_active():  # an order over every rank's samples: gather them, in rank order
        conf, hit = all_gather_rows(conf), all_gather_rows(hit)
    return conf, hit, squeeze


def auroc(confidence: Any, correct: Any) -> torch.Tensor:
    r"""Area under the ROC curve of ``confidence`` as a predictor of ``correct``.

    The Mann–Whitney form with ties counted one half:
    :math:`P(s_+ > s_-) + \tfrac12 P(s_+ = s_-)` over pairs of a correct and a wrong sample,
    equal to scikit-learn's ``roc_auc_score(correct, confidence)``. An exit whose answers are
    all correct (or all wrong) has no AUROC: NaN with an :class:`UndefinedMetricWarning`.

    Examples
    --------
    >>> import torch
    >>> auroc(torch.tensor([0.9, 0.8, 0.3, 0.8]), torch.tensor([True, False, False, True]))
    tensor(0.8750, dtype=torch.float64)
    """
    conf, hit, squeeze = _pair(confidence, correct)
    n = conf.shape[0]
    n_pos = hit.sum(dim=0).to(torch.float64)
    n_neg = n - n_pos
    inf = torch.tensor(float("inf"), dtype=torch.float64, device=conf.device)
    negatives = torch.where(hit, inf, conf).T.sort(dim=1).values.contiguous()
    queries = conf.T.contiguous()
    below = torch.searchsorted(negatives, queries, right=False).to(torch.float64)
    at_most = torch.searchsorted(negatives, queries, right=True).to(torch.float64)
    at_most = torch.minimum(at_most, n_neg[:, None])
    wins = (below + 0.5 * (at_most - below)) * hit.T.to(torch.float64)
    result = wins.sum(dim=1) / (n_pos * n_neg)
    undefined = (n_pos == 0) | (n_neg == 0)
    if bool(undefined.any()):
        warnings.warn(
            f"AUROC is undefined for {int(undefined.sum())} exit(s) whose answers are all correct "
            "or all wrong; returning NaN there.",
            UndefinedMetricWarning,
            stacklevel=2,
        )
        result = torch.where(undefined, torch.full_like(result, float("nan")), result)
    return result[0] if squeeze else result


def _descending_groups(conf: torch.Tensor, hit: torch.Tensor):
    """Sort each column by descending confidence; return per-position group statistics."""
    order = conf.argsort(dim=0, descending=True, stable=True)
    sorted_conf = conf.gather(0, order)
    sorted_err = (~hit).gather(0, order).to(torch.float64)
    n, e = conf.shape
    new_group = torch.ones_like(sorted_conf, dtype=torch.bool)
    new_group[1:] = sorted_conf[1:] != sorted_conf[:-1]
    group_id = new_group.long().cumsum(dim=0) - 1  # [N, E], 0-based per column
    flat = (group_id + torch.arange(e, device=conf.device)[None, :] * n).reshape(-1)
    zeros = torch.zeros(n * e, dtype=torch.float64, device=conf.device)
    group_err = zeros.scatter_add(0, flat, sorted_err.reshape(-1)).reshape(e, n).T
    group_size = zeros.scatter_add(0, flat, torch.ones_like(sorted_err).reshape(-1))
    group_size = group_size.reshape(e, n).T
    return sorted_conf, sorted_err, new_group, group_id, group_err, group_size


def aurc(confidence: Any, correct: Any) -> torch.Tensor:
    r"""Area under the risk–coverage curve (lower is better).

    Samples are taken in order of decreasing confidence; after :math:`k` samples the risk is
    the error rate among them, and AURC is the mean of these risks over :math:`k = 1..N`
    (Geifman et al. 2019). Tied confidences have no order, so inside a tie group the expected
    risk under a random order is used (errors spread evenly over the group); without ties this
    is the usual definition.

    Examples
    --------
    >>> import torch
    >>> aurc(torch.tensor([0.9, 0.8, 0.7]), torch.tensor([True, False, True]))
    tensor(0.2778, dtype=torch.float64)
    """
    conf, hit, squeeze = _pair(confidence, correct)
    n = conf.shape[0]
    _, _, _, group_id, group_err, group_size = _descending_groups(conf, hit)
    errors_before = group_err.cumsum(dim=0) - group_err  # errors in earlier groups, per group
    sizes_before = group_size.cumsum(dim=0) - group_size
    positions = torch.arange(1, n + 1, dtype=torch.float64, device=conf.device)[:, None]
    g_err_before = errors_before.gather(0, group_id)
    g_rate = group_err.gather(0, group_id) / group_size.gather(0, group_id)
    within = positions - sizes_before.gather(0, group_id)
    risk = (g_err_before + within * g_rate) / positions
    result = risk.mean(dim=0)
    return result[0] if squeeze else result


def risk_coverage_curve(
    confidence: Any, correct: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Risk–coverage curve of one confidence ``[N]``: one point per distinct threshold.

    Returns ``(coverage, risk, thresholds)``, each ``[T]`` with ``T`` the number of distinct
    confidence values, ordered from the highest threshold (lowest coverage) down: answering
    the samples with ``confidence >= thresholds[t]`` covers ``coverage[t]`` of the data with
    error rate ``risk[t]``.

    Examples
    --------
    >>> import torch
    >>> cov, risk, thr = risk_coverage_curve(torch.tensor([0.9, 0.8, 0.8]),
    ...                                      torch.tensor([True, False, True]))
    >>> cov, risk
    (tensor([0.3333, 1.0000], dtype=torch.float64), tensor([0.0000, 0.3333], dtype=torch.float64))
    """
    conf, hit, squeeze = _pair(confidence, correct)
    if not squeeze:
        raise ValueError(
            f"Expected `confidence` of shape [N] (one exit), got {tuple(conf.shape)}; call "
            "once per exit, e.g. risk_coverage_curve(scores[:, e], correct[:, e])."
        )
    n = conf.shape[0]
    sorted_conf, sorted_err, _, _, _, _ = _descending_groups(conf, hit)
    sorted_conf, sorted_err = sorted_conf[:, 0], sorted_err[:, 0]
    last = torch.ones(n, dtype=torch.bool, device=conf.device)
    last[:-1] = sorted_conf[:-1] != sorted_conf[1:]
    cum_err = sorted_err.cumsum(0)
    covered = torch.arange(1, n + 1, dtype=torch.float64, device=conf.device)
    return covered[last] / n, cum_err[last] / covered[last], sorted_conf[last]
