"""What a policy saves when samples are served in batches, not one at a time.

Paper code mostly measures batch size 1. In a batch, an exit decision is per sample but the
compute is per batch:

* ``"per_sample"`` — the ideal: every sample pays only for the layers it ran;
* ``"wait_all"`` — the batch runs until its last sample exits; samples that left early still
  occupy their slots (PABEE's ``torch.all``, CALM's ``min(conf)``);
* ``"compact"`` — after each exit the samples that left are dropped from the batch and the
  rest continue as a smaller batch.

The cost of running segment ``e`` (from exit ``e-1`` to exit ``e``) for a batch of ``b``
samples comes from ``layer_cost_fn(b, e)``; the default is ``b * (costs[e] - costs[e-1])``
(no batching efficiency). A latency model of batch size (e.g. measured, ``a + c * b``) makes
the difference between the modes visible.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from exitwise._checks import check_choice, check_int
from exitwise.data import ExitOutputs

__all__ = ["BatchingResult", "simulate_batching"]


@dataclass(frozen=True)
class BatchingResult:
    """Totals of a batched-serving simulation.

    Attributes
    ----------
    mode : str
    batch_size : int
    total_cost : float
        Cost of serving every sample with the policy.
    full_cost : float
        Cost of serving every sample with the full model, in the same batches.
    speed_up : float
        ``full_cost / total_cost``.
    throughput : float
        Samples per unit of cost.
    """

    mode: str
    batch_size: int
    total_cost: float
    full_cost: float
    speed_up: float
    throughput: float


def _segment_costs(costs: torch.Tensor) -> torch.Tensor:
    return torch.diff(costs, prepend=torch.zeros(1, dtype=costs.dtype))


def simulate_batching(
    policy,
    outputs: ExitOutputs,
    batch_size: int,
    mode: str = "compact",
    layer_cost_fn: Callable[[int, int], float] | None = None,
    seed: int = 0,
) -> BatchingResult:
    """Serve ``outputs`` in random batches of ``batch_size`` with ``policy``; total the cost.

    Parameters
    ----------
    policy : ExitPolicy or exit indices ``[N]``
    outputs : ExitOutputs
        Its ``costs`` define the per-sample segment costs (unless ``layer_cost_fn``).
    batch_size : int
    mode : {"per_sample", "wait_all", "compact"}, default="compact"
    layer_cost_fn : callable ``(batch_size, exit) -> cost``, optional
        Cost of running segment ``exit`` for a batch of that size.
    seed : int, default=0
        Order in which samples arrive (batches are consecutive in a seeded permutation).

    Examples
    --------
    >>> import torch
    >>> from exitwise import ExitOutputs
    >>> out = ExitOutputs(torch.zeros(4, 2, 2), costs=[1.0, 3.0])
    >>> exits = torch.tensor([0, 0, 0, 1])
    >>> [simulate_batching(exits, out, 4, m).total_cost for m in ("per_sample", "wait_all")]
    [6.0, 12.0]
    """
    check_choice(mode, "mode", ("per_sample", "wait_all", "compact"))
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    if isinstance(policy, torch.Tensor):
        exits = policy.to(torch.int64).cpu()
    else:
        exits = policy.exit_indices(outputs).cpu()
    n, e = outputs.num_samples, outputs.num_exits
    if exits.shape != (n,) or int(exits.min()) < 0 or int(exits.max()) >= e:
        raise ValueError(f"Expected exit indices [N] = [{n}] in [0, {e - 1}].")
    seg = _segment_costs(outputs.costs.cpu().to(torch.float64))
    if layer_cost_fn is None:
        table = None
    else:
        sizes = torch.arange(batch_size + 1)
        table = torch.tensor(
            [
                [0.0 if b == 0 else float(layer_cost_fn(int(b), j)) for j in range(e)]
                for b in sizes.tolist()
            ],
            dtype=torch.float64,
        )  # [batch_size + 1, E]: cost of segment j for a batch of b

    def cost_of(sizes: torch.Tensor) -> torch.Tensor:
        """Cost of running segment j with ``sizes[..., j]`` samples, elementwise."""
        if table is None:
            return sizes.to(torch.float64) * seg
        return table[sizes.long(), torch.arange(e).expand_as(sizes)]

    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    ex = exits[order]
    pad = (-n) % batch_size
    groups = torch.nn.functional.pad(ex, (0, pad), value=-1).reshape(-1, batch_size)
    valid = groups >= 0
    size = valid.sum(dim=1)  # [G] samples per batch (the last may be short)
    segments = torch.arange(e)
    # samples still running at segment j, per batch: [G, E]
    alive = ((groups[:, :, None] >= segments) & valid[:, :, None]).sum(dim=1)
    if mode == "per_sample":  # every sample alone: batch size 1
        ran = alive.sum(dim=0)  # [E] samples that ran segment j
        total = float((ran.to(torch.float64) * cost_of(torch.ones(e, dtype=torch.int64))).sum())
        full = float(n * cost_of(torch.ones(e, dtype=torch.int64)).sum())
    else:
        if mode == "wait_all":  # all slots run until the batch's deepest exit
            sizes = torch.where(alive > 0, size[:, None], torch.zeros_like(alive))
        else:  # compact: only the samples still running
            sizes = alive
        total = float(cost_of(sizes).sum())
        full = float(cost_of(size[:, None].expand(-1, e)).sum())
    return BatchingResult(mode, batch_size, total, full, full / total, n / total)
