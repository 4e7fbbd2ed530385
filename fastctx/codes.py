"""Int8 codes of a segment's vectors: large exact scans 1.2-1.6x faster, the same answers.

An exact scan of many rows (a filter that allows thousands to tens of thousands of a large
segment's rows) is bound by memory: its rows are scattered through the segment, each a cache
miss, and at dim 384 each float32 row is 1.5 KB. So a segment on disk also stores its vectors
as int8 codes with one scale per row, and a bound on how far a coded row's score can be from
its float32 score. A scan reads the codes first (a quarter of the bytes; the kernel prefetches
each row's lines a few rows ahead), keeps every row whose float32 score could still reach the
k-th best (its coded score plus its bound, against the k-th best coded score less its bound),
and scores only those with the float32 kernel, in the same row order as a full scan: the top k
is the full scan's, score for score (seeds.exact_search).

The bound of row i, times the query's norm, covers |float32 score - coded score|:
``|v - scale * codes|`` (the coding error, by Cauchy-Schwarz) plus the rounding of both
float32 sums in any order (``3 * dim * 2**-24`` times the norms of the row and its coding).
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

CODE_FILES = ("codes.npy", "code_scale.npy", "code_bound.npy")
CHUNK_VALUES = 1 << 22   # values quantised at once (float64 temporaries of ~32 MB each, at any dim)
# A coded scan pays off where it leaves few rows to score in float32: a scan of at least this many
# rows and this many times k (below, the plain scan; the same answers either way). Measured on
# scattered rows of a 1e6 x 384 segment, two threads: k = 10 gains from 4,096 rows (1.29 -> 0.74
# ms), k = 1,024 loses at 8,192 rows (1.38 -> 1.50 ms) and gains from 12,288 (1.84 -> 1.73 ms)
MIN_ROWS = 4096
MIN_ROWS_PER_K = 10


class Codes(NamedTuple):
    codes: np.ndarray     # int8 [n, dim]
    scale: np.ndarray     # float32 [n]
    bound: np.ndarray     # float32 [n]


def quantize(vectors: np.ndarray) -> Codes:
    """Codes, scales and bounds of float32 rows, in chunks (a memory map is read once)."""
    n, dim = vectors.shape
    codes = np.empty((n, dim), np.int8)
    scale = np.empty(n, np.float32)
    bound = np.empty(n, np.float32)
    rounding = 3.0 * dim * 2.0 ** -24
    step = max(1, CHUNK_VALUES // max(dim, 1))
    for lo in range(0, n, step):
        v = np.asarray(vectors[lo:lo + step], np.float64)
        s = (np.abs(v).max(axis=1) / 127.0).astype(np.float32)
        safe = np.where(s > 0, s, np.float32(1.0)).astype(np.float64)
        c = np.clip(np.rint(v / safe[:, None]), -127, 127).astype(np.int8)
        coded = c.astype(np.float64) * s.astype(np.float64)[:, None]
        b = (np.linalg.norm(v - coded, axis=1)
             + rounding * (np.linalg.norm(v, axis=1) + np.linalg.norm(coded, axis=1)))
        b32 = b.astype(np.float32)
        codes[lo:lo + len(v)], scale[lo:lo + len(v)] = c, s
        bound[lo:lo + len(v)] = np.where(b32 < b, np.nextafter(b32, np.float32(np.inf)), b32)   # rounded up
    return Codes(codes, scale, bound)


def write_codes(seg_dir: Path, vectors: np.ndarray) -> list[str]:
    """Write a segment's codes beside its vectors; returns the file names (for the manifest)."""
    for name, arr in zip(CODE_FILES, quantize(vectors)):
        np.save(seg_dir / name, arr)
    return list(CODE_FILES)


def worth_writing(n_rows: int) -> bool:
    """Whether a segment of `n_rows` gets codes: a smaller one never takes the coded scan."""
    return n_rows >= MIN_ROWS


def worth_it(codes: Optional[Codes], n_scan: int, k: int) -> bool:
    """Whether a scan of `n_scan` rows for the k best reads the codes first."""
    return codes is not None and n_scan >= max(MIN_ROWS, MIN_ROWS_PER_K * k)


def candidates(codes: Codes, approx: np.ndarray, q: np.ndarray, lo: int, rows: Optional[np.ndarray],
               k: int) -> np.ndarray:
    """Ascending positions (into `rows`, or into the range [lo, lo + len(approx)) when `rows` is
    None) of every row whose float32 score could be among the k best (0 < k < len(approx)), from
    the rows' coded scores `approx` (`kernels.scan.code_dot_rows` / `code_dot_range`): the k-th
    best lower bound is the line. `q` is the float32 query the float32 scan will use."""
    n_scan = len(approx)
    bound = np.asarray(codes.bound)      # a plain view of the map: numpy's memmap indexing is slow
    bound = bound[lo:lo + n_scan] if rows is None else bound[rows]
    # the query's norm with a margin for the float64 arithmetic below
    err = bound.astype(np.float64) * (float(np.linalg.norm(q.astype(np.float64))) * (1.0 + 1e-6))
    approx = np.asarray(approx, np.float64)
    lower = approx - err
    line = np.partition(lower, n_scan - k)[n_scan - k]    # the k-th best lower bound
    return np.flatnonzero(approx + err >= line)
