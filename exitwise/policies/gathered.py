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

from exitwise._checks import check_costs, check_open_unit, row_index
from exitwise._distributed import all_gather_rows, all_reduce_sum, group_active
from exitwise.data_split import sequence_split, stratified_split
from exitwise.policies.losses import cost_losses
from exitwise.policies.scores import ExitScores

__all__ = ["GatheredScores", "gather_scores"]


def _gather(table: torch.Tensor | None) -> torch.Tensor | None:
    return None if table is None else all_gather_rows(table.contiguous())


class GatheredScores(ExitScores):
    """:class:`ExitScores` made of tables (no logits): the scores, costs and the cached
    outcome and loss tables, with the labels, ``groups`` and ``positions`` of the samples.

    Built by :func:`gather_scores`; a table that was not gathered raises a ``ValueError``
    naming it. Indexing, splits, ``with_costs`` and ``to`` work as on ``ExitScores``.

    Examples
    --------
    >>> import torch
    >>> from exitwise.datasets import load_default
    >>> s = ExitScores(load_default()[:50], "margin")
    >>> g = GatheredScores.from_tables(s, s.scores, s.costs, s.labels, None, None,
    ...                                {("correct", "labels"): s.correct()})
    >>> g[:10].correct().shape, g.num_classes
    (torch.Size([10, 4]), 10)
    """

    outputs = None  # type: ignore[assignment]  # tables only: nothing to recompute from

    @classmethod
    def from_tables(
        cls,
        like: ExitScores,
        scores: torch.Tensor,
        costs: torch.Tensor,
        labels: torch.Tensor | None,
        groups: torch.Tensor | None,
        positions: torch.Tensor | None,
        tables: dict[Any, torch.Tensor],
    ) -> GatheredScores:
        """Tables of ``like``'s signal, exit names and class count (no checks: internal)."""
        obj = cls.__new__(cls)
        obj.signal = like.signal
        obj.scores = scores
        obj.costs = costs
        obj._labels, obj._groups, obj._positions = labels, groups, positions
        obj._exit_names = list(like.exit_names)
        obj.num_classes = (
            like.num_classes if isinstance(like, GatheredScores) else (like.outputs.num_classes)
        )
        obj._cache = dict(tables)
        return obj

    def _like(self, scores, costs, labels, groups, positions, tables) -> GatheredScores:
        return GatheredScores.from_tables(self, scores, costs, labels, groups, positions, tables)

    @property
    def num_samples(self) -> int:
        return int(self.scores.shape[0])

    @property
    def num_exits(self) -> int:
        return int(self.scores.shape[1])

    @property
    def groups(self) -> torch.Tensor | None:
        return self._groups

    @property
    def positions(self) -> torch.Tensor | None:
        return self._positions

    @property
    def num_groups(self) -> int | None:
        return None if self._groups is None else int(torch.unique(self._groups).numel())

    @property
    def labels(self) -> torch.Tensor | None:
        return self._labels

    @property
    def exit_names(self) -> list[str]:
        return self._exit_names

    def _table(self, key: Any, what: str) -> torch.Tensor:
        if key not in self._cache:
            raise ValueError(
                f"These gathered scores hold no {what} table: the step that gathered them did "
                "not ask for it (an internal error; please report it)."
            )
        return self._cache[key]

    def correct(self, reference: str = "labels") -> torch.Tensor:
        return self._table(("correct", reference), f"correct({reference!r})")

    def losses(self, risk: str, *, recall: str = "none", nll_bound: float = 1.0) -> torch.Tensor:
        if risk == "cost":
            return cost_losses(self.costs, self.num_samples)
        return self._table(("losses", risk, recall, float(nll_bound)), f"{risk!r} loss")

    def with_costs(self, costs: Any) -> GatheredScores:
        costs = check_costs(
            costs, "costs", self.num_exits, num_samples=self.num_samples, device=self.device
        )
        return self._like(
            self.scores, costs, self._labels, self._groups, self._positions, self._cache
        )

    def __getitem__(self, index: Any) -> GatheredScores:
        rows = row_index(index, self.num_samples, self.device)

        def pick(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None:
                return None
            return t[rows if isinstance(rows, slice) else rows.to(t.device)]

        costs = self.costs if self.costs.ndim == 1 else self.costs[rows]
        tables = {k: v[rows] for k, v in self._cache.items() if k[:2] != ("losses", "cost")}
        return self._like(
            self.scores[rows],
            costs,
            pick(self._labels),
            pick(self._groups),
            pick(self._positions),
            tables,
        )

    def split_indices(self, fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        fraction = check_open_unit(fraction, "fraction")
        if self._groups is not None:
            first, rest = sequence_split(self._groups.cpu(), fraction, seed)
        else:
            first, rest = stratified_split(
                self.num_samples, self._labels, self.num_classes, fraction, seed
            )
        return first.to(self.device), rest.to(self.device)

    def to(self, device: str | torch.device) -> GatheredScores:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return self._like(
            self.scores.to(device),
            self.costs.to(device),
            move(self._labels),
            move(self._groups),
            move(self._positions),
            {k: v.to(device) for k, v in self._cache.items()},
        )

    def __repr__(self) -> str:
        return "Gathered" + super().__repr__()


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
    return GatheredScores.from_tables(
        data,
        _gather(data.scores),
        costs,
        _gather(data.labels),
        _gather(data.groups),
        _gather(data.positions),
        tables,
    )
