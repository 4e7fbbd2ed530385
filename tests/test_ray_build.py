"""Partitioned builds on Ray (fastctx/ray_build.py) against the in-process partitioned build: a
generated orgmem corpus, a real local Ray cluster of 2 CPUs, answers compared query by query
with `fastctx eval`, and a failed shard task resumed without rebuilding the finished shards."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ORGMEM, need_orgmem

ray = pytest.importorskip("ray", reason="the Ray build needs the optional 'ray' extra (pip install 'fastctx[ray]')")

from click.testing import CliRunner  # noqa: E402

from fastctx.cli import main  # noqa: E402
from fastctx.index import build  # noqa: E402
from fastctx.ray_build import DONE, STAGE_SUFFIX, FailShards, build_ray  # noqa: E402

N_SHARDS = 3



@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    need_orgmem()
    root = tmp_path_factory.mktemp("raybuild")
    subprocess.run([sys.executable, str(ORGMEM / "generate.py"), str(root / "c"), "--events", "3000", "--dim", "48",
                    "--queries", "40", "--seed", "5", "--quiet"], check=True)
    return root


def _answers(index: Path, corpus: Path, out: Path) -> list:
    r = CliRunner().invoke(main, ["eval", str(index), str(corpus), "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    for row in rows:
        row.pop("latency_ms", None)
    return rows


def _files(index: Path) -> dict:
    return {str(p.relative_to(index)): p.read_bytes() for p in sorted(index.rglob("*")) if p.is_file()}


def test_ray_build_answers_as_in_process(ray_cluster, corpus):
    c = corpus / "c"
    build(c, corpus / "inproc", shards=N_SHARDS)
    _, report = build(c, corpus / "ray", shards=N_SHARDS, ray="local")
    assert report.n_events == 3000
    a = _answers(corpus / "inproc", c, corpus / "a.jsonl")
    b = _answers(corpus / "ray", c, corpus / "b.jsonl")
    assert len(a) == 40 and a == b
    assert _files(corpus / "inproc") == _files(corpus / "ray")   # the same bytes, sidecars included
    assert not (corpus / f".ray{STAGE_SUFFIX}").exists()


def _same_graph(g1: dict, g2: dict) -> None:
    import numpy as np
    assert g1.keys() == g2.keys()
    for k, a in g1.items():
        b = g2[k]
        if isinstance(a, np.ndarray):
            assert a.dtype == b.dtype and a.shape == b.shape and (a == b).all(), k
        else:
            assert a == b, k


def test_block_partials_merge_to_the_in_process_graph(ray_cluster, corpus):
    """The whole-corpus pass from per-block partial aggregations (derived entities, keys,
    vocabulary, frequencies), then as Ray tasks over ranges (fastctx/ray_order.py), gives
    `global_graph`'s arrays exactly, for any block count."""
    from fastctx.derive import with_derived_links
    from fastctx.index import read_for_build
    from fastctx.params import BuildParams
    from fastctx.partition import global_graph, local_parts
    from fastctx.ray_graph import merge_partials, ray_parts
    from fastctx.ray_order import ray_global_graph
    params = BuildParams()
    batch, _ = read_for_build(corpus / "c", corpus / "unused", False, None)
    batch = with_derived_links(batch, params)
    want = global_graph(batch, params)
    for blocks in (1, 3, 8):
        parts = ray_parts(batch, params, blocks=blocks)
        _same_graph(want, global_graph(batch, params, parts=parts))
        _same_graph(want, ray_global_graph(batch, params, parts, blocks=blocks))   # as a Ray build runs it
    tiny = batch.select(list(range(3)))   # more blocks than events, links to events elsewhere
    _same_graph(global_graph(tiny, params), global_graph(tiny, params, parts=ray_parts(tiny, params, blocks=16)))
    empty = merge_partials([])
    assert len(empty["uniq"]) == 0 and empty["ent_ptr_ev"].tolist() == [0]
    assert set(empty) == set(local_parts(tiny, params))


def test_every_derived_link_kind_built_on_ray(ray_cluster, tmp_path):
    """A git-like JSONL history (files, authors, reverts, re-lands, equal times) with `similar`
    links on: the links derived by Ray tasks give the in-process index's files."""
    import numpy as np
    from test_ray_links import GIT_PARAMS, git_events

    from fastctx.corpus import LINK_CODE
    src = tmp_path / "git.jsonl"
    src.write_text("".join(json.dumps(e) + "\n" for e in git_events(400)))
    params = GIT_PARAMS[0]
    build(src, tmp_path / "inproc", shards=N_SHARDS, params=params, encoder="hashing:32")
    build_ray(src, tmp_path / "ray", shards=N_SHARDS, params=params, encoder="hashing:32")
    assert _files(tmp_path / "inproc") == _files(tmp_path / "ray")
    from fastctx.derive import with_derived_links
    from fastctx.index import read_for_build
    batch, _ = read_for_build(src, tmp_path / "unused", False, None, "hashing:32")
    types = set(np.asarray(with_derived_links(batch, params).link_type).tolist())
    assert {LINK_CODE[k] for k in ("similar", "same_actor", "co_mention", "relands")} <= types


