"""The shard graph file set (fastctx/shardgraph.py): a multi-segment shard's derived graph,
supersession overlay and id lookup written at build / compaction / `write_graph` and mapped by
readers. It must give exactly the arrays the shard derives (dtypes and order), be ignored when
stale, merge a memtable that only adds ids, fall back otherwise, and fail clearly when damaged."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import fastctx.segment as segmod
import fastctx.shardgraph as sgmod
from conftest import HOUR, T0, copy_index, make_corpus
from fastctx.cli import main
from fastctx.compaction import CompactionPolicy
from fastctx.errors import CorruptIndexError
from fastctx.format import crc32_file, read_manifest, write_manifest
from fastctx.index import Index, build, verify
from fastctx.params import BuildParams
from fastctx.shardgraph import is_fresh

N = 3000
PARAMS = BuildParams(hnsw_min_rows=10**9, threads=1)     # no HNSW: exact scans, quick builds


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("shardgraph")
    c = make_corpus(root / "corpus", N, seed=4, dim=16, n_clusters=6)
    idx, _ = build(c.dir, root / "cut", params=PARAMS, segment_rows=1000)
    idx.close()
    return {"c": c, "cut": root / "cut", "root": root}


def _copy(world, tmp_path, name="idx") -> Path:
    return copy_index(world["cut"], tmp_path / name)


def _shard_dir(path: Path) -> Path:
    return path / "shard-000"


def _graph_dir(path: Path) -> Path:
    return _shard_dir(path) / read_manifest(_shard_dir(path))["graph"]["name"]


def assert_same_as_derived(sh) -> None:
    """The shard's graph and supersession equal what it derives from its segments alone."""
    got, want = sh.graph, sh._derived_graph()
    for f in got.__dataclass_fields__:
        a, b = getattr(got, f), getattr(want, f)
        assert a.dtype == b.dtype and a.shape == b.shape, f
        assert np.array_equal(a, b), f
    for a, b in zip(sh.supersession, sh._derived_supersession(want)):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def _vec(seed: int, dim: int = 16) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


# ------------------------------------------------------------------------------------ writing
def test_build_writes_a_fresh_graph_file_with_the_derived_arrays(world):
    m = read_manifest(_shard_dir(world["cut"]))
    assert len(m["segments"]) == 3 and is_fresh(m)
    assert sorted(p.name for p in _graph_dir(world["cut"]).iterdir()) == sorted(f"{s}.npy" for s in sgmod.LAYOUT)
    idx = Index(world["cut"])
    sh = idx.shards[0]
    assert sh.graph_file is not None
    g = sh.graph
    assert g.out_dst.base is not None and len(g.out_dst) > 0   # a view of the mapped file, not derived
    # entities span segments (service:s*, decision:d*): merged postings, in the walk's order
    spans = [e for e in range(sh.n_entities) if len({sh.locate(int(r))[0].name
                                                      for r in g.ent_rows[g.ent_ptr[e]:g.ent_ptr[e + 1]]}) > 1]
    assert spans
    assert (sh.supersession[0] >= 0).any()
    assert_same_as_derived(sh)
    # the id lookup answers as the per-segment lookups do
    keys = np.concatenate([np.asarray(s.id_keys) for s in sh.disk_segments] + [np.array([7, 9], np.uint64)])
    want = np.full(len(keys), -1, np.int64)
    for s in sh.disk_segments:
        hit = s.id_lookup.get(keys)
        want = np.where(hit >= 0, hit, want)
    assert sh.lookup_ids(keys).tolist() == want.tolist()
    assert idx.verify() == []


def test_single_segment_shard_gets_no_graph_file(world, tmp_path):
    idx, _ = build(world["c"].dir, tmp_path / "one", params=PARAMS, segment_rows=0)
    assert "graph" not in read_manifest(_shard_dir(tmp_path / "one"))
    assert idx.shards[0].graph_file is None
    assert idx.write_graph() is False


