"""Per-exit costs of a model: FLOPs (``torch.utils.flop_counter``) or wall-clock latency.

The cost of exit ``e`` is everything the forward pass ran until the exit's module returned,
plus the heads of exits ``0..e`` (each evaluated on the way, as an early-exit model does).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from exitwise._checks import check_choice
from exitwise._hooks import (
    _batch_size,
    _call,
    _Capture,
    _heads_for,
    _model_device,
    _split_batch,
    _to_device,
)

__all__ = ["measure_costs"]


def measure_costs(
    model: nn.Module,
    example_batch: Any,
    *,
    exits: Sequence[str],
    heads: Any = None,
    method: str = "flops",
    per_sample: bool = True,
    warmup: int = 3,
    repeats: int = 10,
) -> torch.Tensor:
    """Cumulative cost of reaching each exit ``[E]`` (float64), for ``ExitOutputs.costs``.

    ``exits`` are module names in execution order (hidden-state modules, or the exit heads
    of a model that has them inside). The cost of exit ``e`` is everything the forward pass
    ran until module ``e`` returned, plus the ``heads`` of exits ``0..e`` (each evaluated on
    the way, as an early-exit model does).

    Parameters
    ----------
    method : {"flops", "latency"}, default="flops"
        FLOPs from ``torch.utils.flop_counter.FlopCounterMode``, or wall-clock seconds
        (median of ``repeats`` runs after ``warmup``; CUDA events on GPU).
    per_sample : bool, default=True
        Divide by the batch size.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> body = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU())
    >>> measure_costs(body, torch.randn(2, 4), exits=["1", "3"], heads=nn.Linear(8, 3))
    tensor([112., 288.], dtype=torch.float64)
    """
    check_choice(method, "method", ("flops", "latency"))
    if not exits or not all(isinstance(x, str) for x in exits):
        raise ValueError("Expected `exits` to be a non-empty list of module names.")
    head_list = _heads_for(heads, len(exits)) if heads is not None else None
    inputs, _ = _split_batch(example_batch)
    device = _model_device(model)
    inputs = _to_device(inputs, device)
    batch = _batch_size(inputs)
    was_training = model.training
    model.eval()
    try:
        if method == "flops":
            costs = _flop_costs(model, inputs, exits, head_list)
        else:
            costs = _latency_costs(model, inputs, exits, head_list, warmup, repeats, device)
    finally:
        model.train(was_training)
    result = torch.tensor(costs, dtype=torch.float64)
    if per_sample:
        result = result / batch
    return result


def _flop_costs(model, inputs, exits, head_list) -> list[float]:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    reached: dict[str, float] = {}
    with torch.inference_mode(), _Capture(model, exits) as capture:
        capture.on_output = lambda name: reached.setdefault(name, counter.get_total_flops())
        with counter:
            _call(model, inputs)
        hidden = dict(capture.outputs)
    missing = [name for name in exits if name not in reached]
    if missing:
        raise ValueError(f"The forward pass never ran the exit module(s) {missing}.")
    costs, head_total = [], 0.0
    for i, name in enumerate(exits):
        if head_list is not None:
            head_counter = FlopCounterMode(display=False)
            with torch.inference_mode(), head_counter:
                head_list[i](hidden[name])
            head_total += head_counter.get_total_flops()
        costs.append(float(reached[name]) + head_total)
    return costs


def _latency_costs(model, inputs, exits, head_list, warmup, repeats, device) -> list[float]:
    cuda = device.type == "cuda"
    samples: list[list[float]] = []
    for rep in range(warmup + repeats):
        marks: dict[str, Any] = {}
        if cuda:
            start = torch.cuda.Event(enable_timing=True)
            start.record()
        else:
            start = time.perf_counter()

        def mark(name: str, marks=marks) -> None:
            if cuda:
                event = torch.cuda.Event(enable_timing=True)
                event.record()
                marks[name] = event
            else:
                marks[name] = time.perf_counter()

        head_times = []
        with torch.inference_mode(), _Capture(model, exits, on_output=mark) as capture:
            _call(model, inputs)
            for i, name in enumerate(exits):
                if head_list is None:
                    head_times.append(0.0)
                    continue
                t0 = time.perf_counter()
                head_list[i](capture.outputs[name])
                if cuda:
                    torch.cuda.synchronize()
                head_times.append(time.perf_counter() - t0)
        if cuda:
            torch.cuda.synchronize()
            reach = [start.elapsed_time(marks[name]) / 1000.0 for name in exits]
        else:
            reach = [marks[name] - start for name in exits]
        if rep >= warmup:
            cumulative_heads = torch.tensor(head_times).cumsum(0).tolist()
            samples.append([r + h for r, h in zip(reach, cumulative_heads, strict=True)])
    values = torch.tensor(samples, dtype=torch.float64).median(dim=0).values
    return torch.cummax(values, dim=0).values.tolist()
