"""``ExitScores``: a signal resolved once, its scores ``[N, E]``, and the outcome tables the
policy layer needs, computed lazily and kept.

Every tuner, :func:`~exitwise.policies.risk_controlled_threshold`,
:func:`~exitwise.policies.certify`, the frontier, :func:`~exitwise.policies.evaluate`, the
report and the plots take either ``ExitScores`` or :class:`~exitwise.ExitOutputs` plus a
signal; the latter is converted once, at the entry (:func:`as_scores`). Nothing downstream
recomputes the signal or rebuilds the data: the scores keep the outputs they came from (with
their labels, ``groups`` and ``positions``) and only the costs may be replaced
(:meth:`ExitScores.with_costs`, e.g. per-exit latencies).

The signal contract, checked before any search (:func:`resolve_signal`): a signal name from
:data:`exitwise.signals.SIGNALS`, a position-aware
:class:`~exitwise.policies.positions.DecayedSignal`, a callable ``outputs -> [N, E]`` (e.g.
a fitted halting network's ``predict_proba``), or precomputed scores ``[N, E]`` (a tensor or
array). Scores are float64, without NaN (``+-inf`` allowed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch

from exitwise._checks import as_tensor, check_choice, check_costs, check_finite, row_index
from exitwise._distributed import sample_mean
from exitwise.data import ExitOutputs
from exitwise.policies.losses import RISKS, cost_losses, loss_table
from exitwise.policies.positions import DecayedSignal
from exitwise.signals import compute_signal, get_signal

__all__ = ["ExitScores", "PrecomputedScores", "resolve_signal", "signal_label"]


class PrecomputedScores:
    """Scores ``[N, E]`` computed elsewhere, used as a signal of the data they were computed
    on (a policy tuned on them applies to those samples only: it has no formula for new data).

    Examples
    --------
    >>> import torch
    >>> from exitwise import ExitOutputs
    >>> s = PrecomputedScores(torch.tensor([[0.2, 0.9]]))
    >>> s(ExitOutputs(torch.zeros(1, 2, 3)))
    tensor([[0.2000, 0.9000]], dtype=torch.float64)
    """

    name = "precomputed"

    def __init__(self, scores: Any) -> None:
        s = as_tensor(scores, "signal")
        if s.ndim != 2 or s.is_complex() or s.dtype == torch.bool:
            raise ValueError(
                f"Expected precomputed signal scores of shape [N, E] (real numbers), got "
                f"shape {tuple(s.shape)} and dtype {s.dtype}."
            )
        check_finite(s, "signal", ("sample", "exit"), allow_inf=True)
        self.scores = s.to(torch.float64)

    def __call__(self, outputs: ExitOutputs) -> torch.Tensor:
        shape = (outputs.num_samples, outputs.num_exits)
        if tuple(self.scores.shape) != shape:
            raise ValueError(
                f"These precomputed scores have shape {list(self.scores.shape)}, but the outputs "
                f"have [N, E] = {list(shape)}: precomputed scores apply to the samples they were "
                "computed on only; use a signal name or a callable for new data."
            )
        return self.scores.to(outputs.device)

    def __repr__(self) -> str:
        return f"PrecomputedScores(shape={list(self.scores.shape)})"


SignalSpec = str | DecayedSignal | Callable[[ExitOutputs], torch.Tensor]


def resolve_signal(signal: Any) -> SignalSpec:
    """The one signal contract: a name, a ``DecayedSignal``, a callable or scores ``[N, E]``.

    Returns the name, the ``DecayedSignal``, the callable, or a :class:`PrecomputedScores`
    for a tensor/array; raises before any work is done.

    Examples
    --------
    >>> resolve_signal("margin")
    'margin'
    >>> resolve_signal("no_such_signal")
    Traceback (most recent call last):
    ...
    ValueError: Unknown signal 'no_such_signal'; expected one of ...
    """
    if isinstance(signal, str):
        get_signal(signal)
        return signal
    if isinstance(signal, (DecayedSignal, PrecomputedScores)):
        return signal
    if isinstance(signal, (torch.Tensor, np.ndarray)):
        return PrecomputedScores(signal)
    if isinstance(signal, ExitScores):
        raise TypeError(
            "Expected `signal` to be a name, a DecayedSignal, a callable or scores [N, E]; got "
            "ExitScores: pass the ExitScores in place of the outputs and no signal."
        )
    if callable(signal):
        return signal
    raise TypeError(
        "Expected `signal` to be a signal name (str), a DecayedSignal, a callable "
        f"outputs -> [N, E] or scores [N, E], got {type(signal).__name__}."
    )


def signal_label(signal: SignalSpec) -> str:
    """A short name of a signal for tables and messages.

    Examples
    --------
    >>> signal_label(DecayedSignal("max_probability", length=20.0))
    'max_probability (position-decayed)'
    """
    if isinstance(signal, str):
        return signal
    if isinstance(signal, DecayedSignal):
        return f"{signal.name} (position-decayed)"
    return getattr(signal, "name", None) or getattr(signal, "__name__", type(signal).__name__)


class ExitScores:
    """A signal's scores on :class:`~exitwise.ExitOutputs`, with lazily computed tables.

    Parameters
    ----------
    outputs : ExitOutputs
        The data (labels, ``groups`` and ``positions`` are kept and read from here).
    signal : str, DecayedSignal, callable or array-like of shape (N, E)
        See :func:`resolve_signal`; computed once, here.
    costs : array-like of shape (E,) or (N, E), optional
        Replace ``outputs.costs`` (e.g. cumulative per-exit latencies); default: the outputs'.

    Attributes
    ----------
    scores : torch.Tensor
        ``[N, E]`` float64, on the outputs' device.
    signal : str, DecayedSignal or callable
        The resolved signal (what a policy built on these scores records).

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> s = ExitScores(load_default()[:100], "max_probability")
    >>> s.scores.shape, s.correct().dtype, s.losses("cost").shape
    (torch.Size([100, 4]), torch.bool, torch.Size([100, 4]))
    """

    def __init__(self, outputs: ExitOutputs, signal: Any, *, costs: Any = None) -> None:
        if not isinstance(outputs, ExitOutputs):
            raise TypeError(f"Expected `outputs` to be ExitOutputs, got {type(outputs).__name__}.")
        self.signal = resolve_signal(signal)
        # compute_signal checks the shape [N, E] and that no score is NaN
        scores = compute_signal(outputs, self.signal).to(torch.float64)
        self._init(outputs, scores, costs, {})

    def _init(
        self, outputs: ExitOutputs, scores: torch.Tensor, costs: Any, cache: dict[Any, Any]
    ) -> None:
        self.outputs = outputs
        self.scores = scores
        self.costs = (
            outputs.costs
            if costs is None
            else check_costs(
                costs,
                "costs",
                outputs.num_exits,
                num_samples=outputs.num_samples,
                device=outputs.device,
            )
        )
        self._cache = cache

    @classmethod
    def _derived(
        cls, outputs: ExitOutputs, signal: SignalSpec, scores: torch.Tensor, costs: Any
    ) -> ExitScores:
        obj = cls.__new__(cls)
        obj.signal = signal
        obj._init(outputs, scores, costs, {})
        return obj

    # ------------------------------------------------------------------ what the data holds
    @property
    def num_samples(self) -> int:
        return self.outputs.num_samples

    @property
    def num_exits(self) -> int:
        return self.outputs.num_exits

    @property
    def num_classes(self) -> int:
        return self.outputs.num_classes

    @property
    def groups(self) -> torch.Tensor | None:
        return self.outputs.groups

    @property
    def positions(self) -> torch.Tensor | None:
        return self.outputs.positions

    @property
    def num_groups(self) -> int | None:
        return self.outputs.num_groups

    @property
    def labels(self) -> torch.Tensor | None:
        return self.outputs.labels

    @property
    def exit_names(self) -> list[str]:
        return self.outputs.exit_names

    @property
    def device(self) -> torch.device:
        return self.scores.device

    @property
    def full_cost(self) -> float:
        """Mean cost of running every sample to the last exit (of every rank's samples in an
        active ``torch.distributed`` group)."""
        if self.costs.ndim == 1:
            return float(self.costs[-1])
        return float(sample_mean(self.costs[:, -1]))

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        return (
            f"ExitScores(signal={signal_label(self.signal)!r}, num_samples={self.num_samples}, "
            f"num_exits={self.num_exits}, sequences={self.num_groups})"
        )

    # ------------------------------------------------------------------ outcome tables
    def _cached(self, key: Any, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def correct(self, reference: Literal["labels", "final"] = "labels") -> torch.Tensor:
        """``[N, E]`` bool: right against the labels, or agreeing with the final exit."""
        check_choice(reference, "reference", ("labels", "final"))
        return self._cached(("correct", reference), lambda: self.outputs.correct(reference))

    def agreement(self) -> torch.Tensor:
        """``[N, E]`` bool: the exit's prediction equals the final exit's."""
        return self.correct("final")

    def final_accuracy(self, reference: Literal["labels", "final"] = "labels") -> float:
        """The last exit's accuracy (1.0 against ``"final"``; of every rank's samples in an
        active ``torch.distributed`` group)."""
        return float(sample_mean(self.correct(reference)[:, -1]))

    def accuracy_target(
        self, target: float, relative: bool, reference: Literal["labels", "final"] = "labels"
    ) -> float:
        """The accuracy an SLA asks for on these samples: ``target``, or ``target`` x the final
        exit's accuracy when ``relative`` (the one owner of that product).

        Examples
        --------
        >>> from exitwise.datasets import load_default
        >>> s = ExitScores(load_default()[:1000], "margin")
        >>> s.accuracy_target(0.5, relative=True) == 0.5 * s.final_accuracy()
        True
        """
        from exitwise.policies.constraints import AccuracyAtLeast

        bound = AccuracyAtLeast(target, relative=relative)
        return bound.bound(self.final_accuracy(reference), self.full_cost)

    def losses(self, risk: str, *, recall: str = "none", nll_bound: float = 1.0) -> torch.Tensor:
        """The loss table ``[N, E]`` in [0, 1] of ``risk``
        (:func:`~exitwise.policies.losses.loss_table`), with the costs of these scores."""
        check_choice(risk, "risk", RISKS)
        key = ("losses", risk, recall, float(nll_bound))
        if risk == "cost":  # with these scores' costs (they may replace the outputs')
            return self._cached(key, lambda: cost_losses(self.costs, self.num_samples))
        return self._cached(
            key,
            lambda: loss_table(
                self.outputs, risk, scores=self.scores, recall=recall, nll_bound=nll_bound
            ),
        )

    # ------------------------------------------------------------------ derived scores
    def with_costs(self, costs: Any) -> ExitScores:
        """The same scores (and cached tables, but the cost losses) with other costs.

        Examples
        --------
        >>> from exitwise.datasets import load_default
        >>> s = ExitScores(load_default()[:10], "margin")
        >>> s.with_costs([1.0, 2.0, 3.0, 8.0]).full_cost
        8.0
        """
        out = ExitScores._derived(self.outputs, self.signal, self.scores, costs)
        out._cache = {k: v for k, v in self._cache.items() if k[:2] != ("losses", "cost")}
        return out

    def __getitem__(self, index: Any) -> ExitScores:
        """The scores of a subset of samples (indexing as :class:`~exitwise.ExitOutputs`)."""
        outputs = self.outputs[index]
        rows = row_index(index, self.num_samples, self.device)
        costs = self.costs if self.costs.ndim == 1 else self.costs[rows]
        return ExitScores._derived(outputs, self.signal, self.scores[rows], costs)

    def split_indices(self, fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`ExitOutputs.split_indices` (whole sequences stay on one side)."""
        return self.outputs.split_indices(fraction, seed)

    def split(self, fraction: float, seed: int = 0) -> tuple[ExitScores, ExitScores]:
        """As :meth:`ExitOutputs.split`, without recomputing the signal."""
        first, rest = self.split_indices(fraction, seed)
        return self[first], self[rest]

    def to(self, device: str | torch.device) -> ExitScores:
        """Move the outputs, scores and costs to ``device``."""
        return ExitScores._derived(
            self.outputs.to(device),
            self.signal,
            self.scores.to(device),
            None if self.costs is self.outputs.costs else self.costs.to(device),
        )


def same_signal(a: Any, b: Any) -> bool:
    """Whether two resolved signals are the same (names and DecayedSignals by value,
    callables and precomputed scores by identity)."""
    if isinstance(a, (str, DecayedSignal)) or isinstance(b, (str, DecayedSignal)):
        return type(a) is type(b) and a == b
    return a is b


def scores_for(data: Any, signal: SignalSpec) -> torch.Tensor:
    """``[N, E]`` scores of ``signal`` on ``data``: read from ``ExitScores`` holding that
    signal, else computed (from ``ExitScores``' outputs or from ``ExitOutputs``)."""
    if isinstance(data, ExitScores):
        if same_signal(data.signal, signal):
            return data.scores
        return compute_signal(data.outputs, signal).to(torch.float64)
    return compute_signal(data, signal)
