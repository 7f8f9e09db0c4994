"""Small bundled real layer-wise logits, for examples, tests and the default CLI input."""

from __future__ import annotations

from exitwise.datasets.bundled import (
    DATASET_NAMES,
    dataset_card,
    default_latency_file,
    load_dataset,
    load_default,
)

__all__ = ["DATASET_NAMES", "dataset_card", "default_latency_file", "load_dataset", "load_default"]
