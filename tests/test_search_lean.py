"""The lean one-query search path (issue 13) answers exactly what the general path answers.

- a one-segment walk answers in `Hits` form straight from the kernel (`search_hits`): the same
  rows, scores and order as `search_filtered` + the general merge (lexsort), ties included;
- the walk, given a beam as wide as the graph, is exact: brute force's top-k, same scores;
- an empty allowed mask means "every row" (the unfiltered plan reads no mask);
- the float32 one-vector fast path of `_vectors` normalises to the same bits as the full path,
  and every input it declines still gets the full path's error;
- the plan / view memos follow the pinned version (an add is seen, an ACL index still refuses).
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import T0, event, make_corpus, query_vectors_near, unit_rows, write_corpus
from fastctx.errors import AccessDeniedError, InvalidQueryError
from fastctx.index import Index, build
from fastctx.params import BuildParams, SearchParams

N, DIM = 3000, 16


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("lean")
    c = make_corpus(root / "corpus", N, seed=5, dim=DIM, n_clusters=12, n_buckets=10)
    idx, _ = build(c.dir, root / "index", params=BuildParams(hnsw_min_rows=500, threads=1), segment_rows=0)
    return {"root": root, "idx": idx, "c": c, "seg": idx.shards[0].segments[0],
            "queries": query_vectors_near(c.centers, 20, seed=3)}


def _general_merge(rw, sc, base, si):
    """Index._search_planned's merge of one segment's (rows, scores) before the lean path."""
    order = np.lexsort((rw, -sc), axis=1)
    rw, sc = np.take_along_axis(rw, order, 1), np.take_along_axis(sc, order, 1)
    filled = sc > -np.inf
    return (np.where(filled, np.int32(si), np.int32(-1)), np.where(filled, rw + base, -1),
            np.where(filled, sc, np.float32(np.nan)), np.count_nonzero(filled, axis=1).astype(np.int64))


@pytest.mark.parametrize("frac", [1.0, 0.5, 0.2])
@pytest.mark.parametrize("k", [1, 10, 40])
def test_hits_form_is_the_general_merge(world, frac, k):
    g = world["seg"].walk
    rng = np.random.default_rng(1)
    allowed = (rng.random(N) < frac).astype(np.uint8)
    qs = world["queries"]
    rw, sc = g.search(qs, allowed, k, 16, False)
    got = g.search_hits(qs, allowed, k, 16, False, 1000, 3)
    for a, b in zip(got, _general_merge(rw, sc, 1000, 3)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def test_empty_mask_allows_every_row(world):
    g = world["seg"].walk
    qs = world["queries"]
    for a, b in zip(g.search(qs, np.zeros(0, np.uint8), 10, 32, False), g.search(qs, np.ones(N, np.uint8), 10, 32, False)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("frac", [1.0, 0.3])
def test_a_graph_wide_beam_is_brute_force(world, frac):
    """With ef = every node the walk visits the whole (connected) graph: brute force's answer."""
    seg = world["seg"]
    vec = np.asarray(seg.vectors)
    allowed = (np.random.default_rng(2).random(N) < frac).astype(np.uint8)
    qs = world["queries"]
    rows, scores = seg.walk.search(qs, allowed if frac < 1 else np.zeros(0, np.uint8), 10, N, False)
    s = np.where(allowed[None, :] > 0, qs @ vec.T, -np.inf)
    truth = np.argsort(-s, axis=1, kind="stable")[:, :10]
    for i in range(len(qs)):
        assert sorted(rows[i].tolist()) == sorted(truth[i].tolist())
        np.testing.assert_allclose(scores[i], s[i, rows[i]], atol=1e-5)


