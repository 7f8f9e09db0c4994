r"""What early exit costs during generation, once the KV cache of skipped layers counts.

A token that exits after layer :math:`D` (its *depth*) has no keys/values in layers
:math:`> D`, which later tokens attend to. Three ways to handle it, per token (layer costs
:math:`c_l`, K/V projection costs :math:`k_l`, layers numbered from 1, :math:`C(D) =
\sum_{l \le D} c_l`):

* ``"skip"``: later tokens attend without them; a token costs :math:`C(D)`;
* ``"copy"`` (CALM): project the exited hidden state into the skipped layers' K/V; a token
  costs :math:`C(D) + \sum_{l > D} k_l`;
* ``"recompute"``: fill them when a deeper token needs them: a token of depth :math:`D`
  first runs every earlier token of its sequence whose states stop below :math:`D` up to
  :math:`D` (:math:`C(D) - C(\text{their depth so far})` each); that catch-up is charged to
  the token that triggers it.

:func:`simulate_decode` generates sequences in lock-step batches: decode step :math:`p` runs
token :math:`p` of every sequence of the batch that is still going. Memory-bound decoding
loads each layer's weights once per step, so a step lasts as long as its deepest token
(:math:`C(\max D)`, plus the K/V copies of the layers beyond it under ``"copy"``; under
``"recompute"``, as long as its costliest token with that token's catch-up, an
approximation); the compute (FLOPs) is the sum of the tokens' own costs. Both are reported
as throughput relative to the full model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from exitwise._checks import as_tensor, check_choice, check_int
from exitwise.generation.sequences import by_sequence

__all__ = [
    "KV_MODES",
    "DecodeResult",
    "LayerCosts",
    "policy_token_costs",
    "simulate_decode",
    "token_costs",
]

#: how the K/V of skipped layers are handled
KV_MODES = ("skip", "copy", "recompute")


@dataclass(frozen=True)
class LayerCosts:
    """Per-layer costs of one token: ``layer`` ``[L]`` (a whole layer) and ``kv`` ``[L]``
    (its K/V projections only), and ``exit_layers``: the depth (1..L) of every exit.

    Examples
    --------
    >>> costs = LayerCosts([1.0, 1.0, 1.0], [0.1, 0.2, 0.3], [1, 2, 3])
    >>> costs.cumulative.tolist()
    [0.0, 1.0, 2.0, 3.0]
    """

    layer: Any
    kv: Any
    exit_layers: Any

    def __post_init__(self) -> None:
        layer = as_tensor(self.layer, "layer").to(torch.float64).cpu()
        kv = as_tensor(self.kv, "kv").to(torch.float64).cpu()
        exits = as_tensor(self.exit_layers, "exit_layers").cpu()
        if layer.ndim != 1 or layer.numel() == 0 or bool((layer < 0).any()):
            raise ValueError("Expected `layer`: one cost >= 0 per layer.")
        if kv.shape != layer.shape or bool((kv < 0).any()):
            raise ValueError(f"Expected `kv`: one cost >= 0 per layer ({layer.numel()}).")
        if exits.is_floating_point() or exits.ndim != 1 or exits.numel() == 0:
            raise ValueError("Expected `exit_layers`: one integer depth per exit.")
        if bool((exits < 1).any() or (exits > layer.numel()).any() or (exits.diff() <= 0).any()):
            raise ValueError(
                f"Expected `exit_layers` increasing in [1, {layer.numel()}], got {exits.tolist()}."
            )
        object.__setattr__(self, "layer", layer)
        object.__setattr__(self, "kv", kv)
        object.__setattr__(self, "exit_layers", exits.long())

    @property
    def cumulative(self) -> torch.Tensor:
        """:math:`C(D)` for ``D = 0..L`` ``[L + 1]``."""
        return torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(self.layer, 0)])

    @property
    def kv_beyond(self) -> torch.Tensor:
        """:math:`\\sum_{l > D} k_l` for ``D = 0..L`` ``[L + 1]``."""
        tail = torch.flip(torch.cumsum(torch.flip(self.kv, [0]), 0), [0])
        return torch.cat([tail, torch.zeros(1, dtype=torch.float64)])


def token_costs(
    exits: Any,
    groups: Any,
    positions: Any,
    costs: LayerCosts,
    kv: str = "copy",
) -> torch.Tensor:
    """Cost of every token ``[N]`` (float64) that leaves at exit ``exits[n]``, under the K/V
    rule ``kv`` (see the module docstring).

    Examples
    --------
    >>> costs = LayerCosts([1.0, 1.0, 1.0], [0.1, 0.2, 0.3], [1, 2, 3])
    >>> exits, groups, positions = [0, 2, 1], [0, 0, 0], [0, 1, 2]
    >>> [token_costs(exits, groups, positions, costs, m).tolist() for m in KV_MODES]
    [[1.0, 3.0, 2.0], [1.5, 3.0, 2.3], [1.0, 5.0, 2.0]]
    """
    check_choice(kv, "kv", KV_MODES)
    e = as_tensor(exits, "exits").cpu().long()
    depth = costs.exit_layers[e]
    own = costs.cumulative[depth]
    if kv == "skip":
        return own
    if kv == "copy":
        return own + costs.kv_beyond[depth]
    g, p = as_tensor(groups, "groups"), as_tensor(positions, "positions")
    table, _, rows = by_sequence(g, p, depth, fill=-1)
    cum = costs.cumulative
    s, t = table.shape
    computed = torch.zeros((s, t), dtype=torch.long)  # depth of each token's states so far
    out = own.clone()
    for p in range(t):
        d = table[:, p]
        alive = d >= 0
        if p:
            gap = (cum[d.clamp(min=0)][:, None] - cum[computed[:, :p]]).clamp(min=0)
            catch = gap.sum(dim=1)
            out[rows[alive, p]] += catch[alive]
            computed[:, :p] = torch.maximum(computed[:, :p], d.clamp(min=0)[:, None])
        computed[:, p] = d.clamp(min=0)
    return out


def policy_token_costs(
    policy: Any,
    outputs: Any,
    costs: LayerCosts,
    kv: str = "copy",
    percentiles: tuple[float, ...] = (50.0, 90.0, 99.0),
) -> dict[str, Any]:
    """Mean and percentile cost per token of ``policy`` on token-level ``outputs`` under the
    K/V rule ``kv``, and the full model's (every token at the last exit's depth).

    Examples
    --------
    >>> import torch
    >>> from exitwise import ExitOutputs
    >>> from exitwise.policies import FixedExitPolicy
    >>> out = ExitOutputs(torch.randn(6, 3, 4), groups=[0, 0, 0, 1, 1, 1],
    ...                   positions=[0, 1, 2, 0, 1, 2])
    >>> costs = LayerCosts([1.0, 1.0, 1.0], [0.5, 0.5, 0.5], [1, 2, 3])
    >>> policy_token_costs(FixedExitPolicy(0), out, costs, "copy")["mean"]
    2.0
    """
    if outputs.groups is None or outputs.positions is None:
        raise ValueError("Expected token-level outputs with `groups` and `positions`.")
    exits = policy.exit_indices(outputs).cpu()
    per_token = token_costs(exits, outputs.groups, outputs.positions, costs, kv)
    q = torch.tensor([p / 100.0 for p in percentiles], dtype=torch.float64)
    values = torch.quantile(per_token, q)
    full = float(costs.cumulative[int(costs.exit_layers[-1])])
    return {
        "kv": kv,
        "mean": float(per_token.mean()),
        "percentiles": {p: float(v) for p, v in zip(percentiles, values, strict=True)},
        "full": full,
        "relative_mean": float(per_token.mean()) / full,
    }


@dataclass(frozen=True)
class DecodeResult:
    """Lock-step decoding of a policy's exits: mean step time and compute per token, against
    the full model's (``relative_*`` = the full model's cost / this one: tokens/s ratios)."""

    kv: str
    batch_size: int
    steps: int
    mean_step_time: float
    full_step_time: float
    compute_per_token: float
    full_compute_per_token: float

    @property
    def relative_throughput(self) -> float:
        """Tokens/s relative to the full model when decoding is memory-bound (step time)."""
        return self.full_step_time / self.mean_step_time

    @property
    def relative_compute_throughput(self) -> float:
        """Tokens/s relative to the full model when decoding is compute-bound (FLOPs)."""
        return self.full_compute_per_token / self.compute_per_token


def simulate_decode(
    exits: Any,
    groups: Any,
    positions: Any,
    costs: LayerCosts,
    *,
    batch_size: int = 8,
    kv: str = "copy",
) -> DecodeResult:
    """Generate the sequences ``batch_size`` at a time in lock-step (sequences in id order)
    and time every decode step (see the module docstring).

    Examples
    --------
    >>> costs = LayerCosts([1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1, 2, 3])
    >>> res = simulate_decode([0, 2, 1, 0], [0, 0, 1, 1], [0, 1, 0, 1], costs,
    ...                       batch_size=2, kv="skip")
    >>> res.mean_step_time, res.relative_throughput   # steps: max(1, 2) = 2, max(3, 1) = 3
    (2.5, 1.2)
    """
    check_choice(kv, "kv", KV_MODES)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    e = as_tensor(exits, "exits").cpu().long()
    g, p = as_tensor(groups, "groups"), as_tensor(positions, "positions")
    depth_table, lengths, rows = by_sequence(g, p, costs.exit_layers[e], fill=-1)
    per_token = token_costs(e, g, p, costs, kv)
    full_depth = int(costs.exit_layers[-1])
    full_step = float(costs.cumulative[full_depth] + costs.kv_beyond[full_depth])
    step_times = []
    for start in range(0, depth_table.shape[0], batch_size):
        block = depth_table[start : start + batch_size]
        block_rows = rows[start : start + batch_size]
        for col in range(int(lengths[start : start + batch_size].max())):
            d = block[:, col]
            deepest = int(d[d >= 0].max())
            if kv == "recompute":  # the slowest token with its catch-up (an approximation)
                step_times.append(float(per_token[block_rows[d >= 0, col]].max()))
                continue
            extra = float(costs.kv_beyond[deepest]) if kv == "copy" else 0.0
            step_times.append(float(costs.cumulative[deepest]) + extra)
    full_token = float(costs.cumulative[full_depth])
    return DecodeResult(
        kv,
        batch_size,
        len(step_times),
        float(torch.tensor(step_times, dtype=torch.float64).mean()),
        full_step,
        float(per_token.mean()),
        full_token,
    )
