r"""Measured time of self-speculative decoding: the cost model beside the memory-bound one.

A run that produces :math:`T` tokens in :math:`V` verifications and :math:`S` draft steps
(draft exit :math:`d`; a round that drafts :math:`m` tokens verifies :math:`m + 1`) takes

.. math::

    t = V\,(a + b + o) + S\,(t_d + b), \qquad
    \text{speed-up} = \frac{T\,t_{\text{plain}}}{t},

with :math:`t_{\text{plain}}` one step of plain decoding, :math:`t_d` one draft step,
:math:`a + b\,w` one verification pass over :math:`w` tokens, and :math:`o` a fixed cost per
round (the engine's bookkeeping: Hugging Face calls the assistant's ``generate`` once per
round). All are seconds at one batch size and context length, measured on the model itself
(:func:`exitwise.generation.measure_speculation_costs`). The memory-bound formula of
:mod:`exitwise.generation.speculation` assumes :math:`b = 0` and no overheads; on a CPU, or at a
large batch, neither holds.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["SpeculationCosts"]


def _seconds(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"Expected `{name}` to be a number of seconds, got {type(value).__name__}.")
    if not math.isfinite(float(value)) or value < 0:
        raise ValueError(f"Expected `{name}` to be finite and >= 0 seconds, got {value!r}.")
    return float(value)


@dataclass(frozen=True)
class SpeculationCosts:
    """Seconds per step of plain and self-speculative decoding at one batch size and context.

    Parameters
    ----------
    plain_step : float
        One step of plain decoding with the full model (one token per sequence).
    draft_steps : tuple of float
        One draft step from each draft exit (the exits before the last, in order).
    verify_base, verify_per_token : float
        A verification pass over ``w`` tokens per sequence takes
        ``verify_base + verify_per_token * w``.
    round_overhead : float, default=0.0
        Fixed seconds per round besides the passes.
    batch_size, context : int
        Where they were measured (sequences per batch, tokens already in the KV cache).

    Examples
    --------
    >>> c = SpeculationCosts(1.0, (0.3,), verify_base=1.0, verify_per_token=0.05)
    >>> round(c.seconds(0, verifications=10, draft_steps=30), 3)
    21.0
    >>> round(c.speed_up(0, tokens=35, verifications=10, draft_steps=30), 3)
    1.667
    """

    plain_step: float
    draft_steps: tuple[float, ...]
    verify_base: float
    verify_per_token: float
    round_overhead: float = 0.0
    batch_size: int = 1
    context: int = 0

    def __post_init__(self) -> None:
        _seconds(self.plain_step, "plain_step")
        if self.plain_step <= 0:
            raise ValueError(f"Expected `plain_step` > 0 seconds, got {self.plain_step!r}.")
        if not isinstance(self.draft_steps, (tuple, list)) or not self.draft_steps:
            raise TypeError("Expected `draft_steps` to be a non-empty tuple of seconds per exit.")
        object.__setattr__(
            self, "draft_steps", tuple(_seconds(x, "draft_steps") for x in self.draft_steps)
        )
        for name in ("verify_base", "verify_per_token", "round_overhead"):
            _seconds(getattr(self, name), name)
        for name in ("batch_size", "context"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"Expected `{name}` to be an integer >= 0, got {value!r}.")

    def seconds(self, draft_exit: int, verifications: float, draft_steps: float) -> float:
        """Seconds of a run with these counts (the module docstring's :math:`t`)."""
        if not 0 <= draft_exit < len(self.draft_steps):
            raise ValueError(
                f"Expected `draft_exit` in [0, {len(self.draft_steps) - 1}], got {draft_exit}."
            )
        per_round = self.verify_base + self.verify_per_token + self.round_overhead
        per_draft = self.draft_steps[draft_exit] + self.verify_per_token
        return verifications * per_round + draft_steps * per_draft

    def speed_up(
        self, draft_exit: int, tokens: float, verifications: float, draft_steps: float
    ) -> float:
        """Plain decoding's time for ``tokens`` over the speculative run's."""
        return tokens * self.plain_step / self.seconds(draft_exit, verifications, draft_steps)

    def to_json(self) -> str:
        """The costs as JSON (read back with :meth:`from_json`)."""
        return json.dumps({"kind": "exitwise.SpeculationCosts", **asdict(self)}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> SpeculationCosts:
        """Costs written by :meth:`to_json`."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.pop("kind", None) != "exitwise.SpeculationCosts":
            raise ValueError("Expected JSON written by SpeculationCosts.to_json().")
        data["draft_steps"] = tuple(data.get("draft_steps", ()))
        return cls(**data)

    def save(self, path: str | Path) -> None:
        """Write :meth:`to_json` to ``path``."""
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> SpeculationCosts:
        """Read costs saved with :meth:`save`."""
        return cls.from_json(Path(path).read_text(encoding="utf-8"))
