"""Small bundled real layer-wise logits, for examples, tests and the default CLI input."""

from __future__ import annotations

from exitwise.datasets.bundled import (
    DATASET_NAMES,
    dataset_card,
    load_dataset,
    load_default,
    load_default_latency,
)

__all__ = ["DATASET_NAMES", "dataset_card", "load_dataset", "load_default", "load_default_latency"]
