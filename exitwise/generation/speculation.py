r"""Planning self-speculative decoding (LayerSkip) from per-token, per-exit logits.

Draft ``k`` tokens with the first ``d`` layers (exit ``d``), then verify them with the full
model in one pass. A draft token is accepted with probability :math:`\alpha_n`:

* greedy decoding: :math:`\alpha_n = [\arg\max p_d = \arg\max p_L]`;
* sampling: :math:`\alpha_n = \sum_c \min(p_{d,c}, p_{L,c})` (exact with full distributions;
  with ``collect(reduce="topk:K")`` the "rest" columns pool classes, and the sum over them is
  an upper bound).

A verification starting at position :math:`p` accepts :math:`J` drafts (:math:`J \le k`) and
produces :math:`J + 1` tokens (the verifier's correction, or its bonus token after :math:`k`
acceptances), so the next one starts at :math:`p + J + 1`. With
:math:`P(J = j) = \prod_{i<j} \alpha_{p+i}\,(1 - \alpha_{p+j})` (:math:`j < k`) and
:math:`P(J = k) = \prod_{i<k} \alpha_{p+i}`, the expected number of verifications from
:math:`p` to the end of a sequence of :math:`T` tokens is

.. math:: V(p) = 1 + \sum_{j=0}^{k} P(J = j)\, V(p + j + 1), \qquad V(p \ge T) = 0,

evaluated backwards over the teacher-forced sequences (the actual run lengths of agreement,
not only their mean). Tokens per verification are :math:`\sum_s T_s / \sum_s V_s(0)`; for
greedy decoding (:math:`\alpha \in \{0, 1\}`) this is the deterministic walk exactly. Beside
it the i.i.d. formula :math:`(1 - \bar\alpha^{k+1}) / (1 - \bar\alpha)`.

Cost of a verification round: ``k`` draft steps of cost :math:`c_d` (cumulative cost up to
exit ``d``) plus one verification pass: the remaining layers, :math:`c_L - c_d`
(``verification="remaining"``, LayerSkip reuses the draft's early layers) or the whole model
:math:`c_L` (``"full"``). Decoding is memory-bound, so a pass over ``k + 1`` tokens costs
about one pass over one. Speed-up over plain decoding = :math:`c_L \cdot \text{tokens per
verification} / (k\,c_d + c_v)`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from exitwise._checks import check_choice, check_int
from exitwise.data import ExitOutputs
from exitwise.generation.sequences import by_sequence, sequence_order

__all__ = ["SpeculationPlan", "acceptance", "plan_self_speculation", "sequence_table"]


@dataclass(frozen=True)
class SpeculationPlan:
    """Every (draft exit, draft length) candidate and the best one.

    ``rows`` holds dicts: draft_exit, draft_name, draft_length, acceptance (mean
    :math:`\\alpha`), tokens_per_verification (from the sequences' run lengths),
    tokens_per_verification_iid, speed_up; ``best`` the row with the highest speed-up;
    ``mode`` "greedy" or "sampling".
    """

    rows: list[dict[str, Any]]
    best: dict[str, Any]
    mode: str
    verification: str

    def speed_up_grid(self) -> torch.Tensor:
        """Speed-ups ``[D, K]`` (draft exits x draft lengths 1..K), for plots."""
        d = max(r["draft_exit"] for r in self.rows) + 1
        k = max(r["draft_length"] for r in self.rows)
        grid = torch.full((d, k), float("nan"), dtype=torch.float64)
        for r in self.rows:
            grid[r["draft_exit"], r["draft_length"] - 1] = r["speed_up"]
        return grid

    def to_text(self) -> str:
        lines = [
            f"self-speculative decoding ({self.mode}, verification: {self.verification})",
            f"{'draft exit':<12} {'k':>3} {'accept':>7} {'tok/verif':>10} {'iid':>7} "
            f"{'speed-up':>9}",
        ]
        for r in self.rows:
            mark = " *" if r is self.best else ""
            lines.append(
                f"{r['draft_name']:<12} {r['draft_length']:>3} {r['acceptance']:>7.3f} "
                f"{r['tokens_per_verification']:>10.3f} {r['tokens_per_verification_iid']:>7.3f} "
                f"{r['speed_up']:>8.2f}x{mark}"
            )
        return "\n".join(lines)


def acceptance(outputs: ExitOutputs, mode: str = "greedy") -> torch.Tensor:
    """Per-token acceptance ``[N, E - 1]`` of a draft from each exit against the last.

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


def _padded(
    alpha: np.ndarray, lengths: np.ndarray, pad: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tokens (sorted by sequence, then position) with ``pad`` zero rows after every sequence,
    ``[N + S pad, D]``, each sequence's first row and every token's row. Memory is linear in
    the tokens (no padding to the longest sequence)."""
    starts = np.cumsum(lengths + pad) - (lengths + pad)
    rows = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(lengths.sum())
    out = np.zeros((int(lengths.sum()) + lengths.size * pad, alpha.shape[1]))
    out[rows] = alpha
    return out, starts, rows


def _greedy_verifications(alpha: np.ndarray, lengths: np.ndarray, k: int) -> np.ndarray:
    """Verifications per sequence and draft exit ``[S, D]`` when every acceptance is 0 or 1:
    from position ``p`` the walk jumps to ``p + min(run, k) + 1`` (``run``: accepted drafts
    in a row); the number of jumps before a sequence ends, by pointer doubling over all
    tokens at once (``O(N D log T)`` time, ``O(N D)`` memory)."""
    a, starts, rows = _padded(alpha, lengths, 2)  # a walk ends <= 2 rows past a sequence
    n = a.shape[0]
    index = np.arange(n)[:, None]
    big = np.iinfo(np.int64).max
    zero_at = np.where(a == 0.0, index, big)  # padding rows are zeros: sequence ends
    next_zero = np.minimum.accumulate(zero_at[::-1], axis=0)[::-1]
    inside = np.zeros(n, dtype=bool)
    inside[rows] = True
    inside = np.broadcast_to(inside[:, None], a.shape)
    jump = np.where(inside, np.minimum(index + np.minimum(next_zero - index, k) + 1, n - 1), index)
    count = inside.astype(np.int64)
    for _ in range(int(np.ceil(np.log2(max(int(lengths.max()), 1) + 1))) + 1):
        count = count + np.take_along_axis(count, jump, axis=0)
        jump = np.take_along_axis(jump, jump, axis=0)
    return count[starts].astype(np.float64)


def _verifications(alpha: np.ndarray, lengths: np.ndarray, k: int) -> np.ndarray:
    """Expected verifications per sequence and draft exit ``[S, D]``: the backward recursion
    of the module docstring, one position rank at a time over the sequences still that long
    (``O(N D k)`` time, ``O(N D)`` memory; no padding to the longest sequence)."""
    a, starts, _ = _padded(alpha, lengths, k + 1)
    v = np.zeros_like(a)
    by_length = np.argsort(-lengths, kind="stable")
    ordered = np.sort(lengths)[::-1]
    for p in range(int(lengths.max()) - 1, -1, -1):
        active = starts[by_length[: int(np.searchsorted(-ordered, -p, side="left"))]] + p
        alive = np.ones((active.size, a.shape[1]))  # P(J >= j)
        total = np.zeros_like(alive)
        for j in range(k + 1):
            at = a[active + j]
            total += (alive * (1.0 - at) if j < k else alive) * v[active + j + 1]
            alive *= at
        v[active] = 1.0 + total
    return v[starts]


def plan_self_speculation(
    outputs: ExitOutputs,
    max_draft: int = 8,
    *,
    mode: str = "greedy",
    verification: str = "remaining",
) -> SpeculationPlan:
    """Acceptance, tokens per verification and speed-up of every draft exit ``d < E - 1`` and
    draft length ``k = 1..max_draft`` (see the module docstring).

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> logits = torch.randn(60, 3, 5, generator=g)
    >>> out = ExitOutputs(logits, groups=torch.arange(60) // 20, positions=torch.arange(60) % 20)
    >>> plan = plan_self_speculation(out, max_draft=4)
    >>> len(plan.rows), plan.best["speed_up"] > 0
    (8, True)
    """
    max_draft = check_int(max_draft, "max_draft", minimum=1)
    check_choice(verification, "verification", ("remaining", "full"))
    if outputs.num_exits < 2:
        raise ValueError("Planning speculation needs at least 2 exits (a draft and the last).")
    if outputs.groups is None or outputs.positions is None:
        raise ValueError(
            "Planning speculation needs token-level outputs with `groups` and `positions` "
            "(collect fills both for [B, T, C] outputs)."
        )
    alpha = acceptance(outputs, mode)  # [N, D]
    order, _, lengths_t = sequence_order(outputs.groups, outputs.positions.to(outputs.device))
    flat = alpha[order.to(alpha.device)].cpu().numpy()
    lengths = lengths_t.cpu().numpy()
    longest = int(lengths.max())
    if max_draft > longest:
        warnings.warn(
            f"max_draft={max_draft} is longer than the longest sequence ({longest} tokens): "
            f"no sequence can accept that many drafts, so the plan stops at k = {longest}.",
            UserWarning,
            stacklevel=2,
        )
        max_draft = longest
    greedy = bool(np.isin(flat, (0.0, 1.0)).all())
    costs = outputs.costs.to(torch.float64).cpu()
    full = float(costs[-1])
    mean_alpha = alpha.mean(dim=0).cpu()
    tokens = float(lengths.sum())
    rows = []
    for k in range(1, max_draft + 1):
        count = _greedy_verifications if greedy else _verifications
        verifs = count(flat, lengths, k).sum(axis=0)  # [D]
        for d in range(outputs.num_exits - 1):
            per_verif = tokens / float(verifs[d])
            a = float(mean_alpha[d])
            iid = float(k + 1) if a >= 1.0 else (1.0 - a ** (k + 1)) / (1.0 - a)
            c_d = float(costs[d])
            c_v = full - c_d if verification == "remaining" else full
            rows.append(
                {
                    "draft_exit": d,
                    "draft_name": outputs.exit_names[d],
                    "draft_length": k,
                    "acceptance": a,
                    "tokens_per_verification": per_verif,
                    "tokens_per_verification_iid": iid,
                    "speed_up": full * per_verif / (k * c_d + c_v),
                }
            )
    rows.sort(key=lambda r: (r["draft_exit"], r["draft_length"]))
    best = max(rows, key=lambda r: r["speed_up"])
    return SpeculationPlan(rows, best, mode, verification)
