"""The tables of a sharded directory, read a chunk at a time: a signal's scores and the
outcome tables of :class:`~exitwise.ShardedOutputs` without ever holding its logits.

Peak memory: one chunk of logits (``rows x E x C``, with the calibrator's and the signal's
working copies) plus the tables built so far: ``8 N E`` bytes of scores, ``N E`` per 0/1
table, ``8 N`` per per-sample array (labels, sequence ids, positions) and ``8 N E`` per extra
loss table. In a ``torch.distributed`` group each rank streams its part; the searches then
gather the tables (:mod:`~exitwise.policies.gathered`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from exitwise._checks import check_int
from exitwise.data import ExitOutputs
from exitwise.data_shards import ShardedOutputs
from exitwise.policies.scores import ExitScores, PrecomputedScores, resolve_signal
from exitwise.policies.table_scores import TableScores

__all__ = ["stream_scores"]


def _cat(parts: list[torch.Tensor | None]) -> torch.Tensor | None:
    return None if parts[0] is None else torch.cat(parts)  # type: ignore[arg-type]


def stream_scores(
    data: ShardedOutputs,
    signal: Any,
    *,
    transform: Callable[[ExitOutputs], ExitOutputs] | None = None,
    losses: Sequence[str] = (),
    recall: str = "none",
    nll_bound: float = 1.0,
    rows: int = 65_536,
) -> TableScores:
    """``signal``'s scores and the outcome tables of ``data``, a chunk of ``rows`` samples
    at a time (see the module docstring for the memory).

    Parameters
    ----------
    data : ShardedOutputs
        From :func:`exitwise.load` of a directory (this rank's part in a group).
    signal : str, DecayedSignal or callable
        As :func:`~exitwise.policies.scores.resolve_signal`; precomputed scores belong to
        other data and are refused.
    transform : callable, optional
        Applied to every chunk first, e.g. a fitted calibrator's ``transform``.
    losses : sequence of str, optional
        Loss tables to build too (e.g. ``["nll_excess"]``; the 0/1 ones and ``"cost"``
        follow from the outcome tables), with ``recall`` and ``nll_bound``.
    rows : int, default=65_536
        Samples per chunk.

    Returns
    -------
    TableScores
        The scores, ``correct("labels")`` (with labels), ``correct("final")``, the labels,
        ``groups`` and ``positions``: what the tuners, ``certify`` and the evaluator read.

    Examples
    --------
    >>> import tempfile, torch
    >>> from exitwise.data_shards import ShardWriter, load
    >>> out = ExitOutputs(torch.randn(6, 2, 3), torch.tensor([0, 1, 2, 0, 1, 2]))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     w = ShardWriter(d); w.write(out, 0); w.finish()
    ...     s = stream_scores(load(d), "margin", rows=4)
    >>> torch.equal(s.scores, ExitScores(out, "margin").scores)
    True
    """
    if not isinstance(data, ShardedOutputs):
        raise TypeError(f"Expected `data` to be ShardedOutputs, got {type(data).__name__}.")
    signal = resolve_signal(signal)
    if isinstance(signal, PrecomputedScores):
        raise ValueError(
            "Precomputed scores belong to the samples they were computed on; stream a signal "
            "name or a callable over a sharded directory."
        )
    rows = check_int(rows, "rows", minimum=1)
    keys = [("losses", r, recall, float(nll_bound)) for r in losses if r != "cost"]
    columns: dict[Any, list[Any]] = {}
    num_classes = None  # of the chunks after the transform; nothing of a chunk is kept
    for chunk in data.chunks(rows):
        if transform is not None:
            chunk = transform(chunk)
        part = ExitScores(chunk, signal)
        num_classes = chunk.num_classes
        tables = {
            "scores": part.scores,
            "labels": chunk.labels,
            "groups": chunk.groups,
            "positions": chunk.positions,
            ("correct", "final"): part.correct("final"),
        }
        if chunk.labels is not None:
            tables[("correct", "labels")] = part.correct("labels")
        for key in keys:
            tables[key] = part.losses(key[1], recall=recall, nll_bound=nll_bound)
        for key, value in tables.items():
            columns.setdefault(key, []).append(value)
    if num_classes is None:
        raise ValueError(f"{data!r} holds no samples to score.")
    tables = {k: _cat(v) for k, v in columns.items()}
    scores, labels = tables.pop("scores"), tables.pop("labels")
    groups, positions = tables.pop("groups"), tables.pop("positions")
    return TableScores.from_tables(
        scores,
        data.costs.to(scores.device),
        tables,
        signal=signal,
        exit_names=data.exit_names,
        num_classes=num_classes,
        labels=labels,
        groups=groups,
        positions=positions,
    )
