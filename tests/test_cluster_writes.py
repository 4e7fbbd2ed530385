"""Writes to a sharded cluster (shards/writes.py) through real shard server processes and a
coordinator server on loopback: half a corpus built with --shards 4, the other half added through
the coordinator, one shard server SIGKILLed mid-add and restarted, the add re-run."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import server_address

import fastctx
from fastctx.errors import FastctxError, ShardUnavailableError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from bench_cluster_writes import split  # noqa: E402  (the bench's half-and-half split of a corpus)

GEN = ROOT.parent / "shared" / "orgmem" / "generate.py"
EXE = Path(sys.executable).parent / "fastctx"
N_SHARDS = 4

pytestmark = pytest.mark.skipif(not GEN.exists(), reason="orgmem generator not available")


_listening = server_address


def _shard(idx, k, port=0):
    p = subprocess.Popen([str(EXE), "serve", "shard", "--index", str(idx), "--shard", str(k), "--port", str(port)],
                         stderr=subprocess.PIPE, text=True)
    return p, _listening(p)


def _eval(args, out):
    r = subprocess.run([str(EXE), "eval", *args, "--out", str(out), "--quiet"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    return [json.loads(x) for x in Path(out).read_text().splitlines()]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    d = tmp_path_factory.mktemp("cw")
    subprocess.run([sys.executable, str(GEN), str(d / "full"), "--events", "3000", "--seed", "1"], check=True,
                   capture_output=True, timeout=300)
    split(d / "full", d / "a", d / "b")
    return d


@pytest.mark.slow
def test_add_through_coordinator_with_a_shard_killed_mid_add(corpora, tmp_path):
    d = corpora
    idx = tmp_path / "idx"
    subprocess.run([str(EXE), "build", str(d / "a"), str(idx), "--shards", str(N_SHARDS), "--quiet"], check=True,
                   capture_output=True, timeout=300)
    procs = {}
    coord_p = None
    try:
        addrs = {}
        for k in range(N_SHARDS):
            procs[k], addrs[k] = _shard(idx, k)
        # a build check every 0.2 s: it runs during the sync, while the shards change build
        coord_p = subprocess.Popen([str(EXE), "serve", "coordinator", "--port", "0", "--build-check", "0.2",
                                    *[a for k in range(N_SHARDS) for a in ("--shard", f"{k}={addrs[k]}")]],
                                   stderr=subprocess.PIPE, text=True)
        coord = _listening(coord_p)
        client = fastctx.connect(coord, timeout_s=120.0)
        n_a = client.stats()["n_global"]
        # kill shard 2 after the first batches were acked: the add fails naming the shard
        killed = {"done": False}

        def progress(stage, done, total):
            if done >= 600 and not killed["done"]:
                procs[2].send_signal(signal.SIGKILL)
                procs[2].wait()
                killed["done"] = True

        with pytest.raises(ShardUnavailableError, match=f"shard 2 at {addrs[2]}"):
            client.add(str(d / "b"), batch=200, progress=progress)
        port = addrs[2].rsplit(":", 1)[1]
        procs[2], addrs[2] = _shard(idx, 2, port)       # restarted on its address
        # the coordinator's channel retries at most a second apart (transport.CHANNEL_OPTIONS,
        # +20% jitter): past that it has found the restarted shard
        time.sleep(1.5)
        # re-run the same add through the CLI: completes it, every event exactly once
        r = subprocess.run([str(EXE), "add", "--remote", coord, str(d / "b"), "--batch", "200"],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip().splitlines()[-1].startswith("acked 1500"), r.stdout
        st = client.stats()
        assert st["n_global"] == 3000 and n_a == 1500
        # answers equal a one-shot build of the whole corpus
        one = tmp_path / "one"
        subprocess.run([str(EXE), "build", str(d / "full"), str(one), "--quiet"], check=True, capture_output=True,
                       timeout=300)
        got = _eval(["--remote", coord, str(d / "full")], tmp_path / "r.jsonl")
        want = _eval([str(one), str(d / "full")], tmp_path / "w.jsonl")
        assert len(got) == len(want) > 0
        assert not [g["qid"] for g in got if g.get("partial")]
        same = sum(g["events"] == w["events"] for g, w in zip(got, want))
        assert same == len(want), (same, len(want))
        # the sync decided on same-actor links over the whole corpus, as the one-shot build did,
        # and every shard records it for its later adds
        def built_actor_k(path):
            return [json.loads(m.read_text())["params"]["actor_k"] for m in sorted(path.glob("shard-*/MANIFEST.json"))]
        assert built_actor_k(idx) == built_actor_k(one) * N_SHARDS
        client.close()
    finally:
        for p in [*procs.values(), coord_p]:
            if p is not None and p.poll() is None:
                p.terminate()
        for p in [*procs.values(), coord_p]:
            if p is not None:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()


@pytest.mark.slow
def test_upsert_delete_and_refusals_through_coordinator(corpora, tmp_path):
    """upsert replaces, delete hides (both visible after their sync), a sync with nothing pending
    installs nothing, and an add of a known id with other content is refused, naming the id."""
    d = corpora
    idx = tmp_path / "idx"
    subprocess.run([str(EXE), "build", str(d / "a"), str(idx), "--shards", "2", "--quiet"], check=True,
                   capture_output=True, timeout=300)
    procs = [_shard(idx, k) for k in range(2)]
    coord_p = subprocess.Popen([str(EXE), "serve", "coordinator", "--port", "0", "--build-check", "0.2",
                                *[a for k, (_, addr) in enumerate(procs) for a in ("--shard", f"{k}={addr}")]],
                               stderr=subprocess.PIPE, text=True)
    try:
        client = fastctx.connect(_listening(coord_p), timeout_s=120.0)
        build0 = client.stats()["build"]
        assert client.sync()["synced"] is False and client.stats()["build"] == build0
        first = json.loads((d / "a" / "events.jsonl").read_text().splitlines()[0])
        vec = np.load(d / "a" / "vectors.npy")[:1]
        assert client.add([first], vec) == 1                       # the same content again: a no-op
        assert client.stats()["build"] == build0
        with pytest.raises(FastctxError, match=first["id"]):
            client.add([{**first, "tokens": first["tokens"] + 1}], vec)
        # a batch over two shards with one such id is refused whole: nothing of it is logged
        from fastctx.corpus import EventBatch
        from fastctx.partition import shard_of
        home = int(shard_of(EventBatch.from_records([first], vec), 2, "id")[0])
        new = next(e for e in ({**first, "id": f"fresh-{j}"} for j in range(50))
                   if int(shard_of(EventBatch.from_records([e], vec), 2, "id")[0]) != home)
        with pytest.raises(FastctxError, match=first["id"]) as ei:
            client.add([new, {**first, "tokens": first["tokens"] + 1}], np.vstack([vec, vec]))
        assert not isinstance(ei.value, ShardUnavailableError) and "re-run" not in str(ei.value)
        assert client.sync()["synced"] is False
        assert client.upsert([{**first, "tokens": first["tokens"] + 1}], vec) == 1
        assert client.stats()["n_global"] == 1500

        def found():     # its own vector: the best direct hit, which fill pads with once the chains are in
            got = client.query(vec[0], type="chain", fill=True, budget_tokens=100_000)
            assert not got.partial
            return {e["id"] if isinstance(e, dict) else e.id: e for e in got.events}.get(first["id"])
        ev = found()
        assert (ev["tokens"] if isinstance(ev, dict) else ev.tokens) == first["tokens"] + 1
        assert client.delete([first["id"], "no-such-event"]) == 1
        assert client.stats()["n_global"] == 1499 and found() is None
        client.close()
    finally:
        for p in [*(p for p, _ in procs), coord_p]:
            if p.poll() is None:
                p.terminate()
        for p in [*(p for p, _ in procs), coord_p]:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
