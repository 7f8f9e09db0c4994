r"""Affine scaling calibrators, fitted for all exits at once: vector, matrix, Dirichlet.

Vector and matrix scaling (Kull et al. 2019) map logits :math:`z \mapsto W z + b` with a
diagonal or full :math:`W` per exit; Dirichlet calibration is matrix scaling of the
log-probabilities. Each is a penalised multinomial logistic fit solved by
:func:`~exitwise.calibrate.affine_fit.fit_affine` (Newton, float64, every exit at once), with
its ridge strength chosen per exit by 5-fold cross-validation on the calibration data by
default (``penalty="cv"``, :mod:`exitwise.calibrate.penalty_cv`); the chosen value is kept in
``penalty_``. Temperature scaling lives in :mod:`exitwise.calibrate.temperature` (re-exported
here); structured matrix scaling in :mod:`exitwise.calibrate.structured`.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import torch

from exitwise._checks import check_int
from exitwise.calibrate.affine_fit import affine_logits, fit_affine
from exitwise.calibrate.base import Calibrator
from exitwise.calibrate.penalty_cv import check_penalty, cross_validate_penalty
from exitwise.calibrate.temperature import (
    TemperatureFit,
    TemperatureScaling,
    fit_temperatures,
    scale_by_temperature,
)
from exitwise.exceptions import ConvergenceWarning

__all__ = [
    "DirichletCalibration",
    "MatrixScaling",
    "TemperatureFit",
    "TemperatureScaling",
    "VectorScaling",
    "fit_temperatures",
    "scale_by_temperature",
]

#: default ridge strengths tried by ``penalty="cv"`` (log-spaced)
PENALTY_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


class AffineCalibrator(Calibrator, abstract=True):
    """Shared code of the affine calibrators: features, penalty layout, fit, transform.

    Subclasses set ``_structure`` ("full" or "diagonal") and implement ``_features`` (the
    map's inputs, float64; ``_fit_preprocessing`` fits whatever they need first) and
    ``_penalty_parts`` (ridge weights scaled by the penalty, fixed weights, the centre and a
    start, each broadcastable to ``[E, C, A]``).
    """

    _structure: ClassVar[str] = "full"
    _default_grid: ClassVar[tuple[float, ...]] = PENALTY_GRID

    def _fit_preprocessing(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Fit what ``_features`` needs (nothing by default)."""

    def _features(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.to(torch.float64)

    def _penalty_parts(
        self, logits: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def _fit(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        check_int(self.max_iter, "max_iter", minimum=1)
        check_penalty(self.penalty)
        check_int(self.cv, "cv", minimum=2)
        self._fit_preprocessing(logits, labels)
        x = self._features(logits)
        scaled, fixed, centre, start = self._penalty_parts(logits, labels)
        if self.penalty == "cv":
            grid = self._default_grid if self.penalty_grid is None else self.penalty_grid
            choice = cross_validate_penalty(
                x,
                labels,
                self._structure,
                scaled=scaled,
                fixed=fixed,
                centre=centre,
                grid=grid,
                folds=self.cv,
                start=start,
                max_iter=self.max_iter,
            )
            lam = choice.penalty.to(x.device)
            self.cv_nll_ = choice.cv_nll
            self.penalty_grid_ = choice.grid
        else:
            lam = torch.full((x.shape[1],), float(self.penalty), dtype=torch.float64)
            lam = lam.to(x.device)
        fit = fit_affine(
            x,
            labels,
            self._structure,
            weights=lam[:, None, None] * scaled + fixed,
            centre=centre,
            start=start,
            max_iter=self.max_iter,
        )
        self.coefficients_ = fit.coefficients.cpu()
        self.penalty_ = lam.cpu()
        self.converged_ = fit.converged.cpu()
        self.n_iter_ = fit.iterations
        if not bool(fit.converged.all()):
            warnings.warn(
                f"{type(self).__name__} did not converge for exit(s) "
                f"{torch.nonzero(~fit.converged).flatten().tolist()} in {self.max_iter} "
                "iterations.",
                ConvergenceWarning,
                stacklevel=3,
            )

    @property
    def weight_(self) -> torch.Tensor:
        """``W`` per exit: ``[E, C, C]`` (full) or ``[E, C]`` (diagonal)."""
        self._check_fitted()
        theta = self.coefficients_
        return theta[..., :-1] if self._structure == "full" else theta[..., 0]

    @property
    def bias_(self) -> torch.Tensor:
        """``b`` per exit ``[E, C]``."""
        self._check_fitted()
        return self.coefficients_[..., -1]

    def _transform(self, logits: torch.Tensor) -> torch.Tensor:
        x = self._features(logits)
        theta = self.coefficients_.to(x.device)
        return torch.log_softmax(affine_logits(x, theta, self._structure), dim=-1)


def _identity_map(c: int, dtype=torch.float64) -> torch.Tensor:
    """``[I | 0]``: the coefficients of the identity map ``[C, C + 1]``."""
    return torch.cat([torch.eye(c, dtype=dtype), torch.zeros(c, 1, dtype=dtype)], dim=1)


class VectorScaling(AffineCalibrator):
    r"""Per-class scale and bias of each exit's logits: ``z -> w * z + b`` (Guo et al. 2017),
    shrunk towards the exit's temperature scaling.

    The penalty is :math:`\lambda\,\frac1C \sum_c \big[(w_c - 1/T)^2 + b_c^2\big]`, so a large
    :math:`\lambda` gives temperature scaling and :math:`\lambda = 0` plain vector scaling.

    Parameters
    ----------
    penalty : "cv" or float, default="cv"
        :math:`\lambda`; ``"cv"`` picks it per exit from ``penalty_grid`` by ``cv``-fold
        cross-validation of the NLL on the calibration data.
    penalty_grid : sequence of float, optional
        Default :data:`PENALTY_GRID` (1e-5 to 100).
    cv : int, default=5
    max_iter : int, default=100
        Newton iterations at most per fit.

    Attributes
    ----------
    coefficients_ : torch.Tensor
        ``[E, C, 2]``: scale and bias per class (also ``weight_``, ``bias_``).
    penalty_ : torch.Tensor
        The :math:`\lambda` used per exit ``[E]``; ``cv_nll_`` ``[G, E]`` with ``"cv"``.

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> cal, _ = load_default().split(0.5, seed=0)
    >>> VectorScaling().fit(cal).weight_.shape
    torch.Size([4, 10])
    """

    method_name = "vector"
    _structure = "diagonal"

    def __init__(
        self,
        penalty: Any = "cv",
        penalty_grid: Any = None,
        cv: int = 5,
        max_iter: int = 100,
    ) -> None:
        self.penalty = penalty
        self.penalty_grid = penalty_grid
        self.cv = cv
        self.max_iter = max_iter

    def _penalty_parts(self, logits, labels):
        e, c = logits.shape[1:]
        u = 1.0 / fit_temperatures(logits, labels).temperatures.to(torch.float64)
        zeros = torch.zeros(e, c, dtype=u.dtype, device=u.device)
        centre = torch.stack([u[:, None].expand(e, c), zeros], -1)
        scaled = torch.full((c, 2), 1.0 / c, dtype=torch.float64, device=logits.device)
        return scaled, torch.zeros((), dtype=torch.float64), centre, centre


class MatrixScaling(AffineCalibrator):
    r"""Full affine map of each exit's logits, ``z -> W z + b``, with the ODIR penalty.

    The penalty is
    :math:`\lambda \frac{1}{C(C-1)}\sum_{i \ne j} W_{ij}^2 + \mu \frac1C \sum_j b_j^2` per exit
    (Kull et al. 2019, "off-diagonal and intercept regularisation"); the diagonal is free.

    Parameters
    ----------
    penalty : "cv" or float, default="cv"
        :math:`\lambda`; ``"cv"`` picks it per exit from ``penalty_grid`` by ``cv``-fold
        cross-validation of the NLL on the calibration data.
    intercept_penalty : float, optional
        :math:`\mu`; default: the same as :math:`\lambda` (chosen together with it).
    penalty_grid : sequence of float, optional
        Default :data:`PENALTY_GRID` (1e-5 to 100).
    cv : int, default=5
    max_iter : int, default=100

    Attributes
    ----------
    coefficients_ : torch.Tensor
        ``[E, C, C + 1]``: ``W`` then ``b`` (also ``weight_``, ``bias_``).
    penalty_ : torch.Tensor
        :math:`\lambda` per exit ``[E]``; ``cv_nll_`` ``[G, E]`` with ``"cv"``.

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> cal, _ = load_default().split(0.5, seed=0)
    >>> MatrixScaling().fit(cal).weight_.shape
    torch.Size([4, 10, 10])
    """

    method_name = "matrix"

    def __init__(
        self,
        penalty: Any = "cv",
        intercept_penalty: float | None = None,
        penalty_grid: Any = None,
        cv: int = 5,
        max_iter: int = 100,
    ) -> None:
        self.penalty = penalty
        self.intercept_penalty = intercept_penalty
        self.penalty_grid = penalty_grid
        self.cv = cv
        self.max_iter = max_iter

    def _penalty_parts(self, logits, labels):
        e, c = logits.shape[1:]
        off = torch.full((c, c + 1), 1.0 / max(1, c * (c - 1)), dtype=torch.float64)
        off[torch.arange(c), torch.arange(c)] = 0.0
        off[:, -1] = 0.0
        intercept = torch.zeros(c, c + 1, dtype=torch.float64)
        intercept[:, -1] = 1.0 / c
        if self.intercept_penalty is None:
            scaled, fixed = off + intercept, torch.zeros((), dtype=torch.float64)
        else:
            check_penalty(self.intercept_penalty, "intercept_penalty")
            if self.intercept_penalty == "cv":
                raise ValueError(
                    "Expected `intercept_penalty` to be a number or None (None: the same as "
                    "`penalty`, cross-validated with it), got 'cv'."
                )
            scaled, fixed = off, float(self.intercept_penalty) * intercept
        device = logits.device
        centre = _identity_map(c).to(device)
        u = 1.0 / fit_temperatures(logits, labels).temperatures.to(torch.float64)
        start = centre.repeat(e, 1, 1)
        start[..., :-1] *= u[:, None, None]  # temperature scaling: a good start
        return scaled.to(device), fixed.to(device), centre, start


class DirichletCalibration(MatrixScaling):
    """Dirichlet calibration (Kull et al. 2019): matrix scaling of the log-probabilities,
    with the same ODIR penalty (chosen by cross-validation by default).

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> cal, _ = load_default().split(0.5, seed=0)
    >>> DirichletCalibration(penalty=1e-3).fit(cal).weight_.shape
    torch.Size([4, 10, 10])
    """

    method_name = "dirichlet"

    def _features(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(logits.to(torch.float64), dim=-1)
