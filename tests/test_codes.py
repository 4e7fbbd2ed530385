"""Int8 codes for large exact scans (fastctx.codes): the bound holds, and a coded scan returns the
plain float32 scan's rows and scores exactly, in kernels, in `exact_search` and through an index."""
import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroaring import BitMap

from conftest import HOUR, T0, make_corpus

from fastctx import codes as codes_mod
from fastctx import seeds
from fastctx.codes import CODE_FILES, candidates, quantize
from fastctx.filters import Allowed, Filters
from fastctx.index import Index, build, verify
from fastctx.kernels.scan import code_dot_range, code_dot_rows, dot_rows
from fastctx.seeds import exact_search, top_k


def _rows(rng, n, dim, unit=True):
    v = rng.standard_normal((n, dim)).astype(np.float32)
    if unit:
        v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    return v


@settings(max_examples=60, deadline=None, derandomize=True)
@given(n=st.integers(0, 50), dim=st.integers(1, 70), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_code_kernels_match_numpy(n, dim, seed, data):
    """The coded kernels against the plain definition scale * (codes . q), scattered rows
    (repeats included, more than the prefetch distance) and ranges."""
    rng = np.random.default_rng(seed)
    c = quantize(_rows(rng, n, dim))
    q = rng.standard_normal(dim).astype(np.float32)
    want = c.scale.astype(np.float64) * (c.codes.astype(np.float64) @ q.astype(np.float64))
    rows = np.array(data.draw(st.lists(st.integers(0, n - 1), max_size=40)) if n else [], dtype=np.int64)
    np.testing.assert_allclose(code_dot_rows(c.codes, c.scale, rows, q), want[rows], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(code_dot_rows(c.codes, c.scale, rows.astype(np.int32), q),
                                  code_dot_rows(c.codes, c.scale, rows, q))   # any integer row type
    lo = data.draw(st.integers(0, n))
    hi = data.draw(st.integers(lo, n))
    got = code_dot_range(c.codes, c.scale, lo, hi, q)
    assert got.dtype == np.float32 and got.shape == (hi - lo,)
    np.testing.assert_allclose(got, want[lo:hi], rtol=1e-5, atol=1e-5)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(n=st.integers(1, 60), dim=st.integers(1, 400), seed=st.integers(0, 2**31 - 1),
       unit=st.booleans(), qscale=st.sampled_from([1e-3, 1.0, 50.0]))
def test_bound_covers_the_float32_scores(n, dim, seed, unit, qscale):
    """|float32 score - coded score| <= bound * |q| for every row: unit or not, zero rows, and
    rows with one large component (the coarsest codes)."""
    rng = np.random.default_rng(seed)
    v = _rows(rng, n, dim, unit)
    v[0] = 0.0
    if n > 1:
        v[1, 0] = 40.0
    c = quantize(v)
    q = (rng.standard_normal(dim) * qscale).astype(np.float32)
    rows = np.arange(n, dtype=np.int64)
    exact = dot_rows(v, rows, q).astype(np.float64)
    approx = code_dot_rows(c.codes, c.scale, rows, q).astype(np.float64)
    assert np.all(np.abs(exact - approx) <= c.bound.astype(np.float64) * float(np.linalg.norm(q.astype(np.float64))))
    assert c.codes.dtype == np.int8 and c.scale.dtype == np.float32 and c.bound.dtype == np.float32


def test_candidates_keep_every_row_of_the_top_k():
    rng = np.random.default_rng(4)
    v = _rows(rng, 3000, 48)
    c = quantize(v)
    rows = np.sort(rng.choice(3000, 2000, replace=False)).astype(np.int64)
    for seed in range(5):
        q = _rows(np.random.default_rng(seed), 1, 48)[0]
        for k in (1, 10, 300):
            pos = candidates(c, code_dot_rows(c.codes, c.scale, rows, q), q, 0, rows, k)
            assert np.all(np.diff(pos) > 0)
            best = np.argsort(-dot_rows(v, rows, q), kind="stable")[:k]
            assert set(best.tolist()) <= set(pos.tolist())
            assert len(pos) < len(rows)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31 - 1), k=st.integers(1, 400), dups=st.integers(0, 300), data=st.data())
