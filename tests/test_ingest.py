"""Durable incremental ingest: write-ahead log, memtable, flush, compaction, deletes, updates,
the writer lock, garbage collection, torn logs and checksums (crash loops: test_ingest_crash.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import HOUR, T0, event, make_records, unit_rows, write_corpus
from fastctx import compaction
from fastctx.cli import main
from fastctx.compaction import CompactionPolicy, SegmentMeta
from fastctx.errors import CorruptIndexError, IndexLockedError
from fastctx.index import Index, build, verify

DIM = 16


def vecs(n, seed=0):
    return unit_rows(np.random.default_rng(seed).standard_normal((n, DIM)))


def live_ids(idx: Index) -> list:
    sh = idx.shards[0]
    out = []
    for seg in sh.segments:
        dead = sh.deleted_mask[seg.row_base:seg.row_base + seg.n]
        out += [seg.ids[r] for r in range(seg.n) if not dead[r]]
    return out


@pytest.fixture
def base(tmp_path):
    recs, v, _, _ = make_records(300, seed=1, dim=DIM)
    write_corpus(tmp_path / "corpus", recs[:200], v[:200])
    idx, _ = build(tmp_path / "corpus", tmp_path / "index")
    return idx, recs, v


# ------------------------------------------------------------------------------------ log + memtable
def test_add_is_queryable_at_once_and_replayed_on_open(base, tmp_path):
    idx, recs, v = base
    idx.add(recs[200:260], v[200:260])
    assert idx.stats()["segments"] == 1 and idx.stats()["memtable_events"] == 60
    assert idx.n == 260
    for i in (205, 230, 259):
        assert idx.search(v[i], k=1).ids() == [recs[i]["id"]]
    # the memtable is scanned exactly
    assert [p.strategy for p in idx.explain()][-1].startswith("exact")
    reader = Index(tmp_path / "index")             # replays the log; needs no lock
    assert reader.n == 260 and reader.search(v[230], k=1).ids() == [recs[230]["id"]]
    # graph and supersession cover the log: a link from a log event to a segment event
    g = reader.shards[0].graph
    assert g.n == 260 and int(g.out_ptr[-1]) == reader.stats()["links"]
    assert verify(tmp_path / "index") == []


def test_flush_writes_a_segment_and_drops_the_log(base, tmp_path):
    idx, recs, v = base
    idx.add(recs[200:260], v[200:260])
    before = idx.search(v[:20], k=5)
    entry = idx.flush()
    assert entry["n"] == 60 and idx.stats()["segments"] == 2 and idx.stats()["memtable_events"] == 0
    after = Index(tmp_path / "index").search(v[:20], k=5)
    assert [before.ids(i) for i in range(20)] == [after.ids(i) for i in range(20)]
    names = sorted(os.listdir(tmp_path / "index" / "shard-000"))
    assert names == ["MANIFEST.json", "seg-000001", "seg-000002", "wal-000002.log"]
    assert idx.flush() is None                      # nothing left to flush
    assert verify(tmp_path / "index") == []


def test_add_existing_id_error_skip_or_update(base, tmp_path):
    idx, recs, v = base
    from fastctx.errors import CorpusError
    with pytest.raises(CorpusError, match=recs[3]["id"]):
        idx.add(recs[3:4], v[3:4])
    rep = idx.add(recs[:10], v[:10], on_existing="upsert")     # identical: skipped
    assert rep.skipped == 10 and rep.n_events == 0 and idx.n == 200
    new = dict(recs[3], text="version two")
    rep = idx.add([new], v[3:4], on_existing="upsert")
    assert rep.updated == 1 and idx.n == 200
    for i in (idx, Index(tmp_path / "index")):
        hits = i.search(v[3], k=3).events()
        assert hits[0].id == recs[3]["id"] and hits[0].text == "version two"
        assert sorted(live_ids(i)).count(recs[3]["id"]) == 1
    idx.flush()
    idx.compact(force=True)
    r = Index(tmp_path / "index")
    assert r.n == 200 and sorted(live_ids(r)) == sorted(x["id"] for x in recs[:200])
    assert r.search(v[3], k=1).events()[0].text == "version two"
    assert r.shards[0].n == 200                     # the old version was dropped for good


def test_delete_hides_everywhere_and_compaction_drops(base, tmp_path):
    idx, recs, v = base
    gone = [recs[i]["id"] for i in (10, 11, 12, 150)]
    assert idx.delete(gone + ["no-such-id"]) == 4
    assert idx.delete(gone) == 0                    # already gone
    def check(i):
        assert i.n == 196
        for q in (10, 11, 12, 150):
            assert recs[q]["id"] not in i.search(v[q], k=20).ids()
        for q in range(0, 200, 7):
            ans = i.query(v[q], budget_tokens=100_000)
            assert not set(gone) & {e.id for e in ans.events}
            assert not any(any(g in (e.why or "") for g in gone) for e in ans.events)
            cur = i.query(v[q], type="current", budget_tokens=100_000)
            assert not set(gone) & {e.id for e in cur.events}
            assert not set(gone) & {e.superseded_by for e in cur.events}
        assert sh_mask_ok(i)
    def sh_mask_ok(i):
        sh = i.shards[0]
        return sh.deleted_mask.dtype == np.uint8 and int(sh.deleted_mask.sum()) == sh.n - 196
    check(idx)
    check(Index(tmp_path / "index"))
    idx.flush()
    check(Index(tmp_path / "index"))
    assert Index(tmp_path / "index").stats()["deleted_rows"] == 4
    idx.compact(force=True)
    r = Index(tmp_path / "index")
    check(r)
    assert r.stats()["deleted_rows"] == 0 and r.shards[0].n == 196
    assert r.shards[0].manifest["deletes"] is None   # the overlay was pruned to nothing
    assert verify(tmp_path / "index") == []


def test_links_and_entity_ids_stable_across_compaction(tmp_path):
    recs, v, _, _ = make_records(400, seed=2, dim=DIM)
    write_corpus(tmp_path / "c", recs[:100], v[:100])
    idx, _ = build(tmp_path / "c", tmp_path / "i")
    for lo in range(100, 400, 100):
        idx.add(recs[lo:lo + 100], v[lo:lo + 100])
        idx.flush()

    def edges(i):
        sh, g = i.shards[0], i.shards[0].graph
        ident = lambda r: sh.locate(int(r))[0].ids[sh.locate(int(r))[1]]  # noqa: E731
        src = np.repeat(np.arange(g.n), np.diff(g.out_ptr))
        return sorted((ident(a), ident(b), int(t)) for a, b, t in zip(src, g.out_dst, g.out_type))

    def ents(i):
        sh = i.shards[0]
        return {name: int(sh.lookup_entities(np.array([__import__("fastctx.columns").columns.key64(name)],
                                                       np.uint64))[0])
                for name in {e for r in recs for e in r["entities"]}}
    e0, n0 = edges(idx), ents(idx)
    assert len(e0) > 100 and idx.stats()["segments"] == 4
    assert idx.compact(force=True) == [(0, 4)]
    r = Index(tmp_path / "i")
    assert r.stats()["segments"] == 1 and edges(r) == e0 and ents(r) == n0
    assert r.shards[0].supersession[0].max() >= 0


# ------------------------------------------------------------------------------------ compaction policy
def test_policy_is_a_pure_function_of_metadata():
    P = CompactionPolicy(small_rows=100, max_rows=1000, min_run=3, max_segments=8, deleted_ratio=0.2)
    m = lambda *ns: [SegmentMeta(n, 0) for n in ns]  # noqa: E731
    assert compaction.plan(m(), P) == []
    assert compaction.plan(m(5000, 10, 10), P) == []                     # run of 2 < min_run
    assert compaction.plan(m(5000, 10, 10, 10), P) == [(1, 4)]
    assert compaction.plan(m(10, 10, 10, 5000, 10, 10, 10), P) == [(0, 3), (4, 7)]
    assert compaction.plan(m(10, 10, 10), P, force=False) == [(0, 3)]
    assert compaction.plan(m(600, 600), P, force=True) == []              # would exceed max_rows
    assert compaction.plan(m(400, 400, 400), P, force=True) == [(0, 2)]
    assert compaction.plan(m(*[10] * 9), P) == [(0, 9)]
    # a heavily deleted large segment is rewritten alone
    assert compaction.plan([SegmentMeta(5000, 0), SegmentMeta(900, 300)], P) == [(1, 2)]
    # only adjacent segments, disjoint ranges, ascending
    rng = np.random.default_rng(0)
    for _ in range(300):
        metas = [SegmentMeta(int(n), int(d)) for n, d in zip(rng.integers(1, 400, 12), rng.integers(0, 50, 12))]
        force = bool(rng.integers(2))
        snapshot = list(metas)
        runs = compaction.plan(metas, P, force=force)
        assert metas == snapshot and runs == compaction.plan(snapshot, P, force=force)   # pure
        flat = [i for a, b in runs for i in range(a, b)]
        assert flat == sorted(set(flat)) and all(b - a >= 1 for a, b in runs)
        assert all(sum(metas[i].live for i in range(a, b)) <= P.max_rows for a, b in runs)


def test_churn_keeps_memory_and_recall(tmp_path):
    """Many update / delete rounds with flushes and compactions: rows on disk, segments and the
    overlay stay bounded, and every live event is still its own nearest neighbour."""
    n = 300
    recs, v, _, _ = make_records(n, seed=5, dim=DIM)
    write_corpus(tmp_path / "c", recs, v)
    idx, _ = build(tmp_path / "c", tmp_path / "i")
    idx.compaction = CompactionPolicy(small_rows=10_000, max_rows=100_000, min_run=3)
    rng = np.random.default_rng(1)
    current = {r["id"]: (r, v[i]) for i, r in enumerate(recs)}
    for rnd in range(12):
        pick = rng.choice(n, 40, replace=False)
        upd = [dict(recs[i], text=f"round {rnd}") for i in pick[:30]]
        nv = unit_rows(v[pick[:30]] + 0.01 * rnd)
        idx.upsert(upd, nv)
        for r, x in zip(upd, nv):
            current[r["id"]] = (r, x)
        dele = [recs[i]["id"] for i in pick[30:]]
        idx.delete(dele)
        for d in dele:
            current.pop(d, None)
        back = [i for i in range(n) if recs[i]["id"] not in current][:5]
        if back:
            idx.upsert([recs[i] for i in back], v[back])
            for i in back:
                current[recs[i]["id"]] = (recs[i], v[i])
        idx.flush()
        idx.compact()
    r = Index(tmp_path / "i")
    sh = r.shards[0]
    assert r.n == len(current) and sorted(live_ids(r)) == sorted(current)
    assert r.stats()["segments"] <= 4
    assert sh.n <= len(current) + 4 * 45            # dead rows bounded by the last few flushes
    assert len(sh.overlay) <= 4 * 45
    ids = list(current)
    h = r.search(np.stack([current[i][1] for i in ids]), k=1)
    assert sum(h.ids(j) == [ids[j]] for j in range(len(ids))) >= 0.99 * len(ids)
    assert all(r.event(0, int(h.rows[j, 0])).text == current[ids[j]][0].get("text")
               for j in range(len(ids)) if h.ids(j) == [ids[j]])
    assert verify(tmp_path / "i") == []


# ------------------------------------------------------------------------------------ readers and the lock
def test_one_writer_many_readers(base, tmp_path):
    idx, recs, v = base
    idx.add(recs[200:201], v[200:201])
    with pytest.raises(IndexLockedError, match="LOCK"):
        Index(tmp_path / "index", writable=True)
    other = Index(tmp_path / "index")
    with pytest.raises(IndexLockedError):
        other.delete([recs[0]["id"]])
    code = ("import sys; from fastctx.index import Index\n"
            "try:\n Index(sys.argv[1], writable=True)\nexcept Exception as e:\n print(type(e).__name__, e); sys.exit(3)")
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "index")], capture_output=True, text=True)
    assert res.returncode == 3 and "IndexLockedError" in res.stdout, res
    assert Index(tmp_path / "index").n == 201      # readers are never refused
    idx.close()
    w = Index(tmp_path / "index", writable=True)   # the lock is free again
    assert w.writable and w.n == 201


def test_pinned_reader_survives_flush_compaction_and_gc(base, tmp_path):
    idx, recs, v = base
    idx.add(recs[200:300], v[200:300])
    reader = Index(tmp_path / "index")
    ids_before = reader.search(v[:50], k=3)
    expect = [ids_before.ids(i) for i in range(50)]
    idx.flush()
    idx.delete([recs[0]["id"]])
    idx.flush()
    idx.compact(force=True)
    assert not (tmp_path / "index" / "shard-000" / "seg-000001").exists()   # removed by GC
    h = reader.search(v[:50], k=3)                  # the pinned version, files unlinked
    assert [h.ids(i) for i in range(50)] == expect
    assert [e.text for e in h.events(3)] == [e.text for e in ids_before.events(3)]
    reader.query(v[5])
    assert recs[0]["id"] in reader.search(v[0], k=1).ids()
    reader.refresh()
    assert recs[0]["id"] not in reader.search(v[0], k=3).ids() and reader.n == 299


# ------------------------------------------------------------------------------------ damage
def _wal(path: Path) -> Path:
    m = json.loads((path / "shard-000" / "MANIFEST.json").read_text())
    return path / "shard-000" / m["wal"][-1]


def test_torn_log_tail_is_ignored_then_truncated(base, tmp_path, caplog):
    idx, recs, v = base
    idx.add(recs[200:210], v[200:210])
    idx.add(recs[210:220], v[210:220])
    idx.close()
    wal = _wal(tmp_path / "index")
    data = wal.read_bytes()
    for cut in (len(data) - 1, len(data) - 300, len(data) - len(data) // 3):
        wal.write_bytes(data[:cut])                 # the second record torn at various points
        r = Index(tmp_path / "index")
        assert r.n == 210 and wal.stat().st_size == cut          # readers do not repair
        assert any("torn tail" in n for n in r.shards[0].wal_notes)
    r = CliRunner().invoke(main, ["verify", str(tmp_path / "index")])
    assert r.exit_code == 0 and "note:" in r.output and "torn tail" in r.output   # shown, not a failure
    wal.write_bytes(data + b"FCW2\x00\x10")          # a header cut short
    with caplog.at_level("WARNING", logger="fastctx.wal"):
        w = Index(tmp_path / "index", writable=True)
    assert w.n == 220 and wal.stat().st_size == len(data)        # the writer truncates, and says so
    assert any("torn tail" in m and "6 bytes dropped" in m for m in caplog.messages)
    w.add(recs[220:221], v[220:221])
    w.close()
    assert Index(tmp_path / "index").n == 221 and verify(tmp_path / "index") == []


def test_damaged_log_middle_is_corruption(base, tmp_path):
    idx, recs, v = base
    idx.add(recs[200:210], v[200:210])
    idx.add(recs[210:220], v[210:220])
    idx.close()
    wal = _wal(tmp_path / "index")
    b = bytearray(wal.read_bytes())
    b[40] ^= 0x01                                     # inside the first record
    wal.write_bytes(bytes(b))
    with pytest.raises(CorruptIndexError, match=str(wal)):
        Index(tmp_path / "index")
    problems = verify(tmp_path / "index")
    assert len(problems) == 1 and str(wal) in problems[0]
    res = CliRunner().invoke(main, ["verify", str(tmp_path / "index")])
    assert res.exit_code == 1 and str(wal) in res.stderr


@pytest.mark.parametrize("name", ["link_dst.npy", "seq.npy", "chash.npy", "vectors.npy", "payload.bin", "id_keys.npy"])
def test_flipped_byte_in_a_flushed_segment_is_named(base, tmp_path, name):
    idx, recs, v = base
    idx.add(recs[200:260], v[200:260])
    idx.flush()
    idx.close()
    f = tmp_path / "index" / "shard-000" / "seg-000002" / name
    b = bytearray(f.read_bytes())
    b[len(b) - 3] ^= 0x20
    f.write_bytes(bytes(b))
    problems = verify(tmp_path / "index")
    assert len(problems) == 1 and str(f) in problems[0] and "checksum" in problems[0]
    res = CliRunner().invoke(main, ["verify", str(tmp_path / "index")])
    assert res.exit_code == 1 and str(f) in res.stderr
    if name not in ("vectors.npy", "payload.bin"):   # the big ones are checked lazily (verify does)
        with pytest.raises(CorruptIndexError, match=name):
            Index(tmp_path / "index")


def test_overlay_file_damage_is_named(base, tmp_path):
    idx, recs, v = base
    idx.delete([recs[1]["id"]])
    idx.flush()
    idx.close()
    m = json.loads((tmp_path / "index" / "shard-000" / "MANIFEST.json").read_text())
    f = tmp_path / "index" / "shard-000" / m["deletes"]["name"]
    b = bytearray(f.read_bytes())
    b[-1] ^= 0xFF
    f.write_bytes(bytes(b))
    with pytest.raises(CorruptIndexError, match=m["deletes"]["name"]):
        Index(tmp_path / "index")


# ------------------------------------------------------------------------------------ CLI
def test_cli_add_is_idempotent_and_stats(base, tmp_path):
    idx, recs, v = base
    idx.close()
    write_corpus(tmp_path / "more", recs[150:300], v[150:300])  # 50 already there, 100 new
    runner = CliRunner()
    res = runner.invoke(main, ["add", str(tmp_path / "index"), str(tmp_path / "more"), "--batch", "40"])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines() == ["acked 0 (40 already present)", "acked 30 (50 already present)",
                                       "acked 70 (50 already present)", "acked 100 (50 already present)"]
    s = json.loads(runner.invoke(main, ["stats", str(tmp_path / "index"), "--json"]).output)
    assert s["events"] == 300 and s["segments"] == 2
    res = runner.invoke(main, ["add", str(tmp_path / "index"), str(tmp_path / "more"), "--batch", "100"])
    assert res.exit_code == 0 and res.output.splitlines() == ["acked 0 (100 already present)",
                                                              "acked 0 (150 already present)"]
    s = json.loads(runner.invoke(main, ["stats", str(tmp_path / "index"), "--json"]).output)
    assert s["events"] == 300 and s["segments"] == 2          # nothing new: no new segment
    # a changed event is an update
    changed = [dict(r) for r in recs[150:300]]
    changed[0]["text"] = "changed"
    write_corpus(tmp_path / "more2", changed, v[150:300])
    res = runner.invoke(main, ["add", str(tmp_path / "index"), str(tmp_path / "more2"), "--no-flush"])
    assert res.exit_code == 0 and res.output.splitlines() == ["acked 1 (1 updated, 149 already present)"]
    r = Index(tmp_path / "index")
    assert r.n == 300 and r.search(v[150], k=1).events()[0].text == "changed"
    # a second writer is refused with a clear error
    w = Index(tmp_path / "index", writable=True)
    res = runner.invoke(main, ["add", str(tmp_path / "index"), str(tmp_path / "more")])
    assert res.exit_code == 1 and "lock" in res.output.lower()
    w.close()


def test_empty_created_index_takes_adds(tmp_path):
    idx = Index.create(tmp_path / "i", DIM)
    assert idx.n == 0 and verify(tmp_path / "i") == []
    v = vecs(3, seed=9)
    idx.add([event(0, kind="decision", entities=["decision:x"]),
             event(1, kind="decision", entities=["decision:x"], time=T0 + 5 * HOUR)], v[:2])
    assert idx.query(v[0], type="current").current.id == "e000001"
    idx.delete(["e000001"])
    assert idx.query(v[0], type="current").current.id == "e000000"
    idx.flush()
    assert Index(tmp_path / "i").query(v[0], type="current").current.id == "e000000"


def test_auto_flush_bounds_the_log_under_churn(base, tmp_path):
    idx, recs, v = base
    idx.memtable_max_rows = 50
    for rnd in range(8):                            # the same 20 ids updated again and again
        idx.upsert([dict(r, text=f"r{rnd}") for r in recs[:20]], v[:20])
        assert idx.shards[0].log.n_added < 50
    assert idx.stats()["segments"] >= 3 and idx.n == 200
    idx.compact(force=True)
    assert idx.stats()["segments"] == 1 and idx.shards[0].n == 200
    assert len(idx._seg_cache) == 1                 # no stale segment (or its HNSW) kept in memory


READER = """
import sys, numpy as np
from fastctx.index import Index
path, rounds = sys.argv[1], int(sys.argv[2])
q = np.ones(16, np.float32)
n = 0
while n < rounds:
    idx = Index(path)
    h = idx.search(q, k=5)
    for e in h.events(0):
        assert e.text is not None or e.id
    assert idx.n in (200, 250, 300), idx.n
    idx.query(q)
    n += 1
