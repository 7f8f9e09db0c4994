"""Measuring :class:`~exitwise.generation.SpeculationCosts` on a Hugging Face causal LM.

Decoding steps run against a KV cache, so they are timed as such (not with
:func:`exitwise.serving.measure_latency_model`, which times one pass over a batch of
inputs): a cache of ``context`` tokens per sequence is filled once, then each timed call adds
tokens to it and the cache is cropped back. Timed: a draft step from every draft layer (one
token through the first ``d`` layers and the final norm + LM head: what the early-exit
assistant runs), and a verification pass over ``w = 1..max_width`` tokens, fitted as
``a + b w`` by least squares. Medians of ``repeats`` after ``warmup`` calls.

``loop="forward"`` stops there: the cost of the passes alone, what an engine whose own loop
costs little approaches (plain decoding = a verification of one token). ``loop="hf"`` times
Hugging Face's own loops (batch size 1, as its assisted generation runs): plain ``generate``
per token, and for every draft layer assisted runs with ``k = 1`` and ``k = calibrate``,
interleaved prompt by prompt, whose times give the cost per round and per draft step by least
squares over the counted passes. Measure on prompts that are not the ones you check on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from exitwise._checks import check_choice, check_int
from exitwise.generation.causal_lm import PassCounter, base_model, decoder_layers
from exitwise.generation.engine_configs import HF_GENERATION_FIELDS
from exitwise.generation.speculation_costs import SpeculationCosts

__all__ = ["measure_speculation_costs"]


def _median_seconds(fn: Callable[[], Any], warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


class _CachedContext:
    """A filled KV cache of ``context`` tokens per sequence; :meth:`step` runs ``width``
    tokens through the first ``layers`` layers and crops the cache back."""

    def __init__(self, model: Any, ids: torch.Tensor) -> None:
        from transformers import DynamicCache

        self.model, self.base = model, base_model(model)
        self.total = int(self.base.config.num_hidden_layers)
        self.cache = DynamicCache(config=model.config)
        self.context = ids.shape[1]
        self.next_ids = ids[:, -1:]
        model(ids, past_key_values=self.cache, use_cache=True)

    def step(self, width: int, layers: int) -> None:
        ids = self.next_ids.expand(-1, width)
        positions = torch.arange(self.context, self.context + width, device=ids.device)
        self.base.config.num_hidden_layers = layers
        try:
            self.model(
                ids,
                past_key_values=self.cache,
                use_cache=True,
                position_ids=positions.expand(ids.shape[0], -1),
                logits_to_keep=1,
            )
        finally:
            self.base.config.num_hidden_layers = self.total
            for layer in self.cache.layers:  # a draft step grew only its first layers
                extra = layer.get_seq_length() - self.context
                if extra > 0:
                    layer.crop(-extra)


@torch.inference_mode()
def measure_speculation_costs(
    model: Any,
    prompts: Sequence[torch.Tensor],
    *,
    exits: Sequence[int] | None = None,
    max_width: int = 9,
    batch_size: int = 1,
    context: int | None = None,
    loop: str = "hf",
    new_tokens: int = 32,
    calibrate: int | None = None,
    warmup: int = 2,
    repeats: int = 7,
) -> SpeculationCosts:
    """Seconds per step of plain and self-speculative decoding, measured on ``model``.

    Parameters
    ----------
    model : transformers ``*ForCausalLM``
    prompts : sequence of 1-D LongTensor
        The first builds the timed context; with ``loop="hf"`` all are generated from.
    exits : sequence of int, optional
        Hidden-state indices of the exits (default ``1..L``); every one but the last is a
        draft exit, in the order of :func:`~exitwise.generation.own_continuations`.
    max_width : int, default=9
        Widest verification timed (``k + 1`` of the largest ``k`` you plan for).
    batch_size : int, default=1
    context : int, optional
        Tokens in the cache per sequence (default: the first prompt's length +
        ``new_tokens // 2``, the middle of a generation).
    loop : {"hf", "forward"}
        See the module docstring.
    new_tokens : int, default=32
        Tokens generated per prompt by the ``"hf"`` timings.
    calibrate : int, optional
        The longer draft length of the ``"hf"`` calibration runs (default 4, at least 2; the
        other is 1: two lengths per draft layer determine its cost and the round's).

    Examples
    --------
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> cfg = LlamaConfig(vocab_size=20, hidden_size=16, intermediate_size=32,
    ...                   num_hidden_layers=2, num_attention_heads=2, pad_token_id=None)
    >>> costs = measure_speculation_costs(LlamaForCausalLM(cfg), [torch.tensor([1, 2, 3])],
    ...                                   loop="forward", max_width=3, repeats=2)
    >>> len(costs.draft_steps), costs.plain_step > 0
    (1, True)
    """
    check_choice(loop, "loop", ("hf", "forward"))
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    max_width = check_int(max_width, "max_width", minimum=1)
    if calibrate is not None:
        calibrate = check_int(calibrate, "calibrate", minimum=2)
    if loop == "hf" and batch_size != 1:
        raise ValueError("loop='hf' times Hugging Face's assisted generation, which runs batch 1.")
    if not prompts:
        raise ValueError("Expected at least one prompt.")
    total = len(decoder_layers(model))
    exits = list(range(1, total + 1)) if exits is None else [int(i) for i in exits]
    device = next(model.parameters()).device
    first = torch.as_tensor(prompts[0]).reshape(-1).to(device)
    context = (
        first.numel() + new_tokens // 2
        if context is None
        else check_int(context, "context", minimum=1)
    )
    ids = first.repeat(context // first.numel() + 1)[:context][None].expand(batch_size, -1)
    was_training = model.training
    model.eval()
    try:
        cached = _CachedContext(model, ids.contiguous())
        widths = np.arange(1, max_width + 1)
        verify = [
            _median_seconds(lambda w=w: cached.step(int(w), total), warmup, repeats) for w in widths
        ]
        per_token, base = np.polyfit(widths, verify, 1) if max_width > 1 else (0.0, verify[0])
        drafts = [
            _median_seconds(lambda i=i: cached.step(1, i), warmup, repeats) for i in exits[:-1]
        ]
        plain = verify[0]
        costs = SpeculationCosts(
            plain,
            tuple(drafts),
            max(float(base), 0.0),
            max(float(per_token), 0.0),
            batch_size=batch_size,
            context=context,
        )
        if loop == "forward":
            return costs
        return _with_hf_loop(model, prompts, costs, exits, new_tokens, calibrate)
    finally:
        model.train(was_training)


def _generate(
    model: Any, prompt: torch.Tensor, new_tokens: int, layer: int | None, k: int
) -> float:
    """Seconds of one ``generate`` call: plain (``layer=None``) or assisted with ``k`` drafts."""
    ids = torch.as_tensor(prompt).reshape(1, -1).to(next(model.parameters()).device)
    kwargs: dict[str, Any] = {}
    if layer is not None:
        config = model.generation_config
        config.num_assistant_tokens, config.num_assistant_tokens_schedule = k, "constant"
        config.assistant_confidence_threshold = 0.0
        kwargs["assistant_early_exit"] = layer
    start = time.perf_counter()
    model.generate(
        ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, **kwargs
    )
    return time.perf_counter() - start


def _with_hf_loop(model, prompts, costs, exits, new_tokens, calibrate) -> SpeculationCosts:
    """Hugging Face's loop, timed: plain ``generate`` per token, and for every draft layer two
    assisted runs (``k`` and 1 drafts), all interleaved prompt by prompt so that the machine's
    drift hits each alike. The time of a run is ``V R + S D_d`` (``R`` per round, ``D_d`` per
    draft step from layer ``d``): least squares over the runs, with ``V`` and ``S`` counted by
    :class:`PassCounter`. ``R`` and ``D_d`` replace the passes' own times plus the loop's
    (the verification's width term is kept from the forward timings)."""
    drafts = exits[:-1]
    k = 4 if calibrate is None else calibrate
    runs = [(None, 0)] + [(layer, length) for layer in drafts for length in sorted({1, k})]
    config = model.generation_config
    saved = {n: getattr(config, n, None) for n in HF_GENERATION_FIELDS}
    seconds = np.zeros(len(runs))
    counts = np.zeros((len(runs), 2))
    try:
        _generate(model, prompts[0], 4, None, 1)  # warm-up
        _generate(model, prompts[0], 4, drafts[0], 2)
        for prompt in prompts:
            for i, (layer, length) in enumerate(runs):
                with PassCounter(model) as counter:
                    seconds[i] += _generate(model, prompt, new_tokens, layer, length)
                counts[i] = counts[i] + (counter.verifications, counter.draft_steps)
    finally:
        for n, v in saved.items():
            setattr(config, n, v)
    plain = seconds[0] / (len(prompts) * new_tokens)
    design = np.zeros((len(runs) - 1, 1 + len(drafts)))
    for i, (layer, _) in enumerate(runs[1:]):
        design[i, 0] = counts[i + 1, 0]
        design[i, 1 + drafts.index(layer)] = counts[i + 1, 1]
    fitted = np.linalg.lstsq(design, seconds[1:], rcond=None)[0]
    per_round = max(float(fitted[0]), 0.0)
    b = costs.verify_per_token
    base = min(costs.verify_base, max(per_round - b, 0.0))
    return SpeculationCosts(
        plain,
        tuple(max(float(t) - b, 0.0) for t in fitted[1:]),
        base,
        b,
        round_overhead=max(per_round - b - base, 0.0),
        batch_size=1,
        context=costs.context,
    )