def test_coded_exact_search_equals_the_plain_scan(seed, k, dups, data):
    """Rows and scores identical to the plain scan, ranges and bitmaps, with duplicate vectors
    (equal scores across the k-th place: ties go to the lower row either way)."""
    rng = np.random.default_rng(seed)
    n = 5000
    v = _rows(rng, n, 32)
    src = rng.integers(0, n, dups)
    v[rng.integers(0, n, dups)] = v[src]
    c = quantize(v)
    q = _rows(rng, 1, 32)[0]
    lo = data.draw(st.integers(0, 500))
    picked = np.sort(rng.choice(n, data.draw(st.integers(1, n)), replace=False)).astype(np.uint32)
    for allowed in (Allowed(lo, n, None, n - lo), Allowed(0, n, BitMap(picked), len(picked))):
        want = exact_search(v, q, allowed, k)
        old = codes_mod.MIN_ROWS, codes_mod.MIN_ROWS_PER_K
        codes_mod.MIN_ROWS, codes_mod.MIN_ROWS_PER_K = 1, 1    # every scan takes the coded path
        try:
            for threads in (1, 2):
                got = exact_search(v, q, allowed, k, threads, c)
                np.testing.assert_array_equal(got[0], want[0])
                np.testing.assert_array_equal(got[1], want[1])
        finally:
            codes_mod.MIN_ROWS, codes_mod.MIN_ROWS_PER_K = old


def test_top_k_breaks_a_tie_at_the_line_by_position():
    scores = np.array([0.5, 0.9, 0.5, 0.7, 0.5, 0.5], np.float32)
    assert top_k(scores, 3).tolist() == [1, 3, 0]
    assert top_k(scores, 4).tolist() == [1, 3, 0, 2]
    assert top_k(scores[2:], 3).tolist() == [1, 0, 2]      # the same rows whatever else was scanned
    assert top_k(scores, 10).tolist() == [1, 3, 0, 2, 4, 5]


def test_index_segments_carry_codes_and_search_answers_as_without(tmp_path, monkeypatch):
    """A segment of at least `MIN_ROWS` rows is written with its codes (listed and checksummed in
    the manifest); searches through them give the same hits as with the codes dropped; a damaged
    codes file is found by verify; a segment without codes (an older index) still searches."""
    corpus = make_corpus(tmp_path / "c", 6000, dim=32)
    build(corpus.dir, tmp_path / "i")
    idx = Index(tmp_path / "i")
    seg = idx.shards[0].segments[0]
    assert seg.codes is not None and seg.codes.codes.shape == (6000, 32)
    entry = json.loads((tmp_path / "i" / "shard-000" / "MANIFEST.json").read_text())["segments"][0]
    assert set(CODE_FILES) <= set(entry["files"])
    plain = Index(tmp_path / "i")
    for s in plain.shards[0].segments:
        s.codes = None
    coded = []
    monkeypatch.setattr(seeds, "candidates", lambda *a, **kw: coded.append(1) or candidates(*a, **kw))
    rng = np.random.default_rng(0)
    windows = [Filters(), Filters(time_from=T0 + 100 * HOUR), Filters(time_from=T0, time_to=T0 + 1800 * HOUR),
               Filters(entities_any=[f"service:s{i}" for i in range(6)]), Filters(entities_any=["service:s1"])]
    for j in range(20):
        q = _rows(rng, 1, 32)[0]
        f = windows[j % len(windows)]
        a, b = idx.search(q, k=300, filters=f), plain.search(q, k=300, filters=f)
        np.testing.assert_array_equal(a.rows, b.rows)
        np.testing.assert_array_equal(a.scores, b.scores)
    assert len(coded) >= 8     # the windows and the six services' rows took the coded scan
    assert verify(tmp_path / "i") == []
    path = tmp_path / "i" / "shard-000" / seg.name / "codes.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert any("codes.npy" in p for p in verify(tmp_path / "i"))


def test_small_segments_have_no_codes(tmp_path):
    corpus = make_corpus(tmp_path / "c", 300)
    build(corpus.dir, tmp_path / "i")
    seg = Index(tmp_path / "i").shards[0].segments[0]
    assert seg.codes is None
    assert not any((tmp_path / "i" / "shard-000" / seg.name / name).exists() for name in CODE_FILES)
