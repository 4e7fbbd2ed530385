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
    assert seg.hnsw_loaded and seg.hnsw.get_current_count() == seg.n
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
    graph = seg.hnsw
    assert all(idx.search(q[i], k=5).rows.tolist() == out[i] for i in range(8))
    assert seg.hnsw is graph
