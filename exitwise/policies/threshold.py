"""Threshold policies and the baselines reports compare them with.

``ThresholdPolicy(signal, thresholds)``: leave at the first exit whose signal reaches its
threshold; the last exit always answers (or, with ``fallback="most_confident"``, the exit with
the highest signal answers when none qualifies, as in Shallow-Deep Networks).
``PatiencePolicy(t)`` is PABEE (the ``patience`` signal thresholded at ``t``);
``FixedExitPolicy(e)`` truncates the network at exit ``e``; ``OracleExit`` takes the first
correct exit (an upper bound that needs labels).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch

from exitwise._checks import check_choice, check_int
from exitwise.data import ExitOutputs
from exitwise.policies.base import ExitPolicy
from exitwise.policies.kernels import first_exit
from exitwise.policies.positions import DecayedSignal
from exitwise.policies.recall import RECALLS, Recall, recall_indices
from exitwise.policies.scores import resolve_signal, scores_for, signal_label

__all__ = ["FixedExitPolicy", "OracleExit", "PatiencePolicy", "ThresholdPolicy"]


def _float_to_json(value: float) -> float | str:
    return value if math.isfinite(value) else ("inf" if value > 0 else "-inf")


def _float_from_json(value: Any, name: str) -> float:
    if isinstance(value, str) and value in ("inf", "-inf"):
        return float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"Expected `{name}` to hold numbers or 'inf'/'-inf', got {value!r}.")
    return float(value)


class ThresholdPolicy(ExitPolicy):
    """Leave at the first exit whose signal reaches its threshold.

    Parameters
    ----------
    signal : str, DecayedSignal, callable or array-like of shape (N, E)
        A signal name from :data:`exitwise.signals.SIGNALS`, a
        :class:`~exitwise.policies.positions.DecayedSignal` (CALM's position-aware
        thresholds; the outputs need ``positions``), a callable ``outputs -> [N, E]``, or
        precomputed scores (which apply to their own samples only). Only names and
        DecayedSignals can be written to a policy file.
    thresholds : float or sequence of float
        One threshold shared by all exits, or one per exit (length E). ``+inf`` never exits
        at that exit. With ``fallback="last"`` the last threshold is not used: the last exit
        always answers.
    fallback : {"last", "most_confident"}, default="last"
        Who answers when no exit reaches its threshold: the last exit, or the exit with the
        highest signal (Shallow-Deep Networks' rule; it still costs the full network).
    recall : {"none", "most_confident"}, default="none"
        Who answers once a sample stops at exit ``e``: exit ``e`` itself, or the exit with the
        highest signal among ``0..e`` (T-Tamer's recall; :mod:`exitwise.policies.recall`).
    min_exit : int, default=0
        Never exit before exit ``min_exit`` (its thresholds act as ``+inf``).

    Examples
    --------
    >>> import torch
    >>> from exitwise import ExitOutputs
    >>> out = ExitOutputs(torch.tensor([[[3.0, 0.0], [0.0, 1.0]], [[0.1, 0.0], [0.0, 5.0]]]))
    >>> ThresholdPolicy("max_probability", 0.9).exit_indices(out)
    tensor([0, 1])
    """

    kind = "threshold"

    def __init__(
        self,
        signal: str,
        thresholds: float | Sequence[float] | torch.Tensor,
        *,
        fallback: Literal["last", "most_confident"] = "last",
        recall: Recall = "none",
        min_exit: int = 0,
    ) -> None:
        signal = resolve_signal(signal)  # the one signal contract (names, decayed, callables)
        check_choice(fallback, "fallback", ("last", "most_confident"))
        check_choice(recall, "recall", RECALLS)
        if recall != "none" and fallback != "last":
            raise ValueError(
                "Expected `recall='none'` with fallback='most_confident' (that fallback already "
                "answers with the most confident exit); use one of them."
            )
        if isinstance(thresholds, torch.Tensor):
            values = thresholds.detach().cpu().to(torch.float64).reshape(-1).tolist()
            shared = thresholds.ndim == 0
        elif isinstance(thresholds, (int, float)) and not isinstance(thresholds, bool):
            values, shared = [float(thresholds)], True
        else:
            values, shared = [float(v) for v in thresholds], False
        if any(math.isnan(v) for v in values):
            raise ValueError("Expected `thresholds` without NaN; use +inf for 'never exit'.")
        if not values:
            raise ValueError("Expected at least one threshold, got none.")
        self.signal = signal
        self.thresholds = values[0] if shared else values
        self.fallback = fallback
        self.recall = recall
        self.min_exit = check_int(min_exit, "min_exit", minimum=0)

    @property
    def signal_name(self) -> str:
        """The underlying signal's name (position-aware or not)."""
        if isinstance(self.signal, DecayedSignal):
            return self.signal.name
        return self.signal if isinstance(self.signal, str) else signal_label(self.signal)

    def threshold_vector(self, num_exits: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Thresholds as a ``[E]`` float64 tensor (``+inf`` before ``min_exit``)."""
        if isinstance(self.thresholds, float):
            out = torch.full((num_exits,), self.thresholds, dtype=torch.float64, device=device)
        elif len(self.thresholds) != num_exits:
            raise ValueError(
                f"This policy has {len(self.thresholds)} thresholds but the outputs have "
                f"{num_exits} exits."
            )
        else:
            out = torch.tensor(self.thresholds, dtype=torch.float64, device=device)
        if self.min_exit:
            if self.min_exit >= num_exits:
                raise ValueError(
                    f"Expected `min_exit` below the number of exits ({num_exits}), got "
                    f"{self.min_exit}."
                )
            out[: self.min_exit] = math.inf
        return out

    def exit_indices(self, outputs: ExitOutputs) -> torch.Tensor:
        return self._indices(outputs)[0]

    def answer_indices(self, outputs: ExitOutputs) -> torch.Tensor:
        return self._indices(outputs)[1]

    def _indices(self, outputs: ExitOutputs) -> tuple[torch.Tensor, torch.Tensor]:
        """``(exit, answering exit)`` per sample, from one computation of the signal."""
        scores = scores_for(outputs, self.signal)
        thresholds = self.threshold_vector(outputs.num_exits, scores.device)
        index = first_exit(scores, thresholds)
        if self.fallback == "most_confident":
            none = ~(scores >= thresholds).any(dim=1)
            index = torch.where(none, scores.argmax(dim=1), index)
        if self.recall == "none":
            return index, index
        return index, recall_indices(scores).gather(1, index[:, None]).squeeze(1)

    def __repr__(self) -> str:
        if type(self) is not ThresholdPolicy:
            return super().__repr__()
        tail = "" if self.recall == "none" else f", recall={self.recall!r}"
        tail += f", min_exit={self.min_exit}" if self.min_exit else ""
        return (
            f"ThresholdPolicy({self.signal!r}, {self.thresholds!r}, "
            f"fallback={self.fallback!r}{tail})"
        )

    def params(self) -> dict[str, Any]:
        if not isinstance(self.signal, (str, DecayedSignal)):
            raise TypeError(
                f"This policy's signal is {signal_label(self.signal)!r} (a callable or "
                "precomputed scores), which a policy file cannot hold: register it with "
                "exitwise.signals.register_signal and use its name."
            )
        thr = self.thresholds
        encoded = (
            _float_to_json(thr) if isinstance(thr, float) else [_float_to_json(v) for v in thr]
        )
        params = {"signal": self.signal_name, "thresholds": encoded, "fallback": self.fallback}
        if self.recall != "none":  # files without these keys stay the same as before
            params["recall"] = self.recall
        if isinstance(self.signal, DecayedSignal):
            params["position_decay"] = self.signal.to_json()
        if self.min_exit:
            params["min_exit"] = self.min_exit
        return params

    @classmethod
    def _from_params(cls, params: dict[str, Any]) -> ThresholdPolicy:
        raw = params.get("thresholds")
        if isinstance(raw, list):
            thresholds: float | list[float] = [_float_from_json(v, "thresholds") for v in raw]
        else:
            thresholds = _float_from_json(raw, "thresholds")
        signal = params.get("signal")
        if "position_decay" in params:
            signal = DecayedSignal.from_json(signal, params["position_decay"])
        return cls(
            signal,
            thresholds,
            fallback=params.get("fallback", "last"),
            recall=params.get("recall", "none"),
            min_exit=params.get("min_exit", 0),
        )


class PatiencePolicy(ThresholdPolicy):
    """PABEE: leave once ``patience`` consecutive exits agree with the current prediction.

    Equivalent to ``ThresholdPolicy("patience", patience)``.

    Examples
    --------
    >>> import torch
    >>> from exitwise import ExitOutputs
    >>> logits = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [0.0, 1.0]]])
    >>> PatiencePolicy(2).exit_indices(ExitOutputs(logits))
    tensor([2])
    """

    kind = "patience"

    def __init__(self, patience: int) -> None:
        self.patience = check_int(patience, "patience", minimum=1)
        super().__init__("patience", float(self.patience))

    def params(self) -> dict[str, Any]:
        return {"patience": self.patience}

    @classmethod
    def _from_params(cls, params: dict[str, Any]) -> PatiencePolicy:
        return cls(params.get("patience"))


class FixedExitPolicy(ExitPolicy):
    """Every sample answers at exit ``exit`` (static truncation; negative counts from the end).

    Examples
    --------
    >>> import torch
    >>> from exitwise import ExitOutputs
    >>> FixedExitPolicy(-1).exit_indices(ExitOutputs(torch.zeros(2, 3, 2)))
    tensor([2, 2])
    """

    kind = "fixed"

    def __init__(self, exit: int) -> None:
        self.exit = check_int(exit, "exit")

    def exit_indices(self, outputs: ExitOutputs) -> torch.Tensor:
        e = outputs.num_exits
        if not -e <= self.exit < e:
            raise ValueError(f"Expected `exit` in [{-e}, {e - 1}] for {e} exits, got {self.exit}.")
        return torch.full(
            (outputs.num_samples,), self.exit % e, dtype=torch.int64, device=outputs.device
        )

    def params(self) -> dict[str, Any]:
        return {"exit": self.exit}

    @classmethod
    def _from_params(cls, params: dict[str, Any]) -> FixedExitPolicy:
        return cls(params.get("exit"))


class OracleExit(ExitPolicy):
    """The first exit whose answer is correct (the last exit when none is): an upper bound.

    Needs labels, or ``reference="final"`` for the first exit agreeing with the final one.

    Examples
    --------
    >>> import torch
    >>> from exitwise import ExitOutputs
    >>> out = ExitOutputs(torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]), labels=torch.tensor([1]))
    >>> OracleExit().exit_indices(out)
    tensor([1])
    """

    kind = "oracle"

    def __init__(self, reference: Literal["labels", "final"] = "labels") -> None:
        self.reference = check_choice(reference, "reference", ("labels", "final"))

    def exit_indices(self, outputs: ExitOutputs) -> torch.Tensor:
        correct = outputs.correct(self.reference).clone()
        correct[:, -1] = True
        return correct.to(torch.uint8).argmax(dim=1)

    def params(self) -> dict[str, Any]:
        return {"reference": self.reference}

    @classmethod
    def _from_params(cls, params: dict[str, Any]) -> OracleExit:
        return cls(params.get("reference", "labels"))