def test_deletions_updates_then_write_graph(world, tmp_path):
    path = _copy(world, tmp_path)
    c = world["c"]
    idx = Index(path, writable=True, build_params=PARAMS)
    gone = list(dict.fromkeys([c.ids[j] for j in (5, 50, 1001, 1500, 2999)]
                              + [r["id"] for r in c.records if r["kind"] == "decision"][:6]))
    idx.delete(gone)
    upd = [dict(r, tokens=r["tokens"] + 1) for r in c.records[100:110] + c.records[2100:2110]]
    idx.upsert(upd, np.stack([_vec(i) for i in range(len(upd))]))
    idx.flush()                                     # a 4th segment and a deletion file: stale
    m = read_manifest(_shard_dir(path))
    assert len(m["segments"]) == 4 and m["deletes"] and not is_fresh(m)
    assert not any(p.name.startswith("graph-") for p in _shard_dir(path).iterdir())   # collected
    sh = Index(path).shards[0]
    assert sh.graph_file is None and sh.n_deleted == len(gone) + len(upd)
    assert idx.write_graph() is True and idx.write_graph() is False     # fresh: nothing to do
    assert is_fresh(read_manifest(_shard_dir(path)))
    assert idx.shards[0].graph_file is not None
    assert_same_as_derived(idx.shards[0])
    sh = Index(path).shards[0]
    assert sh.graph_file is not None and sh.n_deleted == len(gone) + len(upd)
    assert_same_as_derived(sh)
    assert verify(path) == []
    idx.close()


def test_compaction_writes_the_graph_of_the_merged_shard(world, tmp_path):
    path = _copy(world, tmp_path)
    c = world["c"]
    idx = Index(path, writable=True, build_params=PARAMS)
    for j in range(3):     # three small segments after the three big ones
        recs = [dict(c.records[k], id=f"x{j}-{k}", time=T0 + (N + j * 40 + k) * HOUR, links=[]) for k in range(40)]
        idx.add(recs, np.stack([_vec(1000 * j + k) for k in range(40)]))
        idx.flush()
    idx.delete([c.ids[7]])
    idx.flush()
    assert not is_fresh(read_manifest(_shard_dir(path)))
    runs = idx.compact(policy=CompactionPolicy(small_rows=200, segment_rows=0))
    assert runs == [(3, 6)]
    m = read_manifest(_shard_dir(path))
    assert len(m["segments"]) == 4 and is_fresh(m)
    for sh in (Index(path).shards[0], idx.shards[0]):      # a reader, and the writer's own view
        assert sh.graph_file is not None and sh.graph_file.name == m["graph"]["name"]
        assert_same_as_derived(sh)
    assert Index(path).shards[0].n_deleted == 1
    idx.close()


def test_writer_view_after_compaction_uses_the_new_graph_file(world, tmp_path):
    path = _copy(world, tmp_path)
    c = world["c"]
    w = Index(path, writable=True, build_params=PARAMS)       # pins the build's graph file
    old = w.shards[0].graph_file.name
    w.delete([c.ids[j] for j in (1, 2, 1500)])
    assert w.compact(policy=CompactionPolicy(small_rows=2000, max_rows=2000, segment_rows=0)) == [(0, 2)]
    m = read_manifest(_shard_dir(path))
    sh = w.shards[0]
    assert len(m["segments"]) == 2 and is_fresh(m) and m["graph"]["name"] != old
    assert sh.graph_file is not None and sh.graph_file.name == m["graph"]["name"]
    assert_same_as_derived(sh)
    w.close()


