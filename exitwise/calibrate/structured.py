r"""Structured matrix scaling (SMS; Berta, Holzmüller, Jordan & Bach, AISTATS 2026).

A full affine map of each exit's temperature-scaled log-probabilities whose every part is
shrunk towards temperature scaling, with ridge strengths that grow with the number of
parameters of each kind and shrink with the number of samples:

1. temperature scaling :math:`T` of the exit (:func:`fit_temperatures`), then the mixture
   :math:`\tilde p = (1 - \epsilon)\,\mathrm{softmax}(z/T) + \epsilon / C` with
   :math:`\epsilon = 1/(N+1)` (so no log-probability is below :math:`\log \epsilon/C`);
2. :math:`x = \log \tilde p` and :math:`s = (I + \Delta) x + b`, minimising the mean NLL plus

   .. math:: \lambda\Big[\frac{C}{N}\sum_j b_j^2 + \frac{C}{N}\sum_j \Delta_{jj}^2
      + \frac{C(C-1)}{N}\sum_{i \ne j} \Delta_{ij}^2\Big]

   (the paper's ridge variant with :math:`\rho = \tau = 1` and unit strengths), solved by
   :func:`~exitwise.calibrate.affine_fit.fit_affine` (Newton, float64, all exits at once).

:math:`\lambda = 1` is the paper's default; ``penalty="cv"`` chooses a multiplier per exit by
cross-validation instead. probmetrics' ``SMSCalibrator`` (BFGS in float32) solves the same
problem; the tests compare the two on real data.
"""

from __future__ import annotations

from typing import Any

import torch

from exitwise._distributed import shard_offset
from exitwise.calibrate.scaling import AffineCalibrator, _identity_map
from exitwise.calibrate.temperature import fit_temperatures

__all__ = ["SMS_PENALTY_GRID", "StructuredMatrixScaling"]

#: multipliers of the paper's ridge strengths tried by ``penalty="cv"``
SMS_PENALTY_GRID = (0.01, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0)


class StructuredMatrixScaling(AffineCalibrator):
    r"""Structured matrix scaling (Berta et al. 2026): a full matrix on temperature-scaled
    log-probabilities, every part shrunk towards temperature scaling.

    Parameters
    ----------
    penalty : float or "cv", default=1.0
        Multiplier :math:`\lambda` of the paper's ridge strengths (1: the paper's default);
        ``"cv"`` picks it per exit from ``penalty_grid`` by ``cv``-fold cross-validation.
    penalty_grid : sequence of float, optional
        Default :data:`SMS_PENALTY_GRID` (0.01 to 100).
    cv : int, default=5
    max_iter : int, default=100

    Attributes
    ----------
    temperatures_ : torch.Tensor
        The first step's temperature per exit ``[E]``.
    mixture_ : float
        :math:`\epsilon = 1/(N+1)`.
    coefficients_ : torch.Tensor
        ``[E, C, C + 1]``: ``I + Delta`` then ``b`` (also ``weight_``, ``bias_``).
    penalty_ : torch.Tensor
        :math:`\lambda` per exit ``[E]``.

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> cal, test = load_default().split(0.5, seed=0)
    >>> sms = StructuredMatrixScaling().fit(cal)
    >>> sms.coefficients_.shape, bool(sms.converged_.all())
    (torch.Size([4, 10, 11]), True)
    """

    method_name = "sms"
    _default_grid = SMS_PENALTY_GRID

    def __init__(
        self,
        penalty: Any = 1.0,
        penalty_grid: Any = None,
        cv: int = 5,
        max_iter: int = 100,
    ) -> None:
        self.penalty = penalty
        self.penalty_grid = penalty_grid
        self.cv = cv
        self.max_iter = max_iter

    def _fit_preprocessing(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.temperatures_ = fit_temperatures(logits, labels).temperatures.to(torch.float64).cpu()
        # the samples of every rank, in a process group
        self._samples = shard_offset(logits.shape[0], logits.device)[1]
        self.mixture_ = 1.0 / (self._samples + 1)

    def _features(self, logits: torch.Tensor) -> torch.Tensor:
        t = self.temperatures_.to(logits.device)[None, :, None]
        p = torch.softmax(logits.to(torch.float64) / t, dim=-1)
        eps = self.mixture_
        return torch.log((1.0 - eps) * p + eps / logits.shape[-1])

    def _penalty_parts(self, logits, labels):
        c, n = logits.shape[2], self._samples
        weights = torch.full((c, c + 1), c * (c - 1) / n, dtype=torch.float64)
        weights[torch.arange(c), torch.arange(c)] = c / n
        weights[:, -1] = c / n
        centre = _identity_map(c)
        return (
            weights.to(logits.device),
            torch.zeros((), dtype=torch.float64),
            centre.to(logits.device),
            None,
        )
