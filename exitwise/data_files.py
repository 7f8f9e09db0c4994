"""Files of :class:`~exitwise.data.ExitOutputs`: ``.safetensors`` or ``.npz``, never pickle.

Arrays ``logits`` ``[N, E, C]``, optional ``labels`` ``[N]``, ``costs`` ``[E]`` and optional
``groups``/``positions`` ``[N]`` (token-level data); exit names in the safetensors metadata or
as a unicode array in npz. This module knows the file format only (it does not import
``ExitOutputs``): :meth:`ExitOutputs.save <exitwise.ExitOutputs.save>` hands it the public
arrays, and :func:`exitwise.load` builds ``ExitOutputs`` from what it reads through the public
constructor, which validates everything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exitwise._checks import check_choice

__all__ = ["FORMAT", "read_arrays", "write_arrays"]

FORMAT = "exitwise.ExitOutputs/1"


def write_arrays(
    path: str | Path, tensors: dict[str, torch.Tensor | None], exit_names: list[str]
) -> None:
    """Write to ``.safetensors`` or ``.npz`` (chosen by the suffix; no pickle).

    ``tensors``: ``logits``, ``costs`` and, if not ``None``, ``labels``, ``groups`` and
    ``positions``; exit names in the safetensors metadata, or as a unicode array
    ``exit_names`` in npz. bfloat16 logits are written as float32 to npz (numpy has no
    bfloat16).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    check_choice(suffix, "path suffix", (".safetensors", ".npz"))
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items() if v is not None}
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        meta = {"format": FORMAT, "exit_names": json.dumps(list(exit_names))}
        save_file(tensors, str(path), metadata=meta)
    else:
        arrays = {
            k: (v.float() if v.dtype == torch.bfloat16 else v).numpy() for k, v in tensors.items()
        }
        arrays["exit_names"] = np.array(list(exit_names), dtype=str)
        with open(path, "wb") as fh:
            np.savez_compressed(fh, **arrays)


def _read_npz(path: Path) -> dict[str, Any]:
    """Every array of an npz file, or one ``ValueError`` line for any unreadable file
    (empty, truncated, corrupt, not a zip archive, or holding pickled object arrays)."""
    import zipfile
    import zlib

    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"'{path}' is not a readable npz file: not a zip archive (empty, truncated or "
            "another format)."
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except ValueError as err:
        if "pickle" in str(err):
            raise ValueError(
                f"'{path}' holds object arrays, which need pickle; exitwise never unpickles files."
            ) from None
        raise ValueError(f"'{path}' is not a readable npz file: {err}") from None
    except (OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as err:
        raise ValueError(f"'{path}' is not a readable npz file: {err}") from None


def read_arrays(path: str | Path) -> tuple[dict[str, Any], list[str] | None]:
    """The arrays and exit names of a file written by :func:`write_arrays` (no pickle);
    ``logits`` is always there."""
    path = Path(path)
    suffix = path.suffix.lower()
    check_choice(suffix, "path suffix", (".safetensors", ".npz"))
    if not path.is_file():
        raise FileNotFoundError(f"No such file: '{path}'.")
    names: list[str] | None = None
    if suffix == ".safetensors":
        from safetensors import safe_open

        arrays: dict[str, Any] = {}
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                for key in fh.keys():
                    arrays[key] = fh.get_tensor(key)
        except Exception as err:  # safetensors raises its own error types
            raise ValueError(f"'{path}' is not a readable safetensors file: {err}") from None
        if "exit_names" in meta:
            try:
                names = [str(x) for x in json.loads(meta["exit_names"])]
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"'{path}': metadata `exit_names` is not a JSON list: {err}"
                ) from None
    else:
        arrays = _read_npz(path)
        if "exit_names" in arrays:
            names = [str(x) for x in np.asarray(arrays.pop("exit_names")).tolist()]
    if "logits" not in arrays:
        raise ValueError(
            f"'{path}' has no array named 'logits' (found {sorted(arrays)}); expected arrays "
            "'logits' [N, E, C], optional 'labels' [N] and 'costs' [E]."
        )
    return arrays, names