def test_failed_shard_resumes_without_redoing_finished_shards(ray_cluster, corpus):
    c, target = corpus / "c", corpus / "resumed"
    stage = corpus / f".resumed{STAGE_SUFFIX}"
    with pytest.raises(RuntimeError, match="injected failure in shard 1"):
        build_ray(c, target, shards=N_SHARDS, ray="local", _fault=FailShards(1))
    assert not target.exists()                      # nothing published
    done = sorted(p.parent.name for p in stage.glob(f"*/{DONE}"))
    assert done == ["shard-000", "shard-002"]       # the failed shard wrote files but no marker
    kept = {str(p.relative_to(stage)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for name in done for p in (stage / name).rglob("*") if p.is_file() and p.name != DONE}
    assert kept
    build(c, target, shards=N_SHARDS, ray="local")
    after = {k: ((target / k).stat().st_ino, (target / k).stat().st_mtime_ns) for k in kept}
    assert after == kept                            # finished shards untouched, moved into place
    assert not stage.exists()
    if not (corpus / "inproc").exists():
        build(c, corpus / "inproc", shards=N_SHARDS)
    assert _files(target) == _files(corpus / "inproc")


def test_stale_staging_of_other_inputs_is_discarded(ray_cluster, corpus, tmp_path):
    """A staging directory left by a build of different inputs is not reused."""
    from fastctx.params import BuildParams
    c, target = corpus / "c", tmp_path / "idx"
    with pytest.raises(RuntimeError):
        build_ray(c, target, shards=2, _fault=FailShards(0, 1))
    stage = tmp_path / f".idx{STAGE_SUFFIX}"
    assert not list(stage.glob(f"*/{DONE}"))
    with pytest.raises(RuntimeError):
        build_ray(c, target, shards=2, _fault=FailShards(1))
    assert [p.parent.name for p in stage.glob(f"*/{DONE}")] == ["shard-000"]
    build_ray(c, target, shards=2, params=BuildParams(hnsw_m=8))   # other params: shard 0 is rebuilt
    assert not stage.exists()
    assert json.loads((target / "fastctx.json").read_text())["partition"]["shards"] == 2


def test_cli_ray_flag_and_clear_errors(ray_cluster, corpus, tmp_path):
    c = corpus / "c"
    r = CliRunner().invoke(main, ["build", str(c), str(tmp_path / "i"), "--shards", "2", "--ray", "local", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "3000 events" in r.output
    r = CliRunner().invoke(main, ["build", str(c), str(tmp_path / "i"), "--shards", "2", "--ray", "local", "--quiet"])
    assert r.exit_code != 0 and "exists" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["build", str(c), str(tmp_path / "j"), "--ray", "local", "--quiet"])
    assert r.exit_code != 0 and "shards >= 2" in r.output and "Traceback" not in r.output


def test_text_only_corpus_embedded_by_actors(ray_cluster, tmp_path):
    """Events without vectors: Ray actors embed them with the recorded encoder, and the index is
    the in-process build's, byte for byte."""
    events = [{"id": f"e{i}", "time": 1_700_000_000 + 3600 * i, "source": "chat", "kind": "message", "tokens": 20,
               "text": f"deploy service {i % 7} failed on host {i % 5}", "entities": [f"svc:{i % 7}"]}
              for i in range(300)]
    src = tmp_path / "text.jsonl"
    src.write_text("".join(json.dumps(e) + "\n" for e in events))
    build(src, tmp_path / "a", shards=2)
    build(src, tmp_path / "b", shards=2, ray="local")
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    # the same events as Parquet, read as a Ray dataset (two row groups), give the same index
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa
    pq.write_table(pa.Table.from_pylist(events), tmp_path / "text.parquet", row_group_size=128)
    build(tmp_path / "text.parquet", tmp_path / "c", shards=2, ray="local")
    assert _files(tmp_path / "a") == _files(tmp_path / "c")


def test_bad_parquet_is_a_corpus_error(ray_cluster, tmp_path):
    from fastctx.errors import CorpusError
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(CorpusError, match="bad.parquet"):
        build(bad, tmp_path / "i", shards=2, ray="local")


def test_missing_ray_names_the_extra(corpus, tmp_path, monkeypatch):
    from fastctx.extras import MissingExtraError
    monkeypatch.setitem(sys.modules, "ray", None)   # as if not installed
    with pytest.raises(MissingExtraError, match=r"fastctx\[ray\]"):
        build(corpus / "c", tmp_path / "i", shards=2, ray="local")


def test_concurrent_build_of_the_same_index_is_refused(ray_cluster, corpus, tmp_path):
    from filelock import FileLock

    from fastctx.errors import IndexLockedError
    held = FileLock(str(tmp_path / f".idx{STAGE_SUFFIX}.lock"), thread_local=False)
    held.acquire()
    try:
        with pytest.raises(IndexLockedError, match="another Ray build"):
            build_ray(corpus / "c", tmp_path / "idx", shards=2)
    finally:
        held.release()
    build_ray(corpus / "c", tmp_path / "idx", shards=2)
    assert (tmp_path / "idx" / "fastctx.json").exists()


_KILLED_DRIVER = """
import sys, time
from fastctx.ray_build import build_ray

class Stall:   # shard 1 hangs after writing its files, before its marker
    def __call__(self, k):
        if k == 1:
            time.sleep(600)

build_ray(sys.argv[1], sys.argv[2], shards=3, ray="local", num_cpus=2, _fault=Stall())
"""


def test_killed_driver_resumes(ray_cluster, corpus, tmp_path):
    """SIGKILL the whole build (driver and its local ray_cluster) while one shard is unfinished; the
    re-run keeps the finished shards' files (same inode and mtime) and gives the same index."""
    import os
    import signal
    import time
    target, stage = tmp_path / "idx", tmp_path / f".idx{STAGE_SUFFIX}"
    p = subprocess.Popen([sys.executable, "-c", _KILLED_DRIVER, str(corpus / "c"), str(target)],
                         start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(list(stage.glob(f"*/{DONE}"))) < 2 and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.2)
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    done = sorted(x.parent.name for x in stage.glob(f"*/{DONE}"))
    assert done == ["shard-000", "shard-002"] and not target.exists()
    kept = {str(x.relative_to(stage)): (x.stat().st_ino, x.stat().st_mtime_ns)
            for name in done for x in (stage / name).rglob("*") if x.is_file() and x.name != DONE}
    build_ray(corpus / "c", target, shards=3)
    assert {k: ((target / k).stat().st_ino, (target / k).stat().st_mtime_ns) for k in kept} == kept
    if not (corpus / "inproc").exists():
        build(corpus / "c", corpus / "inproc", shards=N_SHARDS)
    assert _files(target) == _files(corpus / "inproc")


def test_unreachable_cluster_address_fails_fast(corpus, tmp_path):
    import socket
    import time

    from fastctx.ray_build import RayClusterError
    with socket.socket() as sock:   # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    t = time.monotonic()
    r = CliRunner().invoke(main, ["build", str(corpus / "c"), str(tmp_path / "i"), "--shards", "2",
                                  "--ray", f"127.0.0.1:{port}", "--quiet"])
    assert r.exit_code != 0 and f"127.0.0.1:{port}" in r.output and "Traceback" not in r.output
    assert time.monotonic() - t < 30
    with pytest.raises(RayClusterError):
        build_ray(corpus / "c", tmp_path / "i", shards=2, ray=f"127.0.0.1:{port}")


def _same_batch(a, b):
    import numpy as np
    for k in ("ids", "times", "tokens", "sources", "kinds", "entity_ptr", "entity_names", "link_src", "link_to",
              "link_type", "texts", "attrs", "vectors"):
        x, y = getattr(a, k), getattr(b, k)
        assert (np.array_equal(x, y) if isinstance(x, np.ndarray) else list(x) == list(y)), k


def test_events_read_in_blocks_by_ray_tasks_equal_the_whole_file_read(ray_cluster, corpus, tmp_path):
    """An orgmem folder and a JSONL file parsed in 1, 3 and 8 blocks by Ray tasks give the
    whole-file reader's batch exactly (link sources and entity pointers shifted per block)."""
    from fastctx.corpus import read_event_lines, read_events, read_meta
    from fastctx.ray_read import read_folder_blocks, read_jsonl_blocks
    want = read_events(corpus / "c")
    lines = read_event_lines(corpus / "c" / "events.jsonl")
    meta = read_meta(corpus / "c")
    for blocks in (1, 3, 8):
        got = read_folder_blocks(corpus / "c", blocks)
        _same_batch(want, got)
        assert meta["n_events"] == len(got)
        cols = read_jsonl_blocks(corpus / "c" / "events.jsonl", blocks)
        assert cols["ids"] == lines["ids"] and cols["link_src"].tolist() == lines["link_src"].tolist()
        assert cols["entity_ptr"].tolist() == lines["entity_ptr"].tolist()


@pytest.mark.parametrize("damage, says", [
    (lambda ls: ls.__setitem__(2500, "{not json"), ":2501: not valid JSON"),
    (lambda ls: ls.__setitem__(2700, ls[10]), "duplicate id"),
    (lambda ls: ls.__setitem__(1200, ""), ":1201: blank line inside the file"),
])
def test_block_reader_errors_name_the_real_line(ray_cluster, corpus, tmp_path, damage, says):
    """A bad line far into the file, an id repeated in a later block and a blank line between
    blocks are each named by their line in the whole file, as the ordinary reader names them."""
    import shutil
    from fastctx.corpus import read_events
    from fastctx.errors import CorpusError
    from fastctx.ray_read import read_folder_blocks
    c = tmp_path / "c"
    shutil.copytree(corpus / "c", c)
    ls = (c / "events.jsonl").read_text().splitlines()
    damage(ls)
    (c / "events.jsonl").write_text("".join(x + "\n" for x in ls))
    with pytest.raises(CorpusError) as whole:
        read_events(c)
    with pytest.raises(CorpusError) as blocks:
        read_folder_blocks(c, 8)
    assert says in str(blocks.value) and str(blocks.value) == str(whole.value)