def test_cli_compact_writes_a_missing_graph(world, tmp_path, monkeypatch):
    path = _copy(world, tmp_path)
    m = read_manifest(_shard_dir(path))
    del m["graph"]
    write_manifest(_shard_dir(path), m)
    real_compact = Index.compact
    # segments too big to merge (the default policy would merge these 1000-row ones into one)
    monkeypatch.setattr(Index, "compact", lambda self, **kw: [])
    res = CliRunner().invoke(main, ["compact", str(path)])
    assert res.exit_code == 0 and "segments 3 -> 3" in res.output and "shard graph written" in res.output, res.output
    assert is_fresh(read_manifest(_shard_dir(path)))
    res = CliRunner().invoke(main, ["compact", str(path)])
    assert res.exit_code == 0 and "shard graph up to date" in res.output, res.output
    monkeypatch.setattr(Index, "compact", real_compact)
    res = CliRunner().invoke(main, ["compact", str(path)])      # merged into one: no graph file
    assert res.exit_code == 0 and "3 -> 1" in res.output and "graph" not in res.output, res.output
    assert "graph" not in read_manifest(_shard_dir(path))
    assert not any(p.name.startswith("graph-") for p in _shard_dir(path).iterdir())


# ------------------------------------------------------------------------------------ memtable
def test_memtable_of_new_events_is_merged_onto_the_mapped_graph(world, tmp_path):
    path = _copy(world, tmp_path)
    c = world["c"]
    disk = {r["id"]: r for r in c.records}
    decision = next(r for r in c.records if r["kind"] == "decision" and r["time"] > T0 + 500 * HOUR)
    slot = next(e for e in decision["entities"] if e.startswith("decision:"))
    recs = []
    for k in range(60):        # times inside every segment's range (some equal to disk times), the last past all
        t = T0 + (k * 53 % 1000) * HOUR + k % 2 if k < 50 else T0 + (1000 + k) * HOUR
        links = [{"to": c.ids[(k * 97) % N], "type": "reply"}]
        if k % 10 == 3:
            links.append({"to": f"m{k - 1}", "type": "references"})    # memtable -> memtable
        ents = [f"service:s{k % 6}", f"fn:new{k // 3}"]
        kind = "discussion"
        if k % 7 == 0:
            ents.append(slot)
            kind = "decision"
        recs.append({"id": f"m{k}", "time": t, "source": "jira", "kind": kind, "tokens": 10,
                     "entities": ents, "links": links})
    recs.append({"id": "m-sup", "time": decision["time"] + 5, "source": "jira", "kind": "discussion",
                 "tokens": 10, "entities": [], "links": [{"to": decision["id"], "type": "supersedes"}]})
    w = Index(path, writable=True, build_params=PARAMS)
    w.add(recs, np.stack([_vec(500 + k) for k in range(len(recs))]))
    assert all(r["id"] not in disk for r in recs)
    sh = Index(path, build_params=PARAMS).shards[0]
    assert sh.memtable is not None and sh.memtable.n == len(recs)
    assert sh.graph_file is not None
    assert_same_as_derived(sh)
    by = sh.supersession[0]
    row = int(sh.lookup_ids(np.array([_key(decision["id"])]))[0])
    assert by[row] == int(sh.lookup_ids(np.array([_key("m-sup")]))[0])
    w.close()


def test_vectors_of_rows_across_segments_and_the_memtable(world, tmp_path):
    """Shard.vectors gathers per segment; each row's vector is the one its segment holds."""
    path = _copy(world, tmp_path)
    recs = [{"id": f"v{k}", "time": T0 + (2000 + k) * HOUR, "source": "jira", "kind": "discussion", "tokens": 5,
             "entities": [], "links": []} for k in range(7)]
    w = Index(path, writable=True, build_params=PARAMS)
    w.add(recs, np.stack([_vec(900 + k) for k in range(len(recs))]))
    w.close()
    sh = Index(path, build_params=PARAMS).shards[0]
    assert len(sh.segments) == 4 and sh.memtable is not None
    rows = np.random.default_rng(5).integers(0, sh.n, 500)
    rows[:4] = [sh.n - 1, 0, 1000, sh.n - 1]           # the memtable's last row, a boundary, a repeat
    want = np.stack([sh.locate(int(r))[0].vectors[sh.locate(int(r))[1]] for r in rows])
    got = sh.vectors(rows)
    assert got.dtype == np.float32 and np.array_equal(got, want)
    assert sh.vectors(np.zeros(0, np.int64)).shape == (0, sh.dim)
    for bad in ([sh.n], [-1]):
        with pytest.raises(IndexError):
            sh.vectors(np.array(bad))


