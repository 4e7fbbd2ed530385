"""Sharded serving: embedded 1 shard vs N shard servers + a coordinator on loopback.

    python bench/bench_sharded.py --corpus CORPUS_DIR --work WORK_DIR [--shards 4] [--queries 200]

Builds WORK_DIR/one (1 shard) and WORK_DIR/sharded (N shards) unless present, starts N shard
server *processes* (`fastctx serve shard`) plus one extra replica of shard 0, a coordinator
in this process behind its gRPC server, and a client (`fastctx.connect`). Reports per mode:
p50 / p99 latency, queries/s (one client, sequential), bytes on the wire per query (client <->
coordinator and coordinator <-> shards), the coordinator's own overhead (distributed minus
embedded latency, and the time the coordinator spends outside shard calls is not separated:
see docs/SHARDED.md), and p99 while a replica of shard 0 is killed mid-run. Also checks how
many answers equal the embedded ones (ids and order), and times the transport's floor: a Stats
call (no work) to every shard at once and to one. Shard servers log to WORK_DIR/logs.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from fastctx.corpus import read_queries
from fastctx.index import Index, build
from fastctx.shards.coordinator import Coordinator
from fastctx.shards.server import CoordinatorServer, connect
from fastctx.shards.transport import remote_cluster


def _start_shard(exe, index, k, log_dir):
    """A shard server process; its log (an access line per call) goes to a file in `log_dir`, not
    to a pipe this process drains, which would take the benchmarked coordinator's CPU."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"shard-{k}-{time.monotonic_ns()}.log"
    with open(log, "w") as f:
        p = subprocess.Popen([str(exe), "serve", "shard", "--index", str(index), "--shard", str(k), "--port", "0"],
                             stderr=f, text=True)
    while True:
        for line in log.read_text().splitlines():
            if "serving on" in line:
                return p, line.strip().rsplit(" ", 1)[-1]
        if p.poll() is not None:
            raise RuntimeError(f"shard {k} exited: see {log}")
        time.sleep(0.05)


def _scatter_floor(cluster, shards, n=300) -> dict:
    """Median ms of a Stats call (no work) to every shard at once and to one: the transport's
    floor under every question's Search round on this machine."""
    out = {}
    for name, ks in (("all_shards", shards), ("one_shard", shards[:1])):
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            cluster.scatter("Stats", {k: {} for k in ks}, time.monotonic() + 5)
            ts.append(1e3 * (time.perf_counter() - t0))
        out[f"{name}_p50_ms"] = round(float(np.median(ts)), 2)
    return out


def _pct(xs, types=None):
    """Latency percentiles, overall and (given each query's type) per query type."""
    xs = np.asarray(xs)
    out = {"p50_ms": round(float(np.percentile(xs, 50)), 2), "p99_ms": round(float(np.percentile(xs, 99)), 2),
           "mean_ms": round(float(xs.mean()), 2), "qps": round(1e3 / float(xs.mean()), 1)}
    for t in sorted(set(types or ())):
        sub = xs[np.asarray(types) == t]
        out[f"{t}_p50_ms"] = round(float(np.percentile(sub, 50)), 2)
        out[f"{t}_p99_ms"] = round(float(np.percentile(sub, 99)), 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True, type=Path)
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--replica", action="store_true",
                    help="also run a second coordinator holding the graph replica (shards/replica.py) over the "
                         "same shard servers, alternating with the first")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    res: dict = {"corpus": str(a.corpus), "shards": a.shards}
    for name, n in (("one", 1), ("sharded", a.shards)):
        if not (a.work / name / "fastctx.json").exists():
            t0 = time.perf_counter()
            build(a.corpus, a.work / name, shards=n, overwrite=True)
            res[f"build_{name}_s"] = round(time.perf_counter() - t0, 1)
    queries, qvecs = read_queries(a.corpus)
    queries, qvecs = queries[:a.queries], qvecs[:a.queries]
    one = Index(a.work / "one")
    res["events"] = one.n
    one.warm_up()
    lat, answers = [], []
    for q, v in zip(queries, qvecs):
        t0 = time.perf_counter()
        ans = one.query_spec(q, v)
        lat.append(1e3 * (time.perf_counter() - t0))
        answers.append([e.id for e in ans.events])
    types = [q["type"] for q in queries]
    res["embedded_1_shard"] = _pct(lat, types)
    exe = Path(sys.executable).parent / "fastctx"
    procs, addrs = [], {}
    try:
        for k in range(a.shards):
            p, addr = _start_shard(exe, a.work / "sharded", k, a.work / "logs")
            procs.append(p)
            addrs[k] = [addr]
        p, addr = _start_shard(exe, a.work / "sharded", 0, a.work / "logs")   # a second replica of shard 0
        procs.append(p)
        addrs[0].append(addr)
        cluster = remote_cluster(addrs, call_timeout_s=2.0, hedge_s=0.25)
        coords = {"": Coordinator(cluster)}
        if a.replica:
            coords["_graph_replica"] = Coordinator(remote_cluster(addrs, call_timeout_s=2.0, hedge_s=0.25),
                                                   replica=a.work / "sharded")
        servers = {k: CoordinatorServer(c, port=0).start() for k, c in coords.items()}
        clients = {k: connect(srv.address) for k, srv in servers.items()}
        for client in clients.values():
            for q, v in list(zip(queries, qvecs))[:5]:   # warm caches and connections
                client.query_spec(q, v)

        def run(client, kill_at=None):
            lat, same, b_client, b_shards, waves, rpcs, partial, local = [], 0, 0, 0, 0, 0, 0, 0
            for i, (q, v) in enumerate(zip(queries, qvecs)):
                if kill_at is not None and i == kill_at:
                    procs[0].kill()          # the preferred replica of shard 0 dies mid-run
                t0 = time.perf_counter()
                ans = client.query_spec(q, v)
                lat.append(1e3 * (time.perf_counter() - t0))
                same += [e.id for e in ans.events] == answers[i]
                b_client += sum(client.last_bytes)
                b_shards += ans.timings["bytes_out"] + ans.timings["bytes_in"]
                waves += ans.timings["waves"]
                rpcs += ans.timings["rpcs"]
                partial += ans.partial
                local += bool(ans.timings.get("on_replica"))
            n = len(lat)
            return {**_pct(lat, types), "identical_to_embedded": f"{same}/{n}", "partial": partial,
                    "bytes_client_per_query": int(b_client / n), "bytes_shards_per_query": int(b_shards / n),
                    "expand_waves_per_query": round(waves / n, 1), "shard_rpcs_per_query": round(rpcs / n, 1),
                    "expanded_on_replica": local}

        for rnd in range(2 if a.replica else 1):   # alternate the coordinators: the VM's load drifts
            for k, client in clients.items():
                res[f"grpc_{a.shards}_shards{k}" + (f"_run{rnd + 1}" if a.replica else "")] = run(client)
        res["stats_scatter_floor"] = _scatter_floor(cluster, list(range(a.shards)))
        first = res[f"grpc_{a.shards}_shards" + ("_run1" if a.replica else "")]
        res["coordinator_overhead_p50_ms"] = round(first["p50_ms"] - res["embedded_1_shard"]["p50_ms"], 2)
        for k, client in clients.items():   # last: it kills a replica
            res[f"grpc_{a.shards}_shards{k}_replica_killed"] = run(client, kill_at=len(queries) // 3 if not k else None)
        for k in coords:
            clients[k].close()
            servers[k].stop(0)
            coords[k].close()
    finally:
        for p in procs:
            p.kill()
            p.wait()
    print(json.dumps(res, indent=1))
    if a.out:
        a.out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
