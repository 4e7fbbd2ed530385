"""Tests of fastctx.corpus: reading and validating orgmem-v1 corpora (shared/orgmem/FORMAT.md)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastctx.corpus import (LINK_TYPES, USER_LINK_CODE, TIME_MAX, TOKENS_MAX, EventBatch, read_events, read_meta,
                            read_queries, validate_vectors)
from fastctx.errors import CorpusError

ORGMEM = Path(__file__).resolve().parents[1].parent / "shared" / "orgmem"
DIM = 4


# ------------------------------------------------------------------------------------ helpers
def ev(i: int, **kw) -> dict:
    d = {"id": f"e{i:03d}", "time": 1_700_000_000 + i, "source": "jira", "kind": "decision",
         "tokens": 10 + i, "entities": [f"service:s{i % 2}"], "links": []}
    d.update(kw)
    return d


def unit_vectors(n: int, dim: int = DIM) -> np.ndarray:
    rng = np.random.default_rng(n)
    v = rng.standard_normal((n, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def write_corpus(root: Path, events=None, *, vectors=None, meta=None, queries=None, query_vectors=None,
                 tail: str = "\n") -> Path:
    """Write a corpus folder. `events`: dicts or raw strings (one line each). `meta`: overrides
    (a key mapped to ... is deleted). Queries are written only if given."""
    root.mkdir(parents=True, exist_ok=True)
    events = [ev(i) for i in range(3)] if events is None else events
    lines = [e if isinstance(e, str) else json.dumps(e) for e in events]
    (root / "events.jsonl").write_text("\n".join(lines) + (tail if lines else ""), encoding="utf-8")
    n = len(lines)
    np.save(root / "vectors.npy", unit_vectors(n) if vectors is None else vectors)
    m = {"format": "orgmem-v1", "name": "test", "dim": DIM, "n_events": n, "sources": ["jira"],
         "kinds": ["decision"], "params": {}}
    if queries is not None:
        m["n_queries"] = len(queries)
        qlines = [q if isinstance(q, str) else json.dumps(q) for q in queries]
        (root / "queries.jsonl").write_text("".join(x + "\n" for x in qlines), encoding="utf-8")
        np.save(root / "query_vectors.npy", unit_vectors(len(queries)) if query_vectors is None else query_vectors)
    for k, v in (meta or {}).items():
        if v is ...:
            m.pop(k, None)
        else:
            m[k] = v
    (root / "meta.json").write_text(json.dumps(m), encoding="utf-8")
    return root


def check(exc: pytest.ExceptionInfo, file: str, line, field) -> None:
    """The error names the file (path ends with `file`), the line and the field, in its
    attributes and in its message."""
    e = exc.value
    assert isinstance(e, CorpusError)
    assert e.file is not None and str(e.file).endswith(file), (e.file, str(e))
    assert e.line == line, (e.line, str(e))
    assert e.field == field, (e.field, str(e))
    msg = str(e)
    assert file in msg
    if line is not None:
        assert f":{line}" in msg
    if field is not None:
        assert f"field '{field}'" in msg


# ------------------------------------------------------------------------------------ round trip
def test_round_trip_good_corpus(tmp_path):
    events = [
        ev(0, entities=["service:a", "fn:x", "service:a"], text="hello", extra_field={"k": [1, 2]}),
        ev(1, entities=[], links=[{"to": "e000", "type": "references"}], text=None),
        ev(2, links=[{"to": "e000", "type": "supersedes"}, {"to": "e001", "type": "reply"},
                     {"to": "e000", "type": "supersedes"}], source="github", kind="patch"),
        {"id": "e003", "time": 0, "source": "slack", "kind": "standup", "tokens": 0},   # optional keys missing
        ev(4, links=[{"to": "e999", "type": "fixes", "note": "ignored"}], tokens=TOKENS_MAX, time=TIME_MAX),
    ]
    vec = unit_vectors(5)
    root = write_corpus(tmp_path / "c", events, vectors=vec)
    seen = []
    b = read_events(root, progress=seen.append)
    assert len(b) == 5 and b.dim == DIM
    assert b.ids == ["e000", "e001", "e002", "e003", "e004"]
    assert b.times.dtype == np.int64 and b.times.tolist() == [1_700_000_000, 1_700_000_001, 1_700_000_002, 0, TIME_MAX]
    assert b.tokens.dtype == np.int32 and b.tokens.tolist() == [10, 11, 12, 0, TOKENS_MAX]
    assert b.sources == ["jira", "jira", "github", "slack", "jira"]
    assert b.kinds == ["decision", "decision", "patch", "standup", "decision"]
    assert b.entity_ptr.dtype == np.int64 and b.entity_ptr.tolist() == [0, 2, 2, 3, 3, 4]
    assert b.entity_names == ["service:a", "fn:x", "service:s0", "service:s0"]
    assert b.entities(0) == ["service:a", "fn:x"] and b.entities(1) == []
    assert b.link_src.dtype == np.int64 and b.link_src.tolist() == [1, 2, 2, 4]
    assert b.link_to == ["e000", "e000", "e001", "e999"]
    assert b.link_type.dtype == np.int8
    assert [LINK_TYPES[c] for c in b.link_type] == ["references", "supersedes", "reply", "fixes"]
    assert b.texts == ["hello", None, None, None, None]
    assert b.attrs == [{"extra_field": {"k": [1, 2]}}, {}, {}, {}, {}]
    assert b.vectors.dtype == np.float32 and b.vectors.flags.c_contiguous
    assert isinstance(b.vectors, np.memmap) and not b.vectors.flags.writeable   # not copied
    np.testing.assert_array_equal(np.asarray(b.vectors), vec)
    assert seen == [5]


def test_trailing_blank_lines_allowed(tmp_path):
    root = write_corpus(tmp_path / "c", tail="\n\n  \n")
    assert len(read_events(root)) == 3


def test_no_final_newline(tmp_path):
    root = write_corpus(tmp_path / "c", tail="")
    assert read_events(root).ids == ["e000", "e001", "e002"]


def test_empty_corpus(tmp_path):
    root = write_corpus(tmp_path / "c", [], vectors=np.zeros((0, DIM), np.float32))
    b = read_events(root)
    assert len(b) == 0 and b.vectors.shape == (0, DIM) and b.entity_ptr.tolist() == [0]


def test_progress_every_10k(tmp_path):
    n = 20_001
    lines = ['{"id":"e%d","time":1,"source":"s","kind":"k","tokens":1,"entities":[],"links":[]}' % i
             for i in range(n)]
    root = write_corpus(tmp_path / "c", lines, vectors=np.tile(np.eye(DIM, dtype=np.float32)[:1], (n, 1)))
    seen = []
    assert len(read_events(root, progress=seen.append)) == n
    assert seen == [10_000, 20_000, n]


def test_unnormalised_vectors_are_normalised(tmp_path):
    v = unit_vectors(3)
    v[1] *= 3.0
    root = write_corpus(tmp_path / "c", vectors=v.astype(np.float64))
    b = read_events(root)
    assert b.vectors.dtype == np.float32 and b.vectors.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(b.vectors, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(b.vectors[1], v[1] / 3.0, atol=1e-6)


def test_validate_vectors_copies_only_if_needed():
    v = unit_vectors(10)
    assert validate_vectors(v, 10, DIM, file="v.npy") is v
    f = np.asfortranarray(v)
    out = validate_vectors(f, 10, DIM, file="v.npy")
    assert out.flags.c_contiguous and out is not f
    np.testing.assert_array_equal(out, v)
    tiny = v * np.float32(1e-25)     # float32 sum of squares underflows: handled, normalised
    np.testing.assert_allclose(validate_vectors(tiny, 10, DIM, file="v.npy"), v, atol=1e-6)
    huge = v.astype(np.float64) * 1e200
    np.testing.assert_allclose(validate_vectors(huge, 10, DIM, file="v.npy"), v, atol=1e-6)


# ------------------------------------------------------------------------------------ meta defects
def test_corpus_dir_missing(tmp_path):
    with pytest.raises(CorpusError, match="not found") as e:
        read_events(tmp_path / "nope")
    check(e, "nope", None, None)


def test_meta_missing(tmp_path):
    root = write_corpus(tmp_path / "c")
    (root / "meta.json").unlink()
    with pytest.raises(CorpusError, match="meta.json.*not found") as e:
        read_events(root)
    check(e, "meta.json", None, None)


def test_meta_malformed(tmp_path):
    root = write_corpus(tmp_path / "c")
    (root / "meta.json").write_text('{"format": "orgmem-v1",\n "dim": 4,,}')
    with pytest.raises(CorpusError, match="not valid JSON") as e:
        read_meta(root)
    check(e, "meta.json", 2, None)
    (root / "meta.json").write_text('[1, 2]')
    with pytest.raises(CorpusError, match="expected a JSON object") as e:
        read_meta(root)
    check(e, "meta.json", 1, None)


@pytest.mark.parametrize("key,value,pattern", [
    ("format", "orgmem-v2", "expected 'orgmem-v1', got \"orgmem-v2\""),
    ("format", ..., "missing"),
    ("dim", ..., "missing"),
    ("dim", 0, "expected an integer in \\[1, 65536\\], got integer 0"),
    ("dim", True, "got boolean true"),
    ("dim", 4.0, "got float 4.0"),
    ("n_events", -1, "expected an integer >= 0"),
    ("n_events", "3", "got string \"3\""),
    ("n_queries", -2, "expected an integer >= 0"),
    ("sources", "jira", "expected a list of strings"),
    ("params", [], "expected an object"),
])
def test_meta_bad_field(tmp_path, key, value, pattern):
    root = write_corpus(tmp_path / "c", meta={key: value})
    with pytest.raises(CorpusError, match=pattern) as e:
        read_events(root)
    check(e, "meta.json", None, key)


def test_meta_dim_mismatch_with_vectors(tmp_path):
    root = write_corpus(tmp_path / "c", meta={"dim": 8})
    with pytest.raises(CorpusError, match="expected 8 columns.*got shape \\(3, 4\\)") as e:
        read_events(root)
    check(e, "vectors.npy", None, "shape")


def test_n_events_more_lines_than_meta(tmp_path):
    root = write_corpus(tmp_path / "c", [ev(i) for i in range(4)], vectors=unit_vectors(4))
    meta = json.loads((root / "meta.json").read_text())
    meta["n_events"] = 2
    (root / "meta.json").write_text(json.dumps(meta))
    np.save(root / "vectors.npy", unit_vectors(2))
    with pytest.raises(CorpusError, match="more event lines than meta.json n_events = 2") as e:
        read_events(root)
    check(e, "events.jsonl", 3, "n_events")


def test_n_events_fewer_lines_than_meta(tmp_path):
    root = write_corpus(tmp_path / "c", meta={"n_events": 5}, vectors=unit_vectors(5))
    with pytest.raises(CorpusError, match="n_events = 5 but the file has only 3") as e:
        read_events(root)
    check(e, "events.jsonl", 4, "n_events")


# ------------------------------------------------------------------------------------ events file defects
def test_events_missing(tmp_path):
    root = write_corpus(tmp_path / "c")
    (root / "events.jsonl").unlink()
    with pytest.raises(CorpusError, match="not found") as e:
        read_events(root)
    check(e, "events.jsonl", None, None)


def test_blank_line_inside_refused(tmp_path):
    lines = [json.dumps(ev(0)), "", json.dumps(ev(1))]
    root = write_corpus(tmp_path / "c", lines, vectors=unit_vectors(2), meta={"n_events": 2})
    with pytest.raises(CorpusError, match="blank line inside.*line 3") as e:
        read_events(root)
    check(e, "events.jsonl", 2, None)


def test_invalid_json_line(tmp_path):
    lines = [json.dumps(ev(0)), '{"id": "e001", "time": ', json.dumps(ev(2))]
    root = write_corpus(tmp_path / "c", lines)
    with pytest.raises(CorpusError, match='not valid JSON.*"id": "e001"') as e:
        read_events(root)
    check(e, "events.jsonl", 2, None)


def test_trailing_garbage_after_object(tmp_path):
    lines = [json.dumps(ev(0)), json.dumps(ev(1)) + " x", json.dumps(ev(2))]
    root = write_corpus(tmp_path / "c", lines)
    with pytest.raises(CorpusError, match="not valid JSON") as e:
        read_events(root)
    check(e, "events.jsonl", 2, None)


def test_invalid_utf8_line(tmp_path):
    root = write_corpus(tmp_path / "c")
    raw = (root / "events.jsonl").read_bytes().split(b"\n")
    raw[1] = raw[1].replace(b"decision", b"decis\xff\xfeion")
    (root / "events.jsonl").write_bytes(b"\n".join(raw))
    with pytest.raises(CorpusError, match="not valid UTF-8") as e:
        read_events(root)
    check(e, "events.jsonl", 2, None)


def test_leading_whitespace_line_is_fine(tmp_path):
    lines = [json.dumps(ev(0)), "   " + json.dumps(ev(1)), json.dumps(ev(2))]
    assert len(read_events(write_corpus(tmp_path / "c", lines))) == 3


def test_line_not_an_object(tmp_path):
    root = write_corpus(tmp_path / "c", [json.dumps(ev(0)), "[1, 2, 3]", json.dumps(ev(2))])
    with pytest.raises(CorpusError, match="expected a JSON object.*got list \\[1, 2, 3\\]") as e:
        read_events(root)
    check(e, "events.jsonl", 2, None)


BAD_FIELDS = [
    # (field in error, change to event 1, pattern)
    ("id", {"id": ...}, "missing; expected a non-empty string"),
    ("id", {"id": ""}, "expected a non-empty string, got string \"\""),
    ("id", {"id": 7}, "got integer 7"),
    ("time", {"time": ...}, "missing"),
    ("time", {"time": True}, "got boolean true"),
    ("time", {"time": 1.7e9}, "got float 1700000000.0"),
    ("time", {"time": 5.0}, "got float 5.0"),
    ("time", {"time": "1700000000"}, "got string \"1700000000\""),
    ("time", {"time": -1}, "integer Unix time in \\[0, 7258118400\\], got integer -1"),
    ("time", {"time": TIME_MAX + 1}, "got integer 7258118401"),
    ("source", {"source": ""}, "non-empty string"),
    ("source", {"source": None}, "got null"),
    ("kind", {"kind": ...}, "missing"),
    ("kind", {"kind": ["a"]}, "got list"),
    ("tokens", {"tokens": "12"}, "got string \"12\""),   # missing tokens are estimated (test_sources)
    ("tokens", {"tokens": -3}, "in \\[0, 10000000\\], got integer -3"),
    ("tokens", {"tokens": TOKENS_MAX + 1}, "got integer 10000001"),
    ("tokens", {"tokens": 12.5}, "got float 12.5"),
    ("tokens", {"tokens": False}, "got boolean false"),
    ("entities", {"entities": "service:a"}, "list of non-empty strings, got string"),
    ("entities", {"entities": ["service:a", ""]}, "element got string \"\""),
    ("entities", {"entities": ["service:a", 3]}, "element got integer 3"),
    ("entities", {"entities": {"a": 1}}, "got object"),
    ("links", {"links": "e000"}, "expected a list of link objects, got string"),
    ("links", {"links": {"to": "e000"}}, "expected a list of link objects, got object"),
    ("links", {"links": ["e000"]}, "expected a link object"),
    ("links.to", {"links": [{"type": "reply"}]}, "non-empty event id string, got null"),
    ("links.to", {"links": [{"to": 0, "type": "reply"}]}, "got integer 0"),
    ("links.type", {"links": [{"to": "e000", "type": "caused"}]}, "expected one of reply, .*got \"caused\""),
    ("links.type", {"links": [{"to": "e000"}]}, "got null"),
    ("links.to", {"links": [{"to": "e001", "type": "reply"}]}, "links to itself"),
    ("text", {"text": 5}, "expected a string or null, got integer 5"),
]


@pytest.mark.parametrize("field,change,pattern", BAD_FIELDS,
                         ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(BAD_FIELDS)])
def test_bad_event_field(tmp_path, field, change, pattern):
    e1 = ev(1)
    for k, v in change.items():
        if v is ...:
            del e1[k]
        else:
            e1[k] = v
    root = write_corpus(tmp_path / "c", [ev(0), e1, ev(2)])
    with pytest.raises(CorpusError, match=pattern) as e:
        read_events(root)
    check(e, "events.jsonl", 2, field)


def test_bad_value_is_truncated(tmp_path):
    root = write_corpus(tmp_path / "c", [ev(0), ev(1, time="9" * 500), ev(2)])
    with pytest.raises(CorpusError) as e:
        read_events(root)
    assert "..." in str(e.value) and len(str(e.value)) < 400
    check(e, "events.jsonl", 2, "time")


def test_duplicate_ids_name_both_lines(tmp_path):
    root = write_corpus(tmp_path / "c", [ev(0), ev(1), ev(2), ev(1, time=5)], vectors=unit_vectors(4))
    with pytest.raises(CorpusError, match="duplicate id \"e001\" \\(first used at line 2\\)") as e:
        read_events(root)
    check(e, "events.jsonl", 4, "id")


def test_null_entities_and_links_mean_empty(tmp_path):
    root = write_corpus(tmp_path / "c", [ev(0, entities=None, links=None), ev(1), ev(2)])
    b = read_events(root)
    assert b.entities(0) == [] and b.link_src.tolist() == []


# ------------------------------------------------------------------------------------ vectors defects
def test_vectors_missing(tmp_path):
    root = write_corpus(tmp_path / "c")
    (root / "vectors.npy").unlink()
    with pytest.raises(CorpusError, match="not found") as e:
        read_events(root)
    check(e, "vectors.npy", None, None)


def test_vectors_not_npy(tmp_path):
    root = write_corpus(tmp_path / "c")
    (root / "vectors.npy").write_bytes(b"not an npy file at all")
    with pytest.raises(CorpusError, match="not a readable .npy") as e:
        read_events(root)
    check(e, "vectors.npy", None, None)


@pytest.mark.parametrize("vectors,pattern,field", [
    (np.ones(3, np.float32), "expected a 2-D array \\[3, 4\\], got shape \\(3,\\)", "shape"),
    (np.ones((3, 4, 1), np.float32), "2-D", "shape"),
    (unit_vectors(2), "expected 3 rows.*got shape \\(2, 4\\)", "shape"),
    (unit_vectors(3, 5), "expected 4 columns.*got shape \\(3, 5\\)", "shape"),
    (np.ones((3, 4), np.int32), "expected a floating dtype.*got int32", "dtype"),
])
def test_vectors_bad_shape_dtype(tmp_path, vectors, pattern, field):
    root = write_corpus(tmp_path / "c", vectors=vectors)
    with pytest.raises(CorpusError, match=pattern) as e:
        read_events(root)
    check(e, "vectors.npy", None, field)


@pytest.mark.parametrize("bad,pattern", [
    (np.nan, "row 1 \\(the vector of events.jsonl line 2\\) contains a non-finite value \\(nan\\)"),
    (np.inf, "row 1 \\(the vector of events.jsonl line 2\\) contains a non-finite value \\(inf\\)"),
    ("zero", "row 1 \\(the vector of events.jsonl line 2\\) is all zeros"),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vectors_bad_values(tmp_path, bad, pattern, dtype):
    v = unit_vectors(3).astype(dtype)
    if bad == "zero":
        v[1] = 0
    else:
        v[1, 2] = bad
    root = write_corpus(tmp_path / "c", vectors=v)
    with pytest.raises(CorpusError, match=pattern) as e:
        read_events(root)
    check(e, "vectors.npy", 2, "values")


def test_vectors_bad_value_in_later_chunk(monkeypatch):
    import fastctx.corpus as corpus
    monkeypatch.setattr(corpus, "_CHUNK_ROWS", 4)
    v = unit_vectors(10)
    v[9] = 0
    with pytest.raises(CorpusError, match="row 9 ") as e:
        validate_vectors(v, 10, DIM, file="v.npy", lines_of="events.jsonl")
    check(e, "v.npy", 10, "values")


# ------------------------------------------------------------------------------------ queries
def q(i: int, **kw) -> dict:
    d = {"qid": f"q{i}", "type": "chain", "filters": {"entities_any": ["service:a"], "time_from": 1,
                                                      "time_to": 2},
         "as_of": None, "direction": "back", "budget_tokens": 4000}
    d.update(kw)
    return d


def test_queries_round_trip(tmp_path):
    queries = [q(0, text="why?"),
               {"qid": "q1", "type": "as_of", "as_of": 1_700_000_000, "budget_tokens": 10, "custom": [1]},
               q(2, type="current", filters={"kinds": ["decision"], "sources": ["jira"],
                                             "entities_all": ["a", "b"], "time_from": None}, direction="both")]
    root = write_corpus(tmp_path / "c", queries=queries)
    qs, qv = read_queries(root)
    assert qv.dtype == np.float32 and qv.shape == (3, DIM)
    assert qs[0] == {"qid": "q0", "type": "chain", "text": "why?", "as_of": None, "direction": "back",
                     "budget_tokens": 4000,
                     "filters": {"entities_any": ["service:a"], "time_from": 1, "time_to": 2}}
    assert qs[1] == {"qid": "q1", "type": "as_of", "text": None, "filters": {}, "as_of": 1_700_000_000,
                     "direction": "back", "budget_tokens": 10, "custom": [1]}
    assert qs[2]["filters"] == {"kinds": ["decision"], "sources": ["jira"], "entities_all": ["a", "b"]}
    assert qs[2]["direction"] == "both"


BAD_QUERIES = [
    ("qid", {"qid": ""}, "non-empty string"),
    ("qid", {"qid": 3}, "got integer 3"),
    ("type", {"type": "search"}, "expected one of chain, current, as_of, got \"search\""),
    ("filters", {"filters": ["x"]}, "expected an object, got list"),
    ("filters.entity", {"filters": {"entity": ["x"]}}, "unknown filter"),
    ("filters.entities_any", {"filters": {"entities_any": "service:a"}}, "non-empty list of non-empty strings"),
    ("filters.sources", {"filters": {"sources": []}}, "non-empty list.*got list \\[\\]"),
    ("filters.kinds", {"filters": {"kinds": ["x", ""]}}, "non-empty list"),
    ("filters.time_from", {"filters": {"time_from": 1.5}}, "got float 1.5"),
    ("filters.time_to", {"filters": {"time_from": 10, "time_to": 5}}, "time_to >= time_from"),
    ("as_of", {"as_of": "2024"}, "or null, got string"),
    ("as_of", {"type": "as_of", "as_of": None}, "required"),
    ("direction", {"direction": "up"}, "expected one of back, forward, both, got \"up\""),
    ("budget_tokens", {"budget_tokens": 0}, "got integer 0"),
    ("budget_tokens", {"budget_tokens": ...}, "missing"),
    ("text", {"text": ["x"]}, "string or null"),
    ("scope", {"scope": "conv:1"}, "expected an object, got string"),
    ("scope.entities_any", {"scope": {"entities_any": []}}, "non-empty list"),
    ("scope.tenant", {"scope": {"tenant": ["x"]}}, "unknown filter"),
    ("scope.time_to", {"scope": {"time_from": 10, "time_to": 5}}, "time_to >= time_from"),
]


@pytest.mark.parametrize("field,change,pattern", BAD_QUERIES,
                         ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(BAD_QUERIES)])
def test_bad_query(tmp_path, field, change, pattern):
    q1 = q(1)
    for k, v in change.items():
        if v is ...:
            del q1[k]
        else:
            q1[k] = v
    root = write_corpus(tmp_path / "c", queries=[q(0), q1, q(2)])
    with pytest.raises(CorpusError, match=pattern) as e:
        read_queries(root)
    check(e, "queries.jsonl", 2, field)


def test_query_duplicate_qid(tmp_path):
    root = write_corpus(tmp_path / "c", queries=[q(0), q(1), q(0)])
    with pytest.raises(CorpusError, match="duplicate qid \"q0\" \\(first used at line 1\\)") as e:
        read_queries(root)
    check(e, "queries.jsonl", 3, "qid")


def test_query_not_object_and_count(tmp_path):
    root = write_corpus(tmp_path / "c", queries=[q(0), "7"])
    with pytest.raises(CorpusError, match="expected a JSON object") as e:
        read_queries(root)
    check(e, "queries.jsonl", 2, None)
    root = write_corpus(tmp_path / "d", queries=[q(0), q(1)], meta={"n_queries": 3})
    with pytest.raises(CorpusError, match="n_queries = 3 but the file has 2") as e:
        read_queries(root)
    check(e, "queries.jsonl", 3, "n_queries")


def test_queries_missing(tmp_path):
    root = write_corpus(tmp_path / "c")
    with pytest.raises(CorpusError, match="not found") as e:
        read_queries(root)
    check(e, "queries.jsonl", None, None)


def test_query_vectors_defects(tmp_path):
    root = write_corpus(tmp_path / "c", queries=[q(0), q(1)], query_vectors=unit_vectors(3))
    with pytest.raises(CorpusError, match="expected 2 rows") as e:
        read_queries(root)
    check(e, "query_vectors.npy", None, "shape")
    v = unit_vectors(2)
    v[1, 0] = np.nan
    root = write_corpus(tmp_path / "d", queries=[q(0), q(1)], query_vectors=v)
    with pytest.raises(CorpusError, match="the vector of queries.jsonl line 2") as e:
        read_queries(root)
    check(e, "query_vectors.npy", 2, "values")
    root = write_corpus(tmp_path / "e", queries=[q(0)], query_vectors=unit_vectors(1, DIM + 1))
    with pytest.raises(CorpusError, match="expected 4 columns") as e:
        read_queries(root)
    check(e, "query_vectors.npy", None, "shape")


# ------------------------------------------------------------------------------------ from_records
def test_from_records_ok_and_numpy_ints():
    recs = [ev(0), ev(1, time=np.int64(5), tokens=np.int32(7), extra=1, entities=("a", "b"),
                      links=({"to": "e000", "type": "reply"},))]
    b = EventBatch.from_records(recs, unit_vectors(2))
    assert b.times.tolist() == [1_700_000_000, 5] and b.tokens.tolist() == [10, 7]
    assert b.entities(1) == ["a", "b"] and b.link_to == ["e000"]
    assert b.attrs == [{}, {"extra": 1}]
    assert recs[1]["time"] == np.int64(5)   # input untouched


@pytest.mark.parametrize("field,change,pattern", BAD_FIELDS[:12],
                         ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(BAD_FIELDS[:12])])
def test_from_records_errors(field, change, pattern):
    e1 = ev(1)
    for k, v in change.items():
        if v is ...:
            del e1[k]
        else:
            e1[k] = v
    with pytest.raises(CorpusError, match=pattern) as e:
        EventBatch.from_records([ev(0), e1], unit_vectors(2), origin="batch")
    check(e, "batch[1]", None, field)


def test_from_records_location_and_vectors():
    with pytest.raises(CorpusError, match="duplicate id \"e000\" \\(first used at records\\[0\\]\\)") as e:
        EventBatch.from_records([ev(0), ev(0)], unit_vectors(2))
    check(e, "records[1]", None, "id")
    with pytest.raises(CorpusError, match="expected a JSON object") as e:
        EventBatch.from_records([ev(0), 5], unit_vectors(2))
    check(e, "records[1]", None, None)
    v = unit_vectors(2)
    v[0] = 0
    with pytest.raises(CorpusError, match="row 0 \\(the vector of records\\[0\\]\\) is all zeros") as e:
        EventBatch.from_records([ev(0), ev(1)], v)
    check(e, "records vectors", 1, "values")
    with pytest.raises(CorpusError, match="expected 3 rows") as e:
        EventBatch.from_records([ev(0), ev(1), ev(2)], unit_vectors(2))
    check(e, "records vectors", None, "shape")
    with pytest.raises(CorpusError, match="expected a sequence"):
        EventBatch.from_records(ev(0), unit_vectors(1))


# ------------------------------------------------------------------------------------ select
def test_select_rebases_links():
    recs = [ev(0, entities=["a", "b"]), ev(1, entities=[], links=[{"to": "e000", "type": "reply"}]),
            ev(2, entities=["c"], links=[{"to": "e001", "type": "fixes"}, {"to": "x", "type": "reverts"}]),
            ev(3, entities=["d", "e", "f"], links=[{"to": "e002", "type": "supersedes"}], note="n")]
    vec = unit_vectors(4)
    b = EventBatch.from_records(recs, vec)
    s = b.select(np.array([3, 0, 2]))
    assert s.ids == ["e003", "e000", "e002"] and len(s) == 3
    assert s.times.tolist() == [b.times[3], b.times[0], b.times[2]]
    assert s.entity_ptr.tolist() == [0, 3, 5, 6]
    assert s.entity_names == ["d", "e", "f", "a", "b", "c"]
    assert s.link_src.tolist() == [0, 2, 2]       # non-decreasing, new row numbers
    assert s.link_to == ["e002", "e001", "x"]
    assert [LINK_TYPES[c] for c in s.link_type] == ["supersedes", "fixes", "reverts"]
    assert s.attrs == [{"note": "n"}, {}, {}]
    np.testing.assert_array_equal(s.vectors, vec[[3, 0, 2]])
    assert s.vectors.flags.c_contiguous and s.vectors.dtype == np.float32
    m = b.select(np.array([False, True, False, True]))
    assert m.ids == ["e001", "e003"] and m.link_src.tolist() == [0, 1] and m.link_to == ["e000", "e002"]
    empty = b.select(np.array([], dtype=np.int64))
    assert len(empty) == 0 and empty.entity_ptr.tolist() == [0] and empty.vectors.shape == (0, DIM)
    with pytest.raises(ValueError, match="repeated"):
        b.select([1, 1])
    with pytest.raises(IndexError):
        b.select([4])


# ------------------------------------------------------------------------------------ property test
_txt = st.text(alphabet="abcxyz:_-", min_size=1, max_size=4)
_link = st.fixed_dictionaries({"to": _txt, "type": st.sampled_from(tuple(USER_LINK_CODE))})
_i64 = st.integers(-2**63, 2**64 - 1)   # attribute integers are stored in 64 bits
_record = st.fixed_dictionaries(
    {"time": st.integers(0, TIME_MAX), "source": _txt, "kind": _txt, "tokens": st.integers(0, TOKENS_MAX)},
    optional={"entities": st.one_of(st.none(), st.lists(_txt, max_size=5)),
              "links": st.one_of(st.none(), st.lists(_link, max_size=4)),
              "text": st.one_of(st.none(), st.text(max_size=10)),
              "zz_extra": st.one_of(_i64, st.lists(_i64, max_size=2))})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_record, max_size=12), st.data())
def test_from_records_matches_model(recs, data):
    recs = [dict(r, id=f"id{i}") for i, r in enumerate(recs)]
    n = len(recs)
    dim = 3
    vec = np.zeros((n, dim), np.float32)
    vec[np.arange(n), np.arange(n) % dim] = 1.0
    b = EventBatch.from_records(recs, vec)
    # plain-Python model
    ptr, names, lsrc, lto, ltype, attrs = [0], [], [], [], [], []
    for i, r in enumerate(recs):
        ents = []
        for e in r.get("entities") or []:
            if e not in ents:
                ents.append(e)
        names += ents
        ptr.append(len(names))
        seen = []
        for lk in r.get("links") or []:
            key = (lk["to"], lk["type"])
            if key not in seen:
                seen.append(key)
                lsrc.append(i)
                lto.append(lk["to"])
                ltype.append(LINK_TYPES.index(lk["type"]))
        attrs.append({k: v for k, v in r.items() if k == "zz_extra"})
    assert len(b) == n and b.ids == [r["id"] for r in recs]
    assert b.times.tolist() == [r["time"] for r in recs]
    # a claim below ceil(chars / 8) is raised to it
    assert b.tokens.tolist() == [max(r["tokens"], -(-len(r.get("text") or "") // 8)) for r in recs]
    assert b.sources == [r["source"] for r in recs] and b.kinds == [r["kind"] for r in recs]
    assert b.entity_ptr.tolist() == ptr and b.entity_names == names
    assert b.link_src.tolist() == lsrc and b.link_to == lto and b.link_type.tolist() == ltype
    assert b.texts == [r.get("text") for r in recs]
    assert b.attrs == attrs
    np.testing.assert_array_equal(b.vectors, vec)
    # select of a random subset agrees with selecting in the model
    rows = data.draw(st.permutations(range(n)).map(lambda p: p[:len(p) // 2]))
    s = b.select(np.array(rows, dtype=np.int64))
    assert s.ids == [b.ids[r] for r in rows]
    assert [s.entities(j) for j in range(len(rows))] == [b.entities(r) for r in rows]
    pos = {r: j for j, r in enumerate(rows)}
    model_links = sorted(((pos[i], t, c) for i, t, c in zip(lsrc, lto, ltype) if i in pos), key=lambda x: x[0])
    assert list(zip(s.link_src.tolist(), s.link_to, s.link_type.tolist())) == model_links


# ------------------------------------------------------------------------------------ generator
def test_generated_corpus_reads(tmp_path):
    gen = ORGMEM / "generate.py"
    if not gen.is_file():
        pytest.skip(f"orgmem generator not found at {gen}")
    out = tmp_path / "gen"
    subprocess.run([sys.executable, str(gen), str(out), "--events", "2000", "--text", "--quiet"],
                   check=True, timeout=120)
    meta = read_meta(out)
    b = read_events(out)
    assert len(b) == meta["n_events"] == 2000 and b.dim == meta["dim"]
    assert all(isinstance(t, str) for t in b.texts)
    assert set(b.sources) <= set(meta["sources"]) and set(b.kinds) <= set(meta["kinds"])
    assert np.all(np.diff(b.link_src) >= 0) and len(b.link_to) > 0
    qs, qv = read_queries(out)
    assert len(qs) == meta["n_queries"] == qv.shape[0] and qv.shape[1] == meta["dim"]
    assert all(x["type"] != "as_of" or x["as_of"] is not None for x in qs)
