"""What every fitted object of :mod:`exitwise.calibrate` shares: scikit-learn's parameter
contract, the not-fitted check, JSON + safetensors files, and the one registry that files are
read through.

scikit-learn is not imported here (``import exitwise.calibrate`` stays fast): the parameter
protocol (``get_params``/``set_params``, parameters = the ``__init__`` keywords) is written
out, so ``sklearn.base.clone`` works, and ``sklearn.exceptions.NotFittedError`` is imported
when it is raised.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

__all__ = ["REGISTRY", "FittedEstimator", "load_estimator"]

_FORMAT = "exitwise.Calibrator/1"

#: every file-backed estimator class by name (filled by ``__init_subclass__``)
REGISTRY: dict[str, type[FittedEstimator]] = {}


class FittedEstimator:
    """Base of calibrators and the halting network.

    Subclasses store their ``__init__`` keywords unchanged (validation happens in ``fit``),
    end learned attributes in ``_`` and set ``num_exits_`` when fitted. A public subclass is
    registered under its class name so :func:`load_estimator` can rebuild it from a file
    (base classes say ``class X(FittedEstimator, abstract=True)``); ``method_name`` (a short
    name such as ``"temperature"``) makes it available to ``make_calibrator`` and the CLI.
    """

    #: short method name (``make_calibrator("temperature")``); None: not listed by name
    method_name: ClassVar[str | None] = None
    #: whether instances can be written to files (netcal's models need pickle: no)
    savable: ClassVar[bool] = True

    def __init_subclass__(cls, abstract: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not abstract and not cls.__name__.startswith("_") and cls.savable:
            REGISTRY[cls.__name__] = cls

    # -- scikit-learn's parameter protocol ---------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        signature = inspect.signature(cls.__init__)
        return sorted(
            p.name
            for p in signature.parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        )

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The ``__init__`` keywords and their current values."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> FittedEstimator:
        """Set ``__init__`` keywords; unknown names raise ``ValueError``."""
        valid = set(self._param_names())
        for key, value in params.items():
            if key not in valid:
                raise ValueError(
                    f"Invalid parameter {key!r} for {type(self).__name__}; expected one of "
                    f"{sorted(valid)}."
                )
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        defaults = {
            p.name: p.default
            for p in inspect.signature(type(self).__init__).parameters.values()
            if p.default is not p.empty
        }
        changed = []
        for key, value in self.get_params().items():
            default = defaults.get(key, inspect.Parameter.empty)
            if default is inspect.Parameter.empty or _differs(value, default):
                changed.append(f"{key}={value!r}")
        return f"{type(self).__name__}({', '.join(changed)})"

    # -- fitted state ------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "num_exits_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with "
                "calibration data before using it."
            )

    def _state(self) -> dict[str, Any]:
        """Fitted attributes: tensors, lists of tensors, or JSON values."""
        return {k: v for k, v in vars(self).items() if k.endswith("_") and not k.startswith("_")}

    def _set_state(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)

    # -- files -------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write ``path`` (JSON: class, parameters, small state) and, for tensors, a
        ``.safetensors`` file beside it. No pickle."""
        self._check_fitted()
        path = Path(path)
        if path.suffix.lower() != ".json":
            raise ValueError(f"Expected a `.json` path for the calibrator, got '{path}'.")
        tensors: dict[str, torch.Tensor] = {}
        plain: dict[str, Any] = {}
        for key, value in self._state().items():
            if isinstance(value, torch.Tensor):
                tensors[key] = value.detach().cpu().contiguous()
            elif (
                isinstance(value, list)
                and value
                and all(isinstance(v, torch.Tensor) for v in value)
            ):
                for i, v in enumerate(value):
                    tensors[f"{key}.{i}"] = v.detach().cpu().contiguous()
                plain[key] = {"tensor_list": len(value)}
            else:
                plain[key] = value
        doc = {
            "format": _FORMAT,
            "class": type(self).__name__,
            "params": self.get_params(deep=False),
            "state": plain,
            "tensors": path.with_suffix(".safetensors").name if tensors else None,
        }
        if tensors:
            from safetensors.torch import save_file

            save_file(tensors, str(path.with_suffix(".safetensors")))
        path.write_text(json.dumps(doc, indent=2, default=_json_default) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> FittedEstimator:
        """Read an estimator written by :meth:`save` (any registered class)."""
        return load_estimator(path)


def _differs(value: Any, default: Any) -> bool:
    try:
        return bool(value != default)
    except (TypeError, ValueError, RuntimeError):  # arrays, tensors
        return value is not default


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    raise TypeError(f"Cannot write {type(value).__name__} to a calibrator file.")


def load_estimator(path: str | Path) -> FittedEstimator:
    """Read any calibrator (or halting network) written by ``save``.

    Examples
    --------
    >>> import tempfile, os, torch
    >>> from exitwise.calibrate import TemperatureScaling
    >>> g = torch.Generator().manual_seed(0)
    >>> labels = torch.arange(200) % 3
    >>> logits = torch.randn(200, 2, 3, generator=g) * 3
    >>> logits[torch.arange(200), :, labels] += 2.0
    >>> ts = TemperatureScaling().fit(logits, labels)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     ts.save(os.path.join(d, "ts.json"))
    ...     back = load_estimator(os.path.join(d, "ts.json"))
    >>> torch.equal(back.transform(logits), ts.transform(logits))
    True
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"'{path}' is not a JSON calibrator file: {err}") from None
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
        raise ValueError(f"'{path}' is not an exitwise calibrator file (format {_FORMAT}).")
    name = doc.get("class")
    if name not in REGISTRY:
        raise ValueError(f"Unknown calibrator class {name!r} in '{path}'.")
    obj = REGISTRY[name](**doc.get("params", {}))
    state = dict(doc.get("state", {}))
    if doc.get("tensors"):
        from safetensors.torch import load_file

        sidecar = path.parent / doc["tensors"]
        if not sidecar.is_file():
            raise ValueError(
                f"'{path}' keeps its arrays in '{sidecar.name}' beside it, which is missing; "
                "copy both files written by save()."
            )
        tensors = load_file(str(sidecar))
        for key, value in list(state.items()):
            if isinstance(value, dict) and "tensor_list" in value:
                state[key] = [tensors[f"{key}.{i}"] for i in range(value["tensor_list"])]
        for key, tensor in tensors.items():
            if "." not in key:
                state[key] = tensor
    obj._set_state(state)
    return obj
