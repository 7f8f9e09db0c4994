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
   ``"mean"`` over the attention mask, or a callable) and passed to ``heads``. A causal LM
   (``*ForCausalLM``) needs no ``heads``: its own final norm and LM head are used, as its
   ``generate`` does for early exit (:func:`exitwise.generation.causal_lm_heads`; the last
   hidden state is already normed), and the logits stay per token.

Token-level outputs (``[B, T, C]``, e.g. a language model's logits per position) become one
sample per token; positions whose label is ``-100`` (Hugging Face's ignore index), and padding
(``attention_mask == 0`` in a dict batch), are dropped. Every token keeps its sequence
(``groups``: the running index of its sequence in ``data``) and its position in it
(``positions``: counted over the attention mask, so left padding does not shift them).
``reduce="topk:K"`` keeps bounded memory for huge vocabularies (see :func:`collect`).
Per-exit costs: :func:`measure_costs` (in :mod:`exitwise.exit_costs`, re-exported here).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from exitwise._checks import check_choice, check_int
from exitwise._fixed_width import first_occurrences, kept_columns, reduce_fixed_width
from exitwise._hooks import (
    _POOLS,
    _exit_logits,
    _model_device,
    _split_batch,
    _to_device,
    cls_pool,
    mean_pool,
)
from exitwise.data import ExitOutputs
from exitwise.data_shards import ShardedOutputs, ShardWriter, load
from exitwise.exit_costs import measure_costs

__all__ = ["cls_pool", "collect", "mean_pool", "measure_costs"]


# ----------------------------------------------------------------------------- reduction
def _parse_reduce(reduce: str | None) -> tuple[str, int] | None:
    """``("topk" | "fixed", K)`` or ``None``."""
    if reduce is None:
        return None
    if isinstance(reduce, str) and reduce.split(":", 1)[0] in ("topk", "fixed"):
        mode, _, value = reduce.partition(":")
        try:
            k = int(value)
        except ValueError:
            k = 0
        if k >= 1:
            return mode, k
    raise ValueError(
        f"Expected `reduce` to be None, 'topk:K' or 'fixed:K' with K >= 1, got {reduce!r}."
    )


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
    kept = first_occurrences(torch.cat(parts, dim=1), k)  # [B, K], in priority order
    kept_lp, rest, new_labels = kept_columns(lp, kept, labels)
    runner_up = top2.values[..., -1]  # [B, E]
    needed = torch.ceil(torch.exp(rest - runner_up)).amax(dim=1).clamp(min=1, max=max(1, v - k))
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
    out: str | Path | None = None,
    shard_samples: int = 1_000_000,
) -> ExitOutputs | ShardedOutputs | tuple[ExitOutputs, torch.Tensor]:
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
        With integer ``exits`` on a Hugging Face ``*ForCausalLM`` and no ``heads``: the
        model's own final norm and LM head (exactly the logits of its early-exit assistant).
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
    reduce : "fixed:K"
        The same width for every sample: ``K + E (+ 1)`` kept classes (the label, every exit's
        argmax, the final exit's most likely) and one rest column holding, in each exit's
        row, that exit's remaining mass: ``[N, E, K + E (+ 1) + 1]`` whatever the vocabulary
        or the flattest token, with ``rest_columns=1`` (:mod:`exitwise._fixed_width`: argmax,
        max-probability, correctness and NLL exact on every sample; margin, entropy and
        calibrators refused; the sampling acceptance a lower bound, off by at most
        ``min(r_d, r_L)``).
    costs, exit_names :
        Passed to :class:`ExitOutputs` (see :func:`measure_costs`).
    progress : bool, default=True
        A tqdm progress bar with samples/s.
    return_class_indices : bool, default=False
        With ``reduce``, also return the kept class ids ``[N, K]`` (``[N, K + E (+ 1)]``).
    out : str or path, optional
        A directory: write the outputs there as shard files of about ``shard_samples``
        samples (whole batches; each rank its own files in a ``torch.distributed`` group,
        every rank passing its part of the data) and an ``index.json``, holding at most one
        shard in memory, and return :func:`exitwise.load` of it
        (:class:`~exitwise.data_shards.ShardedOutputs`, this rank's part in a group). Sequence
        ids are numbered as one in-memory ``collect`` over every rank's batches in rank order
        would number them. Not with ``reduce="topk:K"`` (its width varies): use
        ``"fixed:K"``.
    shard_samples : int, default=1_000_000
        Samples per shard file with ``out`` (a shard ends after the batch that reaches it).

    Returns
    -------
    ExitOutputs (and the kept class ids with ``return_class_indices``), or ShardedOutputs
    with ``out``

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
    reduction = _parse_reduce(reduce)
    if isinstance(pool, str):
        check_choice(pool, "pool", tuple(_POOLS))
    device = torch.device(device) if device is not None else _model_device(model)
    writer = None
    if out is not None:
        shard_samples = check_int(shard_samples, "shard_samples", minimum=1)
        if reduction is not None and reduction[0] == "topk":
            raise ValueError(
                "`out` writes shards of one width: use reduce='fixed:K' (the same columns for "
                "every sample), not 'topk:K' (its width depends on the data)."
            )
        if return_class_indices:
            raise ValueError("`return_class_indices` is not available with `out`.")
        writer = ShardWriter(out)
    gathered = _Gathered(reduction, torch.device(output_device))
    was_training = model.training
    model.eval()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(unit=" samples", desc="collect", dynamic_ncols=True)
    try:
        for batch in data:
            logits, labels, tokens = _batch_logits(model, batch, device, exits, heads, pool)
            gathered.add(logits, labels, tokens)
            if bar is not None:
                bar.update(int(logits.shape[0]))
            if writer is not None and gathered.num_samples >= shard_samples:
                writer.write(gathered.outputs(costs, exit_names), gathered.sequences)
                gathered = _Gathered(reduction, torch.device(output_device))
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    if writer is not None:
        if gathered.num_samples:
            writer.write(gathered.outputs(costs, exit_names), gathered.sequences)
        writer.finish()  # every rank (a collective in a group)
        return load(out)
    outputs = gathered.outputs(costs, exit_names)
    if return_class_indices:
        if reduction is None:
            raise ValueError("`return_class_indices` needs `reduce='topk:K'` or 'fixed:K'.")
        return outputs, torch.cat(gathered.kept)
    return outputs


def _batch_logits(
    model: nn.Module, batch: Any, device: torch.device, exits: Any, heads: Any, pool: Any
) -> tuple[torch.Tensor, torch.Tensor | None, tuple[torch.Tensor, torch.Tensor, int] | None]:
    """One batch's logits ``[B, E, C]`` (tokens flattened into samples) and labels, with
    positions labelled ``-100`` and padding dropped; for tokens also (sequence index within
    the batch, position) per kept token and the batch's number of sequences."""
    inputs, labels = _split_batch(batch)
    per_exit = _exit_logits(model, _to_device(inputs, device), exits, heads, pool)
    if not per_exit:
        raise ValueError("The model produced no exits.")
    logits = torch.stack(
        [x.float() if x.dtype == torch.bfloat16 else x for x in per_exit], dim=1
    )  # [B, E, C] or [B, E, T, C]
    tokens = None
    keep = None
    if logits.ndim == 4:  # tokens are samples
        b, e, t, c = logits.shape
        logits = logits.permute(0, 2, 1, 3).reshape(b * t, e, c)
        seq = torch.arange(b, device=logits.device).repeat_interleave(t)
        mask = inputs.get("attention_mask") if isinstance(inputs, dict) else None
        if mask is None:
            pos = torch.arange(t, device=logits.device).repeat(b)
        else:
            mask = torch.as_tensor(mask).to(logits.device).long()
            if tuple(mask.shape) != (b, t):
                raise ValueError(
                    f"Expected `attention_mask` of shape {(b, t)} to match the token logits, "
                    f"got {tuple(mask.shape)}."
                )
            pos = (mask.cumsum(dim=1) - 1).reshape(-1)
            keep = mask.reshape(-1) > 0
        tokens = (seq, pos, b)
        if labels is not None:
            labels = torch.as_tensor(labels).reshape(-1)
    if labels is not None:
        labels = torch.as_tensor(labels).to(logits.device).long()
        keep = (labels != -100) if keep is None else keep & (labels != -100)
    if keep is not None and not bool(keep.all()):
        logits = logits[keep]
        labels = None if labels is None else labels[keep]
        tokens = None if tokens is None else (tokens[0][keep], tokens[1][keep], tokens[2])
    if labels is not None:
        labels = labels.to(device)
    return logits, labels, tokens


class _Gathered:
    """Batches accumulated on the output device (top-k reduced when asked)."""

    def __init__(self, reduce: tuple[str, int] | None, output_device: torch.device) -> None:
        self.reduce, self.device = reduce, output_device
        self.logits: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.kept: list[torch.Tensor] = []
        self.rest: list[torch.Tensor] = []
        self.buckets = 1
        self.labelled: bool | None = None
        self.groups: list[torch.Tensor] = []
        self.positions: list[torch.Tensor] = []
        self.sequences = 0  # sequences seen so far: the next batch's group offset
        self.num_samples = 0

    def add(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor | None,
        tokens: tuple[torch.Tensor, torch.Tensor, int] | None = None,
    ) -> None:
        if self.labelled is None:
            self.labelled = labels is not None
        elif self.labelled != (labels is not None):
            raise ValueError("Some batches have labels and others do not.")
        if tokens is not None:
            seq, pos, batch_sequences = tokens
            self.groups.append((seq + self.sequences).to(self.device))
            self.positions.append(pos.to(self.device))
            self.sequences += batch_sequences
        if self.reduce is not None and self.reduce[0] == "fixed":
            logits, labels, kept = reduce_fixed_width(logits, labels, self.reduce[1])
            self.kept.append(kept.to(self.device))
        elif self.reduce is not None:
            logits, rest, labels, kept, needed = _reduce_topk(logits, labels, self.reduce[1])
            self.kept.append(kept.to(self.device))
            self.rest.append(rest.to(self.device))
            self.buckets = max(self.buckets, int(needed.max()))
        self.logits.append(logits.detach().to(self.device))
        self.num_samples += int(logits.shape[0])
        if labels is not None:
            self.labels.append(labels.to(self.device))

    def outputs(self, costs: Any, exit_names: Sequence[str] | None) -> ExitOutputs:
        if not self.logits:
            raise ValueError("`data` yielded no batches.")
        logits = torch.cat(self.logits)
        if self.reduce is not None and self.reduce[0] == "topk":
            logits = _assemble_topk(logits, torch.cat(self.rest), self.buckets)
        labels = torch.cat(self.labels) if self.labels else None
        groups = torch.cat(self.groups) if self.groups else None
        positions = torch.cat(self.positions) if self.positions else None
        if groups is not None and groups.numel() != logits.shape[0]:
            raise ValueError("Some batches hold token-level outputs and others do not.")
        return ExitOutputs(
            logits,
            labels=labels,
            costs=costs,
            exit_names=exit_names,
            groups=groups,
            positions=positions,
            rest_columns=int(self.reduce is not None and self.reduce[0] == "fixed"),
        )
