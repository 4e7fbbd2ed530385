"""Exact similarity scans: inner products of one query with chosen rows of a vector matrix.

Fused gather + dot: numpy's ``vectors[rows] @ q`` first copies every chosen row (and, on a
memory map, faults each page in the copy), which measured ~10x slower than reading each row
once in place (bench/bench_seeds.py; 8k rows x 384 dims: ~0.7 ms here vs ~8 ms).

These kernels are the one exception to the bit-exact rule of ``_jit``: ``fastmath`` lets
LLVM vectorise the dot product (reassociating the sum), 3x faster. Their reference
(``vectors[rows] @ q`` in float64) matches to float32 rounding, which is all a similarity
score needs; ties in the top-k are broken by row, never by the last bit of a score.
"""

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ._jit import njit

PREFETCH_AHEAD = 8   # rows a coded scan hints ahead of the one it scores (4-16 measured alike)


@intrinsic
def _prefetch_row(typingctx, arr, row):
    """Hint the CPU to start loading every 64-byte line of ``arr[row, :]`` (2-D, C order):
    rows scattered through a large matrix are each a cache miss, and a hint issued a few rows
    ahead overlaps the misses. Only a hint: never faults, changes no result."""
    def codegen(context, builder, signature, args):
        aty = signature.args[0]
        a = context.make_array(aty)(context, builder, args[0])
        itemsize = context.get_abi_sizeof(context.get_data_type(aty.dtype))
        cols = cgutils.unpack_tuple(builder, a.shape, 2)[1]
        row_bytes = builder.mul(cols, ir.Constant(cols.type, itemsize))
        row = context.cast(builder, args[1], signature.args[1], types.intp)
        start = builder.mul(row, row_bytes)
        base = builder.bitcast(a.data, ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer(), i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
        step = ir.Constant(row_bytes.type, 64)
        with cgutils.for_range_slice(builder, ir.Constant(row_bytes.type, 0), row_bytes, step) as (at, _):
            # read (0), keep in all cache levels (3), data (1)
            builder.call(fn, [builder.gep(base, [builder.add(start, at)]), ir.Constant(i32, 0), ir.Constant(i32, 3),
                              ir.Constant(i32, 1)])
        return context.get_dummy_value()
    return types.void(arr, row), codegen


@njit(fastmath=True)
def dot_rows(vectors, rows, q):
    """float32[len(rows)]: vectors[rows[i]] . q for each i. Four rows at a time: scattered rows
    are each a cache miss, and four in flight at once measured ~1.3-1.8x faster than one by one
    on rows no cache holds (1e6 x 384 float32, 14k rows)."""
    n = rows.shape[0]
    out = np.empty(n, dtype=np.float32)
    dim = vectors.shape[1]
    i = 0
    while i + 4 <= n:
        r0, r1, r2, r3 = rows[i], rows[i + 1], rows[i + 2], rows[i + 3]
        s0 = s1 = s2 = s3 = np.float32(0.0)
        for j in range(dim):
            qj = q[j]
            s0 += vectors[r0, j] * qj
            s1 += vectors[r1, j] * qj
            s2 += vectors[r2, j] * qj
            s3 += vectors[r3, j] * qj
        out[i], out[i + 1], out[i + 2], out[i + 3] = s0, s1, s2, s3
        i += 4
    for i in range(i, n):
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
def code_dot_rows(codes, scale, rows, q):
    """float32[len(rows)]: scale[r] * (codes[r] . q) for r = rows[i]: the approximate scores of
    int8-coded rows (fastctx.codes). Each row's lines are hinted `PREFETCH_AHEAD` rows before it
    is scored: 14k scattered rows of 1e6 x 384 codes took 1.2-1.4 ms against 2.1 ms without
    (and 3.1-3.7 ms for the float32 rows), one thread."""
    n = rows.shape[0]
    out = np.empty(n, dtype=np.float32)
    dim = codes.shape[1]
    for i in range(min(PREFETCH_AHEAD, n)):
        _prefetch_row(codes, rows[i])
    for i in range(n):
        if i + PREFETCH_AHEAD < n:
            _prefetch_row(codes, rows[i + PREFETCH_AHEAD])
        r = rows[i]
        s = np.float32(0.0)
        for j in range(dim):
            s += np.float32(codes[r, j]) * q[j]
        out[i] = s * scale[r]
    return out


@njit(fastmath=True)
def code_dot_range(codes, scale, lo, hi, q):
    """float32[hi - lo]: `code_dot_rows` for the rows of [lo, hi)."""
    out = np.empty(hi - lo, dtype=np.float32)
    dim = codes.shape[1]
    for r in range(lo, hi):
        s = np.float32(0.0)
        for j in range(dim):
            s += np.float32(codes[r, j]) * q[j]
        out[r - lo] = s * scale[r]
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