print("ok", n)
"""


def test_readers_query_while_the_writer_flushes_and_compacts(base, tmp_path):
    idx, recs, v = base
    proc = subprocess.Popen([sys.executable, "-c", READER, str(tmp_path / "index"), "5"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rounds = 0
    while rounds == 0 or proc.poll() is None:   # the writer works for as long as the reader reads
        idx.add(recs[200:250], v[200:250])
        idx.flush()
        idx.add(recs[250:300], v[250:300])
        idx.compact(force=True)
        idx.delete([r["id"] for r in recs[200:300]])
        idx.flush()
        idx.compact(force=True)
        rounds += 1
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out.startswith("ok"), err
    assert rounds >= 1 and int(out.split()[1]) == 5


def test_flipped_byte_in_the_last_log_record_is_found_by_verify(base, tmp_path):
    idx, recs, v = base
    idx.add(recs[200:210], v[200:210])
    idx.add(recs[210:220], v[210:220])
    idx.close()
    wal = _wal(tmp_path / "index")
    b = bytearray(wal.read_bytes())
    b[-5] ^= 0x01
    wal.write_bytes(bytes(b))
    problems = verify(tmp_path / "index")
    assert len(problems) == 1 and str(wal) in problems[0] and "corrupted" in problems[0]
    assert Index(tmp_path / "index").n == 210        # readers still open it (the record is not replayed)