def _key(s: str) -> int:
    from fastctx.columns import key64
    return np.uint64(key64(s))


def test_memtable_that_deletes_or_reuses_ids_falls_back(world, tmp_path):
    path = _copy(world, tmp_path)
    c = world["c"]
    w = Index(path, writable=True, build_params=PARAMS)
    w.delete([c.ids[10]])
    sh = Index(path, build_params=PARAMS).shards[0]
    assert sh.graph_file is not None and sh.log.overlay_add    # the log hides a disk event
    assert sh.n_deleted == 1
    assert_same_as_derived(sh)
    w.close()
    # deletions flushed and a graph written for them: a memtable of new ids is merged on
    w = Index(path, writable=True, build_params=PARAMS)
    w.flush()
    assert w.write_graph() is True
    w.add([{"id": "new-1", "time": T0 + 400 * HOUR, "source": "jira", "kind": "discussion", "tokens": 5,
            "entities": ["service:s1"], "links": [{"to": c.ids[11], "type": "reply"}]}], _vec(4)[None])
    sh = Index(path, build_params=PARAMS).shards[0]
    assert sh.n_deleted == 1 and sh.graph_file is not None
    assert_same_as_derived(sh)
    # a deleted id (in the flushed overlay) added again: stored links naming it now resolve to it
    w.add([dict(c.records[10], tokens=1)], _vec(3)[None])
    w.close()
    sh = Index(path, build_params=PARAMS).shards[0]
    assert sh.graph_file is not None and sh.memtable is not None
    assert_same_as_derived(sh)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_logs_merge_to_the_derived_graph(world, tmp_path, seed):
    """Adds of new ids, updates (other links and entities), deletes of disk and memtable events and
    adds of deleted ids again, all still in the log: the merged graph is the derived one."""
    path = _copy(world, tmp_path)
    c = world["c"]
    rng = np.random.default_rng(seed)
    w = Index(path, writable=True, build_params=PARAMS)
    if seed % 2:     # a flushed overlay under the graph file too
        w.delete([c.ids[int(j)] for j in rng.choice(N, 40, replace=False)])
        w.flush()
        assert w.write_graph() is True
    made: list[str] = []
    for step in range(12):
        op = rng.integers(0, 4)
        if op == 0:      # new events linking to disk and memtable events, shared and new entities
            recs = []
            for k in range(int(rng.integers(1, 30))):
                eid = f"n{seed}-{step}-{k}"
                to = [c.ids[int(rng.integers(0, N))]] + ([made[int(rng.integers(0, len(made)))]] if made else [])
                recs.append({"id": eid, "time": T0 + int(rng.integers(0, 1100)) * HOUR + int(rng.integers(0, 2)),
                             "source": "jira", "kind": ("decision", "discussion")[k % 2], "tokens": 5,
                             "entities": [f"service:s{int(rng.integers(0, 6))}", f"decision:d{int(rng.integers(0, 4))}",
                                          f"fn:x{int(rng.integers(0, 50))}"],
                             "links": [{"to": t, "type": ("reply", "supersedes")[int(rng.integers(0, 2))]} for t in to]})
            w.add(recs, np.stack([_vec(int(rng.integers(0, 10**6))) for _ in recs]))
            made += [r["id"] for r in recs]
        elif op == 1:    # updates of disk events: new time, entities and links
            recs = []
            for j in rng.choice(N, int(rng.integers(1, 20)), replace=False):
                r = dict(c.records[int(j)], time=T0 + int(rng.integers(0, 1100)) * HOUR,
                         entities=[f"service:s{int(rng.integers(0, 6))}", "fn:upd"],
                         links=[{"to": c.ids[int(rng.integers(0, N))], "type": "references"}])
                recs.append(r)
            w.upsert(recs, np.stack([_vec(int(rng.integers(0, 10**6))) for _ in recs]))
        elif op == 2:    # deletes of disk events (often link targets) and of memtable events
            ids = [c.ids[int(j)] for j in rng.choice(N, int(rng.integers(1, 25)), replace=False)]
            if made:
                ids += [made[int(j)] for j in rng.choice(len(made), min(3, len(made)), replace=False)]
            w.delete(ids)
        else:            # deleted ids added again
            recs = [dict(c.records[int(j)], tokens=7) for j in rng.choice(N, 5, replace=False)]
            w.delete([r["id"] for r in recs])
            w.add(recs, np.stack([_vec(int(rng.integers(0, 10**6))) for _ in recs]))
    sh = Index(path, build_params=PARAMS).shards[0]
    assert sh.graph_file is not None and sh.memtable is not None and sh.log.overlay_add
    assert_same_as_derived(sh)
    w.close()