def test_search_takes_the_lean_path_with_the_same_answers(world, monkeypatch):
    """Index.search over one walked segment: the lean path's Hits are the general path's (the
    segment's `walk_search` answer put through the merge), and it is the path taken."""
    import fastctx.index as im
    from fastctx.planner import walk_search
    idx = world["idx"]
    idx.search_params = SearchParams(exact_max_rows=100, hnsw_candidate_cost=0.5, ef_search=16)
    calls = []
    real = im.walk_hits
    monkeypatch.setattr(im, "walk_hits", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    try:
        for kw in ({}, {"entities_any": [f"bucket:b{j}" for j in range(4)]}):
            ((si, seg, allowed, plan),) = idx.plans(im._filters(kw), 10, idx.view())
            assert plan.strategy in ("hnsw", "hnsw-walk")
            for q in world["queries"]:
                h = idx.search(q, k=10, **kw)
                qs, _ = idx._vectors(q)
                rw, sc = walk_search(seg, plan, im._walk_mask(allowed, seg.n), qs, 10, idx.search_params)
                for a, b in zip((h.shards, h.rows, h.scores, h.counts), _general_merge(rw, sc, seg.row_base, si)):
                    assert a.dtype == b.dtype
                    np.testing.assert_array_equal(a, b)
        assert len(calls) == 2 * len(world["queries"])
    finally:
        idx.search_params = SearchParams()


def test_equal_scores_come_lower_row_first(tmp_path):
    """Duplicated vectors score equal: the lean path orders them by row, as the merge does."""
    rng = np.random.default_rng(4)
    base = unit_rows(rng.standard_normal((300, DIM)).astype(np.float32))
    vecs = np.repeat(base, 4, axis=0)         # every vector four times
    events = [event(i, time=T0 + i) for i in range(len(vecs))]
    write_corpus(tmp_path / "c", events, vecs)
    idx, _ = build(tmp_path / "c", tmp_path / "i", params=BuildParams(hnsw_min_rows=100, threads=1), segment_rows=0)
    idx.search_params = SearchParams(exact_max_rows=0, ef_search=64)
    assert idx.explain()[0].strategy == "hnsw"
    for q in base[:20]:
        h = idx.search(q, k=8)
        sc, rw = h.scores[0], h.rows[0]
        assert (np.diff(sc) <= 0).all()
        ties = sc[1:] == sc[:-1]
        assert ties.any() and (rw[1:][ties] > rw[:-1][ties]).all()


def test_fast_vector_path_is_bit_identical():
    """The one-float32-vector path normalises exactly as the full path (np.linalg.norm) does."""
    rng = np.random.default_rng(0)
    for dim in (3, 16, 129, 384, 1024):
        for scale in (1e-3, 1.0, 7.5, 1e6):
            q = (rng.standard_normal((50, dim)) * scale).astype(np.float32)
            full = q / np.linalg.norm(q, axis=1, keepdims=True)
            fast = np.stack([v / np.sqrt(np.add.reduce(v * v)) for v in q])
            assert fast.tobytes() == full.tobytes()


@pytest.mark.filterwarnings("ignore:overflow encountered")
@pytest.mark.parametrize("case", ["nan", "inf", "zeros", "overflow", "tiny"])
def test_fast_vector_path_declines_to_the_full_checks(world, case):
    idx = world["idx"]
    q = {"nan": np.full(DIM, np.nan, np.float32), "inf": np.r_[np.inf, np.ones(DIM - 1)].astype(np.float32),
         "zeros": np.zeros(DIM, np.float32), "overflow": np.full(DIM, 3e38, np.float32),
         "tiny": np.full(DIM, 1e-30, np.float32)}[case]
    if case in ("nan", "inf", "zeros", "tiny"):    # tiny: its squared norm underflows to 0 in float32
        with pytest.raises(InvalidQueryError, match="all zeros" if case in ("zeros", "tiny") else "NaN or inf"):
            idx.search(q, k=3)
        return
    # finite, but its squared norm overflows float32: the full path decides, as it did before
    got, _ = idx._vectors(q)
    np.testing.assert_array_equal(got, q[None] / np.linalg.norm(q[None], axis=1, keepdims=True))


def test_memos_follow_the_pinned_version(tmp_path):
    """A search after add sees the new event (plans and view are per pinned version)."""
    c = make_corpus(tmp_path / "c", 800, seed=9, dim=DIM)
    idx, _ = build(c.dir, tmp_path / "i", params=BuildParams(hnsw_min_rows=100, threads=1), segment_rows=0)
    idx.search_params = SearchParams(exact_max_rows=0)
    q = unit_rows(np.random.default_rng(3).standard_normal((1, DIM)).astype(np.float32))[0]
    v1 = idx.view()
    assert idx.view() is v1 and idx.search(q, k=1).ids(0) != ["new"]
    idx.add([{"id": "new", "time": T0 + 10 ** 6, "source": "jira", "kind": "discussion", "tokens": 5}], q[None])
    assert idx.search(q, k=1).ids(0) == ["new"]        # memtable + segment: two parts merged
    idx.flush()
    assert idx.search(q, k=1).ids(0) == ["new"]
    idx.close()


def test_acl_index_still_refuses_an_anonymous_asker(tmp_path):
    vecs = unit_rows(np.random.default_rng(5).standard_normal((40, DIM)).astype(np.float32))
    events = [event(i, time=T0 + i) for i in range(40)]
    events[0]["acl"] = ["user:ana"]
    write_corpus(tmp_path / "c", events, vecs)
    idx, _ = build(tmp_path / "c", tmp_path / "i")
    for _ in range(2):      # refused every time, never memoised
        with pytest.raises(AccessDeniedError):
            idx.search(vecs[0], k=3)
    assert idx.view(unrestricted=True) is idx.view(unrestricted=True)
    assert idx.search(vecs[0], k=3, unrestricted=True).counts[0] == 3
    assert idx.search(vecs[0], k=3, principals=["user:bob"]).ids(0)[0] != events[0]["id"]
