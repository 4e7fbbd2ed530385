"""Fuzzing the ingest and query parsers (hypothesis, bounded: fixed example counts, derandomized):
no input may crash them; the only failures allowed are fastctx's own clear errors."""
from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import make_records, unit_rows, write_corpus
from fastctx import wal
from fastctx.format import write_manifest
from fastctx.cli import _date
from fastctx.corpus import EventBatch, read_events
from fastctx.errors import CorpusError, CorruptIndexError, FastctxError, InvalidQueryError
from fastctx.filters import Filters
from fastctx.index import Index, build

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
DIM = 8

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                      st.text(max_size=12))
json_value = st.recursive(json_leaf, lambda c: st.one_of(st.lists(c, max_size=4),
                                                          st.dictionaries(st.text(max_size=8), c, max_size=4)),
                          max_leaves=12)
good_event = st.fixed_dictionaries({
    "id": st.text(min_size=1, max_size=6), "time": st.integers(1_600_000_000, 1_800_000_000),
    "source": st.sampled_from(["jira", "slack"]), "kind": st.sampled_from(["decision", "patch"]),
    "tokens": st.integers(0, 500),
    "entities": st.lists(st.sampled_from(["a:1", "b:2", "decision:x"]), max_size=3),
    "links": st.lists(st.fixed_dictionaries({"to": st.text(min_size=1, max_size=4),
                                             "type": st.sampled_from(["reply", "supersedes", "nope"])}), max_size=2),
})
# a mostly-valid event with one field replaced by anything
mutated_event = st.tuples(good_event, st.sampled_from(["id", "time", "source", "kind", "tokens", "entities",
                                                       "links", "text", "extra"]), json_value).map(
    lambda t: {**t[0], t[1]: t[2]})


@pytest.fixture(scope="module")
def small_index(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    recs, v, _, _ = make_records(60, seed=4, dim=DIM)
    write_corpus(root / "c", recs, v)
    idx, _ = build(root / "c", root / "i")
    return idx, recs, v


@FUZZ
@given(st.lists(st.one_of(good_event, mutated_event, json_value), min_size=1, max_size=5))
def test_from_records_and_add_fail_only_clearly(small_index, records):
    idx, _, _ = small_index
    vec = unit_rows(np.random.default_rng(len(records)).standard_normal((len(records), DIM)))
    try:
        batch = EventBatch.from_records(records, vec)
    except CorpusError:
        return
    n0 = idx.n
    try:
        rep = idx.add(batch, on_existing="upsert")
    except CorpusError:
        assert idx.n == n0
        return
    assert idx.n <= n0 + len(batch) and rep.n_events + rep.skipped == len(batch)
    idx.search(vec[0], k=3)
    idx.query(vec[0])


@FUZZ
@given(st.lists(st.one_of(st.binary(max_size=40), st.text(max_size=40),
                          good_event.map(json.dumps), mutated_event.map(lambda e: json.dumps(e, default=str))),
                min_size=1, max_size=4))
def test_events_file_parser_fails_only_clearly(tmp_path_factory, lines):
    root = tmp_path_factory.mktemp("ev")
    raw = b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines)
    write_corpus(root, ["{}"] * len(lines), unit_rows(np.ones((len(lines), DIM))))
    (root / "events.jsonl").write_bytes(raw)
    try:
        read_events(root)
    except CorpusError:
        pass


def _valid_log() -> bytes:
    recs, v, _, _ = make_records(5, seed=1, dim=DIM)
    a = wal.encode({"t": "add", "seq": 0, "dim": DIM, "recs": recs[:3], "vec": v[:3].tobytes()})
    b = wal.encode({"t": "del", "seq": 3, "ids": [recs[0]["id"]]})
    return a + b


@FUZZ
@given(st.data())
def test_log_scanner_and_replay_fail_only_clearly(tmp_path_factory, data):
    base = _valid_log()
    how = data.draw(st.sampled_from(["flip", "cut", "garbage", "append"]))
    b = bytearray(base)
    if how == "flip":
        for _ in range(data.draw(st.integers(1, 4))):
            b[data.draw(st.integers(0, len(b) - 1))] ^= data.draw(st.integers(1, 255))
    elif how == "cut":
        b = b[:data.draw(st.integers(0, len(b)))]
    elif how == "garbage":
        b = bytearray(data.draw(st.binary(max_size=200)))
    else:
        body = data.draw(st.binary(max_size=60))
        b += struct.pack("<4sII", b"FCW2", len(body), zlib.crc32(body)) + body  # well framed, any content
    root = tmp_path_factory.mktemp("wal")
    idx = Index.create(root / "i", DIM)
    idx.close()
    m = json.loads((root / "i" / "shard-000" / "MANIFEST.json").read_text())
    m.update(wal=["wal-000001.log"], next_wal=2)
    write_manifest(root / "i" / "shard-000", m)   # a consistent manifest naming the damaged log
    (root / "i" / "shard-000" / "wal-000001.log").write_bytes(bytes(b))
    try:
        wal.scan(root / "i" / "shard-000" / "wal-000001.log")
    except CorruptIndexError as e:
        assert "wal-000001.log" in str(e)
    try:
        r = Index(root / "i")
        assert r.n <= 3
        r.search(np.ones(DIM), k=2)
    except FastctxError as e:
        assert "wal-000001.log" in str(e)


@FUZZ
@given(st.dictionaries(st.sampled_from(["time_from", "time_to", "entities_any", "entities_all", "sources",
                                        "kinds", "bogus"]), json_value, max_size=4),
       st.one_of(st.none(), json_value), json_value, json_value, json_value)
def test_query_parsers_fail_only_clearly(small_index, filters, as_of, qtype, direction, budget):
    idx, _, v = small_index
    spec = {"qid": "q", "type": qtype, "filters": filters, "as_of": as_of, "direction": direction,
            "budget_tokens": budget}
    try:
        Filters.from_dict(filters, as_of=as_of if isinstance(as_of, int) and not isinstance(as_of, bool) else None)
    except InvalidQueryError:
        pass
    try:
        idx.query_spec(spec, v[0])
    except (InvalidQueryError, CorpusError):
        pass
    try:
        idx.search(v[0], k=3, filters=Filters.from_dict(filters))
    except InvalidQueryError:
        pass


@FUZZ
@given(st.text(max_size=30))
@example("²")
@example("9" * 40)
@example("-")
@example("1e5")
def test_cli_date_parser_fails_only_clearly(text):
    import click
    try:
        out = _date(text, "--since")
        assert isinstance(out, int)
    except click.BadParameter:
        pass
