r"""Affine scaling calibrators, fitted for all exits at once: vector, matrix, Dirichlet.

Vector and matrix scaling (Kull et al. 2019) map logits :math:`z \mapsto W z + b` with a
diagonal or full :math:`W` per exit; matrix scaling uses the ODIR penalty (off-diagonal and
intercept L2). Dirichlet calibration is matrix scaling of the log-probabilities. They are
fitted with L-BFGS on the stacked per-exit problem in float64. Temperature scaling lives in
:mod:`exitwise.calibrate.temperature` (re-exported here).
"""

from __future__ import annotations

import math
import warnings

import torch

from exitwise._checks import check_int
from exitwise.calibrate.base import Calibrator
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


def _lbfgs(params: list[torch.Tensor], loss_fn, max_iter: int) -> bool:
    """Minimise ``loss_fn()`` over ``params`` with L-BFGS (strong Wolfe); True if converged."""
    opt = torch.optim.LBFGS(
        params,
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-5,
        tolerance_change=1e-10,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    opt.step(closure)
    state = opt.state[params[0]]
    if int(state.get("n_iter", 0)) < max_iter:
        return True
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params)
    return max(float(g.abs().max()) for g in grads) <= 1e-3


class _AffineScaling(Calibrator):
    """Shared code of vector/matrix/Dirichlet scaling: ``W x + b`` per exit, float64."""

    _full_matrix = False
    _on_log_probs = False

    def _inputs(self, logits: torch.Tensor) -> torch.Tensor:
        x = logits.to(torch.float64)
        return torch.log_softmax(x, dim=-1) if self._on_log_probs else x

    def _apply(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        if self._full_matrix:
            out = torch.einsum("nec,edc->ned", x, weight)
        else:
            out = x * weight[None]
        return out + bias[None]

    def _penalty(self, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return torch.zeros((), dtype=torch.float64, device=weight.device)

    def _fit(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        check_int(self.max_iter, "max_iter", minimum=1)
        x = self._inputs(logits)
        _n, e, c = x.shape
        device = x.device
        if self._full_matrix:
            weight = torch.eye(c, dtype=torch.float64, device=device).repeat(e, 1, 1)
        else:
            weight = torch.ones(e, c, dtype=torch.float64, device=device)
        bias = torch.zeros(e, c, dtype=torch.float64, device=device)
        weight.requires_grad_(True)
        bias.requires_grad_(True)
        index = labels[:, None, None].expand(-1, e, 1)

        def loss() -> torch.Tensor:
            lp = torch.log_softmax(self._apply(x, weight, bias), dim=-1)
            nll = -lp.gather(-1, index).mean(dim=0).sum()
            return nll + self._penalty(weight, bias)

        converged = _lbfgs([weight, bias], loss, self.max_iter)
        self.weight_ = weight.detach().cpu()
        self.bias_ = bias.detach().cpu()
        self.converged_ = converged
        if not converged:
            warnings.warn(
                f"{type(self).__name__} did not converge in {self.max_iter} L-BFGS iterations.",
                ConvergenceWarning,
                stacklevel=3,
            )

    def _transform(self, logits: torch.Tensor) -> torch.Tensor:
        x = self._inputs(logits)
        w = self.weight_.to(x.device)
        b = self.bias_.to(x.device)
        return torch.log_softmax(self._apply(x, w, b), dim=-1)


class VectorScaling(_AffineScaling):
    """Per-class scale and bias of each exit's logits: ``z -> w * z + b`` (Guo et al. 2017).

    May change the argmax. Attributes ``weight_`` ``[E, C]``, ``bias_`` ``[E, C]``.

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> cal, _ = load_default().split(0.5, seed=0)
    >>> VectorScaling().fit(cal).weight_.shape
    torch.Size([4, 10])
    """

    method_name = "vector"

    def __init__(self, max_iter: int = 1000) -> None:
        self.max_iter = max_iter


class MatrixScaling(_AffineScaling):
    r"""Full affine map of each exit's logits, ``z -> W z + b``, with the ODIR penalty.

    The loss is the NLL plus
    :math:`\lambda \frac{1}{C(C-1)}\sum_{i \ne j} W_{ij}^2 + \mu \frac1C \sum_j b_j^2`
    per exit (Kull et al. 2019, "off-diagonal and intercept regularisation").

    Parameters
    ----------
    off_diagonal_penalty : float, default=1e-3
        :math:`\lambda`.
    intercept_penalty : float, default=1e-3
        :math:`\mu`.
    max_iter : int, default=1000

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> cal, _ = load_default().split(0.5, seed=0)
    >>> MatrixScaling().fit(cal).weight_.shape
    torch.Size([4, 10, 10])
    """

    _full_matrix = True

    method_name = "matrix"

    def __init__(
        self,
        off_diagonal_penalty: float = 1e-3,
        intercept_penalty: float = 1e-3,
        max_iter: int = 1000,
    ) -> None:
        self.off_diagonal_penalty = off_diagonal_penalty
        self.intercept_penalty = intercept_penalty
        self.max_iter = max_iter

    def _penalty(self, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        for name in ("off_diagonal_penalty", "intercept_penalty"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0 or math.isnan(value):
                raise ValueError(f"Expected `{name}` to be a number >= 0, got {value!r}.")
        c = weight.shape[-1]
        off = weight - torch.diag_embed(torch.diagonal(weight, dim1=-2, dim2=-1))
        off_term = off.square().sum() / max(1, c * (c - 1))
        return self.off_diagonal_penalty * off_term + self.intercept_penalty * (
            bias.square().sum() / c
        )


class DirichletCalibration(MatrixScaling):
    """Dirichlet calibration (Kull et al. 2019): matrix scaling of the log-probabilities,
    with the same ODIR penalty.

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> cal, _ = load_default().split(0.5, seed=0)
    >>> DirichletCalibration(max_iter=20).fit(cal).weight_.shape
    torch.Size([4, 10, 10])
    """

    method_name = "dirichlet"
    _on_log_probs = True
