"""Writes to a sharded cluster at scale: half a corpus built with --shards N, the other half added
through a coordinator while one shard server is killed and restarted, the add re-run; then the
cluster's answers scored beside a one-shot build of the whole corpus.

    python bench/bench_cluster_writes.py --corpus C --work W [--shards 4] [--batch 2000] [--kill-at 0.3]

Steps (every server a real process on loopback; logs under W/logs):
1. W/a and W/b: the first and second half of C's events (by line), C's meta;
2. `fastctx build W/a W/idx --shards N`, N `fastctx serve shard` processes and a
   `fastctx serve coordinator`;
3. `connect(coordinator).add(W/b, batch=...)`: once `--kill-at` of W/b is acked, shard 2 (or the
   last) is SIGKILLed, so the add fails naming it; the shard is restarted on its port;
4. `fastctx add --remote COORD W/b --batch ...` re-run: what was acked is skipped, the rest logged,
   one sync makes it all visible;
5. `fastctx eval --remote COORD C` and `fastctx eval W/one C` (a one-shot build of C, built here
   unless present), both scored by the orgmem scorer; answers compared question by question.

Prints one JSON object: events before and after, the add's and the re-run's seconds, the scores
of both layouts and how many answers are identical.
"""
from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import fastctx
from fastctx.errors import ShardUnavailableError

EXE = Path(sys.executable).parent / "fastctx"
SCORER = Path(__file__).resolve().parents[2] / "shared" / "orgmem" / "score.py"


def split(corpus: Path, out_a: Path, out_b: Path) -> None:
    """First half of the events (by line) into out_a, the rest into out_b, with C's meta."""
    lines = (corpus / "events.jsonl").read_text().splitlines()
    vec = np.load(corpus / "vectors.npy", mmap_mode="r")
    meta = json.loads((corpus / "meta.json").read_text())
    h = len(lines) // 2
    for out, sl in ((out_a, slice(0, h)), (out_b, slice(h, None))):
        out.mkdir(parents=True)
        (out / "events.jsonl").write_text("\n".join(lines[sl]) + "\n")
        np.save(out / "vectors.npy", np.asarray(vec[sl]))
        (out / "meta.json").write_text(json.dumps({**meta, "n_events": len(lines[sl]), "n_queries": 0}))


def serve(args: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    """A server process logging to `log`; returns it and the address it prints."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        p = subprocess.Popen([str(EXE), "serve", *args], stderr=f, text=True)
    end = time.monotonic() + 300
    while time.monotonic() < end:
        for line in log.read_text().splitlines():
            if "serving on" in line:
                return p, line.strip().rsplit(" ", 1)[-1].strip('"}')
        if p.poll() is not None:
            raise RuntimeError(f"server exited: see {log}")
        time.sleep(0.1)
    raise RuntimeError(f"server did not start: see {log}")


def run(cmd: list[str], timeout: float = 3600) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed: {r.stderr.strip()[-500:]}")
    return r.stdout


def score(corpus: Path, results: Path) -> dict:
    out = {}
    for line in run([sys.executable, str(SCORER), str(corpus), str(results)]).splitlines():
        parts = line.split()
        if parts and parts[0] in ("chain", "current", "as_of"):
            key = "recall" if parts[0] == "chain" else "accuracy"
            out[parts[0]] = float(parts[parts.index(key) + 1])
            if parts[0] == "chain":
                out["chain_precision"] = float(parts[parts.index("precision") + 1])
        elif parts and parts[0] == "LEAKS":
            out["leaks"] = line.strip()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", required=True, type=Path)
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--kill-at", type=float, default=0.3, help="share of the second half acked before the kill")
    a = ap.parse_args()
    w = a.work
    for part in ("a", "b", "idx", "logs"):      # a fresh run; W/one (the one-shot build) is kept
        shutil.rmtree(w / part, ignore_errors=True)
    split(a.corpus, w / "a", w / "b")
    n_b = sum(1 for _ in open(w / "b" / "events.jsonl"))
    t0 = time.perf_counter()
    run([str(EXE), "build", str(w / "a"), str(w / "idx"), "--shards", str(a.shards), "--quiet"])
    report = {"corpus": str(a.corpus), "shards": a.shards, "batch": a.batch,
              "build_first_half_s": round(time.perf_counter() - t0, 1)}
    victim = min(2, a.shards - 1)
    procs, addrs = {}, {}
    coord = None
    try:
        for k in range(a.shards):
            procs[k], addrs[k] = serve(["shard", "--index", str(w / "idx"), "--shard", str(k), "--port", "0"],
                                       w / "logs" / f"shard-{k}.log")
        coord, caddr = serve(["coordinator", "--port", "0",
                              *[x for k in range(a.shards) for x in ("--shard", f"{k}={addrs[k]}")]],
                             w / "logs" / "coordinator.log")
        client = fastctx.connect(caddr, timeout_s=600.0)
        report["events_before"] = client.stats()["n_global"]
        killed = {}

        def progress(stage, done, total):
            if done >= a.kill_at * n_b and not killed:
                procs[victim].send_signal(signal.SIGKILL)
                procs[victim].wait()
                killed["at"] = done

        t0 = time.perf_counter()
        try:
            client.add(str(w / "b"), batch=a.batch, progress=progress)
            report["first_add"] = "completed (the kill came too late)"
        except ShardUnavailableError as e:
            report["first_add"] = f"failed as it should: {e}"
        report["first_add_s"], report["killed_after_acks"] = round(time.perf_counter() - t0, 1), killed.get("at")
        port = addrs[victim].rsplit(":", 1)[1]
        procs[victim], addrs[victim] = serve(["shard", "--index", str(w / "idx"), "--shard", str(victim),
                                              "--port", port], w / "logs" / f"shard-{victim}-restarted.log")
        time.sleep(1.5)          # the coordinator's channel retries at most a second apart
        t0 = time.perf_counter()
        out = run([str(EXE), "add", "--remote", caddr, str(w / "b"), "--batch", str(a.batch)])
        report["rerun_add_s"] = round(time.perf_counter() - t0, 1)
        report["rerun_last_line"] = out.strip().splitlines()[-1]
        report["events_after"] = client.stats()["n_global"]
        client.close()
        run([str(EXE), "eval", "--remote", caddr, str(a.corpus), "--out", str(w / "cluster.jsonl"), "--quiet"])
    finally:
        for p in [*procs.values(), coord]:
            if p is not None and p.poll() is None:
                p.terminate()
        for p in [*procs.values(), coord]:
            if p is not None:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
    one = w / "one"
    if not (one / "fastctx.json").exists():
        run([str(EXE), "build", str(a.corpus), str(one), "--quiet"])
    run([str(EXE), "eval", str(one), str(a.corpus), "--out", str(w / "one.jsonl"), "--quiet"])
    report["cluster"] = score(a.corpus, w / "cluster.jsonl")
    report["one_shot"] = score(a.corpus, w / "one.jsonl")
    got = [json.loads(x) for x in open(w / "cluster.jsonl")]
    want = [json.loads(x) for x in open(w / "one.jsonl")]
    report["identical_answers"] = f"{sum(g['events'] == o['events'] for g, o in zip(got, want))}/{len(want)}"
    report["partial_answers"] = sum(bool(g.get("partial")) for g in got)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
