"""``ExitController``: the tuned policy inside an inference loop.

Built from a threshold policy (and optionally the temperatures of a fitted
:class:`~exitwise.calibrate.TemperatureScaling`), the controller decides, after each exit's
head has run on a batch, which samples may stop. It is a ``torch.nn.Module`` without
Python loops over samples, scriptable with TorchScript, and its policy file (JSON) round-trips
exactly.

A typical loop (compacting the batch as samples leave)::

    controller = ExitController.from_policy(tuned.policy, calibrator)
    state = controller.initial_state(batch_size, device)
    for e, (block, head) in enumerate(zip(blocks, heads)):
        x = block(x)
        logits = head(x)
        done, state = controller.decide(e, logits, state)
        ...  # emit logits[done], keep x[~done] and the state rows of the samples still running
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from exitwise._checks import check_choice
from exitwise.calibrate.temperature import scale_by_temperature
from exitwise.policies.base import load_policy
from exitwise.policies.positions import DecayedSignal, calm_factor
from exitwise.policies.recall import RECALLS
from exitwise.policies.threshold import ThresholdPolicy
from exitwise.signals import SIGNALS, built_in_signals, exit_signal, initial_state

__all__ = ["ExitController"]


class ExitController(nn.Module):
    """Per-batch exit decisions of a threshold policy (with optional temperatures).

    Parameters
    ----------
    signal : str
        One of the built-in signal names.
    thresholds : sequence of float
        One per exit (the last exit always answers).
    temperatures : sequence of float, optional
        Per-exit temperatures applied to the logits before the signal.
    recall : {"none", "most_confident"}, default="none"
        The policy's recall rule (:meth:`decide_with_recall` applies it).
    position_decay : (tau, length), optional
        CALM's position-aware thresholds (:mod:`exitwise.policies.positions`): decisions
        then need the tokens' positions (:meth:`decide_at`).
    min_exit : int, default=0
        Never exit before this exit.

    Examples
    --------
    >>> import torch
    >>> controller = ExitController("max_probability", [0.9, float("inf")])
    >>> state = controller.initial_state(2)
    >>> done, state = controller.decide(0, torch.tensor([[5.0, 0.0], [0.1, 0.0]]), state)
    >>> done
    tensor([ True, False])
    """

    def __init__(
        self,
        signal: str,
        thresholds,
        temperatures=None,
        recall: str = "none",
        position_decay: tuple[float, float] | None = None,
        min_exit: int = 0,
    ) -> None:
        super().__init__()
        built_in = built_in_signals()
        if signal not in built_in:
            raise ValueError(f"ExitController supports the signals {built_in}, got {signal!r}.")
        thr = torch.as_tensor([float(t) for t in thresholds], dtype=torch.float64)
        if thr.ndim != 1 or thr.numel() == 0 or bool(torch.isnan(thr).any()):
            raise ValueError("Expected `thresholds`: one number per exit, no NaN.")
        self.calibrated = temperatures is not None
        temps = (
            torch.ones_like(thr)
            if temperatures is None
            else torch.as_tensor([float(t) for t in temperatures], dtype=torch.float64)
        )
        if temps.shape != thr.shape or bool((temps <= 0).any()):
            raise ValueError("Expected one positive temperature per exit.")
        check_choice(recall, "recall", RECALLS)
        self.recall = recall
        self.signal = signal
        code = SIGNALS[signal].code
        self.signal_code: int = -1 if code is None else code
        self.num_exits = int(thr.numel())
        if not 0 <= int(min_exit) < max(1, self.num_exits):
            raise ValueError(f"Expected `min_exit` in [0, {self.num_exits - 1}], got {min_exit}.")
        self.min_exit = int(min_exit)
        thr[: self.min_exit] = math.inf
        self.decayed = position_decay is not None
        tau, length = (0.0, 1.0) if position_decay is None else position_decay
        if position_decay is not None:
            DecayedSignal(signal, float(length), float(tau))  # validates
        self.decay_tau = float(tau)
        self.decay_length = float(length)
        self.register_buffer("thresholds", thr)
        self.register_buffer("temperatures", temps)

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_policy(cls, policy: ThresholdPolicy, calibrator=None, num_exits: int | None = None):
        """From a :class:`ThresholdPolicy` (shared thresholds need ``num_exits``) and an
        optional fitted ``TemperatureScaling``."""
        if not isinstance(policy, ThresholdPolicy) or policy.fallback != "last":
            raise TypeError("Expected a ThresholdPolicy with fallback='last'.")
        temps = None
        if calibrator is not None:
            if not hasattr(calibrator, "temperatures_"):
                raise TypeError(
                    "ExitController applies temperature scaling only; pass a fitted "
                    "TemperatureScaling (or calibrate offline)."
                )
            temps = calibrator.temperatures_.tolist()
            if not isinstance(policy.thresholds, float) and len(policy.thresholds) != len(temps):
                raise ValueError(
                    f"The policy has {len(policy.thresholds)} thresholds (one per exit) but the "
                    f"calibrator was fitted on {len(temps)} exits; use the calibrator the policy "
                    "was tuned with."
                )
            num_exits = len(temps)
        if isinstance(policy.thresholds, float):
            if num_exits is None:
                raise ValueError("A shared threshold needs `num_exits`.")
            thresholds = [policy.thresholds] * num_exits
        else:
            thresholds = list(policy.thresholds)
        decay = policy.signal if isinstance(policy.signal, DecayedSignal) else None
        return cls(
            policy.signal_name,
            thresholds,
            temps,
            policy.recall,
            None if decay is None else (decay.tau, decay.length),
            policy.min_exit,
        )

    @classmethod
    def from_policy_file(cls, path: str | Path, calibrator=None, num_exits: int | None = None):
        return cls.from_policy(load_policy(path), calibrator, num_exits)

    def policy(self) -> ThresholdPolicy:
        """The policy this controller applies (for ``save``)."""
        signal = (
            DecayedSignal(self.signal, self.decay_length, self.decay_tau)
            if self.decayed
            else self.signal
        )
        # thresholds before min_exit are +inf already (set in __init__)
        return ThresholdPolicy(
            signal, self.thresholds.tolist(), recall=self.recall, min_exit=self.min_exit
        )

    # -- decisions ------------------------------------------------------------------------
    def initial_state(self, batch_size: int, device: torch.device | str = "cpu"):
        """``(previous prediction, agreement run length)``, both ``[B]`` int64."""
        return initial_state([batch_size], torch.device(device))

    def forward(
        self,
        exit_index: int,
        logits: torch.Tensor,
        previous: torch.Tensor,
        run: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(exit_mask [B], prediction [B], run length [B])`` after exit ``exit_index``.

        The score is :func:`exitwise.signals.exit_signal` of the (temperature-scaled) logits:
        the very function offline evaluation uses, so decisions match it exactly.

        Raises ``ValueError`` for an ``exit_index`` outside ``[0, E)``, logits that are not
        ``[B, C]`` or hold NaN, and a state whose size is not B.
        """
        done, pred, run, _ = self._step(exit_index, logits, previous, run, None)
        return done, pred, run

    def _step(
        self,
        exit_index: int,
        logits: torch.Tensor,
        previous: torch.Tensor,
        run: torch.Tensor,
        positions: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`forward` plus the score (divided by CALM's position factor when the policy
        is position-aware)."""
        if exit_index < 0 or exit_index >= self.num_exits:
            raise ValueError(
                f"Expected `exit_index` in [0, {self.num_exits - 1}] (the policy has "
                f"{self.num_exits} exits), got {exit_index}."
            )
        if logits.dim() != 2:
            raise ValueError(
                f"Expected `logits` of one exit with shape [B, C], got {logits.dim()} dimensions."
            )
        if previous.shape[0] != logits.shape[0] or run.shape[0] != logits.shape[0]:
            raise ValueError(
                f"Expected a state of {logits.shape[0]} rows (one per sample in the batch), got "
                f"{previous.shape[0]}; keep the state rows of the samples still running."
            )
        if bool(torch.isnan(logits).any()):
            raise ValueError(
                f"`logits` at exit {exit_index} hold NaN values; the controller cannot decide."
            )
        z = logits
        if self.calibrated:
            z = scale_by_temperature(logits, self.temperatures[exit_index])
        score, pred, new_run = exit_signal(self.signal_code, z, previous, run)
        if self.decayed:
            if positions is None:
                raise ValueError(
                    "This policy's thresholds depend on token positions; use decide_at(...)."
                )
            if positions.shape[0] != logits.shape[0]:
                raise ValueError("Expected one position per row of `logits`.")
            factor = calm_factor(positions, self.decay_tau, self.decay_length)
            score = score.to(torch.float64) / factor.to(score.device)
        if exit_index >= self.num_exits - 1:
            done = torch.ones_like(pred, dtype=torch.bool)
        else:
            done = score >= self.thresholds[exit_index]
        return done, pred, new_run, score

    @torch.jit.export
    def decide(
        self, exit_index: int, logits: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """``(exit_mask [B], new_state)`` for the batch's logits at exit ``exit_index``
        (also on the TorchScript-compiled controller)."""
        done, pred, run, _ = self._step(exit_index, logits, state[0], state[1], None)
        return done, (pred, run)

    @torch.jit.export
    def decide_at(
        self,
        exit_index: int,
        logits: torch.Tensor,
        state: tuple[torch.Tensor, torch.Tensor],
        positions: torch.Tensor,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """:meth:`decide` for tokens at ``positions`` ``[B]`` (position-aware policies)."""
        done, pred, run, _ = self._step(exit_index, logits, state[0], state[1], positions)
        return done, (pred, run)

    def initial_recall_state(self, batch_size: int, device: torch.device | str = "cpu"):
        """``(previous prediction, run length, best score, best prediction)``, all ``[B]``
        (the best score float64, starting at ``-inf``)."""
        previous, run = initial_state([batch_size], torch.device(device))
        best = torch.full((batch_size,), -math.inf, dtype=torch.float64, device=device)
        return previous, run, best, previous.clone()

    @torch.jit.export
    def decide_with_recall(
        self,
        exit_index: int,
        logits: torch.Tensor,
        state: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    ) -> tuple[
        torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
    ]:
        """``(exit_mask [B], answer [B], new_state)``: the answer is the prediction of the most
        confident exit so far (ties to the deepest) when ``recall="most_confident"``, else
        this exit's prediction; it equals
        :meth:`ThresholdPolicy.predictions <exitwise.policies.ExitPolicy.predictions>`
        offline."""
        done, pred, run, score = self._step(exit_index, logits, state[0], state[1], None)
        take = score.to(torch.float64) >= state[2]
        best = torch.where(take, score.to(torch.float64), state[2])
        best_pred = torch.where(take, pred, state[3])
        answer = best_pred if self.recall == "most_confident" else pred
        return done, answer, (pred, run, best, best_pred)
