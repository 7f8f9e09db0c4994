"""The policy contract: which exit answers each sample, and JSON files for policies."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import torch

from exitwise.data import ExitOutputs

__all__ = ["ExitPolicy", "load_policy", "policy_from_dict"]

_FORMAT = "exitwise.ExitPolicy/1"


class ExitPolicy(ABC):
    """An exit rule: for every sample, the exit whose answer is used.

    Subclasses implement :meth:`exit_indices` and the JSON form (:meth:`to_dict` /
    ``_from_params``). Every policy in exitwise is "a signal per exit plus a threshold per
    exit" (:class:`~exitwise.policies.ThresholdPolicy`) or a baseline for reports.
    """

    kind: ClassVar[str] = ""
    _registry: ClassVar[dict[str, type[ExitPolicy]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind:
            ExitPolicy._registry[cls.kind] = cls

    @abstractmethod
    def exit_indices(self, outputs: ExitOutputs) -> torch.Tensor:
        """The exit each sample leaves at, ``[N]`` int64 on the outputs' device."""

    def answer_indices(self, outputs: ExitOutputs) -> torch.Tensor:
        """The exit whose answer each sample returns, ``[N]`` int64: the exit it stops at,
        or an earlier one for recall policies (:mod:`exitwise.policies.recall`)."""
        return self.exit_indices(outputs)

    def predictions(self, outputs: ExitOutputs) -> torch.Tensor:
        """The predicted class of each sample (its answering exit's), ``[N]`` int64."""
        index = self.answer_indices(outputs)
        return outputs.predictions().gather(1, index[:, None]).squeeze(1)

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """JSON-serialisable parameters."""

    @classmethod
    @abstractmethod
    def _from_params(cls, params: dict[str, Any]) -> ExitPolicy:
        """Rebuild from :meth:`params`."""

    def to_dict(self) -> dict[str, Any]:
        return {"format": _FORMAT, "kind": self.kind, "params": self.params()}

    #: how the policy was made (calibrator, split, seed, data), read back from its file
    context: dict[str, Any] = {}  # noqa: RUF012 - replaced per instance, never mutated

    def save(self, path: str | Path, context: dict[str, Any] | None = None) -> None:
        """Write the policy as JSON (thresholds keep full float64 precision; inf as "inf").

        ``context`` (JSON values) records how the policy was made, e.g. the calibrator file
        it was tuned with and the split and seed; :func:`load_policy` returns it as
        ``policy.context``. It is not part of the policy's identity (``==``).
        """
        doc = self.to_dict()
        context = self.context if context is None else context
        if context:
            doc["context"] = dict(context)
        Path(path).write_text(json.dumps(doc, indent=2) + "\n")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ExitPolicy) or type(other) is not type(self):
            return False
        try:
            return self.to_dict() == other.to_dict()
        except TypeError:  # a signal a file cannot hold (a callable): the same object only
            return self is other

    def __hash__(self) -> int:
        try:
            return hash(json.dumps(self.to_dict(), sort_keys=True))
        except TypeError:
            return id(self)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


def policy_from_dict(data: dict[str, Any]) -> ExitPolicy:
    """Rebuild a policy from :meth:`ExitPolicy.to_dict` output (validated)."""
    if not isinstance(data, dict):
        raise TypeError(f"Expected a policy dict, got {type(data).__name__}.")
    if data.get("format") != _FORMAT:
        raise ValueError(f"Expected a policy with format {_FORMAT!r}, got {data.get('format')!r}.")
    kind = data.get("kind")
    if kind not in ExitPolicy._registry:
        known = ", ".join(sorted(ExitPolicy._registry))
        raise ValueError(f"Unknown policy kind {kind!r}; expected one of {known}.")
    params = data.get("params")
    if not isinstance(params, dict):
        raise ValueError(f"Expected `params` to be an object, got {type(params).__name__}.")
    policy = ExitPolicy._registry[kind]._from_params(params)
    context = data.get("context", {})
    if not isinstance(context, dict):
        raise ValueError(f"Expected `context` to be an object, got {type(context).__name__}.")
    policy.context = context
    return policy


def load_policy(path: str | Path) -> ExitPolicy:
    """Read a policy written by :meth:`ExitPolicy.save`.

    Examples
    --------
    >>> import tempfile, os
    >>> from exitwise.policies import ThresholdPolicy
    >>> policy = ThresholdPolicy("max_probability", [0.9, 0.8, float("inf")])
    >>> with tempfile.TemporaryDirectory() as d:
    ...     policy.save(os.path.join(d, "p.json"))
    ...     load_policy(os.path.join(d, "p.json")) == policy
    True
    """
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"'{path}' is not a JSON policy file: {err}") from None
    return policy_from_dict(data)
