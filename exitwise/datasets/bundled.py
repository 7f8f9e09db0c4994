"""Loaders of the datasets shipped inside the package (npz, no pickle)."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from exitwise._checks import check_choice
from exitwise.data import ExitOutputs, load

__all__ = [
    "DATASET_NAMES",
    "dataset_card",
    "default_latency_file",
    "load_dataset",
    "load_default",
]

DATASET_NAMES = ("fashion_mnist_cnn", "newsgroups_minilm")


def _path(name: str, suffix: str) -> Any:
    check_choice(name, "name", DATASET_NAMES)
    return resources.files("exitwise.datasets").joinpath(f"{name}{suffix}")


def dataset_card(name: str = "fashion_mnist_cnn") -> dict[str, Any]:
    """How a bundled dataset was made (model, data, recipe, per-exit accuracy, costs).

    Examples
    --------
    >>> dataset_card()["exit_names"]
    ['block1', 'block2', 'block3', 'block4']
    """
    return json.loads(_path(name, ".json").read_text())


def load_dataset(name: str) -> ExitOutputs:
    """Load a bundled dataset by name (see ``DATASET_NAMES``).

    ``"fashion_mnist_cnn"`` is the default (:func:`load_default`); ``"newsgroups_minilm"`` is
    a frozen MiniLM-L6 text encoder with one linear exit head per layer on 3,000 documents of
    the 20 Newsgroups test split (6 exits, 20 classes; made offline by
    ``examples/text_minilm_20newsgroups.py``, see :func:`dataset_card`).

    Examples
    --------
    >>> out = load_dataset("newsgroups_minilm")
    >>> out.num_samples, out.num_exits, out.num_classes
    (3000, 6, 20)
    """
    with resources.as_file(_path(name, ".npz")) as path:
        return load(path)


def load_default() -> ExitOutputs:
    """The bundled default: a 4-exit CNN on the Fashion-MNIST test split.

    Real layer-wise logits of a real early-exit model on real data, made offline by
    ``examples/make_default_dataset.py``:

    * data: the 10,000 Fashion-MNIST test images (10 classes; Debian package
      ``dataset-fashion-mnist``); the model never saw them;
    * model: four conv blocks (16/32/64/128 channels, 3x3 conv, batch norm, ReLU, 2x2
      max-pool after the first three), an exit head after each block (2x2 average pool,
      linear to 10 classes);
    * training: the 60,000 training images, joint multi-exit cross entropy (sum over exits),
      Adam (lr 1e-3), batch 128, 2 epochs, seed 0, on a 2-core CPU;
    * per-exit test accuracy: 0.705 / 0.800 / 0.865 / 0.881;
    * costs: cumulative FLOPs per image up to each exit, heads on the way included
      (0.227 / 2.04 / 3.85 / 5.18 MFLOPs), measured with ``torch.utils.flop_counter``.

    Split it into calibration and test parts with :meth:`ExitOutputs.split`.

    Examples
    --------
    >>> out = load_default()
    >>> out.num_samples, out.num_exits, out.num_classes
    (10000, 4, 10)
    """
    return load_dataset("fashion_mnist_cnn")


def default_latency_file() -> Any:
    """A context manager giving the path of the bundled default model's latency model (JSON;
    read it with :func:`exitwise.serving.load_default_latency`): data only, no serving code.

    Examples
    --------
    >>> with default_latency_file() as path:
    ...     path.name
    'fashion_mnist_cnn_latency.json'
    """
    return resources.as_file(_path("fashion_mnist_cnn", "_latency.json"))
