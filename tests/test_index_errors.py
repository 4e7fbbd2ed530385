"""Bad input through `fastctx.index.build` on real files, corrupted / truncated / newer index
directories, rejected `Index.add` batches, and `InvalidQueryError` cases.

Every rejected build must leave the target exactly as it was (absent, or the old index byte for
byte) and no temporary directory next to it.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import fastctx.shard
from conftest import HOUR, T0, copy_index, event, leftovers, make_corpus, unit_rows, write_corpus
from fastctx import index as findex
from fastctx.corpus import TIME_MAX, EventBatch
from fastctx.errors import (CorpusError, CorruptIndexError, FastctxError, FormatError, IndexExistsError,
                            InvalidQueryError)
from fastctx.filters import Filters
from fastctx.index import MAX_K, Index, build, verify
from fastctx.params import BuildParams

SAMPLE_CORPUS = Path(fastctx.__path__[0]) / "sample_corpus"

DIM = 4


def good_events(n: int = 6) -> list:
    return [event(i, entities=[f"service:s{i % 2}", f"fn:f{i // 2}"],
                  links=[(f"e{i - 1:06d}", "reply")] if i else [], kind="decision" if i % 3 == 0 else "patch")
            for i in range(n)]


def vecs(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    return unit_rows(np.random.default_rng(seed).standard_normal((n, dim)))


def snapshot(path: Path):
    """None if absent, else {relative file: sha1} of everything under it."""
    if not path.exists():
        return None
    if path.is_file():
        return {".": hashlib.sha1(path.read_bytes()).hexdigest()}
    return {str(p.relative_to(path)): hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(path.rglob("*"))}


def assert_rejected(exc_type, corpus: Path, target: Path, *, match=None, **build_kw):
    before = snapshot(target)
    with pytest.raises(exc_type, match=match) as ei:
        build(corpus, target, **build_kw)
    assert snapshot(target) == before, "a rejected build changed the target"
    if target.parent.exists():
        assert leftovers(target.parent, target.name) == [], "a rejected build left a temp dir behind"
    return ei.value


# ------------------------------------------------------------------------------------ bad corpora
def _set(i, key, value):
    def f(evs):
        evs[i][key] = value
        return evs
    return f


def _del(i, key):
    def f(evs):
        del evs[i][key]
        return evs
    return f


def _raw(i, line):
    def f(evs):
        evs[i] = line
        return evs
    return f


BAD_EVENTS = [  # (id, mutation of good_events(6), line, field, message pattern)
    ("malformed-json", _raw(2, '{"id": "e000002", "time": '), 3, None, "JSON"),
    ("not-an-object", _raw(1, "[1, 2, 3]"), 2, None, "object"),
    ("missing-id", _del(0, "id"), 1, "id", "missing"),
    ("id-not-string", _set(0, "id", 7), 1, "id", "string"),
    ("empty-id", _set(4, "id", ""), 5, "id", "non-empty"),
    ("missing-time", _del(3, "time"), 4, "time", "missing"),
    ("time-string", _set(3, "time", "2024-01-01"), 4, "time", "integer"),
    ("time-float", _set(3, "time", 1.7e9), 4, "time", "integer"),
    ("time-bool", _set(3, "time", True), 4, "time", "integer"),
    ("time-negative", _set(3, "time", -1), 4, "time", "integer"),
    ("time-after-2200", _set(3, "time", TIME_MAX + 1), 4, "time", "integer"),
    ("missing-source", _del(1, "source"), 2, "source", "missing"),
    ("kind-empty", _set(1, "kind", ""), 2, "kind", "non-empty"),
    ("kind-not-string", _set(1, "kind", ["patch"]), 2, "kind", "string"),
    ("tokens-float", _set(5, "tokens", 1.5), 6, "tokens", "integer"),   # missing tokens are estimated
    ("tokens-negative", _set(5, "tokens", -3), 6, "tokens", "integer"),
    ("tokens-string", _set(5, "tokens", "12"), 6, "tokens", "integer"),
    ("entities-string", _set(2, "entities", "service:s0"), 3, "entities", None),
    ("entity-not-string", _set(2, "entities", ["service:s0", 5]), 3, "entities", None),
    ("links-not-list", _set(2, "links", {"to": "e000001", "type": "reply"}), 3, "links", None),
    ("link-bad-type", _set(2, "links", [{"to": "e000001", "type": "causes"}]), 3, "links", None),
    ("link-missing-to", _set(2, "links", [{"type": "reply"}]), 3, "links", None),
    ("link-to-self", _set(2, "links", [{"to": "e000002", "type": "reply"}]), 3, "links", None),
    ("text-not-string", _set(2, "text", 12), 3, "text", None),
]


@pytest.mark.parametrize("mutate, line, field, pattern", [c[1:] for c in BAD_EVENTS], ids=[c[0] for c in BAD_EVENTS])
def test_bad_event_rejected_and_nothing_written(tmp_path, mutate, line, field, pattern):
    corpus = write_corpus(tmp_path / "corpus", mutate(good_events(6)), vecs(6), dim=DIM)
    target = tmp_path / "out" / "index"
    (tmp_path / "out").mkdir()
    e = assert_rejected(CorpusError, corpus, target)
    assert str(e.file).endswith("events.jsonl") and e.line == line, (e.file, e.line, str(e))
    if field is not None:
        assert e.field and e.field.startswith(field), (e.field, str(e))
    if pattern is not None:
        assert pattern.lower() in str(e).lower()
    assert f"events.jsonl:{line}" in str(e)


def test_duplicate_ids_name_both_lines(tmp_path):
    evs = good_events(6)
    evs[4]["id"] = evs[1]["id"]
    corpus = write_corpus(tmp_path / "corpus", evs, vecs(6), dim=DIM)
    e = assert_rejected(CorpusError, corpus, tmp_path / "index")
    assert e.field == "id" and e.line == 5
    assert "2" in str(e) and "e000001" in str(e)


@pytest.mark.parametrize("case", ["rows+1", "rows-1", "dim+1", "1-D", "int-dtype", "nan", "inf", "zero-row"])
def test_bad_vectors_rejected(tmp_path, case):
    v = vecs(6)
    if case == "rows+1":
        v = vecs(7)
    elif case == "rows-1":
        v = vecs(5)
    elif case == "dim+1":
        v = vecs(6, DIM + 1)
    elif case == "1-D":
        v = vecs(6).ravel()
    elif case == "int-dtype":
        v = np.ones((6, DIM), np.int32)
    elif case == "nan":
        v[3, 1] = np.nan
    elif case == "inf":
        v[3, 1] = np.inf
    elif case == "zero-row":
        v[3] = 0
    corpus = write_corpus(tmp_path / "corpus", good_events(6), v, dim=DIM)
    e = assert_rejected(CorpusError, corpus, tmp_path / "index")
    assert str(e.file).endswith("vectors.npy"), str(e)
    if case in ("nan", "inf", "zero-row"):
        assert e.line == 4 and "events.jsonl line 4" in str(e), str(e)
    else:
        assert e.field in ("shape", "dtype"), str(e)


@pytest.mark.parametrize("meta, pattern", [
    ({"n_events": 7}, "only 6"),
    ({"n_events": 5}, "more event lines"),
    ({"format": "orgmem-v2"}, "orgmem-v1"),
    ({"dim": 0}, "dim"),
    ({"dim": ...}, "dim"),
])
def test_bad_meta_rejected(tmp_path, meta, pattern):
    corpus = write_corpus(tmp_path / "corpus", good_events(6), vecs(6), dim=DIM, meta=meta)
    if meta.get("n_events") == 5:   # vectors must agree with meta so the line count is what fails
        np.save(corpus / "vectors.npy", vecs(5))
    if meta.get("n_events") == 7:
        np.save(corpus / "vectors.npy", vecs(7))
    e = assert_rejected(CorpusError, corpus, tmp_path / "index")
    assert pattern in str(e)


def test_missing_corpus_files(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", good_events(6), vecs(6), dim=DIM)
    (corpus / "vectors.npy").unlink()   # a text-only corpus: events without text are named
    e = assert_rejected(CorpusError, corpus, tmp_path / "index")
    assert "events.jsonl:1" in str(e) and "no text" in str(e)
    (corpus / "events.jsonl").unlink()
    assert "events.jsonl" in str(assert_rejected(CorpusError, corpus, tmp_path / "index"))
    (corpus / "meta.json").unlink()   # optional: the missing events file is what is named
    assert "events.jsonl" in str(assert_rejected(CorpusError, corpus, tmp_path / "index"))


def test_empty_corpus_rejected(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", [], np.zeros((0, DIM), np.float32), dim=DIM)
    e = assert_rejected(CorpusError, corpus, tmp_path / "index")
    assert "no events" in str(e)


def test_dangling_links_dropped_and_reported(tmp_path):
    evs = good_events(6)
    evs[2]["links"].append({"to": "outside-1", "type": "references"})
    evs[5]["links"].append({"to": "outside-2", "type": "supersedes"})
    corpus = write_corpus(tmp_path / "corpus", evs, vecs(6), dim=DIM)
    idx, report = build(corpus, tmp_path / "index")
    assert report.dangling_links == 2
    assert sorted(report.dangling_examples) == [("e000002", "outside-1"), ("e000005", "outside-2")]
    assert report.n_links == 5 and idx.stats()["links"] == 5   # the 5 good reply links are kept
    assert verify(tmp_path / "index") == []
    # the dropped links do not become edges: no event is superseded by the dangling supersedes
    by, _ = idx.shards[0].supersession
    assert (by == -1).all()


def test_dangling_link_resolved_when_target_arrives_later_in_same_file(tmp_path):
    """A link may point to a later line (a late-arriving earlier event): it resolves."""
    evs = good_events(4)
    evs[0]["links"] = [{"to": "e000003", "type": "references"}]
    corpus = write_corpus(tmp_path / "corpus", evs, vecs(4), dim=DIM)
    _, report = build(corpus, tmp_path / "index")
    assert report.dangling_links == 0 and report.n_links == 4


# ------------------------------------------------------------------------------------ targets
def test_refuses_non_empty_target_and_file_target(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", good_events(6), vecs(6), dim=DIM)
    target = tmp_path / "index"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    assert_rejected(IndexExistsError, corpus, target)
    assert (target / "notes.txt").read_text() == "keep me"
    f = tmp_path / "a-file"
    f.write_text("x")
    assert_rejected(IndexExistsError, corpus, f)
    # an existing empty directory is fine
    empty = tmp_path / "empty"
    empty.mkdir()
    idx, _ = build(corpus, empty)
    assert idx.n == 6 and leftovers(tmp_path, "empty") == []


def test_failed_overwrite_keeps_the_old_index(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", good_events(6), vecs(6), dim=DIM)
    target = tmp_path / "index"
    build(corpus, target)
    bad = write_corpus(tmp_path / "bad", good_events(6), vecs(6, DIM + 1), dim=DIM)
    assert_rejected(CorpusError, bad, target, overwrite=True)
    assert Index(target).n == 6 and verify(target) == []
    # and a good overwrite replaces it whole, leaving no trash directory
    more = write_corpus(tmp_path / "more", good_events(9), vecs(9), dim=DIM)
    idx, _ = build(more, target, overwrite=True)
    assert idx.n == 9 and leftovers(tmp_path, "index") == []


@pytest.mark.parametrize("overwrite", [False, True])
def test_failure_mid_build_leaves_nothing(tmp_path, monkeypatch, overwrite):
    """An error after segment files were written (here: injected in the HNSW stage) removes the
    temporary build directory; with overwrite the old index survives untouched."""
    c = make_corpus(tmp_path / "corpus", 80, seed=2, dim=8)
    target = tmp_path / "index"
    if overwrite:
        build(c.dir, target)

    def exploding_progress(stage, done, total):
        if stage == "hnsw":
            raise RuntimeError("injected failure while building the graph")

    assert_rejected(RuntimeError, c.dir, target, overwrite=overwrite, progress=exploding_progress,
                    params=BuildParams(hnsw_min_rows=16))
    if overwrite:
        assert Index(target).stats()["hnsw_segments"] == 0


# ------------------------------------------------------------------------------------ opening damaged indexes
def _flip(path: Path, offset: int) -> None:
    b = bytearray(path.read_bytes())
    b[offset] ^= 0xFF
    path.write_bytes(bytes(b))


def _seg(index_dir: Path) -> Path:
    return index_dir / "shard-000" / "seg-000001"


def test_newer_format_version_refused(fresh_index):
    path = fresh_index.path
    marker = json.loads((path / "fastctx.json").read_text())
    marker["format_version"] = 99
    (path / "fastctx.json").write_text(json.dumps(marker))
    with pytest.raises(FormatError, match="99"):
        Index(path)
    assert any("99" in p for p in verify(path))


def test_newer_manifest_version_refused(fresh_index):
    path = fresh_index.path / "shard-000" / "MANIFEST.json"
    m = json.loads(path.read_text())
    m["format_version"] = 99
    path.write_text(json.dumps(m))
    with pytest.raises(FormatError, match="MANIFEST.json"):
        findex.open(fresh_index.path)


def test_not_an_index(tmp_path):
    with pytest.raises(FormatError):
        Index(tmp_path)
    (tmp_path / "fastctx.json").write_text("{not json")
    with pytest.raises(CorruptIndexError, match="fastctx.json"):
        Index(tmp_path)


@pytest.mark.parametrize("name", ["time.npy", "ids.bin", "bitmaps.msgpack", "post_rows.npy"])
def test_corrupted_eager_file_fails_open_naming_it(hnsw_small_index_dir, tmp_path, name):
    path = copy_index(hnsw_small_index_dir, tmp_path / "index")
    f = _seg(path) / name
    _flip(f, f.stat().st_size - 3)   # past any header: only the checksum can notice
    with pytest.raises(CorruptIndexError) as ei:
        Index(path)
    assert str(f) in str(ei.value) and "checksum" in str(ei.value)
    problems = verify(path)
    assert len(problems) == 1 and name in problems[0]


@pytest.mark.parametrize("name", ["vectors.npy", "payload.bin", "hnsw.bin"])
def test_corrupted_lazy_file_found_by_verify(hnsw_small_index_dir, tmp_path, name):
    path = copy_index(hnsw_small_index_dir, tmp_path / "index")
    assert verify(path) == []
    f = _seg(path) / name
    _flip(f, f.stat().st_size // 2)
    Index(path)  # opening does not read the big memory-mapped files
    problems = verify(path)
    assert len(problems) == 1 and str(f) in problems[0] and "checksum" in problems[0], problems
    with pytest.raises(CorruptIndexError, match=name):
        Index(path, verify=True)


@pytest.mark.parametrize("name", ["vectors.npy", "time.npy", "payload.bin", "hnsw.bin", "ids.bin"])
def test_truncated_file_fails_open_size_check(hnsw_small_index_dir, tmp_path, name):
    path = copy_index(hnsw_small_index_dir, tmp_path / "index")
    f = _seg(path) / name
    data = f.read_bytes()
    f.write_bytes(data[:-5])
    with pytest.raises(CorruptIndexError) as ei:
        Index(path)
    msg = str(ei.value)
    assert str(f) in msg and "size" in msg and str(len(data) - 5) in msg
    assert any(name in p for p in verify(path))


def test_missing_segment_file(hnsw_small_index_dir, tmp_path):
    path = copy_index(hnsw_small_index_dir, tmp_path / "index")
    (_seg(path) / "link_dst.npy").unlink()
    with pytest.raises(CorruptIndexError, match="link_dst.npy.*missing"):
        Index(path)


def _replace_consistently(index_dir: Path, name: str, write) -> Path:
    """Rewrite one segment file with `write(path)` and record its new size and checksum in the
    manifest, so only the structural checks can notice what is wrong."""
    from fastctx.format import file_entries, write_manifest
    seg = _seg(index_dir)
    write(seg / name)
    mpath = index_dir / "shard-000" / "MANIFEST.json"
    m = json.loads(mpath.read_text())
    m["segments"][0]["files"].update(file_entries(seg, [name]))
    write_manifest(mpath.parent, m)   # re-checksummed: only the structural checks may notice
    return seg / name


def _unparsable_header(data: bytes) -> bytes:
    """The .npy bytes with the shape in the header cut to `(N, 10**`: NumPy's header parser then
    raises a tokenize or syntax error, not a ValueError."""
    head_end = data.index(b"\n") + 1
    head = data[:head_end].decode("latin1")
    start = head.index("'shape': (") + len("'shape': (")
    end = head.index(")", start) + 1
    bad = head[:start] + "10**" + " " * (end - start - 4) + head[end:]
    return bad.encode("latin1") + data[head_end:]


@pytest.mark.parametrize("name, write, pattern", [
    ("time.npy", lambda p: np.save(p, np.load(p)[::-1].copy()), "not sorted by time"),
    ("time.npy", lambda p: np.save(p, np.load(p).astype(np.int32)), "dtype"),
    ("ev_ptr.npy", lambda p: np.save(p, np.load(p)[:-1].copy()), "shape"),
    ("link_ptr.npy", lambda p: np.save(p, np.r_[7, np.load(p)[1:]]), "offsets do not start at 0"),
    ("post_rows.npy", lambda p: np.save(p, np.load(p) + 10_000), "row out of range"),
    ("bitmaps.msgpack", lambda p: p.write_bytes(b"\x93\x01\x02"), "cannot decode bitmaps"),
    ("ids_off.npy", lambda p: np.save(p, np.load(p)[:-2].copy()), "shape"),
    ("time.npy", lambda p: p.write_bytes(b"not an npy file at all"), "unreadable"),
    ("time.npy", lambda p: p.write_bytes(_unparsable_header(p.read_bytes())), "unreadable"),
    ("ids_off.npy", lambda p: p.write_bytes(_unparsable_header(p.read_bytes())), "unreadable"),
])
def test_structurally_broken_file_fails_open_naming_it(fresh_index, name, write, pattern):
    path = fresh_index.path
    f = _replace_consistently(path, name, write)
    with pytest.raises(CorruptIndexError, match=pattern) as ei:
        Index(path)
    assert str(f) in str(ei.value)
    problems = verify(path)
    assert len(problems) == 1 and name in problems[0]


def test_link_outside_the_shard_found_by_verify(fresh_index):
    path = fresh_index.path
    _replace_consistently(path, "link_dst.npy", lambda p: np.save(p, np.load(p) + 10_000))
    idx = Index(path)       # links are only resolved into the graph when first needed ...
    problems = verify(path)  # ... which verify does
    assert len(problems) == 1 and "link points outside" in problems[0]
    with pytest.raises(CorruptIndexError, match="link"):
        idx.query(fresh_index.shards[0].segments[0].vectors[0])


# ------------------------------------------------------------------------------------ Index.add
def _state(idx: Index, queries):
    path = idx.path
    h = Index(path).search(queries, k=15)
    return (json.loads((path / "shard-000" / "MANIFEST.json").read_text()), snapshot(path),
            h.rows.tolist(), h.scores.tolist(), [h.ids(i) for i in range(len(queries))])


def test_add_duplicate_id_changes_nothing(fresh_index, tiny_corpus):
    idx = fresh_index
    qs = tiny_corpus.vectors[:4]
    before = _state(idx, qs)
    version = before[0]["version"]
    in_memory = idx.search(qs, k=15).ids(2)
    existing = tiny_corpus.records[17]["id"]
    recs = [event(90_000, entities=["service:new"]), {**event(0, time=T0 + 999 * HOUR), "id": existing}]
    with pytest.raises(CorpusError, match=existing):
        idx.add(EventBatch.from_records(recs, vecs(2, tiny_corpus.dim)))
    assert _state(idx, qs) == before
    assert idx.shards[0].manifest["version"] == version and idx.n == len(tiny_corpus.records)
    assert idx.search(qs, k=15).ids(2) == in_memory
    # the same through the records form of add
    with pytest.raises(CorpusError):
        idx.add(recs, vecs(2, tiny_corpus.dim))
    assert _state(idx, qs) == before
    # a batch with a duplicate inside itself is refused by validation already
    with pytest.raises(CorpusError):
        idx.add([event(90_001), event(90_001)], vecs(2, tiny_corpus.dim))
    assert _state(idx, qs) == before


def test_add_wrong_dim_changes_nothing(fresh_index, tiny_corpus):
    qs = tiny_corpus.vectors[:2]
    before = _state(fresh_index, qs)
    with pytest.raises(CorpusError, match="dim"):
        fresh_index.add([event(90_000)], vecs(1, tiny_corpus.dim + 1))
    assert _state(fresh_index, qs) == before


def test_add_good_batch_commits_one_version(fresh_index, tiny_corpus):
    idx = fresh_index
    v0 = idx.shards[0].manifest["version"]
    q = tiny_corpus.vectors[3]
    report = idx.add([event(90_000, time=T0 + 5000 * HOUR, links=[(tiny_corpus.records[3]["id"], "fixes")])],
                     q[None, :])
    assert report.n_links == 1 and report.dangling_links == 0
    for i in (idx, Index(idx.path)):
        assert i.shards[0].manifest["version"] == v0 + 1 and i.n == len(tiny_corpus.records) + 1
        assert "e090000" in i.search(q, k=2).ids()
    assert verify(idx.path) == []


def test_failed_manifest_commit_leaves_shard_usable(fresh_index, tiny_corpus, monkeypatch):
    """A flush whose manifest commit fails (disk full) changes nothing a reader can see; the retry
    commits, and files of the failed attempt that no manifest names are collected."""
    idx = fresh_index
    shard_dir = idx.path / "shard-000"
    idx.add([event(90_000)], vecs(1, tiny_corpus.dim))
    version = idx.shards[0].manifest["version"]
    before = idx.search(tiny_corpus.vectors[0], k=5).ids()

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(fastctx.shard, "write_manifest", disk_full)
        with pytest.raises(OSError):
            idx.flush()
    reader = Index(idx.path)
    assert reader.shards[0].manifest["version"] == version
    assert reader.n == idx.n == len(tiny_corpus.records) + 1
    assert reader.search(tiny_corpus.vectors[0], k=5).ids() == before
    idx.flush()                                                   # the disk has space again
    idx.add([event(90_001)], vecs(1, tiny_corpus.dim))
    assert idx.n == len(tiny_corpus.records) + 2
    named = {s["name"] for s in idx.shards[0].manifest["segments"]}
    on_disk = {p.name for p in shard_dir.iterdir() if p.name.startswith("seg-")}
    assert on_disk == named, "a segment of the failed attempt was left behind"
    assert verify(idx.path) == []


# ------------------------------------------------------------------------------------ InvalidQueryError
@pytest.mark.parametrize("k", [0, -1, MAX_K + 1, True, 2.0, "3", None])
def test_bad_k(built_index, tiny_corpus, k):
    with pytest.raises(InvalidQueryError, match="k must be"):
        built_index.search(tiny_corpus.vectors[0], k=k)


def test_k_at_the_limits(built_index, tiny_corpus):
    assert int(built_index.search(tiny_corpus.vectors[0], k=1).counts[0]) == 1
    h = built_index.search(tiny_corpus.vectors[0], k=MAX_K)
    assert int(h.counts[0]) == len(tiny_corpus.records) and h.rows.shape == (1, MAX_K)
    assert int(built_index.search(tiny_corpus.vectors[0], k=np.int64(3)).counts[0]) == 3


@pytest.mark.parametrize("case", ["dim-1", "dim+1", "3-D", "scalar", "nan", "inf", "zeros",
                                  "empty", "empty-list"])  # regression: numpy's reshape error leaked
def test_bad_query_vector(built_index, case):
    d = built_index.dim
    q = {"dim-1": np.ones(d - 1), "dim+1": np.ones(d + 1), "3-D": np.ones((1, 1, d)), "scalar": np.float32(1),
         "nan": np.full(d, np.nan), "inf": np.r_[np.inf, np.ones(d - 1)], "zeros": np.zeros(d),
         "empty": np.zeros(0), "empty-list": []}[case]
    with pytest.raises(InvalidQueryError):
        built_index.search(q, k=3)
    with pytest.raises(InvalidQueryError):
        built_index.query(q)


def test_text_query_without_encoder(built_index):
    with pytest.raises(InvalidQueryError, match="encoder"):
        built_index.search("why did payments fail", k=3)


def test_a_text_batch_holding_something_else_is_a_query_error(tmp_path):
    idx, _ = build(SAMPLE_CORPUS, tmp_path / "i")
    for batch in (["why did payments fail", 5], ["a", None]):
        with pytest.raises(InvalidQueryError, match="every query must be a string"):
            idx.search_batch(batch, k=3)


@pytest.mark.parametrize("kw", [
    {"time_from": "Jan 1st"}, {"time_to": 1.5}, {"as_of": True}, {"entities_any": "service:s1"},
    {"entities_all": [""]}, {"sources": [3]}, {"kinds": "patch"},
])
def test_bad_filter_values(built_index, tiny_corpus, kw):
    with pytest.raises(InvalidQueryError):
        Filters(**kw)
    with pytest.raises(InvalidQueryError):
        built_index.search(tiny_corpus.vectors[0], k=3, **kw)


def test_unknown_filter_key_in_dict_forms(built_index, tiny_corpus):
    with pytest.raises(InvalidQueryError, match="bogus"):
        Filters.from_dict({"bogus": 1})
    spec = {"qid": "q", "type": "chain", "filters": {"entity": ["service:s1"]}, "budget_tokens": 100}
    with pytest.raises(InvalidQueryError, match="entity"):
        built_index.query_spec(spec, tiny_corpus.vectors[0])


# regression: an unknown filter keyword raised a bare TypeError from the Filters dataclass
@pytest.mark.parametrize("call", ["search", "explain", "query"])
def test_unknown_filter_keyword(built_index, tiny_corpus, call):
    q = tiny_corpus.vectors[0]
    fn = {"search": lambda: built_index.search(q, k=3, entity=["service:s1"]),
          "explain": lambda: built_index.explain(entity=["service:s1"]),
          "query": lambda: built_index.query(q, entity=["service:s1"])}[call]
    with pytest.raises(InvalidQueryError):
        fn()


def test_filters_and_keywords_together(built_index, tiny_corpus):
    with pytest.raises(InvalidQueryError, match="not both"):
        built_index.search(tiny_corpus.vectors[0], filters=Filters(), sources=["jira"])
    with pytest.raises(InvalidQueryError, match="not both"):
        built_index.query(tiny_corpus.vectors[0], filters=Filters(), sources=["jira"])


@pytest.mark.parametrize("kw, pattern", [
    ({"direction": "up"}, "direction"),
    ({"direction": None}, "direction"),
    ({"type": "summary"}, "type"),
    ({"type": "as_of"}, "as_of"),               # an as_of query without as_of
    ({"budget_tokens": 0}, "budget"),
    ({"budget_tokens": -10}, "budget"),
    ({"budget_tokens": True}, "budget"),
    ({"budget_tokens": 12.5}, "budget"),
    ({"budget_tokens": "4000"}, "budget"),
])
def test_bad_query_arguments(built_index, tiny_corpus, kw, pattern):
    with pytest.raises(InvalidQueryError, match=pattern):
        built_index.query(tiny_corpus.vectors[0], **kw)


def test_query_is_one_at_a_time(built_index, tiny_corpus):
    with pytest.raises(InvalidQueryError, match="one query"):
        built_index.query(tiny_corpus.vectors[:2])


# regression: Index.query converted as_of with int(), truncating 1.5 and accepting True
@pytest.mark.parametrize("as_of", ["soon", 1.5, True])
def test_bad_as_of_argument(built_index, tiny_corpus, as_of):
    with pytest.raises(InvalidQueryError):
        built_index.query(tiny_corpus.vectors[0], type="as_of", as_of=as_of)


def test_good_query_answers_within_budget(built_index, tiny_corpus):
    """Positive control for the cases above: the same calls with valid arguments succeed."""
    for typ, kw in (("chain", {}), ("current", {}), ("as_of", {"as_of": T0 + 50 * HOUR})):
        for direction in ("back", "forward", "both"):
            ans = built_index.query(tiny_corpus.vectors[7], type=typ, direction=direction, budget_tokens=700, **kw)
            assert ans.events and sum(e.tokens for e in ans.events) <= 700
            if typ == "as_of":
                assert all(e.time <= T0 + 50 * HOUR for e in ans.events)
    assert built_index.query(tiny_corpus.vectors[7], budget_tokens=1).events == []   # nothing fits


def test_error_hierarchy():
    """Callers can catch every fastctx error at once, or by the builtin it refines."""
    for exc, builtin in ((CorpusError, ValueError), (InvalidQueryError, ValueError), (FormatError, ValueError),
                         (CorruptIndexError, OSError), (IndexExistsError, FileExistsError)):
        assert issubclass(exc, FastctxError) and issubclass(exc, builtin)


# ------------------------------------------------------------------------------------ empty and grown indexes
def test_created_empty_index_searches_to_nothing(tmp_path):
    idx = Index.create(tmp_path / "index", DIM)
    assert idx.n == 0 and idx.explain() == [] and idx.stats()["segments"] == 0
    h = idx.search(vecs(1)[0], k=5)
    assert int(h.counts[0]) == 0 and h.ids() == []
    with pytest.raises(IndexExistsError):
        Index.create(tmp_path / "index", DIM)


def test_verify_empty_index(tmp_path):
    Index.create(tmp_path / "index", DIM)
    assert verify(tmp_path / "index") == []


def test_query_empty_index(tmp_path):
    idx = Index.create(tmp_path / "index", DIM)
    ans = idx.query(vecs(1)[0])
    assert ans.events == [] and ans.current is None


def test_add_supersedes_across_segments(tmp_path):
    """A decision added later that supersedes one in an earlier segment becomes the current one
    (and as of a time before it, the old one still is)."""
    v = vecs(3, seed=4)
    corpus = write_corpus(tmp_path / "corpus", [event(0, kind="decision", entities=["team:x"]),
                                               event(1, kind="patch", entities=["team:x"])], v[:2], dim=DIM)
    idx, _ = build(corpus, tmp_path / "index")
    q = v[0]
    assert idx.query(q, type="current").current.id == "e000000"
    new = unit_rows(v[:1] + 1e-3)
    report = idx.add([event(5, kind="decision", entities=["team:x"], links=[("e000000", "supersedes")])], new)
    assert report.n_links == 1 and report.dangling_links == 0
    for i in (idx, Index(tmp_path / "index")):
        ans = i.query(q, type="current")
        assert ans.current.id == "e000005"
        old = next(e for e in ans.events if e.id == "e000000")
        assert old.superseded_by == "e000005" and old.superseded_at == T0 + 5 * HOUR
        assert i.query(q, type="as_of", as_of=T0 + 3 * HOUR).current.id == "e000000"
