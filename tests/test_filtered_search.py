"""The filtered graph walk (kernels/hnsw_search.py) over the graph hnswlib saved.

- the saved file read as arrays holds what hnswlib holds (labels, vectors);
- the Numba walk agrees with a plain-Python reference of the same algorithm (heapq), in both
  modes (plain, two-hop), and never returns a row outside the allowed mask;
- recall@10 against brute force >= 0.95 at 50/30/10% allowed;
- the planner sends mid fractions to `hnsw-walk` and `explain` says which walk; search and
  search_batch answer the same through it; damaged graph files fail with CorruptIndexError.
"""
from __future__ import annotations

import heapq
import shutil

import numpy as np
import pytest

from conftest import make_corpus, query_vectors_near
from fastctx.errors import CorruptIndexError
from fastctx.index import Index, build
from fastctx.params import BuildParams, SearchParams
from fastctx.planner import WALK_MIN_FRACTION
from fastctx.segment import GraphArrays

N, DIM = 6000, 16


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("walk")
    c = make_corpus(root / "corpus", N, seed=2, dim=DIM, n_clusters=24, n_buckets=100)
    idx, _ = build(c.dir, root / "index", params=BuildParams(hnsw_min_rows=1000, threads=1), segment_rows=0)
    seg = idx.shards[0].segments[0]
    bucket = np.array([int(next(e for e in r["entities"] if e.startswith("bucket:"))[len("bucket:b"):])
                       for r in c.records])
    row_of = {seg.ids[r]: r for r in range(seg.n)}
    rows_bucket = np.empty(N, np.int64)
    for line, rec in enumerate(c.records):
        rows_bucket[row_of[rec["id"]]] = bucket[line]
    return {"root": root, "idx": idx, "seg": seg, "c": c, "bucket": rows_bucket,
            "queries": query_vectors_near(c.centers, 30, seed=11)}


def reference_descent(g: GraphArrays, q: np.ndarray) -> tuple[int, float]:
    """The greedy descent through the upper layers in plain Python: (entry node of layer 0, its
    float64 score)."""
    h = g.header
    vec = lambda node: g.vf[node, g.vec_col:g.vec_col + len(q)].astype(np.float64)
    cur = h["entry"]
    cur_s = float(vec(cur) @ q)
    for level in range(h["maxlevel"], 0, -1):
        changed = True
        while changed:
            changed = False
            base = int(g.uptr[cur]) + (level - 1) * (h["maxM"] + 1)
            for t in range(int(g.upper[base]) & 0xFFFF):
                nb = int(g.upper[base + 1 + t])
                s = float(vec(nb) @ q)
                if s > cur_s:
                    cur_s, cur, changed = s, nb, True
    return cur, cur_s


def reference_walk(g: GraphArrays, allowed: np.ndarray, q: np.ndarray, k: int, ef: int, two_hop: bool):
    """The walk in plain Python (heapq), for comparison: same rules, float64 scores."""
    h = g.header
    vec = lambda node: g.vf[node, g.vec_col:g.vec_col + len(q)].astype(np.float64)
    ok = lambda node: bool(allowed[g.labels[node]])
    nbrs = lambda node: [int(x) for x in g.l0[node, 1:1 + (int(g.l0[node, 0]) & 0xFFFF)]]
    cur, cur_s = reference_descent(g, q)
    seen = {cur}
    cand = [(-cur_s, cur)]
    res = [(cur_s, cur)] if ok(cur) else []
    while cand:
        neg, c = cand[0]
        if len(res) >= ef and -neg < res[0][0]:
            break
        heapq.heappop(cand)
        scored = 0
        for nb in nbrs(c):
            if nb in seen:
                continue
            if two_hop and not ok(nb):
                seen.add(nb)
                for nb2 in nbrs(nb):
                    if nb2 in seen or not ok(nb2):
                        continue
                    seen.add(nb2)
                    s = float(vec(nb2) @ q)
                    scored += 1
                    if len(res) < ef or s > res[0][0]:
                        heapq.heappush(cand, (-s, nb2))
                        heapq.heappush(res, (s, nb2))
                        if len(res) > ef:
                            heapq.heappop(res)
                    if scored >= h["maxM0"]:
                        break
            else:
                seen.add(nb)
                s = float(vec(nb) @ q)
                scored += 1
                if len(res) < ef or s > res[0][0]:
                    heapq.heappush(cand, (-s, nb))
                    if ok(nb):
                        heapq.heappush(res, (s, nb))
                        if len(res) > ef:
                            heapq.heappop(res)
            if two_hop and scored >= h["maxM0"]:
                break
    best = sorted(res, key=lambda t: (-t[0], g.labels[t[1]]))[:k]
    return [int(g.labels[node]) for _, node in best]


