"""Exit outputs too large for one process: a directory of shard files read a chunk at a time.

``collect(..., out="dir/")`` writes every ``shard_samples`` samples of every rank as one
``.safetensors`` file (the :class:`~exitwise.ExitOutputs` file format, with sequence ids
local to the file) and, at the end, ``dir/index.json``: the files in rank order, each with
its number of samples and the offset of its sequence ids. :func:`load` of the directory
returns :class:`ShardedOutputs`, which reads the files lazily:

- ``chunks(rows)`` yields :class:`~exitwise.ExitOutputs` of at most ``rows`` samples, read
  as row slices of the files (``safetensors``' ``get_slice``), so peak memory is one chunk
  however many samples there are; the sequence ids are global (file offset added), the same
  as one in-memory ``collect`` over the same batches;
- ``split(fraction, seed)`` is the in-memory split (by sequence for tokens, stratified by
  label otherwise) of all the selected samples, reading only labels or sequence ids;
- inside an initialised ``torch.distributed`` group of R processes, each rank's
  ``ShardedOutputs`` covers a contiguous run of the files (the i-th of R runs of about equal
  file counts, in index order), so the ranks' parts concatenate, in rank order, to the whole:
  the rule of every exitwise step that combines shards.

Memory: ``chunks`` holds one chunk (``rows x E x C`` values) and the file's small arrays
(labels, ids: 8 bytes a sample) at a time; ``split`` holds 8 bytes a sample of all files.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exitwise._checks import check_int
from exitwise._distributed import barrier, broadcast_object, first_rank, group_active
from exitwise.data import ExitOutputs
from exitwise.data import load as load_file
from exitwise.data_split import split_indices

__all__ = ["INDEX", "ShardWriter", "ShardedOutputs", "load"]

INDEX = "index.json"
SHARDS_FORMAT = "exitwise.ExitShards/1"


def _rank_world() -> tuple[int, int]:
    if not group_active():
        return 0, 1
    import torch.distributed as dist

    return dist.get_rank(), dist.get_world_size()


class ShardWriter:
    """Writes one rank's shards of :class:`~exitwise.ExitOutputs` into ``directory`` and, on
    :meth:`finish` (every rank alike, a collective in a group), the index.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     w = ShardWriter(d)
    ...     w.write(ExitOutputs(torch.randn(4, 2, 3), torch.tensor([0, 1, 2, 0])), 0)
    ...     w.finish()
    ...     load(d).num_samples
    4
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.rank, self.world = _rank_world()
        self.files: list[dict[str, Any]] = []
        self.meta: dict[str, Any] | None = None

    def write(self, outputs: ExitOutputs, num_sequences: int) -> None:
        """Write ``outputs`` as the next shard (its ``groups`` local: ``0..num_sequences-1``,
        the sequences the batches held, empty ones included)."""
        meta = {
            "num_exits": outputs.num_exits,
            "num_columns": outputs.num_classes,
            "rest_columns": outputs.rest_columns,
            "exit_names": outputs.exit_names,
            "costs": outputs.costs.tolist(),
            "labels": outputs.labels is not None,
            "tokens": outputs.groups is not None,
        }
        if self.meta is not None and meta != self.meta:
            raise ValueError(
                "Every shard must hold the same exits, columns, costs and kinds of arrays; "
                f"this one has {meta}, the first had {self.meta}."
            )
        self.meta = meta
        name = f"rank{self.rank:05d}-{len(self.files):05d}.safetensors"
        outputs.save(self.directory / name)
        self.files.append(
            {"file": name, "num_samples": outputs.num_samples, "num_sequences": int(num_sequences)}
        )

    def finish(self) -> None:
        """Write ``index.json`` (rank 0, after every rank's part; a collective in a group:
        a problem rank 0 finds is raised on every rank)."""
        part = self.directory / f"index-rank{self.rank:05d}.json"
        part.write_text(json.dumps({"meta": self.meta, "files": self.files}))
        barrier()
        problem = ""
        if first_rank():
            try:
                self._write_index()
            except ValueError as err:
                problem = str(err)
        problem = broadcast_object(problem)
        if problem:
            raise ValueError(problem)

    def _write_index(self) -> None:
        meta, files = None, []
        for r in range(self.world):
            path = self.directory / f"index-rank{r:05d}.json"
            got = json.loads(path.read_text())
            path.unlink()
            if got["meta"] is not None:
                if meta is not None and got["meta"] != meta:
                    raise ValueError(
                        f"Rank {r} wrote other exits, columns or costs ({got['meta']}) than the "
                        f"ranks before it ({meta}): pass the same `costs` on every rank."
                    )
                meta = got["meta"]
            files.extend(got["files"])
        if meta is None:
            raise ValueError("`data` yielded no batches on any rank.")
        offset = 0
        for entry in files:
            entry["group_offset"] = offset
            offset += entry.pop("num_sequences")
        index = {"format": SHARDS_FORMAT, **meta, "shards": files}
        (self.directory / INDEX).write_text(json.dumps(index, indent=1))


