"""Lazy open: an index opens without reading its HNSW graphs or checksumming its big files; the
graph is loaded (and checksummed) by the first search that walks it, and `verify` checks every
deferred checksum. Damage stays a clear CorruptIndexError, at open or at first use."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import fastctx.format as fmt
from conftest import copy_index
from fastctx.errors import CorruptIndexError
from fastctx.index import Index, verify
from fastctx.params import SearchParams

GRAPH = SearchParams(exact_max_rows=0, hnsw_min_fraction=0.0, hnsw_candidate_cost=0.0)  # 300 rows: force it


def _seg_dir(path: Path) -> Path:
    return path / "shard-000" / "seg-000001"


def _flip(path: Path, offset: int) -> None:
    b = bytearray(path.read_bytes())
    b[offset] ^= 0xFF
    path.write_bytes(bytes(b))


def _queries(idx: Index, n: int = 5, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, idx.dim)).astype(np.float32)


def test_open_loads_no_graph_until_searched(hnsw_small_index_dir):
    idx = Index(hnsw_small_index_dir, search_params=GRAPH)
    seg = idx.shards[0].disk_segments[0]
    assert seg.has_hnsw and not seg.hnsw_loaded
    # planning, stats and exact plans never need the graph
    assert idx.stats()["hnsw_segments"] == 1
    assert [p.strategy for p in idx.explain()] == ["hnsw"]
    assert not seg.hnsw_loaded
    hits = idx.search(_queries(idx), k=5)
    # the walk reads the graph file in place: no hnswlib load on the search path
    assert seg.walk_loaded and not seg.hnsw_loaded
    # as good as hnswlib's own search of the same graph, against the exact top 5
    seg.hnsw.set_ef(GRAPH.ef_search)
    ref = seg.hnsw.knn_query(_queries(idx), k=5, num_threads=1)[0]
    exact = np.argsort(-(_queries(idx) @ np.asarray(seg.vectors, np.float32).T), axis=1)[:, :5]

    def recall(rows):
        return np.mean([len(set(a) & set(b)) / 5 for a, b in zip(rows.tolist(), exact.tolist())])
    assert recall(hits.rows) >= recall(ref) - 0.05 and recall(hits.rows) >= 0.9
    # the same answers as an index opened with every checksum checked up front
    full = Index(hnsw_small_index_dir, verify=True, search_params=GRAPH).search(_queries(idx), k=5)
    assert hits.rows.tolist() == full.rows.tolist()


def test_damaged_graph_found_at_first_search_and_by_verify(hnsw_small_index_dir, tmp_path):
    path = copy_index(hnsw_small_index_dir, tmp_path / "index")
    f = _seg_dir(path) / "hnsw.bin"
    _flip(f, f.stat().st_size - 3)   # past any header: only the checksum can notice
    idx = Index(path, search_params=GRAPH)                # opening does not read the graph ...
    assert [p.strategy for p in idx.explain()] == ["hnsw"]
    with pytest.raises(CorruptIndexError) as ei:    # ... its first search does
        idx.search(_queries(idx), k=5)
    assert str(f) in str(ei.value) and "checksum" in str(ei.value)
    with pytest.raises(CorruptIndexError, match="checksum"):   # and again: nothing half-loaded
        idx.search(_queries(idx), k=5)
    for problems in (verify(path), idx.verify()):
        assert len(problems) == 1 and str(f) in problems[0] and "checksum" in problems[0], problems
    with pytest.raises(CorruptIndexError, match="hnsw.bin"):
        Index(path, verify=True)


def test_graph_that_is_not_a_graph_is_a_clear_error(hnsw_small_index_dir, tmp_path):
    """A consistent-looking but wrong graph file (size and checksum re-recorded) fails the load."""
    import json
    from fastctx.format import file_entries, write_manifest
    path = copy_index(hnsw_small_index_dir, tmp_path / "index")
    f = _seg_dir(path) / "hnsw.bin"
    f.write_bytes(b"\0" * 64)
    mpath = path / "shard-000" / "MANIFEST.json"
    m = json.loads(mpath.read_text())
    m["segments"][0]["files"].update(file_entries(f.parent, ["hnsw.bin"]))
    write_manifest(mpath.parent, m)
    idx = Index(path, search_params=GRAPH)
    with pytest.raises(CorruptIndexError, match="hnsw.bin"):
        idx.search(_queries(idx), k=5)
    assert any("hnsw.bin" in p for p in verify(path))


def test_big_files_checksummed_by_verify_not_on_open(hnsw_small_index_dir, tmp_path, monkeypatch):
    path = copy_index(hnsw_small_index_dir, tmp_path / "index")
    f = _seg_dir(path) / "ids.bin"
    _flip(f, f.stat().st_size // 2)
    with pytest.raises(CorruptIndexError, match="ids.bin"):   # small: checked on open
        Index(path, search_params=GRAPH)
    monkeypatch.setattr(fmt, "EAGER_CHECKSUM_MAX_BYTES", 0)   # now every file counts as big
    Index(path, search_params=GRAPH)
    problems = verify(path)
    assert len(problems) == 1 and str(f) in problems[0] and "checksum" in problems[0]


def test_truncated_graph_still_fails_open(hnsw_small_index_dir, tmp_path):
    path = copy_index(hnsw_small_index_dir, tmp_path / "index")
    f = _seg_dir(path) / "hnsw.bin"
    f.write_bytes(f.read_bytes()[:-5])
    with pytest.raises(CorruptIndexError, match="size"):     # sizes are always checked on open
        Index(path, search_params=GRAPH)


@pytest.mark.skipif(os.name == "nt", reason="an open file cannot be removed there")
def test_pinned_reader_loads_its_graph_after_the_file_is_removed(hnsw_small_index_dir, tmp_path):
    """A compaction may remove a pinned version's files; the graph was opened at pin time."""
    path = copy_index(hnsw_small_index_dir, tmp_path / "index")
    idx = Index(path, search_params=GRAPH)
    want = Index(hnsw_small_index_dir, search_params=GRAPH).search(_queries(idx), k=5).rows.tolist()
    (_seg_dir(path) / "hnsw.bin").unlink()
    assert idx.search(_queries(idx), k=5).rows.tolist() == want


