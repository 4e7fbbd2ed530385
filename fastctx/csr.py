"""Index arithmetic on CSR layouts (a pointer array over concatenated lists), in numpy."""
from __future__ import annotations

from typing import Optional

import numpy as np


def ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The concatenation of ``arange(s, s + c)`` for each (start, count), as int64 indices: the
    positions of several CSR lists at once."""
    starts, counts = np.asarray(starts, np.int64), np.asarray(counts, np.int64)
    total = int(counts.sum())
    if not total:
        return np.zeros(0, np.int64)
    return np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts - starts, counts)


def min_marked(ptr: np.ndarray, values: np.ndarray, rows: np.ndarray, marked: np.ndarray,
               key: Optional[np.ndarray] = None) -> np.ndarray:
    """Per row of `rows`, the smallest of its values (``values[ptr[r]:ptr[r + 1]]``) that
    `marked` (a bool per value) flags, as ``key[value]`` when a `key` array is given (a shard's
    global entity ids); -1 where none is."""
    rows = np.asarray(rows, np.int64)
    counts = ptr[rows + 1] - ptr[rows]
    vals = np.asarray(values[ranges(ptr[rows], counts)], np.int64)
    hit = np.asarray(marked[vals], bool)
    vals = vals[hit] if key is None else np.asarray(key[vals[hit]], np.int64)
    best = np.full(len(rows), np.iinfo(np.int64).max, np.int64)
    np.minimum.at(best, np.repeat(np.arange(len(rows)), counts)[hit], vals)
    return np.where(best == np.iinfo(np.int64).max, -1, best)


def marked_lists(ptr: np.ndarray, values: np.ndarray, rows: np.ndarray, marked: np.ndarray,
                 key: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """Per row of `rows`, its values that `marked` flags (as ``key[value]`` with a `key`), as a
    CSR pair (pointer over `rows`, the values in each row's stored order)."""
    rows = np.asarray(rows, np.int64)
    counts = ptr[rows + 1] - ptr[rows]
    vals = np.asarray(values[ranges(ptr[rows], counts)], np.int64)
    hit = np.asarray(marked[vals], bool)
    out_ptr = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(np.bincount(np.repeat(np.arange(len(rows)), counts)[hit], minlength=len(rows)), out=out_ptr[1:])
    vals = vals[hit]
    return out_ptr, (vals if key is None else np.asarray(key[vals], np.int64))
