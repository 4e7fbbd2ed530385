"""Ways out of an answer (to_list, to_pandas, to_arrow, to_context), Index.get, reprs, and times
given as datetimes or ISO strings, on the bundled sample corpus (real text, hashing encoder)."""
from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

import numpy as np
import pytest

import fastctx
from fastctx.errors import AccessDeniedError, InvalidQueryError
from fastctx.extras import MissingExtraError
from fastctx.filters import Filters
from fastctx.results import estimate_tokens

SAMPLE = fastctx.__path__[0] + "/sample_corpus"
VAULT_Q = "which card vault vendor do we use?"
CHAIN_Q = "what led to the double charges?"


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    idx, _ = fastctx.build(SAMPLE, tmp_path_factory.mktemp("out") / "index")
    return idx


@pytest.fixture(scope="module")
def current_answer(sample):
    return sample.query(VAULT_Q, type="current")


@pytest.fixture(scope="module")
def chain_answer(sample):
    return sample.query(CHAIN_Q, type="chain")


# ------------------------------------------------------------------------------------ to_list / pandas / arrow
def test_to_list_is_plain_json_in_answer_order(current_answer):
    rows = current_answer.to_list()
    assert [r["id"] for r in rows] == [e.id for e in current_answer.events]
    json.dumps(rows)                                          # plain data only
    assert sum(r["current"] for r in rows) == 1
    cur = next(r for r in rows if r["current"])
    assert cur["id"] == current_answer.current.id and cur["superseded_by"] is None
    for r, e in zip(rows, current_answer.events):
        assert r["date"] == e.date and r["datetime"].startswith(e.date) and r["datetime"].endswith("Z")
        assert r["time"] == e.time and r["why"] == e.why and r["text"] == e.text
    old = [r for r in rows if r["superseded_by"]]
    assert old, "a current answer shows the earlier version it replaced"
    assert all(len(r["superseded_date"]) == 10 and r["superseded_at"] >= r["time"] for r in old)


