"""Row chunks sized by bytes: big enough to keep kernels efficient, small enough to bound memory.

A chunk holds at least ``min_rows`` rows (so a pass over the data never degenerates into
thousands of tiny operations, whatever the row width) and otherwise about ``target_bytes``.
"""

from __future__ import annotations

from collections.abc import Iterator

__all__: list[str] = []

#: default working-set size of one chunk (64 MiB)
CHUNK_BYTES = 1 << 26


def rows_per_chunk(row_bytes: int, target_bytes: int = CHUNK_BYTES, min_rows: int = 1) -> int:
    """Rows of ``row_bytes`` bytes that fill about ``target_bytes`` (at least ``min_rows``).

    Examples
    --------
    >>> rows_per_chunk(1000, target_bytes=10_000)
    10
    >>> rows_per_chunk(10**9, target_bytes=10_000, min_rows=4)
    4
    """
    return max(int(min_rows), 1, int(target_bytes) // max(1, int(row_bytes)))


def row_slices(
    n: int, row_bytes: int, target_bytes: int = CHUNK_BYTES, min_rows: int = 1
) -> Iterator[slice]:
    """Consecutive slices covering ``range(n)``, each of :func:`rows_per_chunk` rows.

    Examples
    --------
    >>> list(row_slices(5, 8, target_bytes=16))
    [slice(0, 2, None), slice(2, 4, None), slice(4, 5, None)]
    """
    step = rows_per_chunk(row_bytes, target_bytes, min_rows)
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))
