"""The heads a Hugging Face causal LM's early exit uses (the base layer: ``_hooks`` applies
them when ``collect`` gets integer exits and no heads; :mod:`exitwise.generation.causal_lm`
documents and re-exports them)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["base_model", "causal_lm_heads", "decoder_layers"]

_NORMS = ("norm", "final_layernorm", "ln_f", "final_layer_norm")


def base_model(model: nn.Module) -> nn.Module:
    prefix = getattr(model, "base_model_prefix", None)
    base = getattr(model, prefix, None) if prefix else None
    if not isinstance(base, nn.Module):
        raise TypeError(
            "Expected a Hugging Face *ForCausalLM model (with `base_model_prefix`), got "
            f"{type(model).__name__}."
        )
    return base


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a Hugging Face causal LM, in order."""
    base = base_model(model)
    for name in ("layers", "h", "blocks"):
        layers = getattr(base, name, None)
        if isinstance(layers, nn.ModuleList):
            return layers
    raise TypeError(f"Cannot find the decoder layers of {type(model).__name__}.")


def causal_lm_heads(model: nn.Module, exits: Sequence[int]) -> list[nn.Module]:
    """One head per hidden-state index: the final norm + LM head, or the LM head alone for
    the last layer (whose hidden state Hugging Face returns already normed).

    Examples
    --------
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> cfg = LlamaConfig(vocab_size=20, hidden_size=16, intermediate_size=32,
    ...                   num_hidden_layers=2, num_attention_heads=2)
    >>> heads = causal_lm_heads(LlamaForCausalLM(cfg), [1, 2])
    >>> len(heads[0]), len(heads[1])  # norm + LM head; the LM head alone for the last layer
    (2, 1)
    """
    base = base_model(model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, nn.Module):
        raise TypeError(f"{type(model).__name__} has no LM head (get_output_embeddings).")
    norm = next(
        (getattr(base, n) for n in _NORMS if isinstance(getattr(base, n, None), nn.Module)), None
    )
    if norm is None:
        raise TypeError(f"Cannot find the final norm of {type(model).__name__} (tried {_NORMS}).")
    last = len(decoder_layers(model))
    cap = getattr(model.config, "final_logit_softcapping", None)
    heads: list[nn.Module] = []
    for i in exits:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i <= last:
            raise ValueError(
                f"Expected `exits` to be hidden-state indices in [0, {last}], got {i!r}."
            )
        layers: list[nn.Module] = [head] if i == last else [norm, head]
        if cap:
            layers.append(_SoftCap(float(cap)))
        heads.append(nn.Sequential(*layers))
    return heads


class _SoftCap(nn.Module):
    """Gemma-2's final logit soft-capping, ``cap * tanh(z / cap)``."""

    def __init__(self, cap: float) -> None:
        super().__init__()
        self.cap = cap

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.cap * torch.tanh(z / self.cap)