# ------------------------------------------------------------------------------------ answers
def _answers(path: Path, qv: np.ndarray) -> list:
    idx = Index(path, build_params=PARAMS)
    out = []
    for i, q in enumerate(qv):
        for kind, kw in (("chain", {}), ("chain", {"direction": "both"}), ("current", {}),
                         ("as_of", {"as_of": T0 + (100 + 200 * i) * HOUR})):
            a = idx.query(q, type=kind, budget_tokens=3000, unrestricted=True, **kw)
            d = {k: v for k, v in a.to_dict().items() if k != "timings_ms"}
            out.append(json.dumps(d, sort_keys=True, default=str))
    return out


def test_answers_identical_with_and_without_the_graph_file(world, tmp_path):
    with_file = _copy(world, tmp_path, "with")
    without = _copy(world, tmp_path, "without")
    m = read_manifest(_shard_dir(without))
    del m["graph"]
    write_manifest(_shard_dir(without), m)
    assert Index(without).shards[0].graph_file is None
    qv = np.stack([world["c"].vectors[j] for j in (3, 777, 1502, 2400, 2950)])
    a, b = _answers(with_file, qv), _answers(without, qv)
    assert a == b and any('"events": [{' in x for x in a)


# ------------------------------------------------------------------------------------ staleness
def test_stale_entry_is_ignored_and_collected(world, tmp_path):
    path = _copy(world, tmp_path)
    m = read_manifest(_shard_dir(path))
    name = m["graph"]["name"]
    (_graph_dir(path) / "ent_rows.npy").write_bytes(b"not an array")     # never read: stale
    m["graph"]["key"] ^= 1
    write_manifest(_shard_dir(path), m)
    sh = Index(path).shards[0]
    assert sh.graph_file is None
    assert_same_as_derived(sh)
    assert verify(path) == []
    Index(path, writable=True).close()               # a writer collects the stale directory
    assert not (_shard_dir(path) / name).exists()
    assert Index(path).shards[0].graph_file is None


# ------------------------------------------------------------------------------------ damage
def _flip(path: Path, offset: int) -> None:
    b = bytearray(path.read_bytes())
    b[offset] ^= 0xFF
    path.write_bytes(bytes(b))


def test_damaged_small_file_fails_the_open(world, tmp_path):
    path = _copy(world, tmp_path)
    f = _graph_dir(path) / "in_src.npy"
    _flip(f, f.stat().st_size - 2)
    with pytest.raises(CorruptIndexError) as ei:
        Index(path)
    assert str(f) in str(ei.value) and "checksum" in str(ei.value)
    problems = verify(path)
    assert len(problems) == 1 and str(f) in problems[0]


@pytest.mark.parametrize("how", ["missing", "truncated", "header"])
def test_missing_truncated_or_unreadable_file(world, tmp_path, how):
    path = _copy(world, tmp_path)
    f = _graph_dir(path) / "ent_rows.npy"
    if how == "missing":
        f.unlink()
    elif how == "truncated":
        f.write_bytes(f.read_bytes()[:-8])
    else:
        b = bytearray(f.read_bytes())
        b[:6] = b"NOTNPY"
        f.write_bytes(bytes(b))
    with pytest.raises(CorruptIndexError, match="ent_rows.npy"):
        Index(path)