def test_to_pandas(current_answer):
    pd = pytest.importorskip("pandas")
    df = current_answer.to_pandas()
    assert list(df["id"]) == [e.id for e in current_answer.events]
    assert str(df["datetime"].dt.tz) == "UTC"
    assert (df["datetime"].astype("int64") // 10**9 == df["time"]).all() or \
        (df["datetime"].map(lambda t: int(t.timestamp())) == df["time"]).all()
    assert df.loc[df["current"], "id"].tolist() == [current_answer.current.id]
    assert isinstance(df, pd.DataFrame) and len(df.columns) >= 20


def test_to_arrow(chain_answer):
    pa = pytest.importorskip("pyarrow")
    t = chain_answer.to_arrow()
    assert isinstance(t, pa.Table) and t.num_rows == len(chain_answer.events)
    assert t.column("id").to_pylist() == [e.id for e in chain_answer.events]
    assert t.schema.field("datetime").type == pa.timestamp("s", tz="UTC")
    assert t.schema.field("entities").type == pa.list_(pa.string())
    assert [json.loads(a) for a in t.column("attrs").to_pylist()] == [e.attrs for e in chain_answer.events]
    assert t.column("tokens").to_pylist() == [e.tokens for e in chain_answer.events]


@pytest.mark.parametrize("method,module,extra", [("to_pandas", "pandas", "pandas"), ("to_arrow", "pyarrow", "arrow")])
def test_missing_optional_package_names_the_extra(chain_answer, monkeypatch, method, module, extra):
    monkeypatch.setitem(sys.modules, module, None)         # import of it now fails, as when not installed
    with pytest.raises(MissingExtraError, match=rf"pip install 'fastctx\[{extra}\]'"):
        getattr(chain_answer, method)()
    assert issubclass(MissingExtraError, fastctx.FastctxError) and issubclass(MissingExtraError, ImportError)


# ------------------------------------------------------------------------------------ to_context
def test_to_context_marks_current_superseded_and_why(current_answer):
    text = current_answer.to_context(max_tokens=100_000)
    cur = current_answer.current
    assert text.startswith("Retrieved context (current question)")
    assert f"{cur.id} | {cur.date} | {cur.source}/{cur.kind} | CURRENT" in text
    for e in current_answer.events:
        assert e.id in text and (e.text or "")[:60] in text
        if e.superseded_by:
            on = dt.datetime.fromtimestamp(e.superseded_at, dt.timezone.utc).strftime("%Y-%m-%d")
            assert f"{e.id} | {e.date} | {e.source}/{e.kind} | SUPERSEDED by {e.superseded_by} on {on}" in text
        if e.why:
            assert f"why: {e.why}" in text
    assert "left out" not in text
    # timeline order kept
    pos = [text.index(f"{e.id} |") for e in current_answer.events]
    assert pos == sorted(pos)


def test_to_context_stays_within_the_budget_and_keeps_the_current_fact(current_answer, chain_answer):
    cur = current_answer.current
    small = current_answer.to_context(max_tokens=cur.tokens + 80)
    assert "CURRENT" in small and cur.id in small
    assert "more events left out: over the" in small
    body = small.split("\n(")[0]
    assert estimate_tokens(body) <= cur.tokens + 80 + 40     # text counts stored tokens, lines ~4 chars
    default = chain_answer.to_context()                         # the answer's own budget
    assert default.count(" | ") >= len(chain_answer.events) * 2 - 2
    with pytest.raises(InvalidQueryError):
        chain_answer.to_context(max_tokens=0)
    with pytest.raises(InvalidQueryError):
        chain_answer.to_context(max_tokens="many")


# ------------------------------------------------------------------------------------ reprs
def test_reprs(sample, current_answer):
    r = repr(sample)
    assert r.startswith("Index(") and "464 events" in r and "dim 256" in r and "hashing" in r
    a = repr(current_answer)
    assert a.startswith("Answer(current, ") and f"current: {current_answer.current.id}" in a
    e = next(e for e in current_answer.events if e.id == current_answer.current.id)
    assert repr(e).startswith(f"Event({e.id!r}, {e.date}, {e.source}/{e.kind}") and "why 'current version'" in repr(e)
    h = sample.search(["double charge", "vault vendor"], k=5)
    assert repr(h).startswith("Hits(2 queries, k=5, hits per query [5, 5]")
    assert [d["id"] for d in h.to_list(1)] == h.ids(1)


# ------------------------------------------------------------------------------------ Index.get
def _records(n, t0=1_704_067_200):
    return [{"id": f"g{i}", "time": t0 + 3600 * i, "source": "jira", "kind": "note", "tokens": 5,
             "entities": [f"ticket:T-{i}"], "links": [{"to": "g0", "type": "references"}] if i else [],
             "text": f"note {i}", "team": "pay"} for i in range(n)]


def test_get_by_id_live_absent_deleted_replaced(tmp_path):
    rng = np.random.default_rng(0)
    v = rng.standard_normal((6, 8)).astype(np.float32)
    w = fastctx.Index.create(tmp_path / "i", 8, writable=True)
    w.add(_records(5), v[:5])
    got = w.get(["g3", "nope", "g0", "g3"])
    assert [e.id if e else None for e in got] == ["g3", None, "g0", "g3"]
    assert got[0].text == "note 3" and got[0].attrs == {"team": "pay"}
    # its own link, then the derived ones: g1 and g2 also reference g0 (co-cited)
    assert got[0].links == [["g0", "references"], ["g1", "co_cited"], ["g2", "co_cited"]]
    assert np.isnan(got[0].score) and got[0].to_dict()["score"] is None
    w.delete(["g3"])
    assert w.get(["g3"]) == [None]                          # deleted in the log
    w.flush()
    assert w.get(["g3", "g1"])[0] is None and w.get(["g1"])[0].id == "g1"
    w.upsert([{**_records(5)[2], "text": "changed"}], v[5:6])
    assert w.get(["g2"])[0].text == "changed"               # the live version of a replaced id
    w.close()
    r = fastctx.open(tmp_path / "i")
    assert [e.text if e else None for e in r.get(["g2", "g3", "g4"])] == ["changed", None, "note 4"]
    assert r.get([]) == []
    for bad in ("g1", ["g1", ""], [1]):
        with pytest.raises(InvalidQueryError, match="get"):
            r.get(bad)


def test_get_respects_access_lists(tmp_path):
    v = np.eye(8, dtype=np.float32)[:2]
    recs = _records(2)
    recs[1]["acl"] = ["user:ana"]
    w = fastctx.Index.create(tmp_path / "i", 8, writable=True)
    w.add(recs, v)
    w.flush()
    w.close()
    r = fastctx.open(tmp_path / "i")
    with pytest.raises(AccessDeniedError):
        r.get(["g1"])
    assert [e.id if e else None for e in r.get(["g0", "g1"], principals=["user:bob"])] == ["g0", None]
    assert [e.id for e in r.get(["g0", "g1"], principals=["user:ana"])] == ["g0", "g1"]
    assert r.get(["g1"], unrestricted=True)[0].id == "g1"


def test_get_on_a_partitioned_index(tmp_path):
    idx, _ = fastctx.build(SAMPLE, tmp_path / "p", shards=3)
    one = [json.loads(line) for line in open(SAMPLE + "/events.jsonl")][::37]
    got = idx.get([r["id"] for r in one])
    assert [e.text for e in got] == [r.get("text") for r in one]
    assert len({e.shard for e in got}) > 1


# ------------------------------------------------------------------------------------ times as datetimes / ISO
@pytest.mark.parametrize("value,expect", [
    (1_709_251_200, 1_709_251_200),
    ("2024-03-01", 1_709_251_200),
    ("2024-03-01T12:00:00Z", 1_709_294_400),
    ("2024-03-01T13:00:00+01:00", 1_709_294_400),
    (dt.datetime(2024, 3, 1, 12), 1_709_294_400),                                     # naive = UTC
    (dt.datetime(2024, 3, 1, 7, tzinfo=dt.timezone(dt.timedelta(hours=-5))), 1_709_294_400),
    (dt.date(2024, 3, 1), 1_709_251_200),
    (np.datetime64("2024-03-01T12:00:00"), 1_709_294_400),
    (np.int64(5), 5),
])
def test_filter_times_accept_datetimes_and_iso(value, expect):
    f = Filters(time_from=value, time_to=value, as_of=value)
    assert (f.time_from, f.time_to, f.as_of) == (expect,) * 3


@pytest.mark.parametrize("bad", ["yesterday", "", 1.5, True, [2024], np.datetime64("NaT")])
def test_bad_filter_times_are_named(bad):
    with pytest.raises(InvalidQueryError, match="time_from"):
        Filters(time_from=bad)


def test_datetime_filters_in_search_and_query(sample):
    ints = sample.search("vault vendor", k=5, time_from=1_709_251_200, time_to=1_727_740_800)
    dts = sample.search("vault vendor", k=5, time_from=dt.datetime(2024, 3, 1), time_to="2024-10-01T00:00:00Z")
    assert ints.ids() == dts.ids() and ints.ids()
    a = sample.query(VAULT_Q, type="as_of", as_of=1_717_200_000)
    b = sample.query(VAULT_Q, type="as_of", as_of=dt.datetime(2024, 6, 1, tzinfo=dt.timezone.utc))
    c = sample.query(VAULT_Q, type="as_of", as_of="2024-06-01")
    assert a.current.id == b.current.id == c.current.id
    assert [e.id for e in a.events] == [e.id for e in b.events] == [e.id for e in c.events]


def test_import_is_light_and_works_without_fcntl(tmp_path):
    """No optional package at import; with no OS file lock (fcntl blocked, as off POSIX without
    Windows locking) reading works and writing is refused with a clear error."""
    idx, _ = fastctx.build(SAMPLE, tmp_path / "i")
    code = ("import sys; sys.modules['fcntl'] = None\n"
            "import fastctx, fastctx.integrations, fastctx.results\n"
            "heavy = [m for m in ('pandas', 'pyarrow', 'langchain_core', 'llama_index', 'grpc') if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "idx = fastctx.open(sys.argv[1]); print(idx.search('vault vendor', k=2).ids())\n"
            "try:\n    fastctx.Index(sys.argv[1], writable=True)\n"
            "except fastctx.IndexLockedError as e:\n    print('refused:', e)\n")
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "i")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "refused:" in res.stdout and "no OS file lock" in res.stdout and "Traceback" not in res.stderr
    assert res.stdout.splitlines()[0] == str(idx.search("vault vendor", k=2).ids())
