r"""p-values for "the risk exceeds a limit", and the betting capital process they share with
the monitor.

Each function tests :math:`H_0: R > \delta` (the risk, a mean of per-sample losses in [0, 1],
is above the limit ``delta``) from ``n`` i.i.d. losses; a small p-value certifies
:math:`R \le \delta`. All are valid for any sample size:

* :func:`binomial_p_value`: exact for 0/1 losses, :math:`P[\mathrm{Bin}(n, \delta) \le
  \sum_i L_i]`.
* :func:`hoeffding_bentkus_p_value`: any losses in [0, 1], from the mean only,
  :math:`\min(e^{-n h_1(\min(\hat R, \delta), \delta)}, e\,P[\mathrm{Bin}(n, \delta) \le
  \lceil n \hat R\rceil])` with :math:`h_1(a, b) = a \log\frac{a}{b} + (1-a)\log\frac{1-a}{1-b}`
  (Bates et al. 2021, Learn-then-Test's default).
* :func:`wsr_p_value`: any losses in [0, 1], Waudby-Smith–Ramdas betting (JRSS-B 2024): the
  capital :math:`K_t = \prod_{i \le t} (1 + \lambda_i (\delta - L_i))` of a gambler betting
  that losses fall below ``delta`` is a non-negative supermartingale under :math:`H_0`, so
  by Ville's inequality :math:`p = \min(1, 1 / \max_{t \le n} K_t)` is valid. Bets are
  predictable (:func:`betting_capital`); for small risks with small variance this is far
  tighter than Hoeffding–Bentkus.

The same capital process, with the bet turned around (:math:`1 + \lambda_i (L_i - m)`), is the
anytime-valid alarm of :mod:`exitwise.monitor`: one owner of the betting formula.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from exitwise._checks import check_choice, check_open_unit

__all__ = [
    "P_VALUES",
    "BettingState",
    "betting_capital",
    "binomial_p_value",
    "clopper_pearson_lower",
    "continue_capital",
    "hoeffding_bentkus_p_value",
    "p_value_of_losses",
    "resolve_p_value",
    "wsr_p_value",
]

#: the p-value methods :func:`p_value_of_losses` knows
P_VALUES = ("binomial", "hoeffding_bentkus", "wsr")

_TRUNCATION = 0.75  # bets stay below 3/4 of the largest safe bet (WSR's c = 3/4)


def binomial_p_value(losses: int, n: int, delta: float) -> float:
    r"""Exact p-value of :math:`H_0: R > \delta` for ``losses`` 0/1 losses out of ``n``:
    :math:`P[\mathrm{Bin}(n, \delta) \le \text{losses}]`.

    Examples
    --------
    >>> round(binomial_p_value(0, 100, 0.05), 6)    # (1 - 0.05) ** 100
    0.005921
    """
    from scipy.stats import binom

    return float(binom.cdf(losses, n, delta))


def clopper_pearson_lower(successes: Any, n: int, confidence: float) -> np.ndarray:
    r"""One-sided Clopper–Pearson lower confidence bound of a binomial proportion: the
    smallest :math:`p` not rejected by the exact binomial test at level :math:`1 - c`,
    :math:`\mathrm{Beta}^{-1}(1 - c;\ k,\ n - k + 1)` (0 for :math:`k = 0`), elementwise.

    Examples
    --------
    >>> round(float(clopper_pearson_lower(450, 500, 0.9)), 4)
    0.8806
    >>> float(clopper_pearson_lower(0, 10, 0.9))
    0.0
    """
    from scipy.stats import beta

    confidence = check_open_unit(confidence, "confidence")
    k = np.asarray(successes, dtype=np.float64)
    if n < 1 or (k < 0).any() or (k > n).any():
        raise ValueError(f"Expected 0 <= successes <= n with n >= 1, got n = {n}.")
    with np.errstate(invalid="ignore"):
        low = beta.ppf(1.0 - confidence, k, n - k + 1.0)
    return np.where(k > 0, low, 0.0)


def hoeffding_bentkus_p_value(mean_loss: Any, n: int, delta: float) -> Any:
    r"""Hoeffding–Bentkus p-value of :math:`H_0: R > \delta` for losses in [0, 1]:
    :math:`\min(e^{-n h_1(\min(R, \delta), \delta)},\ e\,P[\mathrm{Bin}(n, \delta) \le
    \lceil nR \rceil])`, elementwise for an array of mean losses (a float for a float).

    Examples
    --------
    >>> hoeffding_bentkus_p_value(0.0, 100, 0.05) <= 1.0
    True
    >>> hoeffding_bentkus_p_value([0.0, 0.04, 0.2], 100, 0.05).round(4).tolist()
    [0.0059, 0.8934, 1.0]
    """
    from scipy.stats import binom

    r = np.asarray(mean_loss, dtype=np.float64)
    a = np.minimum(r, delta)
    with np.errstate(divide="ignore", invalid="ignore"):
        left = np.where(a > 0, a * np.log(a / delta), 0.0)
        right = np.where(a < 1, (1 - a) * np.log((1 - a) / (1 - delta)), 0.0)
    hoeffding = np.exp(-n * (left + right))
    bentkus = math.e * binom.cdf(np.ceil(n * r - 1e-9), n, delta)
    out = np.minimum(np.minimum(hoeffding, bentkus), 1.0)
    return float(out) if out.ndim == 0 else out


def _losses_array(losses: Any, name: str = "losses", allow_empty: bool = False) -> np.ndarray:
    x = losses.detach().cpu().numpy() if isinstance(losses, torch.Tensor) else np.asarray(losses)
    if x.dtype == bool:
        x = x.astype(np.float64)
    empty = x.size == 0 and not allow_empty
    if x.ndim != 1 or empty or not np.issubdtype(x.dtype, np.number):
        raise ValueError(
            f"Expected `{name}` to be a non-empty 1-D array of numbers, got shape {x.shape} "
            f"and dtype {x.dtype}."
        )
    x = x.astype(np.float64)
    bad = ~((x >= 0.0) & (x <= 1.0))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"Expected `{name}` in [0, 1] (bounded losses), got {int(bad.sum())} outside, the "
            f"first {float(x[i])!r} at position {i}."
        )
    return x


def betting_capital(
    losses: Any,
    null_mean: Any,
    *,
    alternative: Literal["less", "greater"],
    alpha: float,
    horizon: int | None = None,
) -> np.ndarray:
    r"""The log-capital :math:`\log K_t` after each loss, betting against ``null_mean``.

    ``alternative="less"`` bets that the mean is below ``null_mean`` (:math:`1 + \lambda_t
    (m - L_t)`, for :math:`H_0: R \ge m`); ``"greater"`` bets that it is above
    (:math:`1 + \lambda_t (L_t - m)`, for :math:`H_0: R \le m`). Under the null the capital is
    a non-negative supermartingale, so :math:`P(\sup_t K_t \ge 1/\alpha) \le \alpha` (Ville).

    The bets are Waudby-Smith–Ramdas' predictable plug-in: with :math:`\hat\mu_t = (1/2 +
    \sum_{i \le t} L_i)/(t + 1)` and :math:`\hat\sigma^2_t = (1/4 + \sum_{i \le t} (L_i -
    \hat\mu_i)^2)/(t + 1)`,

    .. math:: \lambda_t = \min\Big(\sqrt{\tfrac{2 \log(1/\alpha)}{\hat\sigma^2_{t-1}\, h_t}},
              \ \tfrac{c}{s}\Big),

    :math:`h_t = n` for a fixed sample size ``horizon=n`` (a p-value) or :math:`t \log(t + 1)`
    for monitoring without end; :math:`c = 3/4` and :math:`s` is the largest loss-side gap
    (:math:`1 - m` for "less", :math:`m` for "greater"), so every factor stays positive.

    Parameters
    ----------
    losses : array-like of shape (T,)
        In [0, 1], in the order they arrive.
    null_mean : float or array-like of shape (G,)
        One or several null values (a row of capital per value).
    alternative : {"less", "greater"}
    alpha : float in (0, 1)
        The level the bets are tuned for.
    horizon : int, optional
        Fixed sample size (p-values); ``None`` for an open-ended stream.

    Returns
    -------
    numpy.ndarray of shape (T,) or (G, T)

    Examples
    --------
    >>> import numpy as np
    >>> log_k = betting_capital(np.zeros(50), 0.2, alternative="less", alpha=0.05, horizon=50)
    >>> bool(log_k[-1] > np.log(1 / 0.05))     # fifty zero losses refute "risk >= 0.2"
    True
    """
    check_choice(alternative, "alternative", ("less", "greater"))
    alpha = check_open_unit(alpha, "alpha")
    m = np.asarray(null_mean, dtype=np.float64)
    log_k, _ = continue_capital(losses, m, alternative, alpha, horizon, BettingState())
    return log_k[0] if m.ndim == 0 else log_k


@dataclass(frozen=True)
class BettingState:
    """Where a capital process stands after ``t`` losses (to continue it on more losses):
    their sum, the sum of squared deviations from the running means and the variance
    estimate the next bet uses."""

    t: int = 0
    total: float = 0.0
    squares: float = 0.0
    variance: float = 0.25


def continue_capital(
    losses: Any,
    null_mean: np.ndarray,
    alternative: str,
    alpha: float,
    horizon: int | None,
    state: BettingState,
) -> tuple[np.ndarray, BettingState]:
    r"""The increments of :math:`\log K` ``[G, T]`` over ``losses`` (cumulative from 0) after
    ``state``, and the new state: the one place the bets of :func:`betting_capital` are
    computed (the monitor continues a process request by request with it)."""
    x = _losses_array(losses, allow_empty=True)
    m = np.atleast_1d(np.asarray(null_mean, dtype=np.float64))[:, None]
    if not ((m > 0.0) & (m < 1.0)).all():
        raise ValueError(f"Expected `null_mean` in (0, 1), got {m.ravel().tolist()}.")
    t = state.t + np.arange(1, x.size + 1, dtype=np.float64)
    mu = (0.5 + state.total + np.cumsum(x)) / (t + 1.0)
    squares = state.squares + np.cumsum((x - mu) ** 2)
    var = (0.25 + squares) / (t + 1.0)
    var_before = np.concatenate([[state.variance], var[:-1]])
    scale = float(horizon) if horizon is not None else t * np.log(t + 1.0)
    bet = np.sqrt(2.0 * math.log(1.0 / alpha) / (var_before * scale))
    if alternative == "less":
        bet = np.minimum(bet[None, :], _TRUNCATION / (1.0 - m))
        log_k = np.cumsum(np.log1p(bet * (m - x[None, :])), axis=1)
    else:
        bet = np.minimum(bet[None, :], _TRUNCATION / m)
        log_k = np.cumsum(np.log1p(bet * (x[None, :] - m)), axis=1)
    if x.size == 0:
        return log_k, state
    after = BettingState(
        int(t[-1]), state.total + float(x.sum()), float(squares[-1]), float(var[-1])
    )
    return log_k, after


def wsr_p_value(losses: Any, delta: float, alpha: float = 0.05) -> float:
    r"""Waudby-Smith–Ramdas betting p-value of :math:`H_0: R > \delta` from per-sample losses.

    :math:`p = \min(1, 1/\max_t K_t)` with the capital of :func:`betting_capital`
    (``alternative="less"``, bets tuned for level ``alpha`` at the fixed sample size).
    The losses' order matters only through the bets; pass them in a random order (a
    random calibration split is one).

    Examples
    --------
    >>> import numpy as np
    >>> losses = np.r_[np.zeros(990), np.ones(10)]            # 1 % risk on 1,000 samples
    >>> rng = np.random.default_rng(0); rng.shuffle(losses)
    >>> wsr_p_value(losses, 0.05) < 1e-6
    True
    """
    delta = check_open_unit(delta, "delta")
    x = _losses_array(losses)
    log_k = betting_capital(x, delta, alternative="less", alpha=alpha, horizon=x.size)
    return float(min(1.0, math.exp(-max(0.0, float(log_k.max())))))


def resolve_p_value(method: str | None, zero_one: bool, risk: str) -> str:
    """The p-value method for a risk: ``method``, or by default the exact binomial tail for
    0/1 losses and WSR betting for the others; ``"binomial"`` on non-0/1 losses is an error.

    Examples
    --------
    >>> resolve_p_value(None, True, "error"), resolve_p_value(None, False, "cost")
    ('binomial', 'wsr')
    """
    method = method or ("binomial" if zero_one else "wsr")
    check_choice(method, "p_value", P_VALUES)
    if method == "binomial" and not zero_one:
        raise ValueError(
            f"p_value='binomial' is exact for 0/1 losses only; risk {risk!r} has losses in "
            "[0, 1]: use 'wsr' or 'hoeffding_bentkus'."
        )
    return method


def p_value_of_losses(
    losses: Any, delta: float, method: str = "binomial", *, alpha: float = 0.05
) -> float:
    r"""p-value of :math:`H_0: R > \delta` from per-sample losses by ``method`` (one of
    :data:`P_VALUES`); ``"binomial"`` needs 0/1 losses.

    Examples
    --------
    >>> p_value_of_losses([0.0] * 100, 0.05, "binomial") == binomial_p_value(0, 100, 0.05)
    True
    """
    check_choice(method, "p_value", P_VALUES)
    x = _losses_array(losses)
    if method == "wsr":
        return wsr_p_value(x, delta, alpha)
    if method == "hoeffding_bentkus":
        return hoeffding_bentkus_p_value(float(x.mean()), x.size, delta)
    if not np.isin(x, (0.0, 1.0)).all():
        raise ValueError(
            "p_value='binomial' is exact for 0/1 losses only; these losses take other values "
            "in [0, 1]: use 'wsr' or 'hoeffding_bentkus'."
        )
    return binomial_p_value(int(x.sum()), x.size, delta)
