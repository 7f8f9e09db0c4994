r"""Penalised multinomial logistic fits of affine calibration maps, for all exits at once.

Every affine calibrator (vector, matrix, Dirichlet, structured matrix scaling) maps an exit's
features :math:`x \in \mathbb{R}^F` (logits, or log-probabilities) to calibrated logits

.. math:: s_c = \sum_a \theta_{ca}\, \phi_{ca}(x), \qquad
   \phi_{ca}(x) = \begin{cases} \tilde x_a, \ \tilde x = (x_1, \dots, x_F, 1)
   & \text{structure "full": } s = W x + b \\
   (x_c, 1)_a & \text{structure "diagonal": } s = w \odot x + b \end{cases}

and minimises, per exit, the mean NLL plus a weighted ridge penalty towards a centre
:math:`\theta^\circ` (identity, or temperature scaling):

.. math:: f(\theta) = \frac1N \sum_n \Big[\log \sum_c e^{s_{nc}} - s_{n y_n}\Big]
   + \sum_{c,a} \omega_{ca} (\theta_{ca} - \theta^\circ_{ca})^2 .

With :math:`p_n = \mathrm{softmax}(s_n)` and :math:`q_{n,ca} = p_{nc}\phi_{n,ca}`:

.. math:: \nabla f = \frac1N \sum_n (p_{nc} - [c = y_n])\, \phi_{n,ca} + 2\omega \odot
   (\theta - \theta^\circ), \qquad
   \nabla^2 f = \frac1N \sum_n \Big[\mathrm{blockdiag}_c\big(p_{nc}\,\phi_{n,c}
   \phi_{n,c}^\top\big) - q_n q_n^\top\Big] + 2\,\mathrm{diag}(\omega).

:math:`f` is convex, so :func:`fit_affine` runs damped Newton steps with Armijo backtracking
on every exit at once (the Hessians ``[E, P, P]`` for ``P = C x A`` parameters per exit are
formed in float64 over chunks of rows) and converges quadratically near the optimum. Above
``P = 600`` parameters per exit the Hessian is too large to form cheaply, and L-BFGS on the
same objective takes over. In a ``torch.distributed`` group of several processes each rank
passes its shard: the sums over rows (NLL, gradient, Hessian) are all-reduced, so every rank
takes the steps one process would take on the concatenated shards.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from exitwise._checks import check_choice
from exitwise._chunks import rows_per_chunk
from exitwise._distributed import (
    all_reduce_sum,
    broadcast_from_first,
    first_rank,
    group_active,
)

__all__ = ["AffineFit", "affine_logits", "affine_nll", "affine_objective", "fit_affine"]

STRUCTURES = ("full", "diagonal")
_NEWTON_MAX_PARAMS = 600
_CHUNK_BYTES = 1 << 25  # 32 MiB of per-row Hessian factors per chunk


@dataclass(frozen=True)
class AffineFit:
    """Result of :func:`fit_affine` (one entry per exit).

    ``coefficients`` is ``[E, C, A]`` float64 (``A = F + 1`` for "full": the last column is
    the bias; ``A = 2`` for "diagonal": scale, bias); ``objective`` the penalised mean NLL and
    ``nll`` its NLL part at the optimum; ``gradient`` the largest absolute gradient entry;
    ``converged`` whether it is at most ``tol * max(1, objective)``.
    """

    coefficients: torch.Tensor
    objective: torch.Tensor
    nll: torch.Tensor
    gradient: torch.Tensor
    converged: torch.Tensor
    iterations: int


def affine_logits(
    features: torch.Tensor, coefficients: torch.Tensor, structure: str
) -> torch.Tensor:
    """Calibrated logits ``[N, E, C]`` of features ``[N, E, F]`` under ``coefficients``
    ``[E, C, A]`` (the one place the affine map is applied: fitting and ``transform``).

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([[[1.0, 2.0]]], dtype=torch.float64)
    >>> theta = torch.tensor([[[2.0, 0.0, 1.0], [0.0, 1.0, 0.0]]], dtype=torch.float64)
    >>> affine_logits(x, theta, "full")        # [2*1 + 1, 2]
    tensor([[[3., 2.]]], dtype=torch.float64)
    >>> affine_logits(x, torch.tensor([[[2.0, 1.0], [1.0, 0.0]]], dtype=torch.float64),
    ...               "diagonal")
    tensor([[[3., 2.]]], dtype=torch.float64)
    """
    theta = coefficients.to(features.dtype)
    if structure == "full":
        return torch.einsum("nef,ecf->nec", features, theta[..., :-1]) + theta[..., -1]
    return features * theta[..., 0] + theta[..., 1]


def _features(x: torch.Tensor, structure: str) -> torch.Tensor:
    """phi ``[n, E, C, A]`` ("diagonal") or x-tilde ``[n, E, A]`` ("full")."""
    ones = torch.ones_like(x[..., :1])
    if structure == "full":
        return torch.cat([x, ones], dim=-1)
    return torch.stack([x, ones.expand_as(x)], dim=-1)


def _derivatives(
    x: torch.Tensor,
    labels: torch.Tensor,
    theta: torch.Tensor,
    structure: str,
    order: int,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Mean NLL ``[E]`` and, for ``order >= 1`` / ``2``, its gradient ``[E, C, A]`` and
    Hessian ``[E, P, P]`` (without the penalty), summed over chunks of rows in float64."""
    n, e, _ = x.shape
    c, a = theta.shape[1:]
    p_total = c * a
    f = torch.zeros(e, dtype=torch.float64, device=x.device)
    g = torch.zeros_like(theta) if order >= 1 else None
    h = (
        torch.zeros(e, p_total, p_total, dtype=torch.float64, device=x.device)
        if order >= 2
        else None
    )
    chunk = rows_per_chunk(8 * e * p_total * 3, _CHUNK_BYTES, min_rows=64)
    for start in range(0, n, chunk):
        xb = x[start : start + chunk]
        yb = labels[start : start + chunk, None, None].expand(-1, e, 1)
        log_p = torch.log_softmax(affine_logits(xb, theta, structure), dim=-1)
        f -= log_p.gather(-1, yb).squeeze(-1).sum(dim=0)
        if order == 0:
            continue
        p = log_p.exp()
        residual = p.scatter_add(-1, yb, -torch.ones_like(p[..., :1]))  # p - onehot
        phi = _features(xb, structure)
        if structure == "full":
            g += torch.einsum("nec,nea->eca", residual, phi)
        else:
            g += (residual[..., None] * phi).sum(dim=0)
        if order < 2:
            continue
        if structure == "full":
            q = p[..., None] * phi[:, :, None, :]  # [n, E, C, A]
            block = torch.einsum("neca,neb->ecab", q, phi)
        else:
            q = p[..., None] * phi
            block = torch.einsum("neca,necb->ecab", q, phi)
        # the outer products in float32: a Newton matrix needs no more
        qf = q.reshape(q.shape[0], e, p_total).transpose(0, 1).float()  # [E, n, P]
        h -= torch.bmm(qf.transpose(1, 2), qf).double()
        idx = torch.arange(c, device=x.device)
        hv = h.view(e, c, a, c, a)
        hv[:, idx, :, idx, :] += block.permute(1, 0, 2, 3)
    count = torch.tensor(float(n), dtype=torch.float64, device=x.device)
    if group_active():  # every rank's rows (each rank passes its shard)
        all_reduce_sum(count)
        if not theta.requires_grad:  # L-BFGS sums the ranks' shares and gradients itself
            all_reduce_sum(*(t for t in (f, g, h) if t is not None))
    f = f / count
    if g is not None:
        g = g / count
    if h is not None:
        h = h / count
    return f, g, h


