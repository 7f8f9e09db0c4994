r"""Monitor a deployed exit policy: an anytime-valid alarm on its risk, exit-rate drift and
windowed calibration per exit.

A certified policy promises :math:`R \le \delta` on traffic like its calibration data. In
production, a random share of requests is also run to full depth ("shadow" requests); for those
the loss of the early answer is known (disagreement with the full model, or the error when the
label is known). :class:`RiskMonitor` bets against :math:`H_0: R \le \delta` on the shadow
losses as they arrive, with the capital process of :func:`~exitwise.policies.p_values
.betting_capital` (``alternative="greater"``, bets for an open-ended stream). Under
:math:`H_0` the capital is a non-negative supermartingale, so by Ville's inequality

.. math:: P\big(\exists t: K_t(\delta) \ge 1/\alpha\big) \le \alpha:

the monitor may be checked after every request, forever, and raises a false alarm with
probability at most ``alpha``. The same processes on a grid of null values give a confidence
sequence for the risk: at every time, the null values whose capital is below :math:`1/\alpha`
(each factor of the capital is non-increasing in the null value, so the values shown too low
form an interval ``[0, lower)``). It is valid at all times at once for a constant risk, and is
not intersected over time, so after a drift it moves to the new risk instead of staying
pinned to the old one. It is drawn by :func:`exitwise.plots_monitor.monitor_plot`.

Beside the alarm: the share of requests leaving at each exit over the last ``window``
requests against the calibration data's rates (total variation and a chi-square p-value), and
the ECE of the answer's confidence per exit over the last ``window`` shadow/labelled requests.

Logs are JSON lines, one request per line::

    {"exit": 1, "confidence": 0.97, "prediction": 3, "full_prediction": 3, "label": 3}

(``full_prediction`` on shadow requests only, ``label`` when known, ``time`` in seconds to
merge the logs of several servers or ranks); ``exitwise monitor LOG [LOG ...] --policy
policy.json`` checks logs against a certified policy file (:mod:`exitwise.monitor_logs`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from exitwise._checks import check_choice, check_int, check_open_unit
from exitwise._deprecation import MISSING, confidence_or_failure_probability
from exitwise.monitor_logs import merge_logs, read_log, write_log
from exitwise.policies.p_values import BettingState, continue_capital

__all__ = ["RiskMonitor", "check_log", "merge_logs", "read_log", "write_log"]


class RiskMonitor:
    """Streaming monitor of a deployed policy's risk (anytime-valid), exit rates and ECE.

    Parameters
    ----------
    limit : float in (0, 1)
        The certified risk limit :math:`\\delta`.
    num_exits : int
    risk : {"disagreement", "error"}, default="disagreement"
        Loss of a request: its answer differs from the full model's (needs
        ``full_prediction``), or from the label.
    confidence : float in (0, 1), default=0.95
        1 - the probability of a false alarm over the whole (unbounded) stream (``alpha``, the
        false-alarm probability itself, is the deprecated spelling).
    reference_exit_rates : sequence of float, optional
        Share of requests per exit on the calibration data (drift is measured against it).
    window : int, default=2000
        Requests in the exit-rate and ECE windows.
    grid_size : int, default=200
        Null values in the confidence sequence.
    drift_limit : float in (0, 1), default=0.1
        Total variation between the windowed exit rates and the reference beyond which (with
        a chi-square p-value <= 1 - confidence) the exit rates alone raise a drift alarm.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> m = RiskMonitor(0.05, num_exits=3, confidence=0.95)
    >>> pred = rng.integers(0, 5, 4000); full = np.where(rng.random(4000) < 0.2, 0, pred)
    >>> _ = m.update(exit=rng.integers(0, 3, 4000), confidence=rng.random(4000),
    ...              prediction=pred, full_prediction=full)
    >>> m.alarm, m.alarm_at < 4000
    (True, True)
    """

    def __init__(
        self,
        limit: float,
        *,
        num_exits: int,
        risk: str = "disagreement",
        confidence: float = 0.95,
        reference_exit_rates: Any = None,
        window: int = 2000,
        grid_size: int = 200,
        drift_limit: float = 0.1,
        alpha: Any = MISSING,
    ) -> None:
        self.limit = check_open_unit(limit, "limit")
        self.drift_limit = check_open_unit(drift_limit, "drift_limit")
        confidence = confidence_or_failure_probability(confidence, alpha, "alpha")
        self.confidence = check_open_unit(confidence, "confidence")
        self.alpha = 1.0 - self.confidence  # the false-alarm probability of the bets
        self.risk = check_choice(risk, "risk", ("disagreement", "error"))
        self.num_exits = check_int(num_exits, "num_exits", minimum=1)
        self.window = check_int(window, "window", minimum=1)
        grid_size = check_int(grid_size, "grid_size", minimum=2)
        self.reference_exit_rates = None
        if reference_exit_rates is not None:
            ref = np.asarray(reference_exit_rates, dtype=np.float64)
            if ref.shape != (self.num_exits,) or (ref < 0).any() or abs(ref.sum() - 1) > 1e-6:
                raise ValueError(
                    f"Expected `reference_exit_rates`: {self.num_exits} shares summing to 1, "
                    f"got {ref.tolist()}."
                )
            self.reference_exit_rates = ref
        self.grid = np.unique(np.r_[np.linspace(0.0, 1.0, grid_size + 1)[1:-1], self.limit])
        self._at_limit = int(np.searchsorted(self.grid, self.limit))
        self._state = BettingState()  # running mean and variance: the same for both bets
        self._log_k = np.zeros(self.grid.size)
        self._log_k_low = np.zeros(self.grid.size)  # "less" bets, for the upper bound
        self.num_requests = 0
        self.num_losses = 0
        self.loss_sum = 0.0
        self.alarm_at: int | None = None
        self._exits: deque[int] = deque(maxlen=self.window)
        self._scored: deque[tuple[int, float, bool]] = deque(maxlen=self.window)
        self.history: dict[str, list[float]] = {
            "request": [],
            "estimate": [],
            "lower": [],
            "upper": [],
        }

    @classmethod
    def from_policy(
        cls,
        policy: Any,
        *,
        confidence: float = 0.95,
        risk: str | None = None,
        window: int = 2000,
        grid_size: int = 200,
        num_exits: int | None = None,
        alpha: Any = MISSING,
    ) -> RiskMonitor:
        """From a certified policy (its ``context["guarantee"]``, written by
        ``exitwise certify`` or :meth:`Guarantee.to_dict
        <exitwise.policies.Guarantee.to_dict>`; files that name the limits ``risks`` still
        read)."""
        confidence = confidence_or_failure_probability(confidence, alpha, "alpha")
        guarantee = (getattr(policy, "context", None) or {}).get("guarantee")
        risks = None
        if isinstance(guarantee, dict):
            risks = guarantee.get("limits", guarantee.get("risks"))
        if not isinstance(risks, dict):
            raise ValueError(
                "The policy records no guarantee (context['guarantee'] with its limits); "
                "certify it with `exitwise certify` or pass `limit` to RiskMonitor directly."
            )
        if risk is None:
            known = [r for r in ("disagreement", "error") if r in risks]
            if not known:
                raise ValueError(
                    f"The guarantee certifies {sorted(risks)}; the monitor watches "
                    "'disagreement' or 'error'."
                )
            risk = known[0]
        if risk not in risks:
            raise ValueError(f"The guarantee has no limit for risk {risk!r}: {sorted(risks)}.")
        rates = guarantee.get("exit_rates")
        thresholds = getattr(policy, "thresholds", None)
        if rates and isinstance(thresholds, list) and len(thresholds) != len(rates):
            raise ValueError(
                f"The policy has {len(thresholds)} thresholds but its guarantee records exit "
                f"rates for {len(rates)} exits: the file is inconsistent."
            )
        if not rates and num_exits is None:
            raise ValueError("The guarantee records no exit rates: pass `num_exits`.")
        return cls(
            float(risks[risk]),
            num_exits=len(rates) if rates else num_exits,
            risk=risk,
            confidence=confidence,
            reference_exit_rates=rates,
            window=window,
            grid_size=grid_size,
        )

    # -- feeding ----------------------------------------------------------------------------
    def update(
        self,
        exit: Any,
        confidence: Any,
        prediction: Any,
        full_prediction: Any = None,
        label: Any = None,
    ) -> bool:
        """Add one request or a batch (arrays of equal length; ``full_prediction`` and
        ``label`` may hold -1 or NaN where unknown). Returns :attr:`alarm`."""
        n = np.atleast_1d(np.asarray(exit)).size
        ex = _column(exit, "exit", n, int)
        conf = _column(confidence, "confidence", n, float)
        pred = _column(prediction, "prediction", n, int)
        full = _column(full_prediction, "full_prediction", n, int)
        lab = _column(label, "label", n, int)
        if ((ex < 0) | (ex >= self.num_exits)).any():
            raise ValueError(f"Expected `exit` to hold exits in [0, {self.num_exits - 1}].")
        if ((conf < 0) | (conf > 1) | np.isnan(conf)).any():
            raise ValueError("Expected `confidence` in [0, 1].")
        reference = full if self.risk == "disagreement" else lab
        known = reference >= 0
        losses = (pred != reference)[known].astype(np.float64)
        self._bet(losses, np.flatnonzero(known) + self.num_requests)
        self._exits.extend(ex.tolist())
        truth = np.where(lab >= 0, lab, full)
        for i in np.flatnonzero(truth >= 0):
            self._scored.append((int(ex[i]), float(conf[i]), bool(pred[i] == truth[i])))
        self.num_requests += n
        return self.alarm

    def _bet(self, losses: np.ndarray, requests: np.ndarray) -> None:
        if losses.size == 0:
            return
        up, after = continue_capital(losses, self.grid, "greater", self.alpha, None, self._state)
        down, _ = continue_capital(losses, self.grid, "less", self.alpha, None, self._state)
        self._state = after
        up += self._log_k[:, None]
        down += self._log_k_low[:, None]
        self._log_k, self._log_k_low = up[:, -1].copy(), down[:, -1].copy()
        level = math.log(1.0 / self.alpha)
        rejected_low = up >= level  # "risk > m" shown now, for these m
        rejected_high = down >= level  # "risk < m" shown now
        if self.alarm_at is None and rejected_low[self._at_limit].any():
            self.alarm_at = int(requests[np.argmax(rejected_low[self._at_limit])])
        lower = np.where(rejected_low.any(0), self.grid[_last_true(rejected_low)], 0.0)
        upper = np.where(rejected_high.any(0), self.grid[_first_true(rejected_high)], 1.0)
        sums = self.loss_sum + np.cumsum(losses)
        counts = self.num_losses + np.arange(1, losses.size + 1)
        self.history["request"].extend(requests.tolist())
        self.history["estimate"].extend((sums / counts).tolist())
        self.history["lower"].extend(lower.tolist())
        self.history["upper"].extend(upper.tolist())
        self.loss_sum, self.num_losses = float(sums[-1]), int(counts[-1])

    # -- reading ----------------------------------------------------------------------------
    @property
    def alarm(self) -> bool:
        """The risk is shown to exceed the limit (at level ``alpha``, anytime-valid)."""
        return self.alarm_at is not None

    @property
    def drift_alarm(self) -> bool:
        """The exit rates of the last ``window`` requests moved from the calibration data's by
        more than ``drift_limit`` in total variation, and a chi-square test at level
        ``1 - confidence`` agrees: the traffic (or the model) is not what was certified."""
        drift = self.exit_rate_drift()
        return bool(
            drift["total_variation"] > self.drift_limit
            and drift["p_value"] <= 1.0 - self.confidence
        )

    @property
    def verdict(self) -> str:
        """``"alarm"`` (the risk exceeds its limit), ``"drift"`` (the exit rates moved),
        ``"no verdict"`` (no request has a reference answer: no shadow requests for
        disagreement, no labels for error) or ``"no alarm"``."""
        if self.alarm:
            return "alarm"
        if self.drift_alarm:
            return "drift"
        if self.num_losses == 0:
            return "no verdict"
        return "no alarm"

    @property
    def lower_bound(self) -> float:
        return self.history["lower"][-1] if self.history["lower"] else 0.0

    @property
    def upper_bound(self) -> float:
        return self.history["upper"][-1] if self.history["upper"] else 1.0

    def exit_rate_drift(self) -> dict[str, Any]:
        """Exit shares over the last ``window`` requests, their total-variation distance to
        the reference and a chi-square goodness-of-fit p-value (NaN without a reference)."""
        counts = np.bincount(np.asarray(self._exits, dtype=np.int64), minlength=self.num_exits)
        rates = counts / max(counts.sum(), 1)
        if self.reference_exit_rates is None or counts.sum() == 0:
            return {"rates": rates.tolist(), "total_variation": math.nan, "p_value": math.nan}
        from scipy.stats import chisquare

        ref = self.reference_exit_rates
        used = ref > 0
        outside = counts[~used].sum() > 0
        p = (
            0.0
            if outside
            else float(chisquare(counts[used], ref[used] / ref[used].sum() * counts.sum()).pvalue)
        )
        tv = 0.5 * float(np.abs(rates - ref).sum())
        return {"rates": rates.tolist(), "total_variation": tv, "p_value": p}

    def windowed_ece(self, n_bins: int = 10) -> list[float]:
        """ECE of the answer's confidence per exit over the last ``window`` requests with a
        label or a full-model answer (NaN for exits without any)."""
        from exitwise.metrics.binning import calibration_error_from_confidence

        out = [math.nan] * self.num_exits
        if not self._scored:
            return out
        ex, conf, hit = (np.asarray(v) for v in zip(*self._scored, strict=True))
        for e in range(self.num_exits):
            sel = ex == e
            if sel.any():
                out[e] = float(calibration_error_from_confidence(conf[sel], hit[sel], n_bins))
        return out

    def summary(self) -> dict[str, Any]:
        """JSON-ready state: requests, shadow losses, risk estimate and bounds, alarm, drift."""
        return {
            "risk": self.risk,
            "limit": self.limit,
            "confidence": self.confidence,
            "requests": self.num_requests,
            "scored_requests": self.num_losses,
            "estimate": self.loss_sum / self.num_losses if self.num_losses else math.nan,
            "lower_bound": self.lower_bound,
            "upper_bound": self.upper_bound,
            "verdict": self.verdict,
            "alarm": self.alarm,
            "alarm_at_request": self.alarm_at,
            "drift_alarm": self.drift_alarm,
            "exit_rates": self.exit_rate_drift(),
            "windowed_ece": self.windowed_ece(),
        }


def _last_true(mask: np.ndarray) -> np.ndarray:
    """Per column, the last row where ``mask`` is True (rows form a prefix of Trues)."""
    return mask.shape[0] - 1 - np.argmax(mask[::-1], axis=0)


def _first_true(mask: np.ndarray) -> np.ndarray:
    return np.argmax(mask, axis=0)


def _column(values: Any, name: str, n: int, kind: type) -> np.ndarray:
    if values is None:
        return np.full(n, -1 if kind is int else np.nan)
    raw = np.atleast_1d(np.asarray(values))
    if raw.dtype == bool or raw.dtype.kind not in "iuf":
        raise TypeError(f"Expected `{name}` to hold numbers, got dtype {raw.dtype}.")
    a = raw.astype(np.float64)
    if a.shape != (n,):
        raise ValueError(f"Expected `{name}` of length {n} (one per request), got {a.shape}.")
    if kind is int:
        known = ~np.isnan(a)
        if (a[known] != np.round(a[known])).any():
            first = a[known][a[known] != np.round(a[known])][0]
            raise ValueError(f"Expected `{name}` to hold integers, got {float(first)!r}.")
        return np.where(known, a, -1).astype(np.int64)
    return a


def check_log(
    path: str | Path | Sequence[str | Path],
    policy: Any,
    *,
    confidence: float = 0.95,
    risk: str | None = None,
    window: int = 2000,
    alpha: Any = MISSING,
) -> RiskMonitor:
    """Replay a request log through a :class:`RiskMonitor` built from a certified policy;
    several logs (one per server or rank) are merged in the order their requests were served
    (:func:`~exitwise.monitor_logs.merge_logs`)."""
    several = not isinstance(path, (str, Path))
    log = merge_logs(path) if several else read_log(path)
    confidence = confidence_or_failure_probability(confidence, alpha, "alpha")
    monitor = RiskMonitor.from_policy(policy, confidence=confidence, risk=risk, window=window)
    monitor.update(
        log["exit"], log["confidence"], log["prediction"], log["full_prediction"], log["label"]
    )
    return monitor
