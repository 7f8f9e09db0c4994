"""The entry of the policy layer: :func:`as_scores` turns what a user passes (ExitOutputs
and a signal, ExitScores, or a sharded directory and a signal) into the one value the
tuners, risk control, certify, the frontier and the evaluator read."""

from __future__ import annotations

from typing import Any

from exitwise.data import ExitOutputs
from exitwise.data_shards import ShardedOutputs
from exitwise.policies.scores import ExitScores, resolve_signal, same_signal, signal_label
from exitwise.policies.streamed import stream_scores

__all__ = ["as_scores"]


def as_scores(data: Any, signal: Any = None, *, argument: str = "outputs") -> ExitScores:
    """``data`` as :class:`~exitwise.policies.scores.ExitScores`: ``ExitScores`` as they
    are, ``ExitOutputs`` with ``signal`` computed once, and a sharded directory
    (:class:`~exitwise.ShardedOutputs`, this rank's part in a group) as the tables of
    :func:`~exitwise.policies.streamed.stream_scores`, read a chunk at a time.

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> s = as_scores(load_default()[:10], "margin")
    >>> as_scores(s) is s, as_scores(s, "margin") is s
    (True, True)
    """
    if isinstance(data, ExitScores):
        if signal is not None and not same_signal(resolve_signal(signal), data.signal):
            raise ValueError(
                f"These ExitScores hold the signal {signal_label(data.signal)!r}, not "
                f"{signal_label(resolve_signal(signal))!r}; pass signal=None or build ExitScores "
                "with that signal."
            )
        return data
    if isinstance(data, ExitOutputs):
        if signal is None:
            raise TypeError(
                f"`{argument}` is ExitOutputs: pass a `signal` (e.g. 'max_probability'), or "
                "ExitScores that hold one."
            )
        return ExitScores(data, signal)
    if isinstance(data, ShardedOutputs):
        if signal is None:
            raise TypeError(f"`{argument}` is ShardedOutputs: pass a `signal`.")
        return stream_scores(data, signal)
    raise TypeError(
        f"Expected `{argument}` to be ExitOutputs, ExitScores or ShardedOutputs, got "
        f"{type(data).__name__}."
    )
