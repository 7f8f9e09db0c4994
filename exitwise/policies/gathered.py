"""Every rank's scores and outcome tables in one :class:`ExitScores`: what the threshold
searches (:func:`~exitwise.policies.tune`, :func:`~exitwise.policies.sweep_shared_threshold`,
:func:`~exitwise.policies.certify`, :func:`~exitwise.policies.pareto_frontier`) run on
inside a ``torch.distributed`` group.

An exact search needs every candidate threshold (every score) with its counts, so these steps
gather the ``[N, E]`` tables they read — the scores, the costs when per sample, the 0/1
outcome tables, the loss tables asked for, and the labels, ``groups`` and ``positions`` (for
splits and sequences) — never the logits: ``8 N E`` bytes of scores plus ``N E`` per 0/1
table and ``8 N E`` per other loss table, on every rank. Every rank then runs the one-process
code on the same tables in the same (rank) order, inside
:func:`~exitwise._distributed.local_only`, so each gets the one-process answer exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from exitwise._distributed import all_gather_rows, all_reduce_sum, group_active
from exitwise.policies.scores import ExitScores
from exitwise.policies.table_scores import TableScores

__all__ = ["gather_scores"]


def _gather(table: torch.Tensor | None) -> torch.Tensor | None:
    return None if table is None else all_gather_rows(table.contiguous())


def gather_scores(
    data: ExitScores,
    *,
    losses: Sequence[str] = (),
    recall: str = "none",
    nll_bound: float = 1.0,
) -> ExitScores:
    """Every rank's scores and tables, in rank order, on every rank of an active group
    (``data`` itself outside one).

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
    tables: dict[Any, torch.Tensor] = {("correct", "final"): _gather(data.correct("final"))}
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
                table = all_gather_rows((local == 1).contiguous()).to(local.dtype)
            else:
                table = all_gather_rows(local.contiguous())
            tables[("losses", risk, recall, float(nll_bound))] = table
    costs = data.costs if data.costs.ndim == 1 else _gather(data.costs)
    return TableScores.from_tables(
        data,
        _gather(data.scores),
        costs,
        _gather(data.labels),
        _gather(data.groups),
        _gather(data.positions),
        tables,
    )
