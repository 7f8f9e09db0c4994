"""Request logs of a deployed policy: JSON lines, one request per line, written and read here,
and merged across servers or ranks in the order the requests were served.

A line holds ``exit``, ``confidence`` and ``prediction``, and optionally ``full_prediction``
(shadow requests), ``label`` (when known) and ``time`` (seconds, any epoch)::

    {"exit": 1, "confidence": 0.97, "prediction": 3, "full_prediction": 3, "label": 3}

The monitor's alarm is sequential, so merging logs needs an order: every request of every log
must carry a ``time``; ties keep the order of the logs as given, then of their lines.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FIELDS", "merge_logs", "read_log", "write_log"]

#: the columns of a log; ``time`` (float, NaN when absent) only orders merged logs
FIELDS = ("exit", "confidence", "prediction", "full_prediction", "label", "time")
_FLOATS = ("confidence", "time")
_OPTIONAL = ("full_prediction", "label", "time")


def _check_field(value: Any, name: str, where: str) -> None:
    """A log field of the right JSON type: integers for exits, predictions and labels (not
    ``1.5``, not ``true``), a number for the confidence and the time."""
    if name in _FLOATS:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        expected = "a number in [0, 1]" if name == "confidence" else "a number (seconds)"
    else:
        ok = isinstance(value, int) and not isinstance(value, bool)
        expected = "an integer"
    if not ok:
        raise ValueError(f"{where}: expected `{name}` to be {expected}, got {value!r}.")


def _absent(name: str, value: Any) -> bool:
    """-1/NaN/None entries of the optional columns are left out of a written log."""
    if name not in _OPTIONAL:
        return False
    return value is None or value != value or (name != "time" and value < 0)


def write_log(path: str | Path, records: dict[str, Any]) -> None:
    """Write requests (a dict of equal-length columns named as in :data:`FIELDS`) as JSON
    lines; -1/NaN/None entries of ``full_prediction``, ``label`` and ``time`` are left out.

    Examples
    --------
    >>> import tempfile, os
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = os.path.join(d, "log.jsonl")
    ...     write_log(path, {"exit": [0, 1], "confidence": [0.9, 0.6], "prediction": [2, 1]})
    ...     read_log(path)["prediction"].tolist()
    [2, 1]
    """
    cols = {k: np.asarray(records[k]) for k in FIELDS if records.get(k) is not None}
    n = len(cols["exit"])
    with Path(path).open("w") as f:
        for i in range(n):
            row = {}
            for k, v in cols.items():
                value = v[i].item()
                if _absent(k, value):
                    continue
                row[k] = float(value) if k in _FLOATS else int(value)
            f.write(json.dumps(row) + "\n")


def read_log(path: str | Path) -> dict[str, np.ndarray]:
    """Read a JSON-lines request log into columns (-1 where ``full_prediction``/``label`` is
    absent, NaN where ``time`` is); errors name the line."""
    rows: dict[str, list[Any]] = {k: [] for k in FIELDS}
    with Path(path).open() as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {number}: not JSON ({err}).") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}, line {number}: expected an object per line.")
            missing = [k for k in ("exit", "confidence", "prediction") if k not in record]
            if missing:
                raise ValueError(f"{path}, line {number}: missing {', '.join(missing)}.")
            for k in FIELDS:
                value = record.get(k, float("nan") if k == "time" else -1)
                _check_field(value, k, f"{path}, line {number}")
                rows[k].append(value)
    if not rows["exit"]:
        raise ValueError(f"{path} holds no requests.")
    return {
        k: np.asarray(v, dtype=np.float64 if k in _FLOATS else np.int64) for k, v in rows.items()
    }


def merge_logs(paths: Sequence[str | Path]) -> dict[str, np.ndarray]:
    """The requests of several logs (one per server or rank) in the order they were served:
    by ``time``, ties in the order of ``paths`` and then of the lines. One log is read as it
    is; with several, every request needs a ``time``.

    Examples
    --------
    >>> import tempfile, os
    >>> with tempfile.TemporaryDirectory() as d:
    ...     a, b = os.path.join(d, "a.jsonl"), os.path.join(d, "b.jsonl")
    ...     row = {"exit": [0, 0], "confidence": [0.9, 0.9]}
    ...     write_log(a, {**row, "prediction": [1, 3], "time": [0.5, 2.0]})
    ...     write_log(b, {**row, "prediction": [2, 4], "time": [1.0, 2.0]})
    ...     merge_logs([a, b])["prediction"].tolist()
    [1, 2, 3, 4]
    """
    if isinstance(paths, (str, Path)) or len(paths) == 0:
        raise TypeError(f"Expected `paths` to be a non-empty list of log files, got {paths!r}.")
    logs = [read_log(p) for p in paths]
    if len(logs) == 1:
        return logs[0]
    for path, log in zip(paths, logs, strict=True):
        untimed = np.flatnonzero(np.isnan(log["time"]))
        if untimed.size:
            raise ValueError(
                f"Merging request logs needs a `time` (seconds) on every request, to replay "
                f"them in the order they were served; {path} has {untimed.size} request(s) "
                f"without one (the first is request {int(untimed[0]) + 1})."
            )
    merged = {k: np.concatenate([log[k] for log in logs]) for k in FIELDS}
    order = np.argsort(merged["time"], kind="stable")  # ties: logs, then lines, as given
    return {k: v[order] for k, v in merged.items()}
