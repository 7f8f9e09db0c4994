"""Collect layer-wise logits from any PyTorch model, and measure per-exit costs.

Three ways to say where the exits are:

1. The model returns them: a list/tuple of ``[B, C]`` logits or a ``[B, E, C]`` tensor
   (SDN, MSDNet, DeeBERT-style models). Call ``collect(model, data)``.
2. ``exits=["layer1", "layer2", ...]`` (module names) and ``heads=`` one head per exit or one
   shared head (LayerSkip / "logit lens": the model's own final norm + LM head). Hidden
   states are captured with forward hooks during one forward pass per batch; the hooks are
   always removed, also when the forward pass fails.
3. Hugging Face models: ``exits=[1, 2, ...]`` (indices into ``hidden_states``); the model is
   called with ``output_hidden_states=True``, hidden states are pooled (``pool="cls"``,
   ``"mean"`` over the attention mask, or a callable) and passed to ``heads``.

Token-level outputs (``[B, T, C]``, e.g. a language model's logits per position) become one
sample per token; positions whose label is ``-100`` (Hugging Face's ignore index) are dropped.
``reduce="topk:K"`` keeps bounded memory for huge vocabularies (see :func:`collect`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from exitwise._checks import check_choice
from exitwise.data import ExitOutputs

__all__ = ["cls_pool", "collect", "mean_pool", "measure_costs"]

Head = Callable[[torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------- batches
def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, Mapping):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def _split_batch(batch: Any) -> tuple[Any, torch.Tensor | None]:
    """``(inputs, labels)`` from a tuple, a dict (labels under "labels"/"label") or a tensor."""
    if isinstance(batch, Mapping):
        inputs = dict(batch)
        labels = inputs.pop("labels", None)
        if labels is None:
            labels = inputs.pop("label", None)
        return inputs, labels
    if isinstance(batch, (list, tuple)):
        if len(batch) == 2:
            return batch[0], batch[1]
        if len(batch) == 1:
            return batch[0], None
        raise ValueError(
            f"Expected a batch of (inputs, labels), got a {type(batch).__name__} of "
            f"{len(batch)} items."
        )
    return batch, None


def _call(model: nn.Module, inputs: Any, **kwargs: Any) -> Any:
    if isinstance(inputs, Mapping):
        return model(**inputs, **kwargs)
    return model(inputs, **kwargs)


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _batch_size(inputs: Any) -> int:
    if isinstance(inputs, torch.Tensor):
        return int(inputs.shape[0])
    if isinstance(inputs, Mapping):
        for v in inputs.values():
            if isinstance(v, torch.Tensor):
                return int(v.shape[0])
    if isinstance(inputs, (list, tuple)) and inputs:
        return _batch_size(inputs[0])
    raise TypeError(f"Cannot find a batch dimension in inputs of type {type(inputs).__name__}.")


# ----------------------------------------------------------------------------- pooling
def cls_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The first token's hidden state ``[B, H]`` (BERT's [CLS])."""
    return hidden[:, 0]


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of the hidden states over the tokens the attention mask keeps, ``[B, H]``."""
    if attention_mask is None:
        return hidden.mean(dim=1)
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


_POOLS = {"cls": cls_pool, "mean": mean_pool}


# ----------------------------------------------------------------------------- heads
def _heads_for(heads: Any, num_exits: int) -> list[Head]:
    if heads is None:
        raise ValueError("`heads` is required with `exits`: one head per exit or one shared.")
    if isinstance(heads, (list, tuple, nn.ModuleList)):
        heads = list(heads)
        if len(heads) != num_exits:
            raise ValueError(
                f"Expected one head per exit ({num_exits}) or a single shared head, got "
                f"{len(heads)} heads."
            )
        return heads
    if not callable(heads):
        raise TypeError(f"Expected `heads` to be callable(s), got {type(heads).__name__}.")
    return [heads] * num_exits


class _Capture:
    """Forward hooks that keep the output of named modules; removed on exit, always."""

    def __init__(self, model: nn.Module, names: Sequence[str], on_output=None) -> None:
        self.model = model
        self.names = list(names)
        self.outputs: dict[str, torch.Tensor] = {}
        self.on_output = on_output
        self.handles: list[Any] = []

    def __enter__(self) -> _Capture:
        for name in self.names:
            try:
                module = self.model.get_submodule(name)
            except AttributeError:
                raise ValueError(f"The model has no submodule named {name!r}.") from None
            self.handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def _hook(self, name: str):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            tensor = output[0] if isinstance(output, (tuple, list)) else output
            self.outputs[name] = tensor
            if self.on_output is not None:
                self.on_output(name)

        return hook

    def __exit__(self, *exc: Any) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def _exit_logits(
    model: nn.Module,
    inputs: Any,
    exits: Sequence[str] | Sequence[int] | None,
    heads: Any,
    pool: str | Callable[..., torch.Tensor],
) -> list[torch.Tensor]:
    """Per-exit logits of one batch, each ``[B, C]`` or ``[B, T, C]``."""
    if exits is None:
        out = _call(model, inputs)
        if isinstance(out, torch.Tensor):
            if out.ndim != 3:
                raise ValueError(
                    "A model without `exits` must return per-exit logits: a list of [B, C] or "
                    f"a [B, E, C] tensor; got a tensor of shape {tuple(out.shape)}."
                )
            return list(out.unbind(dim=1))
        if isinstance(out, (list, tuple)) and all(isinstance(o, torch.Tensor) for o in out):
            return list(out)
        raise TypeError(
            "A model without `exits` must return per-exit logits (list of tensors or a "
            f"[B, E, C] tensor); got {type(out).__name__}. Pass `exits` and `heads`."
        )
    head_list = _heads_for(heads, len(exits))
    if all(isinstance(x, int) and not isinstance(x, bool) for x in exits):  # Hugging Face
        out = _call(model, inputs, output_hidden_states=True)
        hidden = getattr(out, "hidden_states", None)
        if hidden is None and isinstance(out, Mapping):
            hidden = out.get("hidden_states")
        if hidden is None:
            raise TypeError(
                "Integer `exits` select Hugging Face hidden states, but the model's output has "
                "no `hidden_states`; pass module names instead."
            )
        pool_fn = _POOLS[pool] if isinstance(pool, str) else pool
        mask = inputs.get("attention_mask") if isinstance(inputs, Mapping) else None
        return [head(pool_fn(hidden[i], mask)) for i, head in zip(exits, head_list, strict=True)]
    if not all(isinstance(x, str) for x in exits):
        raise TypeError("Expected `exits` to be module names (str) or hidden-state indices (int).")
    with _Capture(model, exits) as capture:
        _call(model, inputs)
    missing = [name for name in exits if name not in capture.outputs]
    if missing:
        raise ValueError(f"The forward pass never ran the exit module(s) {missing}.")
    return [head(capture.outputs[name]) for name, head in zip(exits, head_list, strict=True)]


# ----------------------------------------------------------------------------- reduction
def _parse_reduce(reduce: str | None) -> int | None:
    if reduce is None:
        return None
    if isinstance(reduce, str) and reduce.startswith("topk:"):
        try:
            k = int(reduce.split(":", 1)[1])
        except ValueError:
            k = 0
        if k >= 1:
            return k
    raise ValueError(f"Expected `reduce` to be None or 'topk:K' with K >= 1, got {reduce!r}.")


def _reduce_topk(
    logits: torch.Tensor, labels: torch.Tensor | None, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Keep K classes per sample (the same for every exit) and the mass of the rest.

    Kept, in priority order: the label, the top-2 classes of every exit, then the final
    exit's most likely classes. Returns the kept log-probabilities ``[B, E, K]`` (exact), the
    log of the remaining mass ``[B, E]``, labels remapped to kept positions, the kept class
    ids ``[B, K]`` and, per sample, how many equal "rest" buckets keep every bucket at or
    below each exit's runner-up (so argmax, max-probability and margin stay exact).
    """
    b, e, v = logits.shape
    if k < 2 * e + 1 and k < v:
        raise ValueError(
            f"reduce='topk:{k}' must keep at least 2 * E + 1 = {2 * e + 1} classes (every "
            "exit's top two and the label) so that predictions stay exact."
        )
    k = min(k, v)
    lp = torch.log_softmax(logits.to(torch.float32), dim=-1)
    top2 = lp.topk(min(2, v), dim=-1)
    parts = []
    if labels is not None:
        parts.append(labels.clamp(min=0)[:, None])
    parts.append(top2.indices.reshape(b, -1))
    parts.append(lp[:, -1].topk(k, dim=-1).indices)
    cand = torch.cat(parts, dim=1)  # [B, M] in priority order
    m = cand.shape[1]
    earlier = torch.ones(m, m, dtype=torch.bool, device=cand.device).tril(-1)
    dup = ((cand[:, :, None] == cand[:, None, :]) & earlier).any(dim=2)
    order = torch.argsort(dup.to(torch.int8), dim=1, stable=True)  # first occurrences first
    kept = cand.gather(1, order)[:, :k]  # [B, K]
    kept_lp = lp.gather(2, kept[:, None, :].expand(b, e, k))
    rest = lp.scatter(2, kept[:, None, :].expand(b, e, k), float("-inf")).logsumexp(dim=-1)
    runner_up = top2.values[..., -1]  # [B, E]
    needed = torch.ceil(torch.exp(rest - runner_up)).amax(dim=1).clamp(min=1, max=max(1, v - k))
    new_labels = None
    if labels is not None:
        new_labels = (kept == labels[:, None]).to(torch.int64).argmax(dim=1)
    return kept_lp, rest, new_labels, kept, needed.to(torch.int64)


