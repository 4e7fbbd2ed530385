"""The bundled sample corpus: it is exactly what its generator writes, and it is well-formed orgmem-v1."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "make_sample_corpus.py"
SHIPPED = ROOT / "fastctx" / "sample_corpus"
FILES = ("meta.json", "events.jsonl", "vectors.npy", "queries.jsonl", "query_vectors.npy", "README.md")
LINK_TYPES = {"reply", "references", "fixes", "follow_up", "reverts", "backport_of", "supersedes"}


def _load_script():
    spec = importlib.util.spec_from_file_location("make_sample_corpus", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def corpus():
    meta = json.loads((SHIPPED / "meta.json").read_text(encoding="utf-8"))
    events = [json.loads(line) for line in (SHIPPED / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    queries = [json.loads(line) for line in (SHIPPED / "queries.jsonl").read_text(encoding="utf-8").splitlines()]
    return meta, events, queries, np.load(SHIPPED / "vectors.npy"), np.load(SHIPPED / "query_vectors.npy")


def test_shipped_files_are_what_the_script_writes(tmp_path):
    _load_script().build(tmp_path)
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(FILES)
    for name in FILES:
        stale = f"fastctx/sample_corpus/{name} is stale: rerun `python examples/make_sample_corpus.py`"
        if name.endswith(".npy"):   # vectors: numpy releases may round sums differently in the last bit
            got, shipped = np.load(tmp_path / name), np.load(SHIPPED / name)
            assert got.dtype == shipped.dtype and got.shape == shipped.shape, stale
            assert np.allclose(got, shipped, rtol=0, atol=1e-6), stale
        else:
            assert (tmp_path / name).read_bytes() == (SHIPPED / name).read_bytes(), stale


def test_no_truth_and_small():
    names = {p.name for p in SHIPPED.iterdir()}
    assert set(FILES) <= names
    assert "truth.jsonl" not in names and "planted.jsonl" not in names
    assert sum((SHIPPED / n).stat().st_size for n in FILES) < 1 << 20


def test_meta(corpus):
    meta, events, queries, vecs, qvecs = corpus
    assert meta["format"] == "orgmem-v1"
    assert meta["dim"] == 256 == vecs.shape[1] == qvecs.shape[1]
    assert meta["n_events"] == len(events) == vecs.shape[0]
    assert meta["n_queries"] == len(queries) == qvecs.shape[0]
    assert 300 <= len(events) <= 500
    assert set(meta["sources"]) == {e["source"] for e in events}
    assert set(meta["kinds"]) == {e["kind"] for e in events}
    assert meta["params"]["generator"] == "examples/make_sample_corpus.py"


def test_events(corpus):
    _, events, _, _, _ = corpus
    ids = [e["id"] for e in events]
    assert len(set(ids)) == len(ids)
    by_id = {e["id"]: e for e in events}
    row = {eid: i for i, eid in enumerate(ids)}
    for i, e in enumerate(events):
        assert set(e) == {"id", "time", "source", "kind", "tokens", "entities", "links", "text"}
        assert type(e["time"]) is int and type(e["tokens"]) is int and 50 <= e["tokens"] <= 1500
        assert isinstance(e["text"], str) and e["text"].strip()
        assert e["entities"] and all(":" in x for x in e["entities"])
        assert len(set(e["entities"])) == len(e["entities"])
        assert any(x.startswith("service:") for x in e["entities"])
        for lk in e["links"]:
            assert lk["type"] in LINK_TYPES
            target = by_id[lk["to"]]                      # exists
            assert target["time"] < e["time"]             # earlier in time
            assert row[lk["to"]] < i                      # and on an earlier line
    times = [e["time"] for e in events]                   # roughly in time order
    assert sum(a > b for a, b in zip(times, times[1:])) < len(times) // 10


def test_vectors_normalised(corpus):
    _, _, _, vecs, qvecs = corpus
    for v in (vecs, qvecs):
        assert v.dtype == np.float32 and v.flags.c_contiguous
        assert np.isfinite(v).all()
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


def test_vectors_are_the_builtin_encoder(corpus):
    from fastctx.encoder import HashingEncoder
    _, events, queries, vecs, qvecs = corpus
    enc = HashingEncoder(dim=256)
    np.testing.assert_allclose(enc.encode([e["text"] for e in events[:25]]), vecs[:25], atol=1e-6)
    np.testing.assert_allclose(enc.encode([q["text"] for q in queries]), qvecs, atol=1e-6)


def test_queries(corpus):
    _, events, queries, _, _ = corpus
    qids = [q["qid"] for q in queries]
    assert len(set(qids)) == len(qids)
    t_min, t_max = min(e["time"] for e in events), max(e["time"] for e in events)
    entities = {x for e in events for x in e["entities"]}
    for q in queries:
        assert q["type"] in {"chain", "current", "as_of"} and q["text"]
        assert q["direction"] in {"back", "forward", "both"}
        assert type(q["budget_tokens"]) is int and q["budget_tokens"] > 0
        assert set(q["filters"]) <= {"entities_any", "entities_all", "sources", "kinds", "time_from", "time_to"}
        assert set(q["filters"].get("entities_any", [])) <= entities
        if q["type"] == "as_of":
            assert type(q["as_of"]) is int and t_min <= q["as_of"] <= t_max
        else:
            assert q["as_of"] is None
    assert {q["type"] for q in queries} == {"chain", "current", "as_of"}


def test_planted_structure(corpus):
    _, events, _, _, _ = corpus
    # decision keys with several versions, most linked by `supersedes`
    versions: dict[str, list] = {}
    for e in events:
        if e["kind"] == "decision":
            for x in e["entities"]:
                if x.startswith("decision:"):
                    versions.setdefault(x, []).append(e)
    multi = {k: v for k, v in versions.items() if len(v) >= 2}
    assert 4 <= len(multi) <= 6
    sup = sum(lk["type"] == "supersedes" for e in events for lk in e["links"])
    later = sum(len(v) - 1 for v in multi.values())
    assert 0 < sup < later                                # most explicit, some implicit
    # rare entities really are rare, common ones common
    counts: dict[str, int] = {}
    for e in events:
        for x in e["entities"]:
            counts[x] = counts.get(x, 0) + 1
    assert counts["service:payments"] > 50
    assert counts["ticket:PAY-1432"] <= 6 and counts["fn:retry_capture_v2"] <= 8
