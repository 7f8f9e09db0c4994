"""One calibration method per exit, as a single calibrator (what ``method="auto"`` returns).

Each distinct method is fitted once on every exit (the calibrators fit all exits at once);
exit ``e`` then reads its calibrated log-probabilities from ``methods[e]``. Files hold every
part's class, parameters and state (JSON + one safetensors file), no pickle.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from exitwise.calibrate._estimator import REGISTRY
from exitwise.calibrate.base import Calibrator

__all__ = ["PerExitCalibration"]


class PerExitCalibration(Calibrator):
    """Exit ``e`` calibrated by ``methods[e]`` (names of :func:`~exitwise.calibrate.methods`).

    Parameters
    ----------
    methods : sequence of str
        One method name per exit.

    Attributes
    ----------
    parts_ : list of Calibrator
        The fitted calibrators, one per distinct method (in order of first use).

    Examples
    --------
    >>> from exitwise.datasets import load_default
    >>> cal, test = load_default().split(0.5, seed=0)
    >>> both = PerExitCalibration(["isotonic", "temperature", "temperature", "sms"]).fit(cal)
    >>> [type(p).__name__ for p in both.parts_]
    ['Isotonic', 'TemperatureScaling', 'StructuredMatrixScaling']
    """

    def __init__(self, methods: Sequence[str] = ()) -> None:
        self.methods = methods

    def _distinct(self) -> list[str]:
        return list(dict.fromkeys(self.methods))

    def _fit(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        from exitwise.calibrate.registry import make_calibrator

        methods = list(self.methods)
        if len(methods) != logits.shape[1] or not all(isinstance(m, str) for m in methods):
            raise ValueError(
                f"Expected `methods`: one method name per exit ({logits.shape[1]}), got "
                f"{self.methods!r}."
            )
        self.parts_ = [make_calibrator(m).fit(logits, labels) for m in self._distinct()]

    def _transform(self, logits: torch.Tensor) -> torch.Tensor:
        index = {m: i for i, m in enumerate(self._distinct())}
        outs = [part.transform(logits) for part in self.parts_]
        columns = [outs[index[m]][:, e].to(torch.float64) for e, m in enumerate(self.methods)]
        return torch.stack(columns, dim=1)

    # files: every part's state under a "part{k}__" prefix
    def _state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "num_exits_": self.num_exits_,
            "num_classes_": self.num_classes_,
            "part_classes_": [type(p).__name__ for p in self.parts_],
            "part_params_": [p.get_params() for p in self.parts_],
        }
        for k, part in enumerate(self.parts_):
            for key, value in part._state().items():
                state[f"part{k}__{key}"] = value
        return state

    def _set_state(self, state: dict[str, Any]) -> None:
        self.num_exits_ = state["num_exits_"]
        self.num_classes_ = state["num_classes_"]
        self.parts_ = []
        parts = zip(state["part_classes_"], state["part_params_"], strict=True)
        for k, (name, params) in enumerate(parts):
            if name not in REGISTRY:
                raise ValueError(f"Unknown calibrator class {name!r} in a per-exit file.")
            part = REGISTRY[name](**params)
            prefix = f"part{k}__"
            part._set_state(
                {key[len(prefix) :]: v for key, v in state.items() if key.startswith(prefix)}
            )
            self.parts_.append(part)
