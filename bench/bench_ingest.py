"""Ingest benchmarks: durable add() throughput (one fsync per batch), reopen with a long log,
compaction throughput, and query latency against the number of unmerged segments.

    .venv/bin/python bench/bench_ingest.py [--dir /tmp/fastctx-bench] [--dim 128] [--quick]
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

from fastctx.index import Index
from fastctx.params import BuildParams

T0 = 1_704_067_200


def records(lo: int, hi: int, rng) -> list[dict]:
    return [{"id": f"e{i}", "time": T0 + i * 30, "source": ("jira", "github", "slack")[i % 3],
             "kind": ("decision", "patch", "discussion", "incident")[i % 4], "tokens": 50 + i % 200,
             "entities": [f"service:s{i % 50}", f"fn:f{i // 8}", f"team:t{int(rng.integers(0, 300))}"],
             "links": [{"to": f"e{i - 1}", "type": "reply"}] if i % 3 == 1 else [],
             "text": f"event {i} about service s{i % 50}"} for i in range(lo, hi)]


def unit(n: int, dim: int, rng) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def fresh(path: Path, dim: int, **kw) -> Index:
    shutil.rmtree(path, ignore_errors=True)
    Index.create(path, dim).close()
    return Index(path, writable=True, **kw)


def bench_add(root: Path, dim: int, quick: bool) -> None:
    rng = np.random.default_rng(0)
    for batch, n_batches in ((1, 200 if quick else 1000), (100, 20 if quick else 100), (10_000, 2 if quick else 5)):
        idx = fresh(root / f"add-{batch}", dim, memtable_max_rows=10**9)
        total = batch * n_batches
        recs, vecs = records(0, total, rng), unit(total, dim, rng)
        t = time.perf_counter()
        for b in range(n_batches):
            idx.add(recs[b * batch:(b + 1) * batch], vecs[b * batch:(b + 1) * batch])
        dt = time.perf_counter() - t
        print(f"add  batch {batch:>6}: {total / dt:>10,.0f} events/s  ({1e3 * dt / n_batches:.2f} ms per durable batch, "
              f"{n_batches} batches)")
        idx.close()


def bench_reopen(root: Path, dim: int, quick: bool) -> None:
    n = 20_000 if quick else 100_000
    rng = np.random.default_rng(1)
    idx = fresh(root / "reopen", dim, memtable_max_rows=10**9)
    for lo in range(0, n, 10_000):
        idx.add(records(lo, lo + 10_000, rng), unit(10_000, dim, rng))
    idx.close()
    t = time.perf_counter()
    r = Index(root / "reopen")
    t_open = time.perf_counter() - t
    r.search(unit(1, dim, rng)[0], k=10)          # the memtable is built on first use
    t_first = time.perf_counter() - t
    print(f"reopen with {n:,} events in the log: open+replay {t_open:.2f} s, to first search result {t_first:.2f} s")
    w = Index(root / "reopen", writable=True)
    t = time.perf_counter()
    w.flush()
    print(f"flush of those {n:,} events into one segment (HNSW included): {time.perf_counter() - t:.2f} s")
    w.close()


def bench_compact(root: Path, dim: int, quick: bool, hnsw: bool = True) -> None:
    per, segs = (5_000, 4) if quick else (10_000, 10)
    rng = np.random.default_rng(2)
    idx = fresh(root / "compact", dim, build_params=BuildParams(hnsw_min_rows=10**9))
    for s in range(segs):
        idx.add(records(s * per, (s + 1) * per, rng), unit(per, dim, rng))
        idx.flush()
    idx.delete([f"e{i}" for i in range(0, segs * per, 10)])   # 10% deleted
    idx.flush()
    idx.build_params = BuildParams() if hnsw else BuildParams(hnsw_min_rows=10**9)
    t = time.perf_counter()
    runs = idx.compact(force=True)
    dt = time.perf_counter() - t
    print(f"compaction: {segs} segments x {per:,} (10% deleted) -> {len(runs)} merge(s), {segs * per / dt:,.0f} "
          f"events/s in ({dt:.2f} s, {'HNSW rebuilt' if hnsw else 'no HNSW'})")
    idx.close()


def bench_compact_nohnsw(root: Path, dim: int, quick: bool) -> None:
    bench_compact(root, dim, quick, hnsw=False)


def bench_segments(root: Path, dim: int, quick: bool) -> None:
    total = 20_000 if quick else 50_000
    rng = np.random.default_rng(3)
    recs, vecs = records(0, total, rng), unit(total, dim, rng)
    qs = unit(200, dim, rng)
    for k in (1, 10, 50):
        idx = fresh(root / f"segs-{k}", dim, build_params=BuildParams(hnsw_min_rows=4096))
        per = total // k
        for s in range(k):
            idx.add(recs[s * per:(s + 1) * per], vecs[s * per:(s + 1) * per])
            idx.flush()
        idx.close()
        r = Index(root / f"segs-{k}")
        r.warm_up()
        lat, qlat = [], []
        for q in qs:
            t = time.perf_counter()
            r.search(q, k=10)
            lat.append(1e3 * (time.perf_counter() - t))
        for q in qs[:50]:
            t = time.perf_counter()
            r.query(q)
            qlat.append(1e3 * (time.perf_counter() - t))
        print(f"{k:>2} unmerged segment(s) of {per:,} ({r.stats()['hnsw_segments']} with HNSW): search k=10 p50 "
              f"{statistics.median(lat):.2f} ms p99 {np.percentile(lat, 99):.2f} ms; query() p50 "
              f"{statistics.median(qlat):.2f} ms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/fastctx-bench")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="add,reopen,compact-nohnsw,compact,segments")
    a = ap.parse_args()
    root = Path(a.dir)
    root.mkdir(parents=True, exist_ok=True)
    for name in a.only.split(","):
        {"add": bench_add, "reopen": bench_reopen, "compact": bench_compact, "compact-nohnsw": bench_compact_nohnsw,
         "segments": bench_segments}[name](
            root, a.dim, a.quick)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