_DTYPES = {
    "F64": (np.float64, torch.float64),
    "F32": (np.float32, torch.float32),
    "F16": (np.float16, torch.float16),
    "BF16": (np.uint16, torch.bfloat16),  # numpy has no bfloat16: read the bits
    "I64": (np.int64, torch.int64),
    "I32": (np.int32, torch.int32),
}


class _ShardFile:
    """Rows of the arrays of one ``.safetensors`` file, read through a read-only memory map
    of just those bytes: a shared, clean file mapping the OS can drop, and a copy of the rows
    asked for (nothing else of the file is held).

    The format: 8 bytes (little-endian) of header length, a JSON header naming each array's
    dtype, shape and byte range after the header, then the bytes.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            with open(path, "rb") as fh:
                size = int(np.frombuffer(fh.read(8), dtype="<u8")[0])
                header = json.loads(fh.read(size))
        except (ValueError, IndexError, UnicodeDecodeError) as err:
            raise ValueError(f"'{path}' is not a readable safetensors file: {err}") from None
        header.pop("__metadata__", None)
        self.start = 8 + size
        self.arrays = header
        self.names = set(header)

    def rows(self, name: str, lo: int = 0, hi: int | None = None) -> torch.Tensor:
        """Rows ``lo:hi`` of array ``name`` (all rows by default), as a fresh tensor."""
        entry = self.arrays[name]
        if entry["dtype"] not in _DTYPES:
            raise ValueError(
                f"'{self.path}': array {name!r} has unsupported dtype {entry['dtype']}."
            )
        np_dtype, torch_dtype = _DTYPES[entry["dtype"]]
        shape = [int(x) for x in entry["shape"]]
        begin, end = (int(x) for x in entry["data_offsets"])
        hi = shape[0] if hi is None else hi
        row = int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(np_dtype).itemsize
        if end - begin != shape[0] * row:
            raise ValueError(f"'{self.path}': array {name!r} has {end - begin} bytes, not {shape}.")
        if hi <= lo:
            return torch.empty([0, *shape[1:]], dtype=torch_dtype)
        view = np.memmap(
            self.path,
            dtype=np_dtype,
            mode="r",
            offset=self.start + begin + lo * row,
            shape=(hi - lo, *shape[1:]),
        )
        values = torch.from_numpy(np.array(view))  # the copy; the map goes with ``view``
        del view
        return values.view(torch_dtype) if torch_dtype == torch.bfloat16 else values


def _read_index(directory: Path) -> dict[str, Any]:
    path = directory / INDEX
    if not path.is_file():
        raise FileNotFoundError(
            f"'{directory}' has no {INDEX}: not a directory written by collect(..., out=...)."
        )
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"'{path}' is not valid JSON: {err}") from None
    if not isinstance(index, dict) or index.get("format") != SHARDS_FORMAT:
        raise ValueError(f"'{path}' is not an exitwise shard index (format {SHARDS_FORMAT}).")
    return index


class ShardedOutputs:
    """Exit outputs in the shard files of a directory, read a chunk at a time (see the
    module docstring). Built by :func:`load`; in a ``torch.distributed`` group, this rank's
    part.

    Attributes
    ----------
    directory : pathlib.Path
    num_samples : int
        Samples of this part (of this rank, of the selected rows).
    num_exits, num_classes, rest_columns : int
    exit_names : list of str
    costs : torch.Tensor
        Cumulative per-exit costs ``[E]``.

    Examples
    --------
    >>> import tempfile
    >>> out = ExitOutputs(torch.randn(6, 2, 3), torch.tensor([0, 1, 2, 0, 1, 2]))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     w = ShardWriter(d)
    ...     w.write(out[:4], 0); w.write(out[4:], 0); w.finish()
    ...     data = load(d)
    ...     sizes = [c.num_samples for c in data.chunks(rows=3)]
    ...     same = torch.equal(data.to_outputs().logits, out.logits)
    >>> data.num_samples, sizes, same
    (6, [3, 1, 2], True)
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        index = _read_index(self.directory)
        self._index = index
        self._shards = index["shards"]
        self._part = list(range(len(self._shards)))  # the files of this part
        self._selected: dict[int, torch.Tensor] | None = None  # file -> sorted rows; None: all
        self.num_exits = int(index["num_exits"])
        self.num_classes = int(index["num_columns"])
        self.rest_columns = int(index["rest_columns"])
        self.exit_names = [str(x) for x in index["exit_names"]]
        self.costs = torch.tensor(index["costs"], dtype=torch.float64)

    def _view(self, part: list[int], selected: dict[int, torch.Tensor] | None) -> ShardedOutputs:
        """The same directory (its index read once) with other files or rows."""
        view = copy.copy(self)
        view._part, view._selected = part, selected
        return view

    @property
    def files(self) -> list[Path]:
        """Every shard file (all ranks'), in index order."""
        return [self.directory / s["file"] for s in self._shards]

    # ------------------------------------------------------------------ rows
    def _rows(self, shard: int) -> torch.Tensor | None:
        return None if self._selected is None else self._selected[shard]

    def _count(self, shard: int) -> int:
        rows = self._rows(shard)
        return int(self._shards[shard]["num_samples"]) if rows is None else int(rows.numel())

    @property
    def num_samples(self) -> int:
        return sum(self._count(s) for s in self._part)

    @property
    def total_samples(self) -> int:
        """Selected samples of every rank (all files)."""
        return sum(self._count(s) for s in range(len(self._shards)))

    @property
    def labelled(self) -> bool:
        return bool(self._index["labels"])

    @property
    def tokens(self) -> bool:
        """Whether the samples are tokens of sequences (``groups`` and ``positions``)."""
        return bool(self._index["tokens"])

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        return (
            f"ShardedOutputs('{self.directory}', num_samples={self.num_samples}, "
            f"num_exits={self.num_exits}, num_classes={self.num_classes}, "
            f"files={len(self._part)} of {len(self._shards)})"
        )

    # ------------------------------------------------------------------ reading
    def _file(self, shard: int) -> _ShardFile:
        path = self.files[shard]
        if not path.is_file():
            raise FileNotFoundError(f"Shard '{path}' named in {INDEX} is missing.")
        return _ShardFile(path)

    def _column(self, name: str, shards: list[int]) -> torch.Tensor:
        """The selected rows of a small per-sample array (``labels``, ``groups``) over
        ``shards``, sequence ids made global."""
        parts = []
        for s in shards:
            values = self._file(s).rows(name)
            if name == "groups":
                values = values + int(self._shards[s]["group_offset"])
            rows = self._rows(s)
            parts.append(values if rows is None else values[rows])
        return torch.cat(parts)

    def chunks(self, rows: int = 65_536) -> Iterator[ExitOutputs]:
        """This part's samples as :class:`~exitwise.ExitOutputs` of at most ``rows`` samples
        each, in file order (only the rows of a chunk are read from its file)."""
        rows = check_int(rows, "rows", minimum=1)
        for s in self._part:
            selected = self._rows(s)
            if selected is not None and selected.numel() == 0:
                continue  # nothing of this file in the part: not even its labels are read
            n = int(self._shards[s]["num_samples"])
            fh = self._file(s)
            small = {k: fh.rows(k) for k in ("labels", "groups", "positions") if k in fh.names}
            if "groups" in small:
                small["groups"] = small["groups"] + int(self._shards[s]["group_offset"])
            for start in range(0, n, rows):  # windows of the file: one read each
                end = min(n, start + rows)
                if selected is None:
                    take = torch.arange(start, end)
                else:
                    take = selected[(selected >= start) & (selected < end)]
                    if take.numel() == 0:
                        continue
                lo, hi = int(take[0]), int(take[-1]) + 1
                block = fh.rows("logits", lo, hi)
                yield ExitOutputs(
                    block if selected is None else block[take - lo],
                    costs=self.costs,
                    exit_names=self.exit_names,
                    rest_columns=self.rest_columns,
                    **{k: v[take] for k, v in small.items()},
                )

    def to_outputs(self) -> ExitOutputs:
        """This part in memory, as one :class:`~exitwise.ExitOutputs`."""
        parts = list(self.chunks(rows=1 << 62))
        if not parts:
            raise ValueError(f"{self!r} holds no samples.")
        if len(parts) == 1:
            return parts[0]
        cat = {
            k: (None if getattr(parts[0], k) is None else torch.cat([getattr(p, k) for p in parts]))
            for k in ("logits", "labels", "groups", "positions")
        }
        return ExitOutputs(
            cat.pop("logits"),
            costs=self.costs,
            exit_names=self.exit_names,
            rest_columns=self.rest_columns,
            **cat,
        )

    # ------------------------------------------------------------------ splits and parts
    def split_indices(self, fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices into the selected samples of every file (all ranks) of both parts: the
        split :meth:`ExitOutputs.split_indices` makes of them in memory."""
        every = list(range(len(self._shards)))
        groups = self._column("groups", every) if self.tokens else None
        labels = self._column("labels", every) if self.labelled and not self.tokens else None
        return split_indices(self.total_samples, labels, self.num_classes, groups, fraction, seed)

    def _select(self, positions: torch.Tensor) -> ShardedOutputs:
        """The samples at ``positions`` (sorted, into the selected samples of every file)."""
        selected, start = {}, 0
        for s in range(len(self._shards)):
            count = self._count(s)
            inside = positions[(positions >= start) & (positions < start + count)] - start
            rows = self._rows(s)
            selected[s] = inside if rows is None else rows[inside]
            start += count
        return self._view(self._part, selected)

    def split(self, fraction: float, seed: int = 0) -> tuple[ShardedOutputs, ShardedOutputs]:
        """Both parts of :meth:`split_indices` (each this rank's rows of them in a group)."""
        first, rest = self.split_indices(fraction, seed)
        return self._select(first), self._select(rest)

    def for_rank(self, rank: int, world: int) -> ShardedOutputs:
        """The part of rank ``rank`` of ``world``: the ``rank``-th of ``world`` contiguous
        runs of the files, of about equal counts (each rank at least one file)."""
        files = len(self._shards)
        if not 0 <= rank < world:
            raise ValueError(f"Expected 0 <= rank < world, got rank {rank} of {world}.")
        if files < world:
            raise ValueError(
                f"'{self.directory}' has {files} shard files, fewer than the {world} ranks: "
                "collect with a smaller `shard_samples`, or run fewer ranks."
            )
        part = list(range(rank * files // world, (rank + 1) * files // world))
        return self._view(part, self._selected)


def load(path: str | Path) -> ExitOutputs | ShardedOutputs:
    """A file of :class:`~exitwise.ExitOutputs` (``.safetensors``/``.npz``, validated, no
    pickle) in memory, or a directory written by ``collect(..., out=...)`` as
    :class:`ShardedOutputs` (in an initialised ``torch.distributed`` group: this rank's part).

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     w = ShardWriter(d)
    ...     w.write(ExitOutputs(torch.randn(5, 2, 3), torch.tensor([0, 1, 2, 0, 1])), 0)
    ...     w.finish()
    ...     type(load(d)).__name__, load(d).num_samples
    ('ShardedOutputs', 5)
    """
    if not Path(path).is_dir():
        return load_file(path)
    data = ShardedOutputs(path)
    rank, world = _rank_world()
    return data if world == 1 else data.for_rank(rank, world)
