r"""Inductive Venn–Abers predictors (IVAP; Vovk & Petej 2014, Vovk, Petej & Fedorova 2015).

For a test score :math:`s`, isotonic regression is fitted twice on the calibration pairs plus
the test point, once labelled 0 and once labelled 1; its values at :math:`s` are
:math:`p_0 \le p_1`, a pair of probabilities one of which is perfectly calibrated (Venn
validity). They are merged into :math:`p = p_1 / (1 - p_0 + p_1)`, the single probability
with the least worst-case log-loss regret.

**All test scores at once.** Let :math:`c_1 < \dots < c_k` be the distinct calibration scores
with counts :math:`w_j` and label sums :math:`y_j`, and :math:`W_j, S_j` their cumulative sums
(:math:`W_0 = S_0 = 0`). By the max-min formula of isotonic regression, the fitted value of
the group that holds the test point (label :math:`t`) is

.. math:: \max_{u} \min_{v} R_t(u, v), \qquad
   R_t(u, v) = \frac{S_v - S_u + t}{W_v - W_u + 1} \quad (u \le v),

the mean of an interval of groups that contains the test point: with :math:`s = c_i` it joins
group :math:`i` (:math:`u \le i-1`, :math:`v \ge i`); with :math:`c_i < s < c_{i+1}` it forms
its own group after group :math:`i` (:math:`u \le i \le v`). With the suffix minima
:math:`T_t(u, j) = \min_{v \ge j} R_t(u, v)`:

.. math:: p_t(s = c_i) = \max_{u \le i-1} T_t(u, i), \qquad
   p_t(c_i < s < c_{i+1}) = \max_{u \le i} T_t(u, i).

:func:`venn_abers_tables` evaluates both for every :math:`i` and :math:`t \in \{0, 1\}` in
:math:`O(k^2)` vectorised operations (rows of :math:`u` in chunks, bounded memory), so a test
score costs one binary search. The tests check it against isotonic regression refitted per
test point and against the ``venn-abers`` package.

References: V. Vovk and I. Petej, "Venn–Abers predictors", UAI 2014; V. Vovk, I. Petej and
V. Fedorova, "Large-scale probabilistic predictors with and without guarantees of validity",
NeurIPS 2015.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from exitwise.calibrate._toplabel import TopLabelCalibrator

__all__ = ["VennAbers", "venn_abers_pair", "venn_abers_tables"]

_CHUNK_CELLS = 1 << 22  # u-rows x groups per chunk (32 MiB of float64)


def venn_abers_tables(scores: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    r"""The IVAP values of every possible test score (see the module docstring).

    Returns ``c`` (the distinct calibration scores, ``[k]``), and for ``t`` in ``zero``,
    ``one``: ``at_t`` ``[k]`` (test score equal to ``c[i]``) and ``after_t`` ``[k + 1]`` (test
    score between ``c[i-1]`` and ``c[i]``; index 0 is below every score, ``k`` above).

    Examples
    --------
    >>> import numpy as np
    >>> t = venn_abers_tables(np.array([0.2, 0.4, 0.6, 0.8]), np.array([0, 1, 0, 1]))
    >>> t["at_zero"].round(3).tolist(), t["at_one"].round(3).tolist()
    ([0.0, 0.333, 0.333, 0.5], [0.5, 0.667, 0.667, 1.0])
    """
    x = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if x.size == 0 or x.shape != y.shape:
        raise ValueError("Expected `scores` and `labels`: non-empty arrays of one length.")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("Expected binary `labels` (0 or 1).")
    c, group = np.unique(x, return_inverse=True)
    k = c.size
    w = np.bincount(group, minlength=k).astype(np.float64)
    s = np.bincount(group, weights=y, minlength=k)
    big_w = np.r_[0.0, np.cumsum(w)]  # [k + 1]: W_0..W_k
    big_s = np.r_[0.0, np.cumsum(s)]
    tables = {"c": c}
    for name, t in (("zero", 0.0), ("one", 1.0)):
        at = np.full(k + 1, -np.inf)  # at[i] for group i = 1..k (index 0 unused)
        after = np.full(k + 1, -np.inf)  # after[i], i = 0..k
        rows = max(1, _CHUNK_CELLS // (k + 1))
        cols = np.arange(k + 1)
        for u0 in range(0, k + 1, rows):
            u = np.arange(u0, min(k + 1, u0 + rows))
            with np.errstate(divide="ignore", invalid="ignore"):  # v < u: masked next
                ratio = (big_s[None, :] - big_s[u, None] + t) / (
                    big_w[None, :] - big_w[u, None] + 1
                )
            ratio[cols[None, :] < u[:, None]] = np.inf  # only v >= u
            suffix_min = np.minimum.accumulate(ratio[:, ::-1], axis=1)[:, ::-1]  # T(u, j)
            # at: u <= j - 1 ; after: u <= j
            at_vals = np.where(cols[None, :] >= u[:, None] + 1, suffix_min, -np.inf)
            after_vals = np.where(cols[None, :] >= u[:, None], suffix_min, -np.inf)
            at = np.maximum(at, at_vals.max(axis=0))
            after = np.maximum(after, after_vals.max(axis=0))
        tables[f"at_{name}"] = at[1:]
        tables[f"after_{name}"] = after
    return tables


def venn_abers_pair(
    tables: dict[str, torch.Tensor], scores: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(p0, p1)`` of test ``scores`` (any shape) from :func:`venn_abers_tables` (as tensors).

    Examples
    --------
    >>> import numpy as np, torch
    >>> t = venn_abers_tables(np.array([0.2, 0.4, 0.6, 0.8]), np.array([0, 1, 0, 1]))
    >>> t = {k: torch.as_tensor(v) for k, v in t.items()}
    >>> p0, p1 = venn_abers_pair(t, torch.tensor([0.4, 0.5]))
    >>> p0.round(decimals=3).tolist(), p1.round(decimals=3).tolist()
    ([0.333, 0.333], [0.667, 0.667])
    """
    x = scores.to(torch.float64).contiguous()
    c = tables["c"].to(x.device, torch.float64)
    below = torch.searchsorted(c, x, right=False)  # number of scores < x
    equal = (below < c.numel()) & (c[below.clamp(max=c.numel() - 1)] == x)
    pair = []
    for name in ("zero", "one"):
        at = tables[f"at_{name}"].to(x.device, torch.float64)
        after = tables[f"after_{name}"].to(x.device, torch.float64)
        value = torch.where(equal, at[below.clamp(max=c.numel() - 1)], after[below])
        pair.append(value)
    return pair[0], pair[1]


