"""Running a model to its exits: batches, devices, pooling, heads and forward hooks.

Shared by :mod:`exitwise.collect` (logits) and :mod:`exitwise.exit_costs` (FLOPs, latency).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["cls_pool", "mean_pool"]

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


def _per_token(hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """No pooling: ``[B, T, H]`` stays per token."""
    return hidden


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
    hugging_face = all(isinstance(x, int) and not isinstance(x, bool) for x in exits)
    lm_head = getattr(model, "get_output_embeddings", lambda: None)()
    if hugging_face and heads is None and isinstance(lm_head, nn.Module):
        from exitwise._causal_lm_heads import causal_lm_heads

        heads = causal_lm_heads(model, exits)  # the model's own final norm + LM head
        pool = _per_token  # a language model's logits stay per token
    head_list = _heads_for(heads, len(exits))
    if hugging_face:
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
