"""``TableScores``: :class:`~exitwise.policies.scores.ExitScores` made of ``[N, E]`` tables
without the logits they came from: what the threshold searches read, built from every rank's
shards (:mod:`~exitwise.policies.gathered`) or from a sharded directory a chunk at a time
(:mod:`~exitwise.policies.streamed`)."""

from __future__ import annotations

from typing import Any

import torch

from exitwise._checks import check_choice, check_costs, row_index
from exitwise.data_split import split_indices
from exitwise.policies.losses import RISKS, ZERO_ONE_RISKS, cost_losses
from exitwise.policies.recall import recalled_outcome
from exitwise.policies.scores import ExitScores

__all__ = ["TableScores"]


class TableScores(ExitScores):
    """:class:`ExitScores` made of tables (no logits): the scores, costs and the cached
    outcome and loss tables, with the labels, ``groups`` and ``positions`` of the samples.

    Built by :func:`~exitwise.policies.gathered.gather_scores` (every rank's tables) and
    :func:`~exitwise.policies.streamed.stream_scores` (a sharded directory, a chunk at a
    time). The 0/1 loss tables (``"error"``, ``"disagreement"``, with recall) and ``"cost"``
    follow from the outcome tables and the costs; another table that was not built raises a
    ``ValueError`` naming it. Indexing, splits, ``with_costs`` and ``to`` work as on
    ``ExitScores``.

    Examples
    --------
    >>> import torch
    >>> from exitwise.datasets import load_default
    >>> s = ExitScores(load_default()[:50], "margin")
    >>> g = TableScores.from_tables(s.scores, s.costs, {("correct", "labels"): s.correct()},
    ...                             signal=s.signal, exit_names=s.exit_names,
    ...                             num_classes=s.num_classes, labels=s.labels)
    >>> g[:10].correct().shape, g.num_classes
    (torch.Size([10, 4]), 10)
    """

    outputs = None  # type: ignore[assignment]  # tables only: nothing to recompute from

    @classmethod
    def from_tables(
        cls,
        scores: torch.Tensor,
        costs: torch.Tensor,
        tables: dict[Any, torch.Tensor],
        *,
        signal: Any,
        exit_names: list[str],
        num_classes: int,
        labels: torch.Tensor | None = None,
        groups: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> TableScores:
        """The tables (keyed as :class:`ExitScores` caches them) of ``signal`` (no checks:
        internal)."""
        obj = cls.__new__(cls)
        obj.signal = signal
        obj.scores = scores
        obj.costs = costs
        obj._labels, obj._groups, obj._positions = labels, groups, positions
        obj._exit_names = list(exit_names)
        obj._num_classes = num_classes
        obj._cache = dict(tables)
        return obj

    def _like(self, scores, costs, labels, groups, positions, tables) -> TableScores:
        return TableScores.from_tables(
            scores,
            costs,
            tables,
            signal=self.signal,
            exit_names=self._exit_names,
            num_classes=self._num_classes,
            labels=labels,
            groups=groups,
            positions=positions,
        )

    @property
    def num_samples(self) -> int:
        return int(self.scores.shape[0])

    @property
    def num_exits(self) -> int:
        return int(self.scores.shape[1])

    @property
    def num_classes(self) -> int:
        return self._num_classes

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
                f"These TableScores hold no {what} table: they were built without it (the "
                "logits are not at hand to compute it); stream_scores(..., losses=[...]) "
                "builds extra loss tables."
            )
        return self._cache[key]

    def correct(self, reference: str = "labels") -> torch.Tensor:
        return self._table(("correct", reference), f"correct({reference!r})")

    def losses(self, risk: str, *, recall: str = "none", nll_bound: float = 1.0) -> torch.Tensor:
        check_choice(risk, "risk", RISKS)
        if risk == "cost":
            return cost_losses(self.costs, self.num_samples)
        key = ("losses", risk, recall, float(nll_bound))
        if key not in self._cache and risk in ZERO_ONE_RISKS:  # loss_table's, from the tables
            if risk == "error" and self._labels is None:
                raise ValueError("risk='error' needs labels; use risk='disagreement'.")
            hit = self.correct("labels" if risk == "error" else "final")
            return (~recalled_outcome(hit, self.scores, recall)).to(torch.float64)
        return self._table(key, f"{risk!r} loss")

    def with_costs(self, costs: Any) -> TableScores:
        costs = check_costs(
            costs, "costs", self.num_exits, num_samples=self.num_samples, device=self.device
        )
        return self._like(
            self.scores, costs, self._labels, self._groups, self._positions, self._cache
        )

    def __getitem__(self, index: Any) -> TableScores:
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
        first, rest = split_indices(
            self.num_samples, self._labels, self.num_classes, self._groups, fraction, seed
        )
        return first.to(self.device), rest.to(self.device)

    def to(self, device: str | torch.device) -> TableScores:
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
        return super().__repr__().replace("ExitScores", "TableScores", 1)
