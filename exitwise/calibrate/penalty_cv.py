r"""Choosing the ridge strength of an affine calibrator by k-fold cross-validation.

For a grid :math:`\lambda_1 > \dots > \lambda_G` the weights are
:math:`\omega = \lambda\,\omega_{\text{scaled}} + \omega_{\text{fixed}}`; each fold's map is
fitted for every :math:`\lambda` (strongest first, each fit warm-started from the previous
one) and scored by its NLL on the held-out fold. The cross-validated NLL of an exit is the
held-out NLL summed over folds divided by :math:`N`, and each exit takes the :math:`\lambda`
that minimises it (ties go to the stronger penalty). All exits are fitted at once.

The path stops early once the cross-validated NLL of every exit has been above its best so
far at two consecutive grid values (the curve is unimodal in practice); the values not
tried are NaN in ``cv_nll``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from exitwise._distributed import all_reduce_sum, group_active
from exitwise.calibrate._folds import fold_ids
from exitwise.calibrate.affine_fit import affine_nll, fit_affine

__all__ = ["PenaltyChoice", "check_penalty", "cross_validate_penalty"]

_PATIENCE = 2


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

    Folds are :func:`~exitwise.calibrate._folds.fold_ids` (a seeded random partition).

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
    values = _grid(grid)
    x = features.to(torch.float64)
    n, e = x.shape[:2]
    fold_of = fold_ids(n, folds, seed, x.device)
    # held-out rows per fold, and in all (every rank's, in a process group)
    held = torch.stack([(fold_of == k).sum() for k in range(folds)]).to(torch.float64)
    if group_active():
        all_reduce_sum(held)
    n_all = float(held.sum())
    cv_nll = torch.full((values.numel(), e), float("nan"), dtype=torch.float64, device=x.device)
    state: list[tuple[torch.Tensor | None, torch.Tensor | None]] = [(start, None)] * folds
    for i, lam in enumerate(values.tolist()):
        total = torch.zeros(e, dtype=torch.float64, device=x.device)
        for k in range(folds):
            train, test = fold_of != k, fold_of == k
            fit, hessian = fit_affine(
                x[train],
                labels[train],
                structure,
                weights=lam * scaled + fixed,
                centre=centre,
                start=state[k][0],
                max_iter=max_iter,
                tol=1e-5,
                hessian=state[k][1],
                return_hessian=True,
            )
            state[k] = (fit.coefficients, hessian)
            total += affine_nll(x[test], labels[test], fit.coefficients, structure) * held[k]
        cv_nll[i] = total / n_all
        if i >= _PATIENCE:  # past every exit's minimum: weaker penalties are not tried
            best_so_far = cv_nll[: i - _PATIENCE + 1].amin(dim=0)
            if bool((cv_nll[i - _PATIENCE + 1 : i + 1] > best_so_far).all()):
                break
    best = torch.argmin(torch.nan_to_num(cv_nll, nan=torch.inf), dim=0)  # ties: stronger
    return PenaltyChoice(values, cv_nll.cpu(), values.to(x.device)[best].cpu())