class VennAbers(TopLabelCalibrator):
    r"""Inductive Venn–Abers calibration per exit: top-label or one-vs-rest.

    Each test confidence gets the IVAP pair :math:`(p_0, p_1)` of its exit's calibration
    data (:func:`venn_abers_tables`), merged into :math:`p_1 / (1 - p_0 + p_1)`. Unlike
    isotonic regression the merged value is never exactly 0 or 1, so log-losses stay finite.

    Parameters
    ----------
    mode : {"top_label", "one_vs_rest"}, default="top_label"
        As for :class:`~exitwise.calibrate.Isotonic`.

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> cal, test = load_default().split(0.5, seed=0)
    >>> va = VennAbers().fit(cal)
    >>> p0, p1 = va.probability_interval([0.6, 0.9], exit=0)
    >>> bool((p0 <= p1).all())
    True
    """

    method_name = "venn_abers"

    def __init__(self, mode: Literal["top_label", "one_vs_rest"] = "top_label") -> None:
        self.mode = mode

    def _fit_exit(self, confidence: np.ndarray, hit: np.ndarray) -> dict[str, torch.Tensor]:
        tables = venn_abers_tables(confidence, hit)
        return {key: torch.as_tensor(v, dtype=torch.float64) for key, v in tables.items()}

    def _apply(self, state: dict[str, torch.Tensor], confidence: torch.Tensor) -> torch.Tensor:
        p0, p1 = venn_abers_pair(state, confidence)
        return p1 / (1.0 - p0 + p1)

    def probability_interval(self, confidence, exit: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The multiprobability ``(p0, p1)`` of top-label ``confidence`` values at ``exit``
        (top-label mode): the width ``p1 - p0`` shows how much calibration data backs it."""
        self._check_fitted()
        if self._mode() != "top_label":
            raise ValueError("`probability_interval` needs mode='top_label'.")
        return venn_abers_pair(
            self.exit_maps_[exit], torch.as_tensor(confidence, dtype=torch.float64)
        )
