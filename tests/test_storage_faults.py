"""Storage faults: log records above the size limit, writers and overwrites racing, manifests
naming paths outside the index, damaged partition files, fsync of published directories, FIFOs
in place of input files, and `tokens` claims below the text's size. Each test is a regression
test for one fault found by probing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import fastctx.format as fmt
import fastctx.index as index_mod
from fastctx import wal
from fastctx.errors import CorruptIndexError, IndexLockedError, InvalidQueryError
from fastctx.format import manifest_checksum, read_manifest, write_manifest
from fastctx.index import Index, build, verify

from conftest import event, unit_rows

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "from fastctx.cli import main; main()"]


def vecs(n: int, dim: int) -> np.ndarray:
    return unit_rows(np.random.default_rng(n).standard_normal((n, dim)))


def _manifest(path: Path) -> dict:
    return json.loads((path / "shard-000" / "MANIFEST.json").read_text())


# ------------------------------------------------------------------------------------ WAL limit
def test_add_above_record_limit_is_refused_before_acknowledging(fresh_index, monkeypatch, tiny_corpus):
    idx, n0 = fresh_index, fresh_index.n
    monkeypatch.setattr(wal, "MAX_RECORD", 2_000)          # instead of a 2 GiB write
    big = [event(90_000 + i) for i in range(40)]
    with pytest.raises(InvalidQueryError, match="record limit"):
        idx.add(big, vecs(40, tiny_corpus.dim))
    assert idx.n == n0
    idx.add(big[:2], vecs(2, tiny_corpus.dim))              # small batches still go through
    idx.close()
    monkeypatch.undo()
    again = Index(fresh_index.path)                         # replay keeps every acknowledged event
    assert again.n == n0 + 2 and len(again.get([big[0]["id"], big[1]["id"]])) == 2
    assert verify(fresh_index.path) == []


def test_replay_refuses_a_record_it_would_call_oversized(tmp_path):
    # a record whose length field is above the limit is never written by encode ...
    with pytest.raises(InvalidQueryError):
        old = wal.MAX_RECORD
        try:
            wal.MAX_RECORD = 10
            wal.encode({"t": "del", "seq": 0, "ids": ["x" * 50]})
        finally:
            wal.MAX_RECORD = old
    # ... and one that fits round-trips
    p = tmp_path / "w.log"
    w = wal.WalWriter(p)
    w.append([wal.encode({"t": "del", "seq": 0, "ids": ["a"]})])
    w.close()
    assert wal.scan(p).records == [{"t": "del", "seq": 0, "ids": ["a"]}]


# ------------------------------------------------------------------------------------ writers
HOLDER = textwrap.dedent("""
    import sys
    from fastctx.index import Index
    import numpy as np
    from conftest import event, unit_rows
    idx = Index(sys.argv[1])
    idx.add([event(80_000 + i) for i in range(100)],
            unit_rows(np.random.default_rng(0).standard_normal((100, int(sys.argv[2])))))
    print("ready", flush=True)
    sys.stdin.readline()
    idx.close()
