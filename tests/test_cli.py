"""The `fastctx` command line: in-process with click's CliRunner, and once end to end through the
installed console script in a subprocess.

The corpus is the small text corpus of conftest (hashing-v1 encoder recorded in meta.json, so
`fastctx query TEXT` works): a 5-event payments story s0..s4, a decision with three versions
d0 -> d1 -> d2 (d1 explicitly supersedes d0; d2 replaces d1 through the decision: slot), and
background noise.
"""
from __future__ import annotations

import builtins
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import DAY, T0, copy_index, event, unit_rows, write_corpus
from fastctx.cli import main

FASTCTX = Path(sys.executable).parent / "fastctx"
CHAIN_Q = "why was the retry ledger v2 rollout deferred after duplicate charges"
DECISION_Q = "what is the payments retry limit decision"

# -- a guard that records every attempt to open truth.jsonl (or planted.jsonl) in this process
_GUARD = {"on": False, "hits": []}


def _audit(event_name, args):
    if _GUARD["on"] and event_name == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        name = os.path.basename(os.fsdecode(args[0]))
        if name in ("truth.jsonl", "planted.jsonl"):
            _GUARD["hits"].append(os.fsdecode(args[0]))


sys.addaudithook(_audit)   # audit hooks cannot be removed; this one is inert unless _GUARD["on"]


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture(scope="module")
def cli_index(text_corpus, tmp_path_factory):
    """Index built by `fastctx build` (module-scoped, read-only)."""
    out = tmp_path_factory.mktemp("cli") / "index"
    res = CliRunner().invoke(main, ["build", str(text_corpus.dir), str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    return out


def tokens_of(corpus):
    return {r["id"]: r["tokens"] for r in corpus.records}


def tree(path: Path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------ build
def test_build_refuses_non_empty_target_then_overwrites(runner, text_corpus, tmp_path):
    out = tmp_path / "index"
    res = runner.invoke(main, ["build", str(text_corpus.dir), str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    n = len(text_corpus.records)
    assert f"built {out}: {n} events" in res.output and "1 segment(s)" in res.output
    before = tree(out)
    res = runner.invoke(main, ["build", str(text_corpus.dir), str(out), "--quiet"])
    assert res.exit_code == 1
    assert "exists and is not empty" in res.output and "--overwrite" in res.output
    assert tree(out) == before
    res = runner.invoke(main, ["build", str(text_corpus.dir), str(out), "--quiet", "--overwrite", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert f"{n} events" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]   # no temp or trash dirs left


def test_build_progress_bars_and_dangling_note(runner, tmp_path):
    evs = [event(i, links=[("e000000", "reply")] if i else [("nowhere", "references")]) for i in range(5)]
    corpus = write_corpus(tmp_path / "corpus", evs, unit_rows([[1, 0, 0, i] for i in range(5)]))
    res = runner.invoke(main, ["build", str(corpus), str(tmp_path / "index")])
    assert res.exit_code == 0, res.output
    assert "note: dropped 1 link(s)" in res.output and "e000000 -> nowhere" in res.output
    assert res.stderr == ""        # progress bars only on a terminal (tests/test_cli_more.py)


def test_build_bad_corpus_fails_cleanly(runner, tmp_path):
    corpus = write_corpus(tmp_path / "corpus", [event(0), '{"id": "e1", "time": "x"'], unit_rows([[1, 0], [0, 1]]))
    res = runner.invoke(main, ["build", str(corpus), str(tmp_path / "index"), "--quiet"])
    assert res.exit_code == 1
    assert "Error:" in res.output and "events.jsonl:2" in res.output
    assert not (tmp_path / "index").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]
    res = runner.invoke(main, ["build", str(tmp_path / "nope"), str(tmp_path / "index")])
    assert res.exit_code == 2   # click usage error: the corpus folder does not exist


# ------------------------------------------------------------------------------------ query
def test_query_readable_timeline(runner, cli_index, text_corpus):
    res = runner.invoke(main, ["query", str(cli_index), CHAIN_Q, "--entity", "service:payments", "--budget", "1200"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].startswith(tuple("0123456789")) and "/1200 tokens" in lines[0]
    # the deferral, the complaint and the design doc, each on a dated line, in time order
    want = [("2024-01-01", "s0"), ("2024-03-31", "s3"), ("2024-04-10", "s4")]
    pos = []
    for date, eid in want:
        hit = [i for i, ln in enumerate(lines) if ln.startswith(date) and f" {eid} " in ln]
        assert hit, (date, eid, res.output)
        pos.append(hit[0])
    assert pos == sorted(pos)
    assert "why: seed: similar to the question" in res.output
    assert "timings:" in lines[-1]


def test_query_json(runner, cli_index, text_corpus):
    res = runner.invoke(main, ["query", str(cli_index), CHAIN_Q, "--entity", "service:payments",
                               "--budget", "1200", "--json"])
    assert res.exit_code == 0, res.output
    ans = json.loads(res.output)
    ids = [e["id"] for e in ans["events"]]
    assert ans["type"] == "chain" and ans["current"] is None
    assert {"s3", "s4"} <= set(ids)
    assert sum(e["tokens"] for e in ans["events"]) <= 1200
    assert [e["time"] for e in ans["events"]] == sorted(e["time"] for e in ans["events"])
    tok = tokens_of(text_corpus)
    assert all(e["tokens"] == tok[e["id"]] for e in ans["events"])


def test_query_current_and_as_of(runner, cli_index):
    res = runner.invoke(main, ["query", str(cli_index), DECISION_Q, "--type", "current", "--budget", "600"])
    assert res.exit_code == 0, res.output
    assert "current: d2 (2024-04-30)" in res.output.splitlines()[0]
    assert any(" d2 " in ln and "[CURRENT]" in ln for ln in res.output.splitlines())
    assert any(" d0 " in ln and "[superseded by d1]" in ln for ln in res.output.splitlines())
    # as of 2024-03-21 only d0 and d1 existed: d1 is current, nothing later is shown
    as_of = T0 + 80 * DAY
    res = runner.invoke(main, ["query", str(cli_index), DECISION_Q, "--as-of", "2024-03-21", "--budget", "600", "--json"])
    assert res.exit_code == 0, res.output
    ans = json.loads(res.output)
    assert ans["type"] == "as_of" and ans["current"] == "d1"
    assert ans["events"] and all(e["time"] <= as_of for e in ans["events"])
    # the same instant as Unix seconds
    res2 = runner.invoke(main, ["query", str(cli_index), DECISION_Q, "--as-of", str(as_of), "--budget", "600", "--json"])
    assert json.loads(res2.output)["current"] == "d1"


def test_query_filters_and_bad_arguments(runner, cli_index, tmp_path):
    res = runner.invoke(main, ["query", str(cli_index), CHAIN_Q, "--since", "2024-03-01", "--until", "2024-04-15",
                               "--source", "jira", "--json"])
    assert res.exit_code == 0, res.output
    ans = json.loads(res.output)
    seeds = [e for e in ans["events"] if e["why"].startswith("seed")]
    assert seeds and all(e["source"] == "jira" and "2024-03-01" <= _date(e["time"]) <= "2024-04-15" for e in seeds)
    res = runner.invoke(main, ["query", str(cli_index), CHAIN_Q, "--since", "last tuesday"])
    assert res.exit_code == 2 and "is not a date" in res.output
    res = runner.invoke(main, ["query", str(cli_index), CHAIN_Q, "--budget", "0"])
    assert res.exit_code == 2
    res = runner.invoke(main, ["query", str(tmp_path), CHAIN_Q])
    assert res.exit_code == 1 and "not a fastctx index" in res.output


def _date(t: int) -> str:
    import datetime as dt
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d")


def test_query_without_encoder_is_a_clear_error(runner, built_index):
    res = runner.invoke(main, ["query", str(built_index.path), "anything"])
    assert res.exit_code == 1 and "encoder" in res.output


# ------------------------------------------------------------------------------------ eval
def _check_results(path: Path, corpus):
    lines = path.read_text().splitlines()
    assert len(lines) == len(corpus.queries)
    tok = tokens_of(corpus)
    out = {}
    for ln, q in zip(lines, corpus.queries):
        r = json.loads(ln)
        assert set(r) == {"qid", "events", "current", "latency_ms"}
        assert r["qid"] == q["qid"]
        assert isinstance(r["latency_ms"], float) and r["latency_ms"] >= 0
        assert r["events"] and len(set(r["events"])) == len(r["events"])
        assert sum(tok[e] for e in r["events"]) <= q["budget_tokens"]
        if q["type"] == "chain":
            assert r["current"] is None
        else:
            assert r["current"] in r["events"]
        out[r["qid"]] = r
    return out


def test_eval_never_opens_truth(runner, cli_index, text_corpus, tmp_path, monkeypatch):
    corpus = tmp_path / "corpus"
    shutil.copytree(text_corpus.dir, corpus)
    truth = corpus / "truth.jsonl"
    truth.write_text("this is not json {{{")
    (corpus / "planted.jsonl").write_text("neither is this")
    truth.chmod(0)
    opened = []
    real_open, real_io_open = builtins.open, io.open

    def guarded(real):
        def f(file, *a, **k):
            if isinstance(file, (str, bytes, os.PathLike)) and os.path.basename(os.fsdecode(file)) in (
                    "truth.jsonl", "planted.jsonl"):
                opened.append(os.fsdecode(file))
                raise PermissionError(f"the system under test opened {file}")
            return real(file, *a, **k)
        return f

    monkeypatch.setattr(builtins, "open", guarded(real_open))
    monkeypatch.setattr(io, "open", guarded(real_io_open))
    out = tmp_path / "results.jsonl"
    _GUARD["on"], _GUARD["hits"] = True, []
    # positive control: the guards do see an open of these files (pathlib goes through io.open)
    with pytest.raises(PermissionError):
        (corpus / "planted.jsonl").read_text()
    os.close(os.open(corpus / "planted.jsonl", os.O_RDONLY))   # below the patched functions: audit only
    assert opened and _GUARD["hits"], "the open guards did not fire on a real open"
    opened.clear()
    _GUARD["hits"] = []
    try:
        res = runner.invoke(main, ["eval", str(cli_index), str(corpus), "--out", str(out), "--quiet"])
    finally:
        _GUARD["on"] = False
        truth.chmod(0o644)
    assert res.exit_code == 0, (res.output, res.exception)
    assert opened == [] and _GUARD["hits"] == []
    assert f"wrote {out}: 3 queries" in res.output
    assert not out.with_name(out.name + ".tmp").exists()
    results = _check_results(out, text_corpus)
    assert results["q2"]["current"] == "d2" and results["q3"]["current"] == "d1"
    assert {"s3", "s4"} <= set(results["q1"]["events"])


def test_eval_rejects_dim_mismatch(runner, cli_index, text_corpus, tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(text_corpus.dir, corpus)
    meta = json.loads((corpus / "meta.json").read_text())
    meta["dim"] = 8
    (corpus / "meta.json").write_text(json.dumps(meta))
    np.save(corpus / "query_vectors.npy", unit_rows(np.ones((3, 8))))
    res = runner.invoke(main, ["eval", str(cli_index), str(corpus), "--out", str(tmp_path / "r.jsonl"), "--quiet"])
    assert res.exit_code == 1 and "dim" in res.output
    assert not (tmp_path / "r.jsonl").exists()


# ------------------------------------------------------------------------------------ stats / verify
def test_stats(runner, cli_index, text_corpus):
    res = runner.invoke(main, ["stats", str(cli_index), "--json"])
    assert res.exit_code == 0, res.output
    s = json.loads(res.output)
    assert s["events"] == len(text_corpus.records) and s["segments"] == 1 and s["dim"] == text_corpus.dim
    assert s["links"] == 4 and s["hnsw_segments"] == 0
    assert s["time_min"] == T0 and s["tokens"] == sum(tokens_of(text_corpus).values())
    res = runner.invoke(main, ["stats", str(cli_index)])
    assert res.exit_code == 0 and "time_min        2024-01-01 00:00 UTC" in res.output


def test_verify_ok_then_corrupted(runner, cli_index, tmp_path):
    res = runner.invoke(main, ["verify", str(cli_index)])
    assert res.exit_code == 0 and res.output.startswith("ok:")
    path = copy_index(cli_index, tmp_path / "index")
    f = path / "shard-000" / "seg-000001" / "vectors.npy"
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0x55
    f.write_bytes(bytes(b))
    res = runner.invoke(main, ["verify", str(path)])
    assert res.exit_code == 1
    assert "FAIL" in res.stderr and str(f) in res.stderr
    # opening still works (vectors are checksummed lazily), so stats succeeds
    assert runner.invoke(main, ["stats", str(path), "--json"]).exit_code == 0


def test_version_and_help(runner):
    res = runner.invoke(main, ["--version"])
    assert res.exit_code == 0 and "version" in res.output
    res = runner.invoke(main, ["--help"])
    for cmd in ("build", "query", "eval", "stats", "verify"):
        assert cmd in res.output


# ------------------------------------------------------------------------------------ real console script
def test_console_script_round_trip(text_corpus, tmp_path):
    """build -> query --json -> eval -> stats --json -> verify, through the installed `fastctx`.
    truth.jsonl and planted.jsonl are directories here: opening either as a file would fail."""
    assert FASTCTX.exists(), f"console script not installed at {FASTCTX}"
    corpus = tmp_path / "corpus"
    shutil.copytree(text_corpus.dir, corpus)
    (corpus / "truth.jsonl").unlink()
    (corpus / "truth.jsonl").mkdir()
    (corpus / "planted.jsonl").mkdir()
    idx = tmp_path / "index"

    def run(*args, ok=True):
        p = subprocess.run([str(FASTCTX), *map(str, args)], capture_output=True, text=True, timeout=120)
        if ok:
            assert p.returncode == 0, (args, p.stdout, p.stderr)
        return p

    assert "68 events" in run("build", corpus, idx, "--quiet").stdout
    p = run("build", corpus, idx, "--quiet", ok=False)
    assert p.returncode == 1 and "exists and is not empty" in p.stderr
    ans = json.loads(run("query", idx, DECISION_Q, "--type", "current", "--budget", "600", "--json").stdout)
    assert ans["current"] == "d2"
    out = tmp_path / "results.jsonl"
    run("eval", idx, corpus, "--out", out, "--quiet")
    results = _check_results(out, text_corpus)
    assert results["q2"]["current"] == "d2"
    s = json.loads(run("stats", idx, "--json").stdout)
    assert s["events"] == 68 and s["segments"] == 1
    assert run("verify", idx).stdout.startswith("ok:")
    f = idx / "shard-000" / "seg-000001" / "payload.bin"
    f.write_bytes(f.read_bytes()[:-1])   # truncated
    p = run("verify", idx, ok=False)
    assert p.returncode == 1 and str(f) in p.stderr and "size" in p.stderr
