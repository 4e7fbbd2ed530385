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
from fastctx.index import build
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
    segment's `walk_search` answer put through the merge); its runner is made once per plan."""
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
        assert len(calls) == 2
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


@pytest.mark.parametrize("case", ["nan", "inf", "zeros", "overflow", "tiny"])
def test_fast_vector_path_declines_to_the_full_checks(world, case):
    idx = world["idx"]
    q = {"nan": np.full(DIM, np.nan, np.float32), "inf": np.r_[np.inf, np.ones(DIM - 1)].astype(np.float32),
         "zeros": np.zeros(DIM, np.float32), "overflow": np.full(DIM, 3e38, np.float32),
         "tiny": np.full(DIM, 1e-30, np.float32)}[case]
    if case in ("nan", "inf", "zeros"):
        with pytest.raises(InvalidQueryError, match="all zeros" if case == "zeros" else "NaN or inf"):
            idx.search(q, k=3)
        return
    # finite and non-zero, but its squared norm overflows (or underflows) float32: the full path
    # scales it in float64 to the unit vector of its direction, as the corpus reader does
    got, _ = idx._vectors(q)
    np.testing.assert_allclose(got, np.full((1, DIM), 1 / np.sqrt(DIM), np.float32), rtol=1e-6)
    assert idx.search(q, k=3).ids(0) == idx.search(np.ones(DIM, np.float32), k=3).ids(0)


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


def reference_beam(g, allowed: np.ndarray, q: np.ndarray, k: int, ef: int) -> list[int]:
    """The beam walk in plain Python (heapq, float64): the unfiltered walk of width ef, answering
    with the k best allowed rows among every node it scored; it walks every scored node on while
    fewer than k allowed ones are in hand."""
    import heapq

    from test_filtered_search import reference_descent
    vec = lambda node: g.vf[node, g.vec_col:g.vec_col + len(q)].astype(np.float64)
    nbrs = lambda node: [int(x) for x in g.l0[node, 1:1 + (int(g.l0[node, 0]) & 0xFFFF)]]
    cur, cur_s = reference_descent(g, q)
    seen, cand, beam, scored = {cur}, [(-cur_s, cur)], [(cur_s, cur)], [(cur_s, cur)]
    n_allowed = int(allowed[g.labels[cur]] > 0)
    while cand:
        if len(beam) >= ef and -cand[0][0] < beam[0][0] and n_allowed >= k:
            break
        _, c = heapq.heappop(cand)
        for nb in nbrs(c):
            if nb in seen:
                continue
            seen.add(nb)
            s = float(vec(nb) @ q)
            scored.append((s, nb))
            if len(beam) < ef or s > beam[0][0]:
                heapq.heappush(cand, (-s, nb))
                heapq.heappush(beam, (s, nb))
                if len(beam) > ef:
                    heapq.heappop(beam)
            elif n_allowed < k:
                heapq.heappush(cand, (-s, nb))
            n_allowed += int(allowed[g.labels[nb]] > 0)
    best = sorted((t for t in scored if allowed[g.labels[t[1]]]), key=lambda t: (-t[0], g.labels[t[1]]))[:k]
    return [int(g.labels[node]) for _, node in best]


@pytest.mark.parametrize("frac", [0.5, 0.2, 0.1])
def test_beam_walk_matches_its_reference(world, frac):
    g = world["seg"].walk
    allowed = (np.random.default_rng(7).random(N) < frac).astype(np.uint8)
    qs = world["queries"]
    rows, scores = g.search(qs, allowed, 10, 24, False, beam=True)
    vec = np.asarray(world["seg"].vectors)
    agree = 0
    for i, q in enumerate(qs):
        got = rows[i][rows[i] >= 0]
        assert len(got) == 10 and allowed[got].all()
        np.testing.assert_allclose(scores[i], vec[got] @ q, atol=1e-5)
        assert (np.diff(scores[i]) <= 0).all()
        agree += got.tolist() == reference_beam(g, allowed, q.astype(np.float64), 10, 24)
    assert agree >= 0.9 * len(qs), agree     # float32 sums may break a near-tie the other way


def test_beam_walk_edges(world):
    g = world["seg"].walk
    qs = world["queries"]
    every = np.zeros(0, np.uint8)
    for a, b in zip(g.search(qs, every, 10, 16, False, beam=True), g.search(qs, every, 10, 16, False)):
        np.testing.assert_array_equal(a, b)    # every row allowed: the plain walk
    allowed = (np.random.default_rng(8).random(N) < 0.2).astype(np.uint8)
    rows, scores = g.search(qs, allowed, 10, N, False, beam=True)    # a graph-wide beam is exact
    s = np.where(allowed[None, :] > 0, qs @ np.asarray(world["seg"].vectors).T, -np.inf)
    for i in range(len(qs)):
        assert sorted(rows[i].tolist()) == sorted(np.argsort(-s[i], kind="stable")[:10].tolist())
    with pytest.raises(ValueError, match="not both"):
        g.search(qs, allowed, 10, 16, True, beam=True)


def test_planner_runs_the_beam_only_when_asked(world):
    idx = world["idx"]
    kw = {"entities_any": [f"bucket:b{j}" for j in range(2)]}       # ~20% of the rows
    idx.search_params = SearchParams(exact_max_rows=100, hnsw_candidate_cost=0.5, ef_search=48)
    try:
        (plain,) = idx.explain(**kw)
        assert plain.strategy == "hnsw-walk" and "plain walk" in plain.reason
        before = [idx.search(q, k=10, **kw) for q in world["queries"]]
        idx.search_params = SearchParams(exact_max_rows=100, hnsw_candidate_cost=0.5, ef_search=48,
                                         walk_beam_below=0.5)
        (beam,) = idx.explain(**kw)
        assert beam.strategy == "hnsw-walk" and "beam walk" in beam.reason
        after = [idx.search(q, k=10, **kw) for q in world["queries"]]
        rec = []
        for a, b, q in zip(before, after, world["queries"]):
            assert all(any(e.startswith("bucket:b") and int(e[8:]) < 2 for e in ev.entities) for ev in b.events(0))
            rec.append(len(set(a.rows[0].tolist()) & set(b.rows[0].tolist())) / 10)
        assert np.mean(rec) >= 0.9, np.mean(rec)
    finally:
        idx.search_params = SearchParams()
        idx._plan_cache = idx._last_plans = None


def test_heap_helpers_are_a_min_heap():
    """The walk's heap over parallel (score, node) arrays pops in score order."""
    from fastctx.kernels.hnsw_search import _heap_pop, _heap_push
    rng = np.random.default_rng(6)
    hs, hn = np.empty(300, np.float32), np.empty(300, np.int64)
    size, model = 0, []
    for step in range(2000):
        if size and rng.random() < 0.4:
            s, node = hs[0], hn[0]
            size = _heap_pop(hs, hn, size)
            want = min(model)
            assert s == want[0]
            model.remove((s, node))
        elif size < 299:
            s = np.float32(rng.integers(0, 50) / 7)      # many equal scores
            size = _heap_push(hs, hn, size, s, step)
            model.append((s, step))
        assert size == len(model)
