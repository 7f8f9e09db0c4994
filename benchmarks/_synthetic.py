"""Synthetic early-exit data with a realistic profile, shared by the benchmarks.

Every sample has a difficulty; exit ``e`` answers it correctly when the difficulty is below
the exit's skill (plus noise), so per-exit accuracy rises with depth (about 0.55 -> 0.90 for
12 exits) and most samples that are right early stay right. Confidence (a max-probability
score in (0, 1)) rises with the margin between skill and difficulty, with per-exit noise, so
it is informative but imperfect, as real exits are.
"""

from __future__ import annotations

import torch


def early_exit_scores(
    n: int, e: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``scores [n, e]`` float32 in (0, 1), ``correct [n, e]`` bool, ``costs [e]`` float64."""
    gen = torch.Generator().manual_seed(seed)
    skill = torch.linspace(0.55, 0.90, e)
    difficulty = torch.rand(n, 1, generator=gen)
    noise = 0.15 * torch.randn(n, e, generator=gen)
    margin = skill[None, :] - difficulty + noise
    correct = margin > 0
    confidence_noise = 0.8 * torch.randn(n, e, generator=gen)
    scores = torch.sigmoid(4.0 * margin + 1.0 + confidence_noise).float()
    costs = torch.arange(1, e + 1, dtype=torch.float64) / e
    return scores, correct, costs