def _assemble_topk(kept_lp: torch.Tensor, rest: torch.Tensor, buckets: int) -> torch.Tensor:
    """``[N, E, K + R]``: kept log-probabilities, then R equal buckets of the rest mass."""
    share = (rest - torch.log(torch.tensor(float(buckets)))).clamp(min=-1e4)
    return torch.cat([kept_lp, share.unsqueeze(-1).expand(-1, -1, buckets)], dim=-1)


# ----------------------------------------------------------------------------- collect
@torch.inference_mode()
def collect(
    model: nn.Module,
    data: Iterable[Any],
    *,
    exits: Sequence[str] | Sequence[int] | None = None,
    heads: Any = None,
    pool: str | Callable[..., torch.Tensor] = "cls",
    device: str | torch.device | None = None,
    output_device: str | torch.device = "cpu",
    reduce: str | None = None,
    costs: Any = None,
    exit_names: Sequence[str] | None = None,
    progress: bool = True,
    return_class_indices: bool = False,
) -> ExitOutputs | tuple[ExitOutputs, torch.Tensor]:
    """Run ``model`` over ``data`` and gather every exit's logits into an ExitOutputs.

    Parameters
    ----------
    model : torch.nn.Module
        Put in eval mode for the run (its previous mode is restored).
    data : iterable of batches
        ``(inputs, labels)`` tuples, dicts (Hugging Face style; labels under ``"labels"``), or
        bare inputs (no labels). A ``DataLoader`` works.
    exits : sequence of str or int, optional
        Module names whose outputs are hidden states (with ``heads``), or Hugging Face
        hidden-state indices. ``None``: the model returns per-exit logits itself.
    heads : module, callable or sequence, optional
        One head per exit, or one shared head (e.g. ``nn.Sequential(final_norm, lm_head)``).
    pool : {"cls", "mean"} or callable, default="cls"
        Hugging Face mode: how a ``[B, T, H]`` hidden state becomes ``[B, H]``; a callable
        gets ``(hidden, attention_mask)``.
    device : str or torch.device, optional
        Where batches go; default: the model's device.
    output_device : default="cpu"
        Where the collected logits accumulate.
    reduce : "topk:K", optional
        Bounded memory for huge vocabularies: keep K classes per sample (the label, every
        exit's top two, then the final exit's most likely) with their exact
        log-probabilities, and spread the remaining mass over R equal "rest" columns, R the
        smallest number that keeps each at or below every exit's runner-up (R <= C - K). Logits
        become ``[N, E, K + R]`` (kept columns first), labels their kept positions. Argmax,
        correctness, max-probability, margin and NLL stay exact; entropy is approximate.
    costs, exit_names :
        Passed to :class:`ExitOutputs` (see :func:`measure_costs`).
    progress : bool, default=True
        A tqdm progress bar with samples/s.
    return_class_indices : bool, default=False
        With ``reduce``, also return the kept class ids ``[N, K]``.

    Returns
    -------
    ExitOutputs (and the kept class ids with ``return_class_indices``)

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> body = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU())
    >>> head = nn.Linear(8, 3)
    >>> data = [(torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1]))]
    >>> out = collect(body, data, exits=["1", "3"], heads=head, progress=False)
    >>> out.num_samples, out.num_exits, out.num_classes
    (5, 2, 3)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"Expected `model` to be a torch.nn.Module, got {type(model).__name__}.")
    k = _parse_reduce(reduce)
    if isinstance(pool, str):
        check_choice(pool, "pool", tuple(_POOLS))
    device = torch.device(device) if device is not None else _model_device(model)
    output_device = torch.device(output_device)
    was_training = model.training
    model.eval()
    chunks: list[torch.Tensor] = []
    label_chunks: list[torch.Tensor] = []
    index_chunks: list[torch.Tensor] = []
    rest_chunks: list[torch.Tensor] = []
    buckets = 1
    any_labels: bool | None = None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(unit=" samples", desc="collect", dynamic_ncols=True)
    try:
        for batch in data:
            inputs, labels = _split_batch(batch)
            inputs = _to_device(inputs, device)
            per_exit = _exit_logits(model, inputs, exits, heads, pool)
            if not per_exit:
                raise ValueError("The model produced no exits.")
            logits = torch.stack(
                [x.float() if x.dtype == torch.bfloat16 else x for x in per_exit], dim=1
            )  # [B, E, C] or [B, E, T, C]
            if logits.ndim == 4:  # tokens are samples
                b, e, t, c = logits.shape
                logits = logits.permute(0, 2, 1, 3).reshape(b * t, e, c)
                if labels is not None:
                    labels = torch.as_tensor(labels).reshape(-1)
            if labels is not None:
                labels = torch.as_tensor(labels).to(device).long()
                keep = labels != -100
                if not bool(keep.all()):
                    logits, labels = logits[keep], labels[keep]
            if any_labels is None:
                any_labels = labels is not None
            elif any_labels != (labels is not None):
                raise ValueError("Some batches have labels and others do not.")
            if k is not None:
                logits, rest, labels, kept, needed = _reduce_topk(logits, labels, k)
                index_chunks.append(kept.to(output_device))
                rest_chunks.append(rest.to(output_device))
                buckets = max(buckets, int(needed.max()))
            chunks.append(logits.detach().to(output_device))
            if labels is not None:
                label_chunks.append(labels.to(output_device))
            if bar is not None:
                bar.update(int(logits.shape[0]))
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    if not chunks:
        raise ValueError("`data` yielded no batches.")
    logits_all = torch.cat(chunks)
    if k is not None:
        logits_all = _assemble_topk(logits_all, torch.cat(rest_chunks), buckets)
    out = ExitOutputs(
        logits_all,
        labels=torch.cat(label_chunks) if label_chunks else None,
        costs=costs,
        exit_names=exit_names,
    )
    if return_class_indices:
        if k is None:
            raise ValueError("`return_class_indices` needs `reduce='topk:K'`.")
        return out, torch.cat(index_chunks)
    return out


# ----------------------------------------------------------------------------- costs
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
