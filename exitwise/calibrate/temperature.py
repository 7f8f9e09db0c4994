r"""Temperature scaling (Guo et al. 2017), fitted for all exits at once.

Each exit's logits are divided by a temperature :math:`T_e`. With the inverse temperature
:math:`u = 1/T` the NLL

.. math:: f(u) = \frac1N \sum_n \Big[\log \sum_c e^{u z_{nc}} - u z_{n y_n}\Big]

is convex (a log-sum-exp of linear functions), with

.. math:: f'(u) = \frac1N \sum_n \big(\mathbb{E}_{p_n}[z] - z_{n y_n}\big), \qquad
          f''(u) = \frac1N \sum_n \mathrm{Var}_{p_n}[z] \ge 0,

where :math:`p_n = \mathrm{softmax}(u z_n)`. :func:`fit_temperatures` runs safeguarded
Newton steps on every exit at once, with analytic derivatives: row sums over classes in the
logits' precision, sums over samples in float64, in chunks of whole rows (bounded memory).
It reaches the optimum where netcal's finite-difference fit stalls on float32 input
(netcal #61, #48). In a ``torch.distributed`` group of several processes each rank passes its
shard: the sums over samples are all-reduced, the warm-start subsamples are the rows one
process would take from the concatenated shards, so every rank gets the single-process
temperatures (to rounding).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from exitwise._checks import check_int
from exitwise._chunk_threads import chunk_workers, map_chunks
from exitwise._chunks import row_slices, rows_per_chunk
from exitwise._distributed import (
    all_reduce_sum,
    broadcast_from_first,
    group_active,
    shard_offset,
)
from exitwise.calibrate.base import Calibrator
from exitwise.exceptions import ConvergenceWarning

__all__ = ["TemperatureFit", "TemperatureScaling", "fit_temperatures", "scale_by_temperature"]


_U_MIN = 1e-6  # inverse temperature floor: T <= 1e6
_U_MAX = 1e6  # inverse temperature ceiling: T >= 1e-6 (separable data has no finite optimum)
_CHUNK_BYTES = 1 << 23  # 8 MiB of logits per chunk: the pass's several sweeps stay in cache
_LADDER = 8  # warm starts on evenly spaced subsamples of N/8^k samples (at least 128)
_MIN_LADDER = 128


@dataclass(frozen=True)
class TemperatureFit:
    """Result of :func:`fit_temperatures` (one entry per exit).

    ``iterations`` counts the Newton passes over all samples (warm starts on subsamples not
    included); ``subsample_passes`` the passes on subsamples, in units of full passes.
    """

    temperatures: torch.Tensor
    nll: torch.Tensor
    converged: torch.Tensor
    iterations: int
    subsample_passes: float = 0.0


def _nll_derivatives(
    logits: torch.Tensor,
    row_max: torch.Tensor,
    at_label: torch.Tensor,
    u: torch.Tensor,
    chunk: int,
    buffers: list[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean NLL and its first two derivatives in ``u`` per exit (float64 ``[E]`` each).

    Works on ``z - max_c z`` (so ``u * z <= 0``: no overflow), formed chunk by chunk in
    worker threads (:func:`~exitwise._chunk_threads.map_chunks`: fast on a busy machine);
    ``at_label`` is its value at the label ``[N, E]``. ``buffers`` (one ``[2, chunk, E, C]``
    workspace per worker) are reused across passes (fresh large allocations cost page faults
    on every pass); a chunk of about 8 MiB keeps its sweeps in cache. Row sums use torch's
    pairwise summation: the derivative is a difference of nearly equal sums, and a plain dot
    product loses digits. The chunks' sums are added in chunk order, so the result does not
    depend on the number of threads.
    """
    n = logits.shape[0]
    u_c = u.to(buffers[0].dtype)[None, :, None]

    def sums(rows: slice, buffer: torch.Tensor) -> torch.Tensor:
        raw = logits[rows]
        z = buffer[0, : raw.shape[0]]
        torch.sub(raw, row_max[rows, :, None], out=z)
        w = buffer[1, : raw.shape[0]]
        torch.mul(z, u_c, out=w)
        w.exp_()
        s0 = w.sum(dim=-1)
        s1 = w.mul_(z).sum(dim=-1)
        s2 = w.mul_(z).sum(dim=-1)
        mean_z = s1 / s0
        y = at_label[rows]
        terms = (torch.log(s0) - u_c[..., 0] * y, mean_z - y, (s2 / s0 - mean_z**2).clamp(min=0))
        return torch.stack([t.to(torch.float64).sum(dim=0) for t in terms])  # [3, E]

    parts = map_chunks(sums, list(row_slices(n, 1, chunk)), logits.device, buffers)
    total = torch.stack(parts).sum(dim=0) if parts else torch.zeros(3, u.shape[0]).to(u)
    count = torch.tensor(float(n), dtype=torch.float64, device=u.device)
    if group_active():  # every rank's rows: all ranks then take the same Newton steps
        all_reduce_sum(total, count)
    return total[0] / count, total[1] / count, total[2] / count