def test_big_files_are_checked_at_first_use(world, tmp_path, monkeypatch):
    """Files over 1 MiB are not checksummed by the open: the first query checksums those up to
    GRAPH_CHECK_MAX_BYTES and range-checks bigger ones (so damage never reaches a kernel)."""
    path = _copy(world, tmp_path)
    monkeypatch.setattr(sgmod, "EAGER_CHECKSUM_MAX_BYTES", 0)        # every file counts as big
    f = _graph_dir(path) / "ent_rows.npy"
    arr = np.load(f)
    arr[3] = 10**9                                                  # a row far out of range
    np.save(f, arr)                                                 # same size, other bytes
    q = world["c"].vectors[5]
    idx = Index(path)                                               # opening reads no array
    with pytest.raises(CorruptIndexError) as ei:
        idx.query(q, unrestricted=True)
    assert str(f) in str(ei.value) and "checksum" in str(ei.value)
    monkeypatch.setattr(segmod, "GRAPH_CHECK_MAX_BYTES", 0)          # ... and as too big to checksum
    idx = Index(path)
    with pytest.raises(CorruptIndexError) as ei:
        idx.query(q, unrestricted=True)
    assert str(f) in str(ei.value) and "outside" in str(ei.value)
    arr[3], arr[4] = arr[4], 17                                     # in range: only verify notices
    np.save(f, arr)
    Index(path).query(q, unrestricted=True)
    problems = verify(path)
    assert len(problems) == 1 and str(f) in problems[0] and "checksum" in problems[0]


def test_consistent_but_wrong_file_is_found_by_verify(world, tmp_path):
    path = _copy(world, tmp_path)
    f = _graph_dir(path) / "sup_by.npy"
    arr = np.load(f)
    arr[:] = -1                                       # nothing superseded: wrong, but well-formed
    np.save(f, arr)
    m = read_manifest(_shard_dir(path))
    m["graph"]["files"]["sup_by.npy"] = {"size": f.stat().st_size, "crc32": crc32_file(f)}
    write_manifest(_shard_dir(path), m)
    Index(path).shards[0].supersession                # opens and maps fine
    problems = verify(path)
    assert len(problems) == 1 and "sup_by.npy" in problems[0] and "differs" in problems[0]


def test_malformed_entry_is_corruption(world, tmp_path):
    path = _copy(world, tmp_path)
    m = read_manifest(_shard_dir(path))
    del m["graph"]["files"]["in_ptr.npy"]
    write_manifest(_shard_dir(path), m)
    with pytest.raises(CorruptIndexError, match="MANIFEST.json: the graph entry"):
        Index(path)
    m["graph"] = {**m["graph"], "name": "../elsewhere"}
    write_manifest(_shard_dir(path), m)
    with pytest.raises(CorruptIndexError, match="not a plain name"):
        Index(path)


# ------------------------------------------------------------------------------------ crashes
def test_crash_before_the_commit_leaves_the_old_version(world, tmp_path):
    path = _copy(world, tmp_path)
    m = read_manifest(_shard_dir(path))
    del m["graph"]
    write_manifest(_shard_dir(path), m)
    code = "import sys; from fastctx.index import Index; Index(sys.argv[1], writable=True).write_graph()"
    env = {**os.environ, "FASTCTX_CRASH_AT": "graph:before-commit:1"}
    r = subprocess.run([sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True)
    assert r.returncode == -9, r.stderr
    left = [p.name for p in _shard_dir(path).iterdir() if p.name.startswith("graph-")]
    assert left                                       # written, renamed, never committed
    m2 = read_manifest(_shard_dir(path))
    assert m2["version"] == m["version"] and "graph" not in m2
    sh = Index(path).shards[0]
    assert sh.graph_file is None
    assert_same_as_derived(sh)
    w = Index(path, writable=True)                    # the writer collects the orphan ...
    assert not any((_shard_dir(path) / n).exists() for n in left)
    assert w.write_graph() is True                    # ... and the next try commits
    w.close()
    sh = Index(path).shards[0]
    assert sh.graph_file is not None
    assert_same_as_derived(sh)