def test_concurrent_first_searches_load_the_graph_once(hnsw_small_index_dir):
    idx = Index(hnsw_small_index_dir, search_params=GRAPH)
    seg = idx.shards[0].disk_segments[0]
    q = _queries(idx, 8)
    with ThreadPoolExecutor(4) as pool:
        out = list(pool.map(lambda i: idx.search(q[i], k=5).rows.tolist(), range(8)))
    graph = seg.walk
    assert all(idx.search(q[i], k=5).rows.tolist() == out[i] for i in range(8))
    assert seg.walk is graph


# ------------------------------------------------------------------------------------ batch search
def _reference(idx: Index, q: np.ndarray, k: int, f) -> tuple[list, list]:
    """The per-query path: `seeds.search_segment` per segment (the graph walk for the plans the
    index answers with it), merged by (score desc, shard, row)."""
    from fastctx.planner import walk_search
    from fastctx.seeds import allowed_mask, search_segment

    def one(seg, allowed, plan):
        if plan.strategy in Index._WALK_PLANS:
            rows, scores = walk_search(seg, plan, allowed_mask(allowed, seg.n), q[None], k, idx.search_params)
            keep = rows[0] >= 0
            return rows[0][keep], scores[0][keep]
        return search_segment(seg, plan, allowed, q, k, idx.search_params)
    parts = [(si, seg.row_base + int(r), float(s)) for si, seg, allowed, plan in idx.plans(f, k, idx.view())
             for r, s in zip(*one(seg, allowed, plan))]
    parts.sort(key=lambda p: (-np.float32(p[2]), p[0], p[1]))
    return [p[1] for p in parts[:k]], [p[2] for p in parts[:k]]


def _random_filters(idx: Index, rng) -> dict:
    sh = idx.shards[0]
    t = np.sort(np.asarray(sh.times))
    kw = {}
    if rng.random() < 0.5:
        lo, hi = sorted(rng.integers(0, len(t), 2).tolist())
        kw.update(time_from=int(t[lo]), time_to=int(t[hi]))
    if rng.random() < 0.5:
        kw["kinds"] = sorted(set(rng.choice(sh.kinds, rng.integers(1, len(sh.kinds) + 1)).tolist()))
    if rng.random() < 0.3:
        kw["sources"] = sorted(set(rng.choice(sh.sources, rng.integers(1, len(sh.sources) + 1)).tolist()))
    return kw


