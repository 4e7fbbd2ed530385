"""Time-cut segments: offline builds and compaction cut rows by event time (`build.time_cuts`).

A cut index must hold exactly what a one-segment build holds (events, links across the cuts,
entity names and postings), its segments must be time-disjoint and in time order, a time window
covering whole segments must search them unfiltered (`explain`), and seed search must find the
same top-k as the one-segment index where both scan exactly.
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import make_corpus, query_vectors_near
from fastctx.build import time_cuts
from fastctx.compaction import CompactionPolicy
from fastctx.index import Index, build
from fastctx.params import BuildParams, SearchParams

N = 6000
PARAMS = BuildParams(hnsw_min_rows=500, threads=1)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("timecut")
    c = make_corpus(root / "corpus", N, seed=3, dim=16, n_clusters=8)
    one, _ = build(c.dir, root / "one", params=PARAMS, segment_rows=0)
    cut, report = build(c.dir, root / "cut", params=PARAMS, segment_rows=1500)
    return {"c": c, "one": one, "cut": cut, "report": report, "root": root}


def test_time_cuts_groups():
    times = np.array([5, 1, 1, 3, 3, 3, 2, 9, 9, 7], np.int64)
    groups = time_cuts(times, 3)
    assert len(groups) == 3
    assert sorted(np.concatenate(groups).tolist()) == list(range(10))
    flat = [times[g] for g in groups]
    for a, b in zip(flat, flat[1:]):
        assert a.max() < b.min()            # time-disjoint: no cut between equal times
    for g in groups:
        assert (np.diff(times[g]) >= 0).all()
    assert [len(g) for g in time_cuts(times, 0)] == [10]
    assert [len(g) for g in time_cuts(times, 6)] == [10]     # n // 6 == 1 piece
    with pytest.raises(ValueError, match="segment_rows"):
        time_cuts(times, -1)


def test_cut_build_is_time_disjoint_and_complete(world):
    one, cut = world["one"], world["cut"]
    segs = cut.shards[0].segments
    assert len(one.shards[0].segments) == 1 and len(segs) == 4
    assert all(s.n >= 1500 and s.has_hnsw for s in segs)
    for a, b in zip(segs, segs[1:]):
        assert a.time_max < b.time_min
        assert b.row_base == a.row_base + a.n
    assert cut.n == one.n == N
    s1, s2 = one.stats(), cut.stats()
    assert s2["entities"] == s1["entities"] and s2["links"] == s1["links"]
    assert world["report"].dangling_links == 0   # links across the cuts resolve


def test_cut_build_same_events_links_and_postings(world):
    one, cut, c = world["one"], world["cut"], world["c"]
    ids = c.ids[::97]
    for a, b in zip(one.get(ids), cut.get(ids)):
        assert a.id == b.id and a.time == b.time and a.entities == b.entities and a.links == b.links
    g1, g2 = one.shards[0].graph, cut.shards[0].graph
    id1 = {one.shards[0].segments[0].ids[r]: r for r in range(N)}
    row2 = {}
    for s in cut.shards[0].segments:
        for r in range(s.n):
            row2[s.ids[r]] = s.row_base + r
    # every stored link resolves to the same target event in both layouts
    for eid in ids:
        r1, r2 = id1[eid], row2[eid]
        seg1 = one.shards[0].segments[0]
        seg2 = next(s for s in cut.shards[0].segments if s.row_base <= r2 < s.row_base + s.n)
        d1 = sorted(np.asarray(seg1.link_dst[seg1.link_ptr[r1]:seg1.link_ptr[r1 + 1]]).tolist())
        lr = r2 - seg2.row_base
        d2 = sorted(np.asarray(seg2.link_dst[seg2.link_ptr[lr]:seg2.link_ptr[lr + 1]]).tolist())
        assert d1 == d2
    # entity postings: the same events mention the same names
    for name in ("service:s3", "customer:c2", "fn:f100"):
        e1 = one.shards[0].entity_ids([name])
        e2 = cut.shards[0].entity_ids([name])
        assert len(e1) == len(e2) == 1
        rows1 = {one.shards[0].segments[0].ids[r] for r in _postings(g1, e1[0])}
        rows2 = {row_id(cut, r) for r in _postings(g2, e2[0])}
        assert rows1 == rows2 and rows1


def _postings(g, eid):
    return np.asarray(g.ent_rows[g.ent_ptr[eid]:g.ent_ptr[eid + 1]]).tolist()


def row_id(idx, row):
    s = next(s for s in idx.shards[0].segments if s.row_base <= row < s.row_base + s.n)
    return s.ids[row - s.row_base]


def test_window_selects_whole_segments_unfiltered(world):
    cut = world["cut"]
    segs = cut.shards[0].segments
    kw = {"time_from": segs[1].time_min, "time_to": segs[2].time_max}
    cut.search_params = SearchParams(exact_max_rows=100)   # segments this small would be scanned
    try:
        plans = cut.explain(**kw)
    finally:
        cut.search_params = SearchParams()
    assert [p.strategy for p in plans] == ["skip", "hnsw", "hnsw", "skip"]
    assert all(p.reason == "no filter applies" for p in plans[1:3])
    # a window edge inside a segment filters that segment only
    mid = int(np.asarray(segs[2].times)[segs[2].n // 2])
    cut.search_params = SearchParams(exact_max_rows=100)
    try:
        plans = cut.explain(time_from=segs[1].time_min, time_to=mid)
    finally:
        cut.search_params = SearchParams()
    assert plans[1].strategy == "hnsw" and plans[2].strategy != "hnsw" and 0 < plans[2].allowed < segs[2].n


def test_cut_search_matches_one_segment_when_exact(world):
    one, cut, c = world["one"], world["cut"], world["c"]
    exact = SearchParams(exact_max_rows=10 ** 9)
    one.search_params = cut.search_params = exact
    try:
        q = query_vectors_near(c.centers, 8, seed=5)
        for kw in ({}, {"time_from": int(c.records[100]["time"]), "time_to": int(c.records[4000]["time"])}):
            h1, h2 = one.search(q, k=10, **kw), cut.search(q, k=10, **kw)
            for i in range(len(q)):
                ids1 = [row_id(one, r) for r in h1.rows[i] if r >= 0]
                ids2 = [row_id(cut, r) for r in h2.rows[i] if r >= 0]
                assert ids1 == ids2
                assert np.allclose(h1.scores[i], h2.scores[i], atol=1e-5)
    finally:
        one.search_params = cut.search_params = SearchParams()


def test_cut_recall_hnsw(world):
    cut, c = world["cut"], world["c"]
    q = query_vectors_near(c.centers, 20, seed=9)
    vec = np.asarray(c.vectors)
    truth = np.argsort(-(q @ vec.T), axis=1)[:, :10]
    h = cut.search(q, k=10)
    got = [{row_id(cut, r) for r in h.rows[i]} for i in range(len(q))]
    rec = np.mean([len(got[i] & {c.ids[j] for j in truth[i]}) / 10 for i in range(len(q))])
    assert rec >= 0.95


def test_compaction_cuts_by_time(tmp_path):
    c = make_corpus(tmp_path / "corpus", 4000, seed=4, dim=8, n_clusters=4)
    idx = Index.create(tmp_path / "idx", 8, build_params=BuildParams(hnsw_min_rows=10 ** 6, threads=1))
    recs, vecs = c.records, np.asarray(c.vectors)
    # four flushed segments whose times interleave (a backfill): each holds every 4th event
    for part in range(4):
        rows = list(range(part, 4000, 4))
        idx.add([recs[i] for i in rows], vecs[rows])
        idx.flush()
    before = idx.stats()
    segs = idx.shards[0].disk_segments
    assert len(segs) == 4 and segs[0].time_max > segs[1].time_min
    idx.compaction = CompactionPolicy(small_rows=500, max_rows=10_000, segment_rows=1000)
    assert idx.compact(force=True) == [(0, 4)]
    segs = idx.shards[0].disk_segments
    assert [s.n for s in segs] == [1000] * 4 or (len(segs) == 4 and sum(s.n for s in segs) == 4000)
    for a, b in zip(segs, segs[1:]):
        assert a.time_max < b.time_min
    after = idx.stats()
    # compaction re-resolves the stored links (targets added after their source are found now):
    # the cut segments hold what a one-shot build of the same events holds
    whole, _ = build(c.dir, tmp_path / "whole", params=BuildParams(hnsw_min_rows=10 ** 6), segment_rows=0)
    assert after["entities"] == before["entities"] == whole.stats()["entities"]
    assert after["links"] == whole.stats()["links"] >= before["links"]
    for e in idx.get(c.ids[::311]):
        assert e is not None
    re = Index(tmp_path / "idx")
    assert len(re.shards[0].segments) == 4 and re.verify() == []
    # entity ids kept: the names resolve to the ids they had before compaction
    assert re.shards[0].entity_ids(["service:s1", "fn:f3"]) == idx.shards[0].entity_ids(["service:s1", "fn:f3"])
    re.close()
    idx.close()


def test_bad_segment_rows(tmp_path, world):
    with pytest.raises(ValueError, match="segment_rows"):
        build(world["c"].dir, tmp_path / "x", segment_rows=-5)
    with pytest.raises(ValueError, match="segment_rows applies to single-shard"):
        build(world["c"].dir, tmp_path / "y", shards=2, segment_rows=1000)
    with pytest.raises(ValueError, match="segment_rows"):
        CompactionPolicy(small_rows=50_000, segment_rows=10_000)
    assert CompactionPolicy(segment_rows=0).segment_rows == 0
