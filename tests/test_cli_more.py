"""Everyday commands (get, search, delete, compact, export), output formats, what `add` reports,
sharded build totals, progress bars only on a terminal, and clear errors without grpc."""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import fastctx
from fastctx.cli import main

SAMPLE = Path(fastctx.__path__[0]) / "sample_corpus"
FASTCTX = Path(sys.executable).parent / "fastctx"
VAULT_Q = "which card vault vendor do we use?"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli") / "index"
    fastctx.build(SAMPLE, d)
    return d


@pytest.fixture
def index(built, tmp_path):
    """A private copy of the sample index (for commands that write)."""
    shutil.copytree(built, tmp_path / "index")
    return tmp_path / "index"


@pytest.fixture
def runner():
    return CliRunner()


def sample_events() -> list[dict]:
    return [json.loads(line) for line in (SAMPLE / "events.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------ get
def test_get_formats_and_missing_ids(runner, built):
    ev = sample_events()[7]
    res = runner.invoke(main, ["get", str(built), ev["id"]])
    assert res.exit_code == 0, res.output
    assert ev["id"] in res.output and ev["text"][:50] in res.output and ev["entities"][0] in res.output
    got = json.loads(runner.invoke(main, ["get", str(built), ev["id"], "--json"]).output)
    assert len(got) == 1 and {k: got[0][k] for k in ("id", "time", "source", "kind", "tokens", "text", "entities")} \
        == {k: ev[k] for k in ("id", "time", "source", "kind", "tokens", "text", "entities")}
    assert json.loads(runner.invoke(main, ["get", str(built), ev["id"], "--format", "json"]).output) == got
    res = runner.invoke(main, ["get", str(built), ev["id"], "nope", "--format", "jsonl"])
    lines = res.output.splitlines()
    assert res.exit_code == 1 and json.loads(lines[0])["id"] == ev["id"] and lines[1] == "null"
    assert "not found: nope" in res.stderr
    res = runner.invoke(main, ["get", str(built), "nope"])
    assert res.exit_code == 1 and "nope: not found" in res.output
    res = runner.invoke(main, ["get", str(built), ev["id"], "--json", "--format", "table"])
    assert res.exit_code == 2 and "disagree" in res.output


def test_get_shows_a_link(runner, built):
    ev = next(e for e in sample_events() if e["links"])
    got = json.loads(runner.invoke(main, ["get", str(built), ev["id"], "--json"]).output)[0]
    from fastctx.corpus import DERIVED_LINK_TYPES   # the index's own links (same actor) are shown too
    assert [tuple(x) for x in got["links"] if x[1] not in DERIVED_LINK_TYPES] == [(x["to"], x["type"]) for x in ev["links"]]
    table = runner.invoke(main, ["get", str(built), ev["id"]]).output
    assert f"{ev['links'][0]['type']} -> {ev['links'][0]['to']}" in table


# ------------------------------------------------------------------------------------ search
def test_search_is_plain_filtered_top_k(runner, built):
    idx = fastctx.open(built)
    want = idx.search("double charge", k=5, sources=["slack"], time_from=1_717_200_000)
    res = runner.invoke(main, ["search", str(built), "double charge", "-k", "5", "--source", "slack",
                               "--since", "2024-06-01", "--format", "jsonl"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.output.splitlines()]
    assert [r["id"] for r in rows] == want.ids() and len(rows) == 5
    assert all(r["source"] == "slack" and r["time"] >= 1_717_200_000 for r in rows)
    assert [r["score"] for r in rows] == pytest.approx(want.scores[0, :5].tolist(), abs=1e-6)
    assert [r["id"] for r in json.loads(runner.invoke(main, ["search", str(built), "double charge", "-k", "5",
                                                             "--source", "slack", "--since", "2024-06-01",
                                                             "--json"]).output)] == want.ids()
    table = runner.invoke(main, ["search", str(built), "double charge", "-k", "3"]).output
    assert table.splitlines()[0].lstrip().startswith("1. ") and idx.search("double charge", k=3).ids()[0] in table
    none = runner.invoke(main, ["search", str(built), "double charge", "--kind", "no-such-kind"])
    assert none.exit_code == 0 and none.output.strip() == "no hits"
    bad = runner.invoke(main, ["search", str(built), "double charge", "--since", "someday"])
    assert bad.exit_code == 2 and "--since" in bad.output and "Traceback" not in bad.output


# ------------------------------------------------------------------------------------ query formats
def test_query_formats(runner, built):
    idx = fastctx.open(built)
    ans = idx.query(VAULT_Q, type="current", budget_tokens=1200)
    args = ["query", str(built), VAULT_Q, "--type", "current", "--budget", "1200"]
    rows = [json.loads(x) for x in runner.invoke(main, args + ["--format", "jsonl"]).output.splitlines()]
    assert [r["id"] for r in rows] == [e.id for e in ans.events]
    assert [r["id"] for r in rows if r["current"]] == [ans.current.id]
    ctx = runner.invoke(main, args + ["--format", "context"]).output
    assert ctx == ans.to_context() and "| CURRENT" in ctx
    a, b = (json.loads(runner.invoke(main, args + flag).output) for flag in (["--json"], ["--format", "json"]))
    assert a.pop("timings_ms").keys() == b.pop("timings_ms").keys() and a == b
    assert ans.current.id in runner.invoke(main, args).output


# ------------------------------------------------------------------------------------ delete / compact
def test_delete_then_get_and_compact(runner, index):
    ids = [e["id"] for e in sample_events()[:3]]
    res = runner.invoke(main, ["delete", str(index), ids[0], ids[1], "zz-unknown"])
    assert res.exit_code == 0 and res.output.strip() == "deleted 2 (1 not found)"
    res = runner.invoke(main, ["get", str(index), ids[0], ids[2]])
    assert res.exit_code == 1 and f"{ids[0]}: not found" in res.output and ids[2] in res.output
    assert runner.invoke(main, ["delete", str(index), ids[0]]).output.strip() == "deleted 0 (1 not found)"
    res = runner.invoke(main, ["compact", str(index), "--force"])
    assert res.exit_code == 0, res.output
    assert "dropped 2 deleted row(s); 462 events" in res.output
    s = fastctx.open(index).stats()
    assert s["events"] == 462 and s["deleted_rows"] == 0 and s["wal_files"] <= 1
    assert runner.invoke(main, ["get", str(index), ids[0]]).exit_code == 1
    assert runner.invoke(main, ["compact", str(index)]).exit_code == 0          # nothing to do is fine


def test_writers_are_refused_while_locked(runner, index):
    w = fastctx.Index(index, writable=True)
    for args in (["delete", str(index), "e000001"], ["compact", str(index)]):
        res = runner.invoke(main, args)
        assert res.exit_code == 1 and "lock" in res.output.lower() and "Traceback" not in res.output
    w.close()


# ------------------------------------------------------------------------------------ export
def test_export_round_trips_through_build(runner, index, tmp_path):
    runner.invoke(main, ["delete", str(index), "e000003"])
    res = runner.invoke(main, ["export", str(index), str(tmp_path / "out")])
    assert res.exit_code == 0 and "exported 463 events (dim 256)" in res.output, res.output
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["format"] == "orgmem-v1" and meta["n_events"] == 463 and meta["params"]["encoder"] == "hashing-v1"
    exported = [json.loads(x) for x in (tmp_path / "out" / "events.jsonl").read_text().splitlines()]
    times = [e["time"] for e in exported]
    assert times == sorted(times)                                      # row order of the one segment
    original = {e["id"]: e for e in sample_events()}
    del original["e000003"]
    for e in exported:     # links to the deleted event stay: a rebuild drops and reports them
        assert e == original[e["id"]]
    vec = np.load(tmp_path / "out" / "vectors.npy")
    src = np.load(SAMPLE / "vectors.npy")
    order = {e["id"]: i for i, e in enumerate(sample_events())}
    np.testing.assert_allclose(vec, src[[order[e["id"]] for e in exported]], atol=1e-6)
    res = runner.invoke(main, ["build", str(tmp_path / "out"), str(tmp_path / "again")])
    assert res.exit_code == 0 and "463 events" in res.output, res.output
    a, b = fastctx.open(index), fastctx.open(tmp_path / "again")
    assert a.query(VAULT_Q, type="current").current.id == b.query(VAULT_Q, type="current").current.id
    assert a.search("double charge", k=10).ids() == b.search("double charge", k=10).ids()
    res = runner.invoke(main, ["export", str(index), str(tmp_path / "out")])
    assert res.exit_code == 1 and "not empty" in res.output
    assert runner.invoke(main, ["export", str(index), str(tmp_path / "out"), "--overwrite"]).exit_code == 0


# ------------------------------------------------------------------------------------ add / build reports
def test_add_reports_what_it_actually_added(runner, index, tmp_path):
    res = runner.invoke(main, ["add", str(index), str(SAMPLE)])
    assert res.exit_code == 0 and res.output.splitlines() == ["acked 0 (464 already present)"]
    res = runner.invoke(main, ["add", str(index), str(SAMPLE), "--batch", "200"])
    assert res.output.splitlines() == ["acked 0 (200 already present)", "acked 0 (400 already present)",
                                       "acked 0 (464 already present)"]


def test_sharded_build_reports_the_same_totals(runner, tmp_path):
    one = runner.invoke(main, ["build", str(SAMPLE), str(tmp_path / "one")])
    three = runner.invoke(main, ["build", str(SAMPLE), str(tmp_path / "three"), "--shards", "3"])
    assert one.exit_code == 0 and three.exit_code == 0, three.output
    totals = lambda out: out.split(": ", 1)[1].split(", ")[:3]  # noqa: E731 - events, entities, links
    assert totals(one.output) == totals(three.output)
    s = fastctx.open(tmp_path / "one").stats()
    assert totals(one.output) == [f"{s['events']} events", f"{s['entities']} entities", f"{s['links']} links"]


# ------------------------------------------------------------------------------------ progress bars
def _run_on_a_terminal(args: list[str]) -> tuple[int, str]:
    """Run the installed `fastctx` with stdout and stderr on a pseudo-terminal (POSIX only)."""
    import fcntl
    import pty
    import select
    import termios
    main_fd, sub_fd = pty.openpty()
    fcntl.ioctl(sub_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))   # a terminal has a size
    p = subprocess.Popen([str(FASTCTX), *args], stdout=sub_fd, stderr=sub_fd, stdin=subprocess.DEVNULL)
    os.close(sub_fd)
    out = b""
    while True:
        r, _, _ = select.select([main_fd], [], [], 120)
        if not r:
            break
        try:
            chunk = os.read(main_fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(main_fd)
    return p.wait(), out.decode(errors="replace")


@pytest.mark.skipif(not FASTCTX.exists() or os.name != "posix", reason="needs the installed script and a pty")
def test_progress_bars_only_on_a_terminal(tmp_path):
    code, out = _run_on_a_terminal(["build", str(SAMPLE), str(tmp_path / "tty")])
    assert code == 0 and "464 events" in out
    assert "read" in out and "ev/s" in out and "\r" in out          # tqdm bars drawn
    res = subprocess.run([str(FASTCTX), "build", str(SAMPLE), str(tmp_path / "pipe")], capture_output=True, text=True)
    assert res.returncode == 0 and res.stderr == "" and "\r" not in res.stdout


# ------------------------------------------------------------------------------------ without grpc
NO_GRPC = ("import sys; sys.modules['grpc'] = None; sys.modules['grpc_health'] = None\n"
           "from fastctx.cli import main; sys.argv[0] = 'fastctx'; main()")


@pytest.mark.parametrize("args", [["serve", "shard", "--index", "{idx}", "--shard", "0"],
                                  ["serve", "coordinator", "--shard", "0=127.0.0.1:1"],
                                  ["query", "--remote", "127.0.0.1:1", "anything"],
                                  ["query", "{sharded}", "anything"]])
def test_serving_without_grpc_names_the_extra(args, built, tmp_path):
    fastctx.build(SAMPLE, tmp_path / "sharded", shards=2)
    args = [a.format(idx=built, sharded=tmp_path / "sharded") for a in args]
    res = subprocess.run([sys.executable, "-c", NO_GRPC, *args], capture_output=True, text=True)
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert "pip install 'fastctx[serve]'" in res.stderr and "Traceback" not in res.stderr


def test_connect_without_grpc_names_the_extra():
    code = ("import sys; sys.modules['grpc'] = None\nimport fastctx\n"
            "try:\n    fastctx.connect('127.0.0.1:1')\nexcept fastctx.MissingExtraError as e:\n    print(e)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0 and "pip install 'fastctx[serve]'" in res.stdout, res.stderr


def test_param_sets_engine_knobs_for_query_and_eval(runner, built, tmp_path):
    base = runner.invoke(main, ["query", str(built), VAULT_Q, "--format", "jsonl"])
    same = runner.invoke(main, ["query", str(built), VAULT_Q, "--format", "jsonl", "--param", "relevance_mass=1.5",
                                "--param", "context_prefixes=session:,thread:,channel:,conversation:,conv:"])
    assert base.exit_code == 0 and same.exit_code == 0 and base.output == same.output   # the defaults, spelled out
    narrow = runner.invoke(main, ["query", str(built), VAULT_Q, "--format", "jsonl", "--param", "max_results=1",
                                  "--param", "candidates=1", "--param", "chain_evidence=0"])
    assert narrow.exit_code == 0, narrow.output
    assert 0 < len(narrow.output.splitlines()) < len(base.output.splitlines())
    out = tmp_path / "r.jsonl"
    r = runner.invoke(main, ["eval", str(built), str(SAMPLE), "--out", str(out), "--param", "seed_k=16", "--quiet"])
    assert r.exit_code == 0, r.output
    assert out.read_text().count("\n") == len((SAMPLE / "queries.jsonl").read_text().splitlines())


@pytest.mark.parametrize("arg, says", [("seed_kk=3", "seed_kk=3"), ("seed_k", "KEY=VALUE"),
                                       ("seed_k=many", "seed_k must be an int"), ("inherit=maybe", "not a boolean"),
                                       ("expansion=bfs", "expansion"), ("link_weights=1", "set from Python"),
                                       ("hits_first=1.5", "hits_first"), ("time_coherence_days=-1", "must be >= 0"),
                                       ("pool_min_weight=2", "pool_min_weight"),
                                       ("candidates=0", "candidates must be >= 1"),
                                       ("many_candidates=0", "many_candidates must be >= 1"),
                                       ("seed_k=0", "seed_k must be >= 1"),
                                       ("threads=0", "threads must be >= 1"),
                                       ("team_members=0", "team_members must be >= 1"),
                                       ("window_slack_days=inf", "must be a finite number"),
                                       ("relevance=nan", "must be a finite number"), ("ppr_alpha=5", "ppr_alpha")])
def test_param_errors_name_the_knob(runner, built, arg, says):
    r = runner.invoke(main, ["query", str(built), VAULT_Q, "--param", arg])
    assert r.exit_code == 2 and says in r.output and "Traceback" not in r.output


def test_param_with_remote_is_refused(runner):
    r = runner.invoke(main, ["query", "--remote", "127.0.0.1:1", VAULT_Q, "--param", "seed_k=8"])
    assert r.exit_code == 2 and "its own" in r.output


# ------------------------------------------------------------------------------------ eval --out
def test_eval_out_follows_a_link_and_refuses_what_is_not_a_file(runner, built, tmp_path):
    real = tmp_path / "real.jsonl"
    real.write_text("old\n")
    (tmp_path / "link.jsonl").symlink_to(real)
    r = runner.invoke(main, ["eval", str(built), str(SAMPLE), "--out", str(tmp_path / "link.jsonl"), "--quiet"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "link.jsonl").is_symlink() and real.read_text().count("\n") == len(
        (SAMPLE / "queries.jsonl").read_text().splitlines())
    os.mkfifo(tmp_path / "fifo.jsonl")
    for out, says in ((tmp_path / "fifo.jsonl", "not a regular file"), (tmp_path / "nodir" / "r.jsonl", "does not exist")):
        r = runner.invoke(main, ["eval", str(built), str(SAMPLE), "--out", str(out), "--quiet"])
        assert r.exit_code == 1 and says in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "fifo.jsonl").is_file() and sorted(p.name for p in tmp_path.iterdir()) == [
        "fifo.jsonl", "link.jsonl", "real.jsonl"]


def test_eval_names_the_failing_query_and_keeps_the_earlier_results(runner, built, tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(SAMPLE, corpus)
    lines = (corpus / "queries.jsonl").read_text().splitlines()
    bad = json.loads(lines[2])
    lines[2] = json.dumps({**bad, "principals": [1]})       # checked when the question is asked
    (corpus / "queries.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "r.jsonl"
    out.write_text("earlier results\n")
    r = runner.invoke(main, ["eval", str(built), str(corpus), "--out", str(out), "--quiet"])
    assert "queries.jsonl" in r.output
    assert r.exit_code == 1 and repr(bad["qid"]) in r.output and "principals" in r.output, r.output
    assert "Traceback" not in r.output
    assert out.read_text() == "earlier results\n" and not (tmp_path / "r.jsonl.tmp").exists()


def test_eval_of_a_corpus_without_questions(runner, built, tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(SAMPLE, corpus)
    (corpus / "queries.jsonl").write_text("")
    dim = np.load(SAMPLE / "query_vectors.npy").shape[1]
    np.save(corpus / "query_vectors.npy", np.zeros((0, dim), np.float32))
    meta = json.loads((corpus / "meta.json").read_text())
    if "n_queries" in meta:
        meta["n_queries"] = 0
        (corpus / "meta.json").write_text(json.dumps(meta))
    r = runner.invoke(main, ["eval", str(built), str(corpus), "--out", str(tmp_path / "r.jsonl"), "--quiet"])
    assert r.exit_code == 0 and "0 queries" in r.output, r.output
    assert (tmp_path / "r.jsonl").read_text() == ""


def test_since_after_until_is_refused(runner, built):
    for cmd in (["query", str(built), VAULT_Q], ["search", str(built), VAULT_Q]):
        r = runner.invoke(main, cmd + ["--since", "2025-01-01", "--until", "2024-01-01"])
        assert r.exit_code == 2 and "is after --until" in r.output, r.output
