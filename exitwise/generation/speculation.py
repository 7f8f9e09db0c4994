r"""Planning self-speculative decoding (LayerSkip) from per-token, per-exit logits.

Draft up to ``k`` tokens with the first ``d`` layers (exit ``d``), then verify them with the
full model in one pass. A draft token is accepted with probability :math:`\alpha_n`:

* greedy decoding: :math:`\alpha_n = [\arg\max p_d = \arg\max p_L]`;
* sampling: :math:`\alpha_n = \sum_c \min(p_{d,c}, p_{L,c})` (exact with full distributions;
  with ``collect(reduce="topk:K")`` the "rest" columns pool classes, and the sum over them is
  an upper bound).

A round drafts :math:`m \le k` tokens: adaptive drafting (``thresholds``) stops after the first
draft token whose confidence is below a threshold, and no round drafts past the end of the
sequence. The verification accepts :math:`J \le m` drafts and produces :math:`J + 1` tokens.
:mod:`exitwise.generation.speculation_walks` counts the verifications :math:`V` and draft steps
:math:`S` over the sequences' actual runs of agreement (exactly the greedy walk for greedy
decoding; the expected counts by a backward recursion for sampling; Hugging Face's
``"heuristic"`` schedule by a plain walk). Tokens per verification are
:math:`\sum_s T_s / \sum_s V_s`; beside it the i.i.d. formula
:math:`(1 - \bar\alpha^{k+1}) / (1 - \bar\alpha)`.

On teacher-forced text the counts are an estimate. On the model's *own* greedy continuations
(:func:`exitwise.generation.own_continuations`) every draft the engine makes is one of the
teacher-forced ones, so for greedy decoding with a fixed ``k`` the prediction is exact.

Speed-up, two ways:

* memory-bound (always): a draft step costs :math:`c_d` (the cumulative cost of exit ``d``), a
  verification the remaining layers :math:`c_L - c_d` (``verification="remaining"``, LayerSkip
  reuses the draft's early layers) or :math:`c_L` (``"full"``), whatever its width:
  :math:`c_L\,T / (S\,c_d + V\,c_v)`;
* measured (with ``costs``, a :class:`~exitwise.generation.SpeculationCosts` measured on the
  model at a batch size and context length): see :mod:`exitwise.generation.speculation_costs`.

No speculation (``K = 0``, speed-up 1) is always a candidate: :attr:`SpeculationPlan.speculate`
is false where no candidate beats it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from exitwise._checks import check_choice, check_int
from exitwise._distributed import all_reduce_max, all_reduce_sum, group_active, sample_mean
from exitwise.data import ExitOutputs
from exitwise.generation.sequences import by_sequence, sequence_order
from exitwise.generation.speculation_costs import SpeculationCosts
from exitwise.generation.speculation_walks import expected_walk, greedy_walk, heuristic_walk

__all__ = ["SpeculationPlan", "acceptance", "plan_self_speculation", "sequence_table"]

SCHEDULES = ("constant", "heuristic", "heuristic_transient")


@dataclass(frozen=True)
class SpeculationPlan:
    """Every (draft exit, draft length, stop threshold) candidate and the best one.

    ``rows`` holds dicts: draft_exit, draft_name, draft_length (``k``; the starting length
    under a heuristic schedule), threshold (as given: an acceptance probability with a
    calibration, a raw confidence without; ``None``: no threshold), confidence_threshold
    (``[d]``'s raw confidence an engine compares with; 0.0: none), acceptance (mean
    :math:`\\alpha`), tokens, verifications, draft_steps, tokens_per_verification,
    tokens_per_verification_iid, speed_up (memory-bound) and, with ``costs``,
    speed_up_measured. ``best`` is the row with the highest speed-up (measured where there
    are costs); ``speculate`` says whether it beats plain decoding.
    """

    rows: list[dict[str, Any]]
    best: dict[str, Any]
    mode: str
    verification: str
    schedule: str = "constant"
    costs: SpeculationCosts | None = None

    @property
    def speculate(self) -> bool:
        """Whether the best candidate beats plain decoding (``K = 0``)."""
        return _score(self.best) > 1.0

    def speed_up_grid(self, threshold: float | None = None) -> torch.Tensor:
        """Speed-ups ``[D, K]`` (draft exits x draft lengths 1..K) at one stop threshold
        (``None``: no threshold), for plots; measured where the plan has costs."""
        rows = [r for r in self.rows if r["threshold"] == threshold]
        if not rows:
            raise ValueError(f"The plan has no candidate with threshold {threshold!r}.")
        d = max(r["draft_exit"] for r in rows) + 1
        k = max(r["draft_length"] for r in rows)
        grid = torch.full((d, k), float("nan"), dtype=torch.float64)
        for r in rows:
            grid[r["draft_exit"], r["draft_length"] - 1] = _score(r)
        return grid

    def to_text(self) -> str:
        measured = self.costs is not None
        lines = [
            f"self-speculative decoding ({self.mode}, verification: {self.verification}, "
            f"schedule: {self.schedule})",
            f"{'draft exit':<12} {'k':>3} {'stop':>6} {'accept':>7} {'tok/verif':>10} "
            f"{'iid':>7} {'drafts/verif':>12} {'memory-bound':>13}"
            + (f" {'measured':>9}" if measured else ""),
        ]
        for r in self.rows:
            mark = " *" if r is self.best and self.speculate else ""
            stop = "-" if r["threshold"] is None else f"{r['threshold']:.2f}"
            lines.append(
                f"{r['draft_name']:<12} {r['draft_length']:>3} {stop:>6} {r['acceptance']:>7.3f} "
                f"{r['tokens_per_verification']:>10.3f} {r['tokens_per_verification_iid']:>7.3f} "
                f"{r['draft_steps'] / r['verifications']:>12.2f} {r['speed_up']:>12.2f}x"
                + (f" {r['speed_up_measured']:>8.2f}x" if measured else "")
                + mark
            )
        lines.append(
            f"{'none (K = 0)':<12} {0:>3} plain decoding: 1.00x" + ("" if self.speculate else " *")
        )
        return "\n".join(lines)

    def to_hf_generate_kwargs(self, model: Any, *, row: dict | None = None, layers=None):
        """Set the plan on a Hugging Face model; return the kwargs for ``model.generate``
        (see :func:`exitwise.generation.hf_generate_kwargs`)."""
        from exitwise.generation.engine_configs import hf_generate_kwargs

        return hf_generate_kwargs(self, model, row=row, layers=layers)

    def to_vllm(self, costs_by_batch_size, *, draft_exit: int | None = None) -> dict:
        """vLLM's ``speculative_config`` (see :func:`exitwise.generation.vllm_config`)."""
        from exitwise.generation.engine_configs import vllm_config

        return vllm_config(self, costs_by_batch_size, draft_exit=draft_exit)

    def to_trtllm(self, costs_by_batch_size, *, draft_exit: int | None = None) -> dict:
        """TensorRT-LLM's decoding config (see :func:`exitwise.generation.trtllm_config`)."""
        from exitwise.generation.engine_configs import trtllm_config

        return trtllm_config(self, costs_by_batch_size, draft_exit=draft_exit)


