"""A speculation plan as the settings of the engines people run: Hugging Face ``generate``,
vLLM's ``speculative_config`` and TensorRT-LLM's decoding config.

Hugging Face (transformers 5.x) runs LayerSkip self-speculation with
``model.generate(..., assistant_early_exit=d)``; the early-exit assistant *is the model*, and
it reads ``num_assistant_tokens``, ``num_assistant_tokens_schedule`` and
``assistant_confidence_threshold`` from ``model.generation_config`` (passed to ``generate``
they change nothing). Its defaults are ``k = 20`` and a confidence threshold of 0.4, so a plan
without a threshold must set it to 0.

vLLM's ``num_speculative_tokens_per_batch_size`` is a list of ``[lowest, highest, K]`` batch
size ranges (``K = 0``: no speculation) beside ``num_speculative_tokens`` (the largest K);
TensorRT-LLM's ``draft_len_schedule`` maps a batch size to a draft length beside
``max_draft_len``. Both schedules come from the plan's counts and costs measured at each
batch size: the best ``k`` of the chosen draft exit (no stop threshold: neither engine has
one), or 0 where speculation does not beat plain decoding. These two are checked by schema
only: the engines need a GPU.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from exitwise.generation.speculation_costs import SpeculationCosts

__all__ = [
    "HF_GENERATION_FIELDS",
    "batch_size_schedule",
    "hf_generate_kwargs",
    "hf_settings",
    "trtllm_config",
    "vllm_config",
]


# what Hugging Face's early-exit assistant reads from ``model.generation_config``
HF_GENERATION_FIELDS = (
    "num_assistant_tokens",
    "num_assistant_tokens_schedule",
    "assistant_confidence_threshold",
)


def _hf_layer(row: dict[str, Any], layers: Any) -> int:
    if layers is not None:
        return int(layers[row["draft_exit"]])
    found = re.fullmatch(r"layer(\d+)", str(row["draft_name"]))
    if found is None:
        raise ValueError(
            f"Cannot tell the Hugging Face layer of draft exit {row['draft_name']!r}: pass "
            "`layers` (the hidden-state index of every exit), or plan on outputs from "
            "own_continuations (exits named 'layer<i>')."
        )
    return int(found.group(1))


def hf_settings(
    plan: Any, *, row: dict[str, Any] | None = None, layers: Any = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """What a plan asks of Hugging Face, without a model: the kwargs for ``generate`` and the
    fields of ``model.generation_config`` (see :func:`hf_generate_kwargs`).

    Examples
    --------
    >>> import torch
    >>> from exitwise import ExitOutputs
    >>> from exitwise.generation import plan_self_speculation
    >>> z = torch.zeros(40, 2, 3); z[:, :, 0] = 1.0  # the draft always agrees
    >>> out = ExitOutputs(z, groups=torch.zeros(40, dtype=torch.long), positions=torch.arange(40),
    ...                   exit_names=["layer2", "layer6"], costs=[2.0, 6.0])
    >>> kwargs, fields = hf_settings(plan_self_speculation(out, max_draft=4))
    >>> kwargs
    {'assistant_early_exit': 2, 'do_sample': False}
    >>> fields["num_assistant_tokens"], fields["assistant_confidence_threshold"]
    (4, 0.0)
    """
    if row is None:
        if not plan.speculate:
            return {"do_sample": False}, {}
        row = plan.best
    if plan.mode != "greedy":
        raise ValueError("Only greedy plans map onto generate (do_sample=False).")
    tau = row["confidence_threshold"] if row["threshold"] is not None else 0.0
    values = (int(row["draft_length"]), plan.schedule, float(min(tau, 1.0)))  # inf: 1.0
    fields = dict(zip(HF_GENERATION_FIELDS, values, strict=True))
    return {"assistant_early_exit": _hf_layer(row, layers), "do_sample": False}, fields


def hf_generate_kwargs(
    plan: Any, model: Any, *, row: dict[str, Any] | None = None, layers: Any = None
) -> dict[str, Any]:
    """Set a plan on a Hugging Face causal LM and return the kwargs for ``model.generate``.

    Sets on ``model.generation_config``: ``num_assistant_tokens`` (``k``),
    ``num_assistant_tokens_schedule`` (the plan's schedule) and
    ``assistant_confidence_threshold`` (the row's raw confidence threshold; 0 without one,
    which turns Hugging Face's default 0.4 off). Returns ``{"assistant_early_exit": d,
    "do_sample": False}`` where ``d`` is the number of layers the draft runs (the exit's
    hidden-state index). Where the plan says not to speculate, sets nothing and returns
    ``{"do_sample": False}``.

    Parameters
    ----------
    plan : SpeculationPlan
    model : transformers model with a ``generation_config``
    row : dict, optional
        One of ``plan.rows`` (default: ``plan.best``).
    layers : sequence of int, optional
        Hidden-state index of every exit (default: read from exit names ``"layer<i>"``).
    """
    config = getattr(model, "generation_config", None)
    if config is None:
        raise TypeError(
            f"Expected a Hugging Face model with a generation_config, got {type(model).__name__}."
        )
    kwargs, fields = hf_settings(plan, row=row, layers=layers)
    for name, value in fields.items():
        setattr(config, name, value)
    return kwargs


def batch_size_schedule(
    plan: Any, costs_by_batch_size: Mapping[int, SpeculationCosts], *, draft_exit: int | None = None
) -> dict[int, int]:
    """The best draft length per batch size for one draft exit (default: the best row's),
    without a stop threshold; 0 where no draft length beats plain decoding at that batch size.

    Examples
    --------
    >>> import torch
    >>> from exitwise import ExitOutputs
    >>> from exitwise.generation import plan_self_speculation
    >>> z = torch.zeros(40, 2, 3); z[:, :, 0] = 1.0  # the draft always agrees
    >>> plan = plan_self_speculation(ExitOutputs(z, groups=torch.zeros(40, dtype=torch.long),
    ...                                          positions=torch.arange(40)), max_draft=4)
    >>> cheap = SpeculationCosts(1.0, (0.1,), verify_base=1.0, verify_per_token=0.0, batch_size=1)
    >>> busy = SpeculationCosts(1.0, (0.5,), verify_base=0.2, verify_per_token=0.8, batch_size=64)
    >>> batch_size_schedule(plan, {1: cheap, 64: busy})
    {1: 4, 64: 0}
    """
    if not isinstance(costs_by_batch_size, Mapping) or not costs_by_batch_size:
        raise TypeError(
            "Expected `costs_by_batch_size` to be a non-empty {batch size: SpeculationCosts}."
        )
    d = plan.best["draft_exit"] if draft_exit is None else int(draft_exit)
    rows = [r for r in plan.rows if r["draft_exit"] == d and r["threshold"] is None]
    if not rows:
        raise ValueError(f"The plan has no draft exit {d}.")
    schedule = {}
    for b in sorted(costs_by_batch_size):
        costs = costs_by_batch_size[b]
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise ValueError(f"Expected batch sizes to be integers >= 1, got {b!r}.")
        if not isinstance(costs, SpeculationCosts):
            raise TypeError(
                f"Expected SpeculationCosts for batch size {b}, got {type(costs).__name__}."
            )
        speed = {
            r["draft_length"]: costs.speed_up(d, r["tokens"], r["verifications"], r["draft_steps"])
            for r in rows
        }
        k, best = max(speed.items(), key=lambda kv: kv[1])
        schedule[b] = k if best > 1.0 else 0
    return schedule


def vllm_config(
    plan: Any, costs_by_batch_size: Mapping[int, SpeculationCosts], *, draft_exit: int | None = None
) -> dict[str, Any]:
    """vLLM's ``speculative_config`` keys: ``num_speculative_tokens`` (the largest K) and
    ``num_speculative_tokens_per_batch_size`` (``[lowest, highest, K]`` ranges: each measured
    batch size's K holds from it up to the next one's minus 1, the last to 2**31 - 1). Add the
    ``method`` and model of your deployment."""
    schedule = batch_size_schedule(plan, costs_by_batch_size, draft_exit=draft_exit)
    sizes = sorted(schedule)
    ranges = []
    for i, b in enumerate(sizes):
        low = 1 if i == 0 else b
        high = sizes[i + 1] - 1 if i + 1 < len(sizes) else 2**31 - 1
        ranges.append([low, high, schedule[b]])
    return {
        "num_speculative_tokens": max(schedule.values()),
        "num_speculative_tokens_per_batch_size": ranges,
    }


def trtllm_config(
    plan: Any, costs_by_batch_size: Mapping[int, SpeculationCosts], *, draft_exit: int | None = None
) -> dict[str, Any]:
    """TensorRT-LLM's ``max_draft_len`` and ``draft_len_schedule`` (batch size -> draft
    length, 0: no speculation)."""
    schedule = batch_size_schedule(plan, costs_by_batch_size, draft_exit=draft_exit)
    return {"max_draft_len": max(schedule.values()), "draft_len_schedule": schedule}
