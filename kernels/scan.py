"""Exact similarity scans: inner products of one query with chosen rows of a vector matrix.

Fused gather + dot: numpy's ``vectors[rows] @ q`` first copies every chosen row (and, on a
memory map, faults each page in the copy), which measured ~10x slower than reading each row
once in place (bench/bench_seeds.py; 8k rows x 384 dims: ~0.7 ms here vs ~8 ms).

These two kernels are the one exception to the bit-exact rule of ``_jit``: ``fastmath`` lets
LLVM vectorise the dot product (reassociating the sum), 3x faster. Their reference
(``vectors[rows] @ q`` in float64) matches to float32 rounding, which is all a similarity
score needs; ties in the top-k are broken by row, never by the last bit of a score.
"""

import numpy as np

from ._jit import njit


@njit(fastmath=True)
def dot_rows(vectors, rows, q):
    """float32[len(rows)]: vectors[rows[i]] . q for each i."""
    out = np.empty(rows.shape[0], dtype=np.float32)
    dim = vectors.shape[1]
    for i in range(rows.shape[0]):
        r = rows[i]
        s = np.float32(0.0)
        for j in range(dim):
            s += vectors[r, j] * q[j]
        out[i] = s
    return out


@njit(fastmath=True)
def dot_range(vectors, lo, hi, q):
    """float32[hi - lo]: vectors[r] . q for r in [lo, hi) (a time window is a row range)."""
    out = np.empty(hi - lo, dtype=np.float32)
    dim = vectors.shape[1]
    for r in range(lo, hi):
        s = np.float32(0.0)
        for j in range(dim):
            s += vectors[r, j] * q[j]
        out[r - lo] = s
    return out


@njit(fastmath=True)
def later_max_dot(vectors, times, by_time, pool):
    """float64[len(pool)]: per row p of `pool`, the largest vectors[p] . vectors[r] over the rows
    r with times[r] > times[p], and at least -1 (the value when no row is later; for the unit
    vectors the engine passes, a cosine). `by_time` orders the rows by time
    (stable argsort). One pass over the later rows per pool row, read in place: the matrix
    product it replaces copied the later rows per slice and ran BLAS threads for a product of
    ~128 x 1,300 rows, 4x slower on a loaded machine than one thread (bench/README.md)."""
    n = by_time.shape[0]
    dim = vectors.shape[1]
    out = np.full(pool.shape[0], -1.0)
    for i in range(pool.shape[0]):
        p = pool[i]
        t = times[p]
        lo, hi = 0, n                  # the first position in time order later than t
        while lo < hi:
            mid = (lo + hi) >> 1
            if times[by_time[mid]] <= t:
                lo = mid + 1
            else:
                hi = mid
        best = np.float32(-1.0)
        for pos in range(lo, n):
            r = by_time[pos]
            s = np.float32(0.0)
            for j in range(dim):
                s += vectors[p, j] * vectors[r, j]
            if s > best:
                best = s
        out[i] = best
    return out


@njit(nogil=True)
def gather_parts(parts, part, row, out):
    """out[i] = parts[part[i]][row[i]] for each i: rows of several matrices (a tuple of one array
    type, e.g. the segments of several shards) copied once into `out` in the asked order (per
    matrix, numpy would copy each selection and then scatter it). A copy: bit-exact. The inner
    loop is written out: a slice assignment per row measured twice as slow."""
    dim = out.shape[1]
    for i in range(part.shape[0]):
        src = parts[part[i]]
        r = row[i]
        for j in range(dim):
            out[i, j] = src[r, j]