def test_arrays_hold_what_hnswlib_holds(world):
    seg = world["seg"]
    g = seg.walk
    assert g.header["count"] == seg.n and g.header["maxM0"] == 2 * g.header["M"]
    assert sorted(g.labels.tolist()) == list(range(seg.n))
    some = g.labels[:50]
    np.testing.assert_array_equal(g.vf[:50, g.vec_col:g.vec_col + DIM], np.asarray(seg.hnsw.get_items(some)))
    np.testing.assert_array_equal(g.vf[:50, g.vec_col:g.vec_col + DIM], np.asarray(seg.vectors)[some])


@pytest.mark.parametrize("frac, two_hop", [(1.0, False), (0.5, False), (0.3, True), (0.1, True), (0.1, False)])
def test_kernel_matches_reference_and_filter(world, frac, two_hop):
    seg, g = world["seg"], world["seg"].walk
    allowed = (world["bucket"] < round(frac * 100)).astype(np.uint8)
    qs = world["queries"]
    rows, scores = g.search(qs, allowed, 10, 32, two_hop)
    vec = np.asarray(seg.vectors)
    agree = 0
    for i, q in enumerate(qs):
        got = rows[i][rows[i] >= 0]
        assert len(got) == 10 and allowed[got].all()
        np.testing.assert_allclose(scores[i], vec[got] @ q, atol=1e-5)
        assert (np.diff(scores[i]) <= 1e-6).all()
        agree += got.tolist() == reference_walk(g, allowed, q.astype(np.float64), 10, 32, two_hop)
    # float32 sums in another order may break a near-tie differently now and then
    assert agree >= 0.9 * len(qs), agree


@pytest.mark.parametrize("frac", [0.5, 0.3, 0.1])
def test_walk_recall(world, frac):
    seg, g = world["seg"], world["seg"].walk
    allowed = world["bucket"] < round(frac * 100)
    qs = world["queries"]
    rows, _ = g.search(qs, allowed.view(np.uint8), 10, 64, frac < 0.15)
    s = np.where(allowed[None, :], qs @ np.asarray(seg.vectors).T, -np.inf)
    truth = np.argsort(-s, axis=1)[:, :10]
    rec = np.mean([len(set(rows[i].tolist()) & set(truth[i].tolist())) / 10 for i in range(len(qs))])
    assert rec >= 0.95, rec


def test_planner_uses_the_walk_for_mid_fractions(world):
    idx = world["idx"]
    # cheap graph steps: at 6000 rows a scan of 600 would still beat the walk by the default costs
    idx.search_params = SearchParams(exact_max_rows=100, hnsw_candidate_cost=0.5)
    try:
        (p30,) = idx.explain(entities_any=[f"bucket:b{j}" for j in range(30)])
        (p10,) = idx.explain(entities_any=[f"bucket:b{j}" for j in range(10)])
        (p1,) = idx.explain(entities_any=[f"bucket:b{j}" for j in range(1)])
        assert p30.strategy == p10.strategy == "hnsw-walk"
        assert "plain walk" in p30.reason and "plain walk" in p10.reason   # two-hop is off (planner doc)
        assert p1.fraction < WALK_MIN_FRACTION and p1.strategy != "hnsw-walk"
        kw = {"entities_any": [f"bucket:b{j}" for j in range(10)]}
        qs = world["queries"][:8]
        batch = idx.search(qs, k=10, **kw)
        for i in range(len(qs)):
            one = idx.search(qs[i], k=10, **kw)
            assert one.ids(0) == batch.ids(i)
            ev = idx.get(one.ids(0))
            assert all(any(e.startswith("bucket:b") and int(e[8:]) < 10 for e in x.entities) for x in ev)
    finally:
        idx.search_params = SearchParams()


