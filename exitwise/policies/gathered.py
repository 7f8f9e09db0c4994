"""Every rank's scores and outcome tables in one :class:`ExitScores` on rank 0, which runs a
threshold search (:func:`~exitwise.policies.tune` and the tuners,
:func:`~exitwise.policies.certify`, :func:`~exitwise.policies.pareto_frontier`) for the
whole ``torch.distributed`` group and hands every rank its result.

An exact search needs every candidate threshold (every score) with its counts, so these steps
gather the ``[N, E]`` tables they read — the scores, the costs when per sample, the 0/1
outcome tables, the loss tables asked for, and the labels, ``groups`` and ``positions`` (for
splits and sequences) — never the logits: ``8 N E`` bytes of scores plus ``N E`` per 0/1
table and ``8 N E`` per other loss table, on rank 0 only. Rank 0 runs the one-process code on
them in rank order (inside :func:`~exitwise._distributed.local_only`) and broadcasts its
result, so every rank gets the one-process answer exactly; the other ranks hold only their
own tables and wait (on a machine with fewer cores than ranks they leave rank 0 the cores).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch

from exitwise._distributed import (
    all_reduce_sum,
    gather_rows_to_first,
    group_active,
    on_first_rank,
)
from exitwise.policies.scores import ExitScores
from exitwise.policies.table_scores import TableScores
from exitwise.policies.threshold import ThresholdPolicy

__all__ = ["gather_scores", "search_on_first_rank"]


def _gather(table: torch.Tensor | None) -> torch.Tensor | None:
    return None if table is None else gather_rows_to_first(table.contiguous())


def gather_scores(
    data: ExitScores,
    *,
    losses: Sequence[str] = (),
    recall: str = "none",
    nll_bound: float = 1.0,
) -> ExitScores | None:
    """Every rank's scores and tables, in rank order, on rank 0 of an active group (``None``
    on the other ranks; ``data`` itself outside a group). A collective: every rank calls it.

    Gathered: the scores, the costs (when per sample), the labels, ``groups`` and
    ``positions``, the 0/1 tables ``correct("labels")`` (with labels) and ``correct("final")``,
    and the loss tables of ``losses`` (``"cost"`` is rebuilt from the costs). Sequence ids
    must be unique across ranks and each sequence whole within one rank (as ``collect`` writes
    them).

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> s = ExitScores(load_default()[:10], "margin")
    >>> gather_scores(s) is s  # alone: nothing to gather
    True
    """
    if not group_active():
        return data
    tables: dict[Any, torch.Tensor | None] = {("correct", "final"): _gather(data.correct("final"))}
    if data.labels is not None:
        tables[("correct", "labels")] = _gather(data.correct("labels"))
    for risk in losses:
        if risk != "cost":
            local = data.losses(risk, recall=recall, nll_bound=nll_bound)
            zero_one = bool(((local == 0) | (local == 1)).all())
            # 0/1 tables travel as bools (8x less) when they are 0/1 on every rank
            not_zero_one = torch.tensor([int(not zero_one)], device=local.device)
            all_reduce_sum(not_zero_one)
            if int(not_zero_one) == 0:
                table = _gather(local == 1)
                table = None if table is None else table.to(local.dtype)
            else:
                table = _gather(local)
            tables[("losses", risk, recall, float(nll_bound))] = table
    costs = data.costs if data.costs.ndim == 1 else _gather(data.costs)
    scores = _gather(data.scores)
    labels, groups, positions = _gather(data.labels), _gather(data.groups), _gather(data.positions)
    if scores is None:  # not rank 0
        return None
    return TableScores.from_tables(
        scores,
        costs,
        tables,
        signal=data.signal,
        exit_names=data.exit_names,
        num_classes=data.num_classes,
        labels=labels,
        groups=groups,
        positions=positions,
    )


def search_on_first_rank(
    search: Callable[[ExitScores], Any],
    data: ExitScores,
    *,
    losses: Sequence[str] = (),
    recall: str = "none",
    nll_bound: float = 1.0,
) -> Any:
    """``search(every rank's tables)`` run on rank 0 of an active group, its result on every
    rank (a collective: every rank calls it; ``search(data)`` outside a group).

    A :class:`~exitwise.policies.results.PolicyResult`'s threshold policy travels without
    its signal and gets that rank's on arrival (a callable signal need not pickle);
    everything else of the result travels as it is.

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> s = ExitScores(load_default()[:10], "margin")
    >>> search_on_first_rank(lambda every: every.num_samples, s)
    10
    """
    if not group_active():
        return search(data)
    every = gather_scores(data, losses=losses, recall=recall, nll_bound=nll_bound)

    def portable() -> Any:
        result = search(every)
        policy = getattr(result, "policy", None)
        if isinstance(policy, ThresholdPolicy):  # its signal stays home (it may not pickle)
            stand_in = copy.copy(policy)
            stand_in.signal = None
            result = dataclasses.replace(result, policy=stand_in)
        return result

    result = on_first_rank(portable)
    policy = getattr(result, "policy", None)
    if isinstance(policy, ThresholdPolicy):
        policy.signal = data.signal  # this rank's signal: the one the search ran on
    return result
