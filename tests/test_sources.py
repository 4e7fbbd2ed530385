"""Ways in (fastctx/sources.py): JSONL files and stdin, text-only folders, pandas DataFrames,
Arrow tables and Parquet files, for `fastctx.build`, `Index.add` and the CLI; the same located
validation errors whatever the way in; tokens estimated from the text when absent."""
from __future__ import annotations

import datetime as dt
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import fastctx
from fastctx.cli import main
from fastctx.corpus import estimate_tokens
from fastctx.errors import CorpusError

pd = pytest.importorskip("pandas")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

T0 = 1_700_000_000
SAMPLE = Path(fastctx.__file__).parent / "sample_corpus"


def records(n: int = 6) -> list[dict]:
    out = []
    for i in range(n):
        r = {"id": f"e{i}", "time": T0 + 3600 * i, "source": "jira" if i % 2 else "slack", "kind": "bug_report",
             "entities": [f"service:s{i % 3}"], "text": f"payment retry number {i} charged twice for merchant {i}"}
        if i:
            r["links"] = [{"to": f"e{i - 1}", "type": "follow_up"}]
        out.append(r)
    return out


def write_jsonl(path: Path, recs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def summary(idx) -> list[tuple]:
    return [(e.id, e.time, e.tokens, e.source, tuple(e.entities), e.text) for e in idx.get([f"e{i}" for i in range(6)])]


def test_tokens_estimate_rule():
    assert estimate_tokens("abcd") == 1 and estimate_tokens("abcde") == 2 and estimate_tokens("") == 1
    assert estimate_tokens(None) == 1 and estimate_tokens("x" * 400) == 100


def test_jsonl_file_builds_with_the_hashing_encoder_and_estimated_tokens(tmp_path):
    path = write_jsonl(tmp_path / "events.jsonl", records())
    idx, report = fastctx.build(path, tmp_path / "idx")
    assert idx.n == 6 and report.n_links == 5
    assert idx.marker["encoder"]["name"] == "hashing-v1" and idx.dim == 256
    e = idx.get(["e3"])[0]
    assert e.tokens == math.ceil(len(records()[3]["text"]) / 4)
    assert idx.search("payment retry number 3 charged twice", k=1).events()[0].id == "e3"


def test_every_way_in_gives_the_same_index(tmp_path):
    recs = records()
    want = summary(fastctx.build(write_jsonl(tmp_path / "a.jsonl", recs), tmp_path / "a")[0])
    df = pd.DataFrame(recs)
    df["time"] = pd.to_datetime(df["time"], unit="s")          # timestamps become Unix seconds (naive = UTC)
    assert summary(fastctx.build(df, tmp_path / "b")[0]) == want
    table = pa.Table.from_pylist(recs)
    assert summary(fastctx.build(table, tmp_path / "c")[0]) == want
    pq.write_table(table, tmp_path / "d.parquet")
    assert summary(fastctx.build(tmp_path / "d.parquet", tmp_path / "d")[0]) == want
    assert summary(fastctx.build(recs, tmp_path / "e")[0]) == want
    folder = tmp_path / "f"                                      # a folder without vectors.npy nor meta.json
    folder.mkdir()
    write_jsonl(folder / "events.jsonl", recs)
    assert summary(fastctx.build(folder, tmp_path / "f_idx")[0]) == want


def test_dataframe_missing_cells_are_absent_fields(tmp_path):
    recs = records(3)
    recs[1]["tokens"] = 70
    df = pd.DataFrame(recs)                  # e0 and e2 get NaN tokens, e0 NaN links
    idx, _ = fastctx.build(df, tmp_path / "i")
    got = {e.id: e.tokens for e in idx.get(["e0", "e1", "e2"])}
    assert got["e1"] == 70 and got["e0"] == estimate_tokens(recs[0]["text"])


def test_located_errors_for_every_way_in(tmp_path):
    recs = records()
    recs[2]["time"] = "yesterday"
    with pytest.raises(CorpusError) as e:
        fastctx.build(write_jsonl(tmp_path / "bad.jsonl", recs), tmp_path / "i1")
    assert "bad.jsonl:3" in str(e.value) and "time" in str(e.value)
    with pytest.raises(CorpusError, match=r"DataFrame\[2\], field 'time'"):
        fastctx.build(pd.DataFrame(recs), tmp_path / "i2")
    pq.write_table(pa.Table.from_pylist([{**r, "time": str(r["time"])} for r in records()]), tmp_path / "s.parquet")
    with pytest.raises(CorpusError, match=r"s\.parquet\[0\], field 'time'"):
        fastctx.build(tmp_path / "s.parquet", tmp_path / "i3")
    (tmp_path / "x.csv").write_text("id,time\n")
    with pytest.raises(CorpusError, match="unknown file type '.csv'"):
        fastctx.build(tmp_path / "x.csv", tmp_path / "i4")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(CorpusError, match="not a readable Parquet file"):
        fastctx.build(tmp_path / "junk.parquet", tmp_path / "i5")
    with pytest.raises(CorpusError, match="cannot read events from a int"):
        fastctx.build(42, tmp_path / "i6")
    assert not any(p.name.startswith(("i", ".i")) for p in tmp_path.iterdir())   # nothing half-built


def test_event_without_text_is_named(tmp_path):
    recs = records()
    recs[4]["text"] = None
    with pytest.raises(CorpusError, match=r"e\.jsonl:5, field 'text': event 'e4' has no text"):
        fastctx.build(write_jsonl(tmp_path / "e.jsonl", recs), tmp_path / "i")


def test_wordless_text_is_embedded_from_its_entities(tmp_path):
    recs = records()
    recs[1]["text"] = "+1 !!"
    idx, _ = fastctx.build(recs, tmp_path / "i")
    assert idx.get(["e1"])[0].text == "+1 !!"
    assert idx.search("service s1 discussion", k=6, entities_any=["service:s1"]).events()[0].id == "e1"


def test_text_only_folder_keeps_meta_checks(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    write_jsonl(folder / "events.jsonl", records())
    (folder / "meta.json").write_text(json.dumps({"format": "orgmem-v1", "n_events": 5}))
    with pytest.raises(CorpusError, match="n_events = 5 but the file has 6"):
        fastctx.build(folder, tmp_path / "i")
    (folder / "meta.json").write_text(json.dumps({"format": "orgmem-v1", "params": {"encoder": "hashing-v1"}}))
    idx, _ = fastctx.build(folder, tmp_path / "i")
    assert idx.n == 6 and idx.marker["encoder"]["dim"] == 256


def test_progress_reports_the_encode_stage(tmp_path):
    seen = []
    fastctx.build(records(), tmp_path / "i", progress=lambda stage, done, total: seen.append((stage, done, total)))
    assert ("encode", 6, 6) in seen


def test_sharded_build_from_jsonl(tmp_path):
    idx, report = fastctx.build(write_jsonl(tmp_path / "e.jsonl", records()), tmp_path / "i", shards=2)
    assert idx.n == 6 and len(idx.marker["shards"]) == 2 and idx.marker["encoder"]["name"] == "hashing-v1"
    assert idx.search("payment retry number 5", k=1).events()[0].id == "e5"


def test_index_add_from_every_way_in(tmp_path):
    recs = records()
    idx, _ = fastctx.build(recs[:2], tmp_path / "i")
    with idx:
        assert idx.add(pd.DataFrame(recs[2:3])).n_events == 1
        assert idx.add(pa.Table.from_pylist(recs[3:4])).n_events == 1
        assert idx.add(write_jsonl(tmp_path / "more.jsonl", recs[4:5])).n_events == 1
        assert idx.add(recs[5:]).n_events == 1       # a list of mappings, no vectors: the text is embedded
        assert idx.n == 6
        with pytest.raises(CorpusError, match="vectors given twice"):
            idx.add(fastctx.corpus.EventBatch.from_records(recs[:1], np.ones((1, 256))), np.ones((1, 256)))
    assert fastctx.open(tmp_path / "i").search("payment retry number 4 charged", k=1).events()[0].id == "e4"


def test_cli_build_and_add_from_jsonl_stdin_and_parquet(tmp_path):
    runner = CliRunner()
    recs = records()
    res = runner.invoke(main, ["build", str(write_jsonl(tmp_path / "a.jsonl", recs[:3])), str(tmp_path / "i")])
    assert res.exit_code == 0, res.output
    assert "\x1b[" not in res.output                  # no progress bar off a terminal
    stdin = "".join(json.dumps(r) + "\n" for r in recs[3:5])
    res = runner.invoke(main, ["add", str(tmp_path / "i"), "-"], input=stdin)
    assert res.exit_code == 0 and "acked 2" in res.output, res.output
    pq.write_table(pa.Table.from_pylist(recs[5:]), tmp_path / "last.parquet")
    res = runner.invoke(main, ["add", str(tmp_path / "i"), str(tmp_path / "last.parquet")])
    assert res.exit_code == 0 and "acked 1" in res.output, res.output
    res = runner.invoke(main, ["build", "-", str(tmp_path / "j")], input="".join(json.dumps(r) + "\n" for r in recs))
    assert res.exit_code == 0 and "6 events" in res.output, res.output
    res = runner.invoke(main, ["query", str(tmp_path / "i"), "payment retry number 4 charged twice"])
    assert res.exit_code == 0 and "e4" in res.output
    res = runner.invoke(main, ["build", str(tmp_path / "nope.jsonl"), str(tmp_path / "k")])
    assert res.exit_code == 2 and "does not exist" in res.output
    res = runner.invoke(main, ["build", "-", str(tmp_path / "k")], input='{"id": "a"}\n')
    assert res.exit_code == 1 and "<stdin>:1, field 'time'" in res.output and "Traceback" not in res.output


def test_sample_corpus_text_only_with_the_default_encoder(tmp_path):
    folder = tmp_path / "sample"
    folder.mkdir()
    for name in ("events.jsonl", "meta.json"):
        shutil.copy(SAMPLE / name, folder / name)
    idx, _ = fastctx.build(folder, tmp_path / "i")           # meta.json names hashing-v1: same vectors
    ref, _ = fastctx.build(SAMPLE, tmp_path / "ref")
    q = "what led to the double charges?"
    assert [e.id for e in idx.query(q).events] == [e.id for e in ref.query(q).events]
    assert idx.marker["encoder"]["name"] == ref.marker["encoder"]["name"] == "hashing-v1"
    assert dt.datetime.fromtimestamp(idx.get(["e000000"])[0].time, dt.timezone.utc).year == 2024