def test_repeated_filter_is_planned_once(world, monkeypatch):
    """The per-call path: a filter searched again reuses its plans (and their allowed masks);
    each query of a batch gets its own timing record."""
    idx = world["idx"]
    kw = {"entities_any": [f"bucket:b{j}" for j in range(30)]}
    qs = world["queries"][:4]
    first = idx.search(qs[0], k=10, **kw)
    calls = []
    real = Index.plans
    monkeypatch.setattr(Index, "plans", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    again = idx.search(qs[0], k=10, **kw)
    assert again.ids(0) == first.ids(0) and not calls
    idx.search(qs[0], k=10, entities_any=["bucket:b1"])      # a new filter is planned
    assert len(calls) == 1
    batch = idx.search(qs, k=10, **kw)
    assert len({id(t) for t in batch.timings}) == len(qs)
    assert all(t["plan_ms"] >= 0 and t["seeds_ms"] >= 0 for t in batch.timings)


def _damaged_copy(world, tmp_path, edit):
    dst = tmp_path / "copy"
    shutil.copytree(world["root"] / "index", dst)
    seg_dir = next((dst / "shard-000").glob("seg-*"))
    path = seg_dir / "hnsw.bin"
    data = bytearray(path.read_bytes())
    edit(data)
    path.write_bytes(bytes(data))
    return dst, path


def test_damaged_graph_fails_the_walk_clearly(world, tmp_path):
    def flip(data):
        data[5000] ^= 0xFF
    dst, path = _damaged_copy(world, tmp_path, flip)
    idx = Index(dst, search_params=SearchParams(exact_max_rows=100, hnsw_candidate_cost=0.5))
    assert idx.explain(entities_any=[f"bucket:b{j}" for j in range(30)])[0].strategy == "hnsw-walk"
    with pytest.raises(CorruptIndexError, match="hnsw.bin.*checksum"):
        idx.search(world["queries"][0], k=5, entities_any=[f"bucket:b{j}" for j in range(30)])
    idx.close()


def test_bad_header_is_corruption(world):
    src = world["seg"].dir / "hnsw.bin"
    raw = bytearray(src.read_bytes())
    GraphArrays(bytes(raw), src, N, DIM)                 # sound
    with pytest.raises(CorruptIndexError, match="holds"):
        GraphArrays(bytes(raw), src, N + 1, DIM)
    with pytest.raises(CorruptIndexError, match="header"):
        GraphArrays(bytes(raw), src, N, DIM + 1)
    with pytest.raises(CorruptIndexError, match="shorter"):
        GraphArrays(bytes(raw[:40]), src, N, DIM)
    with pytest.raises(CorruptIndexError):
        GraphArrays(bytes(raw[:len(raw) // 2]), src, N, DIM)
    bad = bytearray(raw)
    bad[96 + 4:96 + 8] = (10 ** 9).to_bytes(4, "little")   # node 0's first neighbour id out of range
    with pytest.raises(CorruptIndexError, match="links out of range"):
        GraphArrays(bytes(bad), src, N, DIM)
    g = world["seg"].walk                       # an upper-level link past the graph
    node = int(np.flatnonzero(g.levels > 0)[0])
    at = 96 + g.header["count"] * g.header["size_per_element"] + 4 * (int(g.uptr[node]) + 1)
    bad = bytearray(raw)
    bad[at:at + 4] = (10 ** 9).to_bytes(4, "little")
    if int.from_bytes(raw[at - 4:at], "little") & 0xFFFF:   # the list holds at least one link
        with pytest.raises(CorruptIndexError, match="upper-level"):
            GraphArrays(bytes(bad), src, N, DIM)


def test_verify_reads_the_graph_as_the_walk_does(world, tmp_path):
    def bad_link(data):
        data[96 + 4:96 + 8] = (10 ** 9).to_bytes(4, "little")   # a neighbour id past the graph
    dst, path = _damaged_copy(world, tmp_path, bad_link)
    # keep the manifest's checksum right, so only the structure is wrong
    import json
    import zlib
    man = json.loads((dst / "shard-000" / "MANIFEST.json").read_text())
    entry = next(e for e in man["segments"] if e["name"] == path.parent.name)
    entry["files"]["hnsw.bin"]["crc32"] = zlib.crc32(path.read_bytes())
    from fastctx.format import write_manifest
    write_manifest(dst / "shard-000", man)
    problems = Index(dst).verify()
    assert problems and "hnsw.bin: level-0 links out of range" in problems[0], problems
