r"""Choosing the ridge strength of an affine calibrator by k-fold cross-validation.

For a grid :math:`\lambda_1 > \dots > \lambda_G` the weights are
:math:`\omega = \lambda\,\omega_{\text{scaled}} + \omega_{\text{fixed}}`; each fold's map is
fitted for every :math:`\lambda` (strongest first, each fit warm-started from the previous
one) and scored by its NLL on the held-out fold. The cross-validated NLL of an exit is the
held-out NLL summed over folds divided by :math:`N`, and each exit takes the :math:`\lambda`
that minimises it (ties go to the stronger penalty). All exits are fitted at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from exitwise._checks import check_int
from exitwise.calibrate.affine_fit import affine_nll, fit_affine

__all__ = ["PenaltyChoice", "check_penalty", "cross_validate_penalty"]


@dataclass(frozen=True)
class PenaltyChoice:
    """Result of :func:`cross_validate_penalty`: ``grid`` ``[G]`` (descending), ``cv_nll``
    ``[G, E]`` and the chosen ``penalty`` ``[E]`` per exit."""

    grid: torch.Tensor
    cv_nll: torch.Tensor
    penalty: torch.Tensor


def check_penalty(value: object, name: str = "penalty") -> None:
    """``value`` must be ``"cv"`` or a finite number >= 0."""
    if value == "cv":
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"Expected `{name}` to be 'cv' or a number >= 0, got {value!r}.")
    if value == float("inf"):
        raise ValueError(f"Expected `{name}` to be finite, got {value!r}.")


def _grid(grid: object) -> torch.Tensor:
    values = torch.as_tensor(grid, dtype=torch.float64).flatten()
    if values.numel() == 0 or not bool(torch.isfinite(values).all()) or bool((values < 0).any()):
        raise ValueError(f"Expected `penalty_grid` to be finite numbers >= 0, got {grid!r}.")
    return torch.sort(torch.unique(values), descending=True).values


def cross_validate_penalty(
    features: torch.Tensor,
    labels: torch.Tensor,
    structure: str,
    *,
    scaled: torch.Tensor,
    fixed: torch.Tensor,
    centre: torch.Tensor,
    grid: object,
    folds: int = 5,
    seed: int = 0,
    start: torch.Tensor | None = None,
    max_iter: int = 100,
) -> PenaltyChoice:
    """Cross-validated NLL of every ridge strength in ``grid``, for every exit.

    Folds are a seeded random partition of the rows (sizes differ by at most one).

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> y = torch.randint(0, 3, (300,), generator=g)
    >>> x = torch.randn(300, 2, 3, generator=g, dtype=torch.float64)
    >>> x[torch.arange(300), :, y] += 1.0
    >>> eye = torch.cat([torch.eye(3), torch.zeros(3, 1)], 1).double()
    >>> choice = cross_validate_penalty(x * 3, y, "full", scaled=torch.ones(3, 4).double(),
    ...     fixed=torch.zeros(()), centre=eye, grid=[0.01, 1.0], folds=3)
    >>> choice.cv_nll.shape, choice.grid.tolist()
    (torch.Size([2, 2]), [1.0, 0.01])
    """
    check_int(folds, "folds", minimum=2)
    values = _grid(grid)
    x = features.to(torch.float64)
    n, e = x.shape[:2]
    if n < folds:
        raise ValueError(f"Expected at least `folds`={folds} samples to cross-validate, got {n}.")
    gen = torch.Generator().manual_seed(int(seed))
    fold_of = torch.empty(n, dtype=torch.long)
    fold_of[torch.randperm(n, generator=gen)] = torch.arange(n) % folds
    fold_of = fold_of.to(x.device)
    held_out = torch.zeros(values.numel(), e, dtype=torch.float64, device=x.device)
    for k in range(folds):
        train, test = fold_of != k, fold_of == k
        theta, hessian = start, None
        for i, lam in enumerate(values.tolist()):
            fit, hessian = fit_affine(
                x[train],
                labels[train],
                structure,
                weights=lam * scaled + fixed,
                centre=centre,
                start=theta,
                max_iter=max_iter,
                tol=1e-5,
                hessian=hessian,
                return_hessian=True,
            )
            theta = fit.coefficients
            nll = affine_nll(x[test], labels[test], theta, structure)
            held_out[i] += nll * int(test.sum())
    cv_nll = held_out / n
    best = torch.argmin(cv_nll, dim=0)  # first minimum: the strongest penalty among ties
    return PenaltyChoice(values, cv_nll.cpu(), values.to(x.device)[best].cpu())