def affine_nll(
    features: torch.Tensor, labels: torch.Tensor, coefficients: torch.Tensor, structure: str
) -> torch.Tensor:
    """Mean NLL per exit ``[E]`` (float64) of the map ``coefficients`` on ``features``."""
    return _derivatives(features.to(torch.float64), labels, coefficients, structure, 0)[0]


def affine_objective(
    features: torch.Tensor,
    labels: torch.Tensor,
    coefficients: torch.Tensor,
    structure: str,
    weights: torch.Tensor,
    centre: torch.Tensor,
) -> torch.Tensor:
    """The penalised objective :math:`f` per exit ``[E]`` (float64), for tests and reports."""
    f = affine_nll(features, labels, coefficients, structure)
    return f + (weights * (coefficients - centre).square()).sum(dim=(-2, -1))


def _solve(h: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Newton direction ``-(H + delta I)^{-1} g`` per exit, damping only where H is singular."""
    e, p, _ = h.shape
    eye = torch.eye(p, dtype=h.dtype, device=h.device)
    scale = h.diagonal(dim1=-2, dim2=-1).abs().amax(dim=-1).clamp(min=1e-12)
    delta = torch.zeros(e, dtype=h.dtype, device=h.device)
    rhs = -g.reshape(e, p, 1)
    for _ in range(12):
        chol, info = torch.linalg.cholesky_ex(h + delta[:, None, None] * eye)
        bad = info > 0
        if not bool(bad.any()):
            return torch.cholesky_solve(rhs, chol).reshape(g.shape)
        delta = torch.where(bad, torch.where(delta > 0, delta * 100, scale * 1e-10), delta)
    return -g  # hopeless curvature: fall back to steepest descent  # pragma: no cover


def fit_affine(
    features: torch.Tensor,
    labels: torch.Tensor,
    structure: str,
    *,
    weights: torch.Tensor,
    centre: torch.Tensor,
    start: torch.Tensor | None = None,
    max_iter: int = 100,
    tol: float = 1e-6,
    hessian: torch.Tensor | None = None,
    return_hessian: bool = False,
) -> AffineFit | tuple[AffineFit, torch.Tensor | None]:
    r"""Coefficients minimising the penalised NLL of every exit (see the module docstring).

    Parameters
    ----------
    features : torch.Tensor of shape (N, E, F)
        Inputs of the map (computed in float64); for "diagonal", ``F = C``.
    labels : torch.Tensor of shape (N,)
    structure : {"full", "diagonal"}
    weights, centre : torch.Tensor broadcastable to (E, C, A)
        Ridge weights :math:`\omega \ge 0` and the centre :math:`\theta^\circ`.
    start : torch.Tensor of shape (E, C, A), optional
        Starting coefficients (default: the centre).
    max_iter : int, default=100
        Newton iterations at most (L-BFGS iterations for large maps).
    tol : float, default=1e-6
        Converged when the largest gradient entry is at most ``tol * max(1, f)``.
    hessian : torch.Tensor of shape (E, P, P), optional
        The NLL's Hessian at a nearby point (from ``return_hessian``), reused for the first
        steps; a fit along a path of penalties then forms few Hessians.
    return_hessian : bool, default=False
        Also return the last NLL Hessian formed (None on the L-BFGS path).

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> y = torch.randint(0, 3, (500,), generator=g)
    >>> x = torch.randn(500, 1, 3, generator=g, dtype=torch.float64)
    >>> x[torch.arange(500), 0, y] += 1.0
    >>> eye = torch.cat([torch.eye(3), torch.zeros(3, 1)], 1).double()[None]
    >>> fit = fit_affine(x * 3, y, "full", weights=torch.zeros(()), centre=eye)
    >>> bool(fit.converged.all()), fit.iterations < 15
    (True, True)
    """
    check_choice(structure, "structure", STRUCTURES)
    x = features.to(torch.float64)
    _, e, f_dim = x.shape
    c = f_dim if structure == "diagonal" else int(centre.shape[-2])
    a = f_dim + 1 if structure == "full" else 2
    shape = (e, c, a)
    centre = centre.to(torch.float64).to(x.device).expand(shape)
    weights = weights.to(torch.float64).to(x.device).expand(shape)
    theta = (centre if start is None else start.to(torch.float64).to(x.device)).clone()

    def penalised(t: torch.Tensor, order: int):
        f, g, h = _derivatives(x, labels, t, structure, order)
        diff = t - centre
        f_pen = f + (weights * diff.square()).sum(dim=(-2, -1))
        if g is not None:
            g = g + 2 * weights * diff
        return f_pen, f, g, h

    data_hessian = None
    if c * a > _NEWTON_MAX_PARAMS:
        # in a process group each rank's objective is its rows' share of the NLL, and the
        # penalty counts on the first rank only: _lbfgs sums the values and the gradients
        first = first_rank()

        def share(t: torch.Tensor) -> torch.Tensor:
            f = _derivatives(x, labels, t, structure, 0)[0]
            return (f + float(first) * (weights * (t - centre).square()).sum(dim=(-2, -1))).sum()

        theta, iterations = _lbfgs(theta, share, max_iter, tol)
    else:
        ridge = torch.diag_embed(2 * weights.reshape(e, -1))
        theta, iterations, data_hessian = _newton(theta, penalised, ridge, max_iter, tol, hessian)
    f_pen, nll, g, _ = penalised(theta, 1)
    grad = g.abs().amax(dim=(-2, -1))
    converged = grad <= tol * f_pen.abs().clamp(min=1.0)
    result = AffineFit(theta, f_pen, nll, grad, converged, iterations)
    return (result, data_hessian) if return_hessian else result


def _newton(
    theta, penalised, ridge, max_iter: int, tol: float, hessian: torch.Tensor | None
) -> tuple[torch.Tensor, int, torch.Tensor | None]:
    """Damped Newton with Armijo backtracking, per exit; finished exits stay put.

    The NLL's Hessian is re-formed (the costly part) only while the gradient falls by less
    than a factor 8 per step; otherwise the last one is reused (a chord step) with the
    current ridge. ``hessian`` (from a nearby fit) saves the first formation. Returns the
    coefficients, the iteration count and the last NLL Hessian.
    """
    e = theta.shape[0]
    done = torch.zeros(e, dtype=torch.bool, device=theta.device)
    previous = None
    iterations = 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 - the count is reported
        f, _, g, _ = penalised(theta, 1)
        grad = g.abs().amax(dim=(-2, -1))
        done = done | (grad <= tol * f.abs().clamp(min=1.0))
        if bool(done.all()):
            break
        slow = previous is not None and bool((grad > previous / 8)[~done].any())
        if hessian is None or slow:
            hessian = penalised(theta, 2)[3]
        previous = grad
        step = _solve(hessian + ridge, g)
        broadcast_from_first(step)  # one step on every rank (a solve may differ in the last bit)
        slope = (g * step).sum(dim=(-2, -1))
        t = torch.ones(e, dtype=theta.dtype, device=theta.device)
        accepted = done.clone()
        for _ in range(40):
            trial = theta + t[:, None, None] * step
            f_trial = penalised(trial, 0)[0]
            ok = f_trial <= f + 1e-4 * t * slope + 1e-13 * f.abs()
            accepted = accepted | ok
            if bool(accepted.all()):
                break
            t = torch.where(accepted, t, t / 2)
        move = ~done & accepted
        theta = torch.where(move[:, None, None], theta + t[:, None, None] * step, theta)
        done = done | ~accepted  # no descent left in float64: as good as it gets
    return theta, iterations, hessian


def _lbfgs(theta: torch.Tensor, loss_fn, max_iter: int, tol: float) -> tuple[torch.Tensor, int]:
    """L-BFGS (strong Wolfe) on the sum over exits, for maps too large for Newton.

    In a process group ``loss_fn`` is the rank's share of the objective; rank 0 runs the
    optimiser and every evaluation is a collective: rank 0 sends the point, each rank adds its
    share of the value and the gradient. The other ranks only evaluate, so the optimiser's
    decisions (line search, stopping) are made once and the ranks cannot fall out of step.
    """
    distributed = group_active()
    leader = first_rank()
    point = theta.clone()

    def evaluate(at: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        param = at.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            loss = loss_fn(param)
            loss.backward()
        value, grad = loss.detach().reshape(1), param.grad
        if distributed:
            all_reduce_sum(value, grad)
        return value[0], grad

    more = torch.ones(1, dtype=torch.float64, device=theta.device)
    iterations = 0
    if leader:
        param = point.requires_grad_(True)
        opt = torch.optim.LBFGS(
            [param],
            lr=1.0,
            max_iter=max_iter,
            tolerance_grad=tol,
            tolerance_change=1e-14,
            history_size=20,
            line_search_fn="strong_wolfe",
        )

        def closure() -> torch.Tensor:
            broadcast_from_first(more, param.data)  # "evaluate here" to the other ranks
            value, grad = evaluate(param)
            param.grad = grad
            return value

        opt.step(closure)
        iterations = int(opt.state[param].get("n_iter", 0))
        point = param.detach()
        more.zero_()
        broadcast_from_first(more, point)  # "done", and the answer
    else:
        while True:
            broadcast_from_first(more, point)
            if not bool(more[0]):
                break
            evaluate(point)
    return point.detach(), iterations
