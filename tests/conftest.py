"""Shared fixtures: devices, the bundled real data, random probabilities."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from exitwise.datasets import load_default

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """Every device test runs on CPU, and on CUDA where a GPU is present."""
    return request.param


@pytest.fixture(scope="session")
def real_outputs():
    return load_default()


def as_sequences(outputs, length: int):
    """``outputs`` with consecutive rows cut into sequences of ``length`` tokens (groups and
    positions), for token-level tests on real logits."""
    from exitwise import ExitOutputs

    n = outputs.num_samples
    return ExitOutputs(
        outputs.logits,
        outputs.labels,
        outputs.costs,
        outputs.exit_names,
        groups=torch.arange(n) // length,
        positions=torch.arange(n) % length,
    )


def random_probs(n: int, e: int, c: int, seed: int = 0, scale: float = 3.0):
    """Softmax of scaled Gaussian logits (float64 numpy) and uniform labels."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, e, c)) * scale
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    labels = rng.integers(0, c, size=n)
    return probs, labels
