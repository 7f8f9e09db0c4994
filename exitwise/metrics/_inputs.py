"""Shared input handling of the metrics: probabilities or logits, batched over exits."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from exitwise._checks import (
    as_tensor,
    batched_logits,
    check_choice,
    check_finite,
    check_labels,
    compute_dtype,
)
from exitwise._chunk_threads import chunk_workers, map_chunks
from exitwise._chunks import row_slices, rows_per_chunk

INPUT_KINDS = ("probs", "logits")
_CHUNK_BYTES = 1 << 23  # 8 MiB: several passes over a chunk stay in cache


def batched_scores(scores: Any, name: str, *, allow_2d: bool = True) -> tuple[torch.Tensor, bool]:
    """``[N, C]`` or ``[N, E, C]`` as ``[N, E, C]``; the flag says whether to squeeze E."""
    return batched_logits(scores, name, allow_2d=allow_2d)


def _sum_tolerance(probs: torch.Tensor) -> float:
    """How far a row sum of ``probs`` may be from 1 (scaled with C and the dtype)."""
    return max(1e-4, 8.0 * math.sqrt(probs.shape[-1]) * torch.finfo(probs.dtype).eps)


def check_probabilities(probs: torch.Tensor, name: str = "probs") -> None:
    """Values in [0, 1] and rows summing to 1 (tolerance scaled with the dtype)."""
    check_finite(probs, name)
    low, high = (float(v) for v in torch.aminmax(probs))
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"Expected `{name}` to be probabilities in [0, 1], got values in [{low:.4g}, "
            f"{high:.4g}]; pass input='logits' if these are logits."
        )
    tol = _sum_tolerance(probs)
    sums = probs.sum(dim=-1).to(torch.float64)  # float32 sums: error << tol
    worst = float((sums - 1.0).abs().max())
    if worst > tol:
        flat = int((sums - 1.0).abs().reshape(-1).argmax())
        raise ValueError(
            f"Expected each row of `{name}` to sum to 1 (tolerance {tol:.1e}), got a row summing "
            f"to {float(sums.reshape(-1)[flat]):.6g} (flat row {flat}); pass input='logits' if "
            "these are logits."
        )


def _validated(
    scores: Any, labels: Any, input: str, name: str
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    check_choice(input, "input", INPUT_KINDS)
    tensor, squeeze = batched_scores(scores, name)
    if input == "logits":
        check_finite(tensor, name)
    else:
        check_probabilities(tensor, name)
    labels_t = check_labels(
        as_tensor(labels, "labels", device=tensor.device),
        "labels",
        tensor.shape[0],
        tensor.shape[2],
    )
    return tensor.to(compute_dtype(tensor)), labels_t, squeeze


def probabilities(
    scores: Any, labels: Any, input: str, name: str = "probs"
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Validated probabilities ``[N, E, C]`` (compute dtype), labels ``[N]`` and squeeze flag."""
    tensor, labels_t, squeeze = _validated(scores, labels, input, name)
    probs = torch.softmax(tensor, dim=-1) if input == "logits" else tensor
    return probs, labels_t, squeeze


def log_probabilities(
    scores: Any, labels: Any, input: str, name: str = "probs"
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Validated log-probabilities ``[N, E, C]``: exact ``log_softmax`` for logits."""
    tensor, labels_t, squeeze = _validated(scores, labels, input, name)
    log_p = torch.log_softmax(tensor, dim=-1) if input == "logits" else tensor.log()
    return log_p, labels_t, squeeze


def finish(result: torch.Tensor, squeeze: bool) -> torch.Tensor:
    """``[E]`` results become a scalar for ``[N, C]`` inputs."""
    return result[0] if squeeze else result


def _row_argmax(x: torch.Tensor) -> torch.Tensor:
    """Row argmax ``[n, E]`` (ties to the lowest index, as torch): numpy's SIMD argmax on a
    contiguous CPU float32/float64 chunk (about twice as fast per thread as
    ``torch.max(dim=-1)``), torch's elsewhere."""
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and x.is_contiguous():
        return torch.from_numpy(np.argmax(x.numpy(), axis=-1))
    return x.argmax(dim=-1)


def top_label(
    scores: Any, labels: Any, input: str, name: str = "probs"
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Top-label confidence ``[N, E]`` (float64) and hit ``[N, E]`` (bool) in one pass.

    Works in row chunks of about 8 MiB, so memory stays near the input's size whatever C is
    (no float64 or softmax copy of the whole tensor). The checks ride on the reductions the
    pass makes anyway: a NaN or inf turns a row's maximum or sum non-finite, a negative value
    the chunk's minimum; only when one fails does the detailed validator run (to name the
    first bad location). Logits give the confidence ``1 / sum_c exp(z_c - max z)``.
    """
    check_choice(input, "input", INPUT_KINDS)
    tensor, squeeze = batched_scores(scores, name)
    tensor = tensor.detach()  # binned metrics have no gradient
    n, e, c = tensor.shape
    labels_t = check_labels(as_tensor(labels, "labels", device=tensor.device), "labels", n, c)
    dtype = compute_dtype(tensor)
    device = tensor.device
    conf = torch.empty(n, e, dtype=torch.float64, device=device)
    bad = torch.zeros((), dtype=torch.bool, device=device)
    worst_sum = torch.zeros((), dtype=torch.float64, device=device)
    step = rows_per_chunk(e * c * 4, _CHUNK_BYTES)
    pred = torch.empty(n, e, dtype=torch.int64, device=device)
    work = None
    if input == "logits":
        work = [
            torch.empty((min(step, n), e, c), dtype=dtype, device=device)
            for _ in range(chunk_workers(device))
        ]

    def chunk(rows: slice, w: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Fills ``conf`` and ``pred`` for ``rows``; returns (bad, worst row-sum error)."""
        x = tensor[rows].to(dtype).detach()
        pred[rows] = _row_argmax(x)
        top = x.amax(dim=-1)
        low = x.amin()
        if w is not None:  # logits: confidence = 1 / sum_c exp(z_c - max z)
            w = w[: x.shape[0]]
            torch.sub(x, top[..., None], out=w)
            total = w.exp_().sum(dim=-1)
            conf[rows] = total.reciprocal()
            return ~torch.isfinite(low) | ~torch.isfinite(total).all(), worst_sum
        conf[rows] = top
        sums = x.sum(dim=-1)  # float32 row sums: error far below the tolerance
        return ~(low >= 0) | ~(top <= 1).all(), (sums - 1.0).abs().amax().double()

    # chunks in worker threads (fast on a busy machine), results combined in chunk order
    for chunk_bad, chunk_worst in map_chunks(chunk, list(row_slices(n, 1, step)), device, work):
        bad |= chunk_bad
        worst_sum = torch.maximum(worst_sum, chunk_worst)
    if input == "probs":
        bad |= ~(worst_sum <= _sum_tolerance(tensor))
    if bool(bad):  # name the first bad location
        check_finite(tensor, name)
        if input == "probs":
            check_probabilities(tensor, name)
    return conf, pred == labels_t[:, None], squeeze