def _score(row: dict[str, Any]) -> float:
    return float(row.get("speed_up_measured", row["speed_up"]))


def acceptance(outputs: ExitOutputs, mode: str = "greedy") -> torch.Tensor:
    r"""Per-token acceptance ``[N, E - 1]`` of a draft from each exit against the last.

    ``"greedy"``: whether the draft's argmax is the last exit's. ``"sampling"``:
    :math:`\sum_c \min(p_{d,c}, p_{L,c})` over the class columns; with rest columns
    (``collect(reduce="fixed:K")``) a lower bound, below the true value by at most the
    smaller of the two exits' rest masses.

    Examples
    --------
    >>> import torch
    >>> out = ExitOutputs(torch.tensor([[[2.0, 0.0], [0.0, 1.0], [0.0, 3.0]]]))
    >>> acceptance(out).tolist(), acceptance(out, "sampling").round(decimals=3).tolist()
    ([[0.0, 1.0]], [[0.167, 0.778]])
    """
    check_choice(mode, "mode", ("greedy", "sampling"))
    if mode == "greedy":
        pred = outputs.predictions()
        return (pred[:, :-1] == pred[:, -1:]).to(torch.float64)
    probs = torch.softmax(outputs.logits.to(torch.float64), dim=-1)
    probs = probs[..., : outputs.num_classes - outputs.rest_columns]
    return torch.minimum(probs[:, :-1], probs[:, -1:]).sum(dim=-1)