""")


def test_overwrite_refused_while_a_writer_holds_the_lock(fresh_index, tiny_corpus, tmp_path):
    path = fresh_index.path
    fresh_index.close()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), str(tiny_corpus.dim)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(IndexLockedError, match="LOCK"):
            build(tiny_corpus.dir, path, overwrite=True)
        cli = subprocess.run([*CLI, "build", str(tiny_corpus.dir), str(path),
                              "--overwrite"], capture_output=True, text=True, env=env, timeout=300)
        assert cli.returncode != 0 and "Traceback" not in cli.stderr and "lock" in cli.stderr.lower()
        assert verify(path) == []
        assert Index(path).n == len(tiny_corpus.records) + 100      # the writer's events are there
        assert not [p for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.")]
    finally:
        holder.communicate("\n", timeout=60)
    assert holder.returncode == 0
    build(tiny_corpus.dir, path, overwrite=True)                     # lock free: allowed
    assert Index(path).n == len(tiny_corpus.records) and verify(path) == []


def test_writer_never_commits_over_a_newer_manifest(fresh_index, tiny_corpus):
    idx = fresh_index
    idx.add([event(70_000)], vecs(1, tiny_corpus.dim))
    d = idx.path / "shard-000"
    m = read_manifest(d)
    write_manifest(d, {**m, "version": m["version"] + 7})           # someone else published
    before = (d / "MANIFEST.json").read_bytes()
    with pytest.raises(IndexLockedError, match="changed under this writer"):
        idx.flush()
    assert (d / "MANIFEST.json").read_bytes() == before


# ------------------------------------------------------------------------------------ manifest trust
def _rewrite(path: Path, **changes) -> None:
    write_manifest(path / "shard-000", {**_manifest(path), **changes})


@pytest.mark.parametrize("field, value", [
    ("wal", ["../../outside.log"]), ("wal", ["/tmp/outside.log"]), ("wal", [".."]),
    ("deletes", {"name": "../outside.npy", "size": 0, "crc32": 0}),
])
def test_manifest_names_outside_the_index_are_refused(fresh_index, tmp_path, field, value):
    path = fresh_index.path
    fresh_index.close()
    outside = tmp_path / "outside.log"
    outside.write_bytes(b"precious")
    _rewrite(path, **{field: value})
    with pytest.raises(CorruptIndexError, match="not a plain name"):
        Index(path).add([event(60_000)], vecs(1, 16))
    assert verify(path) and outside.read_bytes() == b"precious"


def test_segment_name_with_separator_refused(fresh_index):
    path = fresh_index.path
    m = _manifest(path)
    m["segments"][0]["name"] = "../shard-000/" + m["segments"][0]["name"]
    write_manifest(path / "shard-000", m)
    with pytest.raises(CorruptIndexError, match="segment name"):
        Index(path)


def test_symlinked_log_leading_outside_refused(fresh_index, tmp_path):
    path = fresh_index.path
    fresh_index.close()
    outside = tmp_path / "victim.log"
    outside.write_bytes(b"precious")
    (path / "shard-000" / "wal-000099.log").symlink_to(outside)
    _rewrite(path, wal=["wal-000099.log"])
    with pytest.raises(CorruptIndexError, match="symbolic link"):
        Index(path).add([event(60_001)], vecs(1, 16))
    assert outside.read_bytes() == b"precious"


def test_marker_shard_names_confined(fresh_index):
    p = fresh_index.path / "fastctx.json"
    marker = json.loads(p.read_text())
    p.write_text(json.dumps({**marker, "shards": ["../elsewhere"]}))
    with pytest.raises(CorruptIndexError, match="shard name"):
        Index(fresh_index.path)


def test_manifest_checksum_catches_edits(fresh_index):
    path = fresh_index.path
    mpath = path / "shard-000" / "MANIFEST.json"
    m = json.loads(mpath.read_text())
    assert m["checksum"] == manifest_checksum(m)
    m["n_rows"] -= 1                                  # would hide an acknowledged event
    mpath.write_text(json.dumps(m))
    with pytest.raises(CorruptIndexError, match="checksum"):
        Index(path)
    assert any("checksum" in p for p in verify(path))


# ------------------------------------------------------------------------------------ partition files
@pytest.fixture
def partitioned(tiny_corpus, tmp_path):
    idx, _ = build(tiny_corpus.dir, tmp_path / "pindex", shards=2)
    idx.close()
    return tmp_path / "pindex"


def test_partition_sidecar_checksummed_and_verified(partitioned):
    d = partitioned / "shard-001"
    meta = json.loads((d / "PARTITION.json").read_text())
    assert meta["npz"]["size"] == (d / "PARTITION.npz").stat().st_size
    assert meta["checksum"] == manifest_checksum(meta)
    assert not list(d.glob("*.part")) and not list(d.glob("*.tmp"))
    assert verify(partitioned) == []


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "json-edit", "json-junk", "missing"])
def test_damaged_partition_files_reported_not_raised(partitioned, damage):
    d = partitioned / "shard-000"
    npz, js = d / "PARTITION.npz", d / "PARTITION.json"
    if damage == "flip":
        b = bytearray(npz.read_bytes())
        b[len(b) // 2] ^= 0xFF
        npz.write_bytes(bytes(b))
    elif damage == "truncate":
        npz.write_bytes(npz.read_bytes()[:100])
    elif damage == "garbage":
        npz.write_bytes(b"PK\x03\x04 not a zip at all")
    elif damage == "json-edit":
        js.write_text(js.read_text().replace('"shard": 0', '"shard": 1'))
    elif damage == "json-junk":
        js.write_text("[" * 100_000)
    else:
        npz.unlink()
    problems = verify(partitioned)
    assert len(problems) == 1 and "PARTITION" in problems[0]


# ------------------------------------------------------------------------------------ durability
def test_publish_and_create_fsync_the_parent(tiny_corpus, tmp_path, monkeypatch):
    synced = []
    real = fmt.fsync_dir
    monkeypatch.setattr(fmt, "fsync_dir", lambda p: (synced.append(Path(p).resolve()), real(p)))
    monkeypatch.setattr(index_mod, "fsync_dir", lambda p: (synced.append(Path(p).resolve()), real(p)))
    build(tiny_corpus.dir, tmp_path / "a" / "index")
    assert (tmp_path / "a").resolve() in synced                     # the rename into place
    synced.clear()
    build(tiny_corpus.dir, tmp_path / "a" / "index", overwrite=True)
    assert (tmp_path / "a").resolve() in synced
    synced.clear()
    Index.create(tmp_path / "b" / "new", 8).close()
    assert (tmp_path / "b").resolve() in synced and (tmp_path / "b" / "new").resolve() in synced


# ------------------------------------------------------------------------------------ inputs
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_meta_json_is_refused_without_hanging(tiny_corpus, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "events.jsonl").write_bytes((tiny_corpus.dir / "events.jsonl").read_bytes())
    os.mkfifo(corpus / "meta.json")
    r = subprocess.run([*CLI, "build", str(corpus), str(tmp_path / "i")],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode != 0 and "meta.json" in r.stderr and "regular file" in r.stderr
    assert "Traceback" not in r.stderr


def test_fifo_manifest_is_refused(fresh_index):
    d = fresh_index.path / "shard-000"
    (d / "MANIFEST.json").unlink()
    os.mkfifo(d / "MANIFEST.json")
    with pytest.raises(CorruptIndexError, match="regular file"):
        Index(fresh_index.path)


def test_tokens_claim_below_the_text_is_raised(tmp_path):
    text = "word " * 800                                           # 4000 characters
    recs = [{"id": "big", "time": 1_700_000_000, "source": "s", "kind": "k", "tokens": 1, "text": text},
            {"id": "small", "time": 1_700_000_001, "source": "s", "kind": "k", "tokens": 1, "text": "tiny"}]
    idx = Index.create(tmp_path / "i", encoder="hashing")
    idx.add(recs)
    tokens = {e.id: e.tokens for e in idx.get(["big", "small"])}
    assert tokens == {"big": 500, "small": 1}                      # at most 8 characters a token
    ans = idx.query("word", budget_tokens=50, fill=True)
    assert "big" not in [e.id for e in ans.events]
    assert sum(e.tokens for e in ans.events) <= 50