@pytest.mark.parametrize("params", [GRAPH, SearchParams(), SearchParams(ef_search=10, overfetch=1.0, max_rounds=1)],
                         ids=["graph", "default", "few-rounds"])
def test_search_batch_equals_per_query_search(hnsw_small_index_dir, params):
    from fastctx.filters import Filters
    idx = Index(hnsw_small_index_dir, search_params=params)
    rng = np.random.default_rng(11)
    strategies = set()
    for trial in range(25):
        kw = _random_filters(idx, rng)
        k = int(rng.integers(1, 40))
        q = _queries(idx, int(rng.integers(1, 12)), seed=trial)
        batch = idx.search_batch(q, k, **kw)
        strategies |= {p.strategy for p in idx.explain(k=k, **kw)}
        for i in range(len(q)):
            one = idx.search(q[i], k, **kw)
            assert one.rows[0].tolist() == batch.rows[i].tolist(), (kw, k, i)
            assert np.array_equal(one.scores[0], batch.scores[i], equal_nan=True)
            assert one.counts[0] == batch.counts[i]
            rows, scores = _reference(idx, q[i] / np.linalg.norm(q[i]), k, Filters(**kw))
            c = int(batch.counts[i])
            assert batch.rows[i, :c].tolist() == rows, (kw, k, i)
            assert np.allclose(batch.scores[i, :c], scores, atol=1e-5)
            assert (batch.rows[i, c:] == -1).all() and np.isnan(batch.scores[i, c:]).all()
    if params is GRAPH:
        assert {"hnsw", "hnsw-filter"} <= strategies
    elif params == SearchParams():
        assert any(s.startswith("exact") for s in strategies)


def test_plan_cache_follows_writes(fresh_index):
    """A cached plan never outlives the version it describes: a delete shows at once."""
    idx = fresh_index
    q = idx.shards[0].segments[0].vectors[0]
    first = idx.search(q, k=3)
    top = first.ids(0)[0]
    assert idx.search(q, k=3).ids(0) == first.ids(0)     # planned once, answered twice
    idx.delete([top])
    assert top not in idx.search(q, k=3).ids(0)


def test_search_batch_merges_segments_like_per_query(hnsw_small_index_dir, tmp_path):
    """Several segments (a graph segment and the memtable of added events), random filters."""
    from conftest import SMALL_HNSW_PARAMS, make_records
    from fastctx.corpus import EventBatch
    path = copy_index(hnsw_small_index_dir, tmp_path / "index")
    recs, vecs, *_ = make_records(160, seed=5, dim=16, t0=1_800_000_000)
    for r in recs:
        r["id"] = "added-" + r["id"]
        r["links"] = []
    with Index(path, writable=True) as w:   # a second graph segment, then a memtable
        w.add(EventBatch.from_records(recs[:120], vecs[:120]), params=SMALL_HNSW_PARAMS)
        w.flush()
        w.add(EventBatch.from_records(recs[120:], vecs[120:]))
    for params in (GRAPH, SearchParams()):
        idx = Index(path, search_params=params)
        assert len(idx.shards[0].segments) == 3 and idx.stats()["hnsw_segments"] == 2
        rng = np.random.default_rng(3)
        for trial in range(15):
            kw = _random_filters(idx, rng)
            k = int(rng.integers(1, 30))
            q = _queries(idx, 6, seed=100 + trial)
            batch = idx.search_batch(q, k, **kw)
            from fastctx.filters import Filters
            for i in range(len(q)):
                rows, _ = _reference(idx, q[i] / np.linalg.norm(q[i]), k, Filters(**kw))
                assert batch.rows[i, :batch.counts[i]].tolist() == rows, (kw, k, i)
                assert idx.search(q[i], k, **kw).rows[0].tolist() == batch.rows[i].tolist()


# ------------------------------------------------------------- big graphs: checked by the walk, not whole
def _big_graphs(monkeypatch):
    import fastctx.segment as segmod
    monkeypatch.setattr(segmod, "GRAPH_CHECK_MAX_BYTES", 0)     # every graph counts as big


