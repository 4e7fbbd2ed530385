"""Exact-scan kernels against numpy (float64 reference; fastmath reassociates the float32 sum)."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fastctx.kernels.scan import dot_range, dot_rows, gather_parts, later_max_dot


@settings(max_examples=60, deadline=None, derandomize=True)
@given(n=st.integers(0, 40), dim=st.integers(1, 70), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_dot_rows_and_range_match_numpy(n, dim, seed, data):
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, dim)).astype(np.float32)
    q = rng.standard_normal(dim).astype(np.float32)
    want = v.astype(np.float64) @ q.astype(np.float64)
    rows = np.array(data.draw(st.lists(st.integers(0, n - 1), max_size=30)) if n else [], dtype=np.int64)
    np.testing.assert_allclose(dot_rows(v, rows, q), want[rows], rtol=1e-5, atol=1e-5)
    lo = data.draw(st.integers(0, n))
    hi = data.draw(st.integers(lo, n))
    got = dot_range(v, lo, hi, q)
    assert got.dtype == np.float32 and got.shape == (hi - lo,)
    np.testing.assert_allclose(got, want[lo:hi], rtol=1e-5, atol=1e-5)


def test_scans_read_memory_maps_in_place(tmp_path):
    """The index passes read-only memory maps; results equal those on an in-memory copy."""
    rng = np.random.default_rng(3)
    v = rng.standard_normal((100, 16)).astype(np.float32)
    np.save(tmp_path / "v.npy", v)
    mm = np.load(tmp_path / "v.npy", mmap_mode="r")
    q = rng.standard_normal(16).astype(np.float32)
    rows = np.array([5, 99, 0, 5], np.int64)
    np.testing.assert_array_equal(dot_rows(mm, rows, q), dot_rows(v, rows, q))
    np.testing.assert_array_equal(dot_range(mm, 10, 20, q), dot_range(v, 10, 20, q))


def _later_max_dot_reference(v, times, pool):
    """The plain definition: the best product with a strictly later row, -1 when none is later."""
    out = np.full(len(pool), -1.0)
    for i, p in enumerate(pool):
        later = [float(v[p].astype(np.float64) @ v[r].astype(np.float64)) for r in range(len(v)) if times[r] > times[p]]
        if later:
            out[i] = max(later)
    return out


@settings(max_examples=60, deadline=None, derandomize=True)
@given(n=st.integers(1, 40), dim=st.integers(1, 40), span=st.integers(1, 10**6), seed=st.integers(0, 2**31 - 1),
       data=st.data())
def test_later_max_dot_matches_the_plain_definition(n, dim, span, seed, data):
    """Ties in time (span 1: every row at one or two instants) are not later; rows of the pool may
    repeat. Unit vectors, as the engine passes (a cosine is never below the -1 of "none later")."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    times = rng.integers(0, span, n).astype(np.int64)
    pool = np.array(data.draw(st.lists(st.integers(0, n - 1), max_size=20)), dtype=np.int64)
    got = later_max_dot(v, times, np.argsort(times, kind="stable"), pool)
    assert got.dtype == np.float64 and got.shape == pool.shape
    np.testing.assert_allclose(got, _later_max_dot_reference(v, times, pool), rtol=1e-5, atol=1e-5)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(sizes=st.lists(st.integers(1, 30), min_size=1, max_size=5), dim=st.integers(1, 40),
       seed=st.integers(0, 2**31 - 1), n=st.integers(0, 60))
def test_gather_parts_matches_numpy(sizes, dim, seed, n):
    """Rows of several read-only matrices, copied in the asked order, equal numpy's selections."""
    rng = np.random.default_rng(seed)
    mats = []
    for m in sizes:
        a = rng.standard_normal((m, dim)).astype(np.float32)
        a.flags.writeable = False
        mats.append(a)
    part = rng.integers(0, len(mats), n).astype(np.int32)
    row = np.array([rng.integers(0, sizes[p]) for p in part], np.int64)
    out = np.empty((n, dim), np.float32)
    gather_parts(tuple(mats), part, row, out)
    want = np.array([mats[p][r] for p, r in zip(part, row)], np.float32).reshape(n, dim)
    np.testing.assert_array_equal(out, want)