def fit_temperatures(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    max_iter: int = 50,
    tol: float = 1e-10,
    chunk_size: int | None = None,
) -> TemperatureFit:
    r"""Temperatures minimising the NLL of every exit, by batched safeguarded Newton.

    Warm starts: the optimum of an evenly spaced subsample of :math:`N/8^k` samples starts
    the fit on :math:`N/8^{k-1}` samples, down to 256 samples; so the passes over all samples
    start near the root and converge quadratically (typically 2 to 4 passes, each about the
    cost of one ``log_softmax`` over the logits).

    Parameters
    ----------
    logits : torch.Tensor of shape (N, E, C)
    labels : torch.Tensor of shape (N,)
    max_iter : int, default=50
        Newton passes at most, per level of the warm-start ladder.
    tol : float, default=1e-10
        Stop an exit when its Newton decrement :math:`f'^2 / f''` is below ``tol``.
    chunk_size : int, optional
        Samples per chunk (default: about 8 MiB of logits per chunk, at least one sample).

    Returns
    -------
    TemperatureFit
        ``temperatures`` ``[E]``, ``nll`` ``[E]`` at the optimum (row sums in the logits'
        precision, the mean over samples in float64), ``converged`` ``[E]``.

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> labels = torch.randint(0, 5, (2000,), generator=g)
    >>> logits = torch.randn(2000, 1, 5, generator=g)
    >>> logits[torch.arange(2000), 0, labels] += 1.0
    >>> fit = fit_temperatures(logits * 4, labels)   # overconfident by about 4x
    >>> bool(fit.converged.all()), 3.0 < float(fit.temperatures[0]) < 5.0
    (True, True)
    """
    n, e, c = logits.shape
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    z = logits if logits.dtype == dtype else logits.to(dtype)
    row_max = z.amax(dim=-1)
    at_label = z.gather(-1, labels[:, None, None].expand(-1, e, 1)).squeeze(-1) - row_max
    if chunk_size is None:
        chunk_size = rows_per_chunk(e * c * z.element_size(), _CHUNK_BYTES)
    shape = (2, min(chunk_size, n), e, c)
    buffers = [
        torch.empty(shape, dtype=dtype, device=logits.device)
        for _ in range(min(chunk_workers(logits.device), -(-n // chunk_size)))
    ]
    device = logits.device
    u = torch.ones(e, dtype=torch.float64, device=device)
    # in a process group: this shard's place among all rows, so that every level of the
    # ladder takes the same rows as one process on the concatenated data would
    offset, total = shard_offset(n, device)
    sizes = []
    size = total // _LADDER
    while size >= _MIN_LADDER:
        sizes.insert(0, size)
        size //= _LADDER
    sub_passes = 0.0
    for size in sizes:  # evenly spaced subsamples, smallest first
        rows = torch.linspace(0, total - 1, size, device=device).long()
        rows = rows[(rows >= offset) & (rows < offset + n)] - offset
        u, _, _, its = _newton(
            z[rows],
            row_max[rows],
            at_label[rows],
            u,
            max_iter,
            tol,
            chunk_size,
            buffers,
            explore=not sub_passes,
        )
        sub_passes += its * size / total
    u, f, converged, iterations = _newton(
        z, row_max, at_label, u, max_iter, tol, chunk_size, buffers, explore=not sizes
    )
    return TemperatureFit(1.0 / u, f, converged, iterations, sub_passes)


def _newton(
    logits: torch.Tensor,
    row_max: torch.Tensor,
    at_label: torch.Tensor,
    u: torch.Tensor,
    max_iter: int,
    tol: float,
    chunk_size: int,
    buffers: list[torch.Tensor],
    explore: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Safeguarded Newton on f'(u) = 0 per exit (f' increases since f is convex).

    Keeps a bracket [lo, hi] around the root; takes the Newton step when it stays inside,
    else a geometric bisection ``sqrt(lo * hi)`` (``4 u`` / ``u / 4`` while an end is
    unknown), so a root orders of magnitude away is reached in a few passes. On an
    exponential tail (near-separable data, T -> 0) u leaps geometrically. With ``explore``
    (no warm start), a step below the floor tries the floor once. One pass per iteration.
    Returns u, the NLL at u, the converged flags and the iteration count. ``u`` stays in
    ``[1e-6, 1e6]``; an optimum beyond either end stops there (uninformative exit: T -> inf;
    separable: T -> 0), counted as converged.
    """
    lo = torch.full_like(u, _U_MIN)
    hi = torch.full_like(u, math.inf)
    converged = torch.zeros(u.shape, dtype=torch.bool, device=u.device)
    floor_tried = torch.zeros(u.shape, dtype=torch.bool, device=u.device)
    f = torch.full_like(u, math.nan)
    iterations = 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 - the count is reported
        f_u, g, h = _nll_derivatives(logits, row_max, at_label, u, chunk_size, buffers)
        f = torch.where(converged, f, f_u)
        lo = torch.where(g < 0, u, lo)
        hi = torch.where(g >= 0, u, hi)
        decrement = g * g / h.clamp(min=1e-300)
        at_floor = (u <= _U_MIN * (1 + 1e-9)) & (g >= 0)  # T -> inf: no information
        at_ceiling = (u >= _U_MAX * (1 - 1e-9)) & (g < 0)  # separable: T -> 0
        narrow = (hi - lo) <= 1e-12 * u
        newton = u - g / h.clamp(min=1e-300)
        inside = (newton > lo) & (newton < hi)
        # converged by the decrement: the last Newton step is free and squares the error
        finishing = ~converged & (decrement < tol) & inside
        u = torch.where(finishing, newton, u)
        broadcast_from_first(u)
        converged = converged | (decrement < tol) | at_floor | at_ceiling | narrow
        if bool(converged.all()):
            break
        no_hi, no_lo = torch.isinf(hi), lo <= _U_MIN
        # exponential tail (near-separable: f ~ a exp(-b u), so g^2 ~ f h): Newton crawls by
        # 1/b per pass; leap geometrically (4 u, or into the bracket's geometric middle)
        tail = (g < 0) & (g * g > 0.5 * h * f_u)
        leap = torch.where(no_hi, 4.0 * u, torch.sqrt(lo * hi))
        newton = torch.where(tail, torch.maximum(newton, leap), newton)
        fallback = torch.where(no_hi, 4.0 * u, torch.where(no_lo, u / 4.0, torch.sqrt(lo * hi)))
        if explore:  # a step below the floor: try the floor once (a boundary optimum ends there)
            to_floor = (newton <= lo) & no_lo & ~floor_tried
            fallback = torch.where(to_floor, lo, fallback)
            floor_tried = floor_tried | (to_floor & ~inside)
        step = torch.where(inside, newton, fallback).clamp(_U_MIN, _U_MAX)
        u = torch.where(converged, u, step)
        broadcast_from_first(u)  # the ranks stay in lockstep (see broadcast_from_first)
    return u, f, converged, iterations


def scale_by_temperature(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits / T)`` in float32 (float64 for float64 logits); ``temperature``
    broadcasts against ``logits``. The one formula applied offline (``transform``) and at
    runtime (``ExitController``), so both see the same calibrated values.

    Examples
    --------
    >>> import torch
    >>> scale_by_temperature(torch.tensor([[0.0, 2.0]]), torch.tensor(2.0)).exp()
    tensor([[0.2689, 0.7311]])
    """
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    return torch.log_softmax(logits.to(dtype) / temperature.to(dtype), dim=-1)


class TemperatureScaling(Calibrator):
    """One temperature per exit, minimising the NLL (Guo et al. 2017).

    Parameters
    ----------
    max_iter : int, default=50
        Newton iterations at most.

    Attributes
    ----------
    temperatures_ : torch.Tensor
        ``[E]`` float64.
    nll_ : torch.Tensor
        Calibration-split NLL after fitting ``[E]``.
    converged_ : torch.Tensor
        ``[E]`` bool.

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> cal, test = load_default().split(0.5, seed=0)
    >>> ts = TemperatureScaling().fit(cal)
    >>> [round(t, 2) for t in ts.temperatures_.tolist()]
    [0.67, 0.79, 0.94, 1.07]
    """

    method_name = "temperature"

    def __init__(self, max_iter: int = 50) -> None:
        self.max_iter = max_iter

    def _fit(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        check_int(self.max_iter, "max_iter", minimum=1)
        fit = fit_temperatures(logits, labels, max_iter=self.max_iter)
        self.temperatures_ = fit.temperatures.cpu()
        self.nll_ = fit.nll.cpu()
        self.converged_ = fit.converged.cpu()
        if not bool(fit.converged.all()):
            warnings.warn(
                f"Temperature scaling did not converge for exit(s) "
                f"{torch.nonzero(~fit.converged).flatten().tolist()} in {self.max_iter} "
                "iterations.",
                ConvergenceWarning,
                stacklevel=3,
            )

    def _transform(self, logits: torch.Tensor) -> torch.Tensor:
        return scale_by_temperature(logits, self.temperatures_.to(logits.device)[None, :, None])