def _rewrite_graph(path: Path, edit) -> Path:
    """Edit hnsw.bin and re-record its size and checksum: only the structure is wrong."""
    import json
    from fastctx.format import file_entries, write_manifest
    f = _seg_dir(path) / "hnsw.bin"
    data = bytearray(f.read_bytes())
    edit(data)
    f.write_bytes(bytes(data))
    mpath = path / "shard-000" / "MANIFEST.json"
    m = json.loads(mpath.read_text())
    m["segments"][0]["files"].update(file_entries(f.parent, ["hnsw.bin"]))
    write_manifest(mpath.parent, m)
    return f


def test_big_graph_first_search_skips_the_checksum_verify_finds_it(hnsw_small_index_dir, tmp_path, monkeypatch):
    _big_graphs(monkeypatch)
    path = copy_index(hnsw_small_index_dir, tmp_path / "index")
    want = Index(hnsw_small_index_dir, search_params=GRAPH).search(_queries(idx := Index(path)), k=5)
    f = _seg_dir(path) / "hnsw.bin"
    from fastctx.kernels.hnsw_search import HEADER_BYTES, parse_header
    h = parse_header(f.read_bytes()[:HEADER_BYTES])
    _flip(f, HEADER_BYTES + h["offset_data"] + 2)     # a byte of node 0's vector: links stay sound
    got = Index(path, search_params=GRAPH).search(_queries(idx), k=5)   # answered, never a crash
    assert got.rows.shape == want.rows.shape
    problems = verify(path)              # the guarantee for big graphs: verify checks the checksum
    assert len(problems) == 1 and str(f) in problems[0] and "checksum" in problems[0], problems


@pytest.mark.parametrize("what", ["link", "count"])
def test_big_graph_bad_level0_link_stops_the_walk_clearly(hnsw_small_index_dir, tmp_path, monkeypatch, what):
    _big_graphs(monkeypatch)
    path = copy_index(hnsw_small_index_dir, tmp_path / "index")
    from fastctx.kernels.hnsw_search import HEADER_BYTES, parse_header
    raw = (_seg_dir(path) / "hnsw.bin").read_bytes()
    h = parse_header(raw[:HEADER_BYTES])
    spe = h["size_per_element"]

    def edit(data):       # every node's first link list damaged: whichever the walk reads first
        for i in range(h["count"]):
            at = HEADER_BYTES + i * spe
            if what == "link":
                data[at + 4:at + 8] = (10 ** 9).to_bytes(4, "little")
            else:
                data[at:at + 2] = (h["maxM0"] + 1).to_bytes(2, "little")
    f = _rewrite_graph(path, edit)
    idx = Index(path, search_params=GRAPH)
    for _ in range(2):      # and again: nothing half-loaded
        with pytest.raises(CorruptIndexError) as ei:
            idx.search(_queries(idx), k=5)
        assert str(f) in str(ei.value) and "links out of range" in str(ei.value)
    problems = verify(path)
    assert len(problems) == 1 and str(f) in problems[0] and "out of range" in problems[0], problems


def test_big_graph_bad_labels_and_header_are_clear(hnsw_small_index_dir, tmp_path, monkeypatch):
    _big_graphs(monkeypatch)
    from fastctx.kernels.hnsw_search import HEADER_BYTES, parse_header
    for name, edit in (
            ("label", lambda d, h: d.__setitem__(slice(HEADER_BYTES + h["label_offset"],
                                                       HEADER_BYTES + h["label_offset"] + 8),
                                                 (10 ** 9).to_bytes(8, "little"))),
            ("header", lambda d, h: d.__setitem__(slice(16, 24), (h["count"] + 7).to_bytes(8, "little")))):
        path = copy_index(hnsw_small_index_dir, tmp_path / name)
        raw = (_seg_dir(path) / "hnsw.bin").read_bytes()
        h = parse_header(raw[:HEADER_BYTES])
        f = _rewrite_graph(path, lambda d: edit(d, h))
        idx = Index(path, search_params=GRAPH)
        with pytest.raises(CorruptIndexError, match="hnsw.bin"):
            idx.search(_queries(idx), k=5)
        assert any(str(f) in p for p in verify(path))
