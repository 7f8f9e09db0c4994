"""Hugging Face causal language models (``*ForCausalLM``) the way their ``generate`` exits
early.

Hugging Face's early-exit assistant (``model.generate(..., assistant_early_exit=d)``) runs
the first ``d`` decoder layers, then the model's own final norm and LM head. In
``output_hidden_states``, entry ``i`` (``0``: the embeddings) is the output of layer ``i``,
*except the last*, which already has the final norm applied. :func:`causal_lm_heads` gives
the matching head per entry, so ``collect(model, data, exits=[1, ..., L])`` with no
``heads`` returns, at exit ``d``, the logits the assistant computes there.

:func:`own_continuations` generates each prompt's greedy continuation with the full model and
collects per-token, per-layer logits on it (teacher forcing the model's own text). Under
greedy decoding self-speculation outputs exactly that text, so every draft it makes is one of
these: the planner's prediction on them is exact. :class:`PassCounter` counts the
verification and draft passes of a real run with forward hooks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from exitwise._causal_lm_heads import base_model, causal_lm_heads, decoder_layers
from exitwise._checks import check_int
from exitwise.data import ExitOutputs

__all__ = [
    "PassCounter",
    "base_model",
    "causal_lm_heads",
    "decoder_layers",
    "own_continuations",
]


@torch.inference_mode()
def own_continuations(
    model: nn.Module,
    prompts: Sequence[torch.Tensor],
    max_new_tokens: int,
    *,
    exits: Sequence[int] | None = None,
    costs: Any = None,
) -> tuple[ExitOutputs, list[torch.Tensor]]:
    """Greedy continuations of ``prompts`` by the full model, and every exit's logits on them.

    Parameters
    ----------
    model : transformers ``*ForCausalLM``
    prompts : sequence of 1-D LongTensor
        Token ids, one prompt per sequence (generated one at a time, batch 1, as
        Hugging Face's assisted generation runs).
    max_new_tokens : int
    exits : sequence of int, optional
        Hidden-state indices (default: every layer, ``1..L``); exit names ``"layer<i>"``.
    costs : optional
        Passed to :class:`~exitwise.ExitOutputs`.

    Returns
    -------
    outputs : ExitOutputs
        One sample per generated token (labels: the token), ``groups``: the prompt's index,
        ``positions``: 0 for the first new token.
    continuations : list of LongTensor
        The generated tokens of each prompt (stopping early at an end-of-sequence token).

    Examples
    --------
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> cfg = LlamaConfig(vocab_size=20, hidden_size=16, intermediate_size=32,
    ...                   num_hidden_layers=2, num_attention_heads=2, pad_token_id=None,
    ...                   eos_token_id=None)  # never stop early: a fixed count
    >>> prompts = [torch.tensor([1, 2, 3]), torch.tensor([4, 5])]
    >>> out, new = own_continuations(LlamaForCausalLM(cfg), prompts, max_new_tokens=5)
    >>> out.num_samples, out.exit_names, out.positions[:5].tolist(), len(new[0])
    (10, ['layer1', 'layer2'], [0, 1, 2, 3, 4], 5)
    """
    max_new_tokens = check_int(max_new_tokens, "max_new_tokens", minimum=1)
    last = len(decoder_layers(model))
    exits = list(range(1, last + 1)) if exits is None else list(exits)
    heads = causal_lm_heads(model, exits)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    continuations: list[torch.Tensor] = []
    logits, labels, groups, positions = [], [], [], []
    try:
        for i, prompt in enumerate(prompts):
            prompt = torch.as_tensor(prompt).reshape(-1)
            if prompt.dtype != torch.int64 or prompt.numel() == 0:
                raise ValueError(f"Expected prompt {i} to be a non-empty LongTensor of token ids.")
            out = model.generate(
                prompt[None].to(device), max_new_tokens=max_new_tokens, do_sample=False
            )
            new = out[0, prompt.numel() :].cpu()
            continuations.append(new)
            full = torch.cat([prompt, new])[None, :-1].to(device)
            hidden = model(full, output_hidden_states=True).hidden_states
            start = prompt.numel() - 1  # the input that predicts the first new token
            per_exit = [head(hidden[e][0, start:]) for e, head in zip(exits, heads, strict=True)]
            logits.append(torch.stack(per_exit, dim=1).float().cpu())
            labels.append(new)
            groups.append(torch.full((new.numel(),), i, dtype=torch.long))
            positions.append(torch.arange(new.numel()))
    finally:
        model.train(was_training)
    outputs = ExitOutputs(
        torch.cat(logits),
        torch.cat(labels),
        costs,
        [f"layer{e}" for e in exits],
        groups=torch.cat(groups),
        positions=torch.cat(positions),
    )
    return outputs, continuations


class PassCounter:
    """Count a real self-speculative run's passes with forward hooks: a verification runs
    the last decoder layer, a draft step only the first ones.

    Use as a context manager; ``verifications`` and ``draft_steps`` are read after (the hooks
    are removed on exit, also when generation fails).

    Examples
    --------
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> cfg = LlamaConfig(vocab_size=20, hidden_size=16, intermediate_size=32,
    ...                   num_hidden_layers=2, num_attention_heads=2, pad_token_id=None,
    ...                   eos_token_id=None)  # never stop early: a fixed count
    >>> model = LlamaForCausalLM(cfg).eval()
    >>> with PassCounter(model) as counter:
    ...     _ = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=6, do_sample=False)
    >>> counter.verifications, counter.draft_steps  # plain decoding: one full pass per token
    (6, 0)
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = decoder_layers(model)
        self.first = 0
        self.verifications = 0
        self._handles: list[Any] = []

    @property
    def draft_steps(self) -> int:
        return self.first - self.verifications

    def _count(self, name: str):
        def hook(*_args: Any) -> None:
            setattr(self, name, getattr(self, name) + 1)

        return hook

    def __enter__(self) -> PassCounter:
        self.first = self.verifications = 0
        self._handles = [
            self.layers[0].register_forward_hook(self._count("first")),
            self.layers[-1].register_forward_hook(self._count("verifications")),
        ]
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