def sequence_table(outputs: ExitOutputs, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``values`` ``[N, ...]`` laid out per sequence in position order: ``[S, T_max, ...]``
    (padding 0) and the sequence lengths ``[S]``. Needs ``groups`` and ``positions``; a
    sequence's tokens must have distinct positions (gaps are closed up)."""
    if outputs.groups is None or outputs.positions is None:
        raise ValueError(
            "Planning speculation needs token-level outputs with `groups` and `positions` "
            "(collect fills both for [B, T, C] outputs)."
        )
    table, lengths, _ = by_sequence(outputs.groups, outputs.positions, values)
    return table, lengths


def _stop_thresholds(
    thresholds: Sequence[float], calibration: Any, num_drafts: int
) -> list[tuple[float | None, np.ndarray]]:
    """``(threshold as given, raw confidence threshold per draft exit [D])``, no threshold
    first."""
    out: list[tuple[float | None, np.ndarray]] = [(None, np.zeros(num_drafts))]
    for t in thresholds:
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= t <= 1.0:
            raise ValueError(f"Expected every entry of `thresholds` in [0, 1], got {t!r}.")
        if calibration is None:
            raw = np.full(num_drafts, float(t))
        else:
            if calibration.num_drafts != num_drafts:
                raise ValueError(
                    f"Expected `calibration` fitted on {num_drafts} draft exits, got "
                    f"{calibration.num_drafts}."
                )
            raw = np.array(
                [calibration.confidence_threshold(float(t), d) for d in range(num_drafts)]
            )
        out.append((float(t), raw))
    return out


def plan_self_speculation(
    outputs: ExitOutputs,
    max_draft: int = 8,
    *,
    mode: str = "greedy",
    verification: str = "remaining",
    thresholds: Sequence[float] = (),
    calibration: Any = None,
    schedule: str = "constant",
    costs: SpeculationCosts | None = None,
) -> SpeculationPlan:
    """Tokens per verification, draft steps and speed-up of every draft exit ``d < E - 1``,
    draft length ``k = 1..max_draft`` and stop threshold (see the module docstring).

    Parameters
    ----------
    outputs : ExitOutputs
        Token-level (``groups`` and ``positions``), e.g. from
        :func:`~exitwise.generation.own_continuations`.
    max_draft : int, default=8
    mode : {"greedy", "sampling"}
    verification : {"remaining", "full"}
        What a verification pass costs in the memory-bound formula.
    thresholds : sequence of float, default=()
        Stop thresholds for adaptive drafting, besides none: acceptance probabilities with
        ``calibration`` (an :class:`~exitwise.generation.AcceptanceCalibration` fitted on
        another split), raw draft confidences without.
    schedule : {"constant", "heuristic", "heuristic_transient"}
        Hugging Face's ``num_assistant_tokens_schedule`` (the heuristic ones: greedy only).
    costs : SpeculationCosts, optional
        Measured seconds; adds ``speed_up_measured`` and chooses ``best`` by it.

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> logits = torch.randn(60, 3, 5, generator=g)
    >>> out = ExitOutputs(logits, groups=torch.arange(60) // 20, positions=torch.arange(60) % 20)
    >>> plan = plan_self_speculation(out, max_draft=4, thresholds=[0.5])
    >>> len(plan.rows), plan.best["speed_up"] > 0
    (16, True)
    """
    max_draft = check_int(max_draft, "max_draft", minimum=1)
    check_choice(verification, "verification", ("remaining", "full"))
    check_choice(schedule, "schedule", SCHEDULES)
    if outputs.num_exits < 2:
        raise ValueError("Planning speculation needs at least 2 exits (a draft and the last).")
    if outputs.groups is None or outputs.positions is None:
        raise ValueError(
            "Planning speculation needs token-level outputs with `groups` and `positions` "
            "(collect fills both for [B, T, C] outputs)."
        )
    if costs is not None:
        if not isinstance(costs, SpeculationCosts):
            raise TypeError(f"Expected `costs` to be SpeculationCosts, got {type(costs).__name__}.")
        if len(costs.draft_steps) != outputs.num_exits - 1:
            raise ValueError(
                f"Expected `costs.draft_steps` for the {outputs.num_exits - 1} draft exits, got "
                f"{len(costs.draft_steps)}."
            )
    from exitwise.generation.draft_acceptance import draft_confidence

    alpha = acceptance(outputs, mode)  # [N, D]
    order, _, lengths_t = sequence_order(outputs.groups, outputs.positions.to(outputs.device))
    order = order.to(alpha.device)
    flat = alpha[order].cpu().numpy()
    confidence = draft_confidence(outputs)[order].cpu().numpy()
    lengths = lengths_t.cpu().numpy()
    # in a process group (sequences whole within a rank): every rank's sequences, whose
    # walks are independent, so their counts add up
    distributed = group_active()
    longest, graded = int(lengths.max()), int(not np.isin(flat, (0.0, 1.0)).all())
    if distributed:  # on the outputs' device: NCCL carries CUDA tensors only
        shared = torch.tensor([longest, graded], device=alpha.device)
        all_reduce_max(shared)
        longest, graded = (int(v) for v in shared)
    if max_draft > longest:
        warnings.warn(
            f"max_draft={max_draft} is longer than the longest sequence ({longest} tokens): "
            f"no sequence can accept that many drafts, so the plan stops at k = {longest}.",
            UserWarning,
            stacklevel=2,
        )
        max_draft = longest
    greedy = not graded
    if schedule != "constant" and not greedy:
        raise ValueError(f"schedule={schedule!r} is simulated for greedy decoding only.")
    num_drafts = outputs.num_exits - 1
    stops = _stop_thresholds(thresholds, calibration, num_drafts)
    mean_alpha = sample_mean(alpha).cpu()
    exit_costs = outputs.costs.to(torch.float64).cpu()
    tokens = float(lengths.sum())
    if distributed:
        tokens = float(_summed(np.array([tokens]), alpha.device)[0])
    rows = []
    for k in range(1, max_draft + 1):
        for given, raw in stops:
            confident = (confidence >= raw[None, :]).astype(np.float64)
            verifs, drafts = _counts(flat, confident, lengths, k, greedy, schedule)
            if distributed:
                verifs, drafts = _summed(verifs, alpha.device), _summed(drafts, alpha.device)
            for d in range(num_drafts):
                rows.append(
                    _row(
                        outputs,
                        d,
                        k,
                        given,
                        raw[d],
                        float(mean_alpha[d]),
                        tokens,
                        float(verifs[d]),
                        float(drafts[d]),
                        exit_costs,
                        verification,
                        costs,
                    )
                )
    rows.sort(
        key=lambda r: (
            r["draft_exit"],
            r["threshold"] is not None,
            r["threshold"] or 0.0,
            r["draft_length"],
        )
    )
    best = max(rows, key=_score)
    return SpeculationPlan(rows, best, mode, verification, schedule, costs)


def _summed(values: np.ndarray, device: torch.device) -> np.ndarray:
    """``values`` summed over the ranks of the process group (float64), reduced on
    ``device``."""
    out = torch.as_tensor(np.asarray(values, dtype=np.float64)).to(device)
    all_reduce_sum(out)
    return out.cpu().numpy()


def _counts(flat, confident, lengths, k, greedy, schedule) -> tuple[np.ndarray, np.ndarray]:
    """Total verifications and draft steps per draft exit ``([D], [D])``."""
    if schedule != "constant":
        pairs = [
            heuristic_walk(
                flat[:, d], confident[:, d], lengths, k, persistent=schedule == "heuristic"
            )
            for d in range(flat.shape[1])
        ]
        return np.array([v.sum() for v, _ in pairs]), np.array([s.sum() for _, s in pairs])
    walk = greedy_walk if greedy else expected_walk
    verifs, drafts = walk(flat, confident, lengths, k)
    return verifs.sum(axis=0), drafts.sum(axis=0)


def _row(outputs, d, k, given, raw, a, tokens, verifs, drafts, exit_costs, verification, costs):
    full = float(exit_costs[-1])
    c_d = float(exit_costs[d])
    c_v = full - c_d if verification == "remaining" else full
    iid = float(k + 1) if a >= 1.0 else (1.0 - a ** (k + 1)) / (1.0 - a)
    row = {
        "draft_exit": d,
        "draft_name": outputs.exit_names[d],
        "draft_length": k,
        "threshold": given,
        "confidence_threshold": float(raw),
        "acceptance": a,
        "tokens": tokens,
        "verifications": verifs,
        "draft_steps": drafts,
        "tokens_per_verification": tokens / verifs,
        "tokens_per_verification_iid": iid,
        "speed_up": full * tokens / (drafts * c_d + verifs * c_v),
    }
    if costs is not None:
        row["speed_up_measured"] = costs.speed_up(d, tokens, verifs, drafts)
    return row
