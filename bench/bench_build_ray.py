"""Build throughput of a partitioned build on Ray against the number of workers, beside the
in-process build; and HNSW construction trade-offs (threads, M, ef_construction) against recall,
beside faiss.

    python bench/bench_build_ray.py --events 20000 --workers 1,2 [--shards 4] [--work DIR]
    python bench/bench_build_ray.py --links CORPUS [--workers 1,2]
    python bench/bench_build_ray.py --graph CORPUS [--workers 1,2]
    python bench/bench_build_ray.py --hnsw --n 50000 --dim 384 [--threads 1,2]

The first form generates an orgmem corpus with ../shared/orgmem/generate.py into WORK/corpus
(unless present), builds it in process (`build(..., shards=S)`) and on a local Ray cluster of
W CPUs for each W (`build(..., shards=S, ray="local")` after `ray.init(num_cpus=W)`), and
prints events/s; cluster start-up is timed apart. It checks the Ray index is byte-identical to
the in-process one. A second table times the whole-corpus pass alone: `global_graph` in process
against its per-block partial aggregations and its range-partitioned sorts and joins in Ray
tasks (fastctx/ray_graph.py, fastctx/ray_order.py; also `--graph CORPUS`), and another the
derived links alone (fastctx/ray_links.py; also `--links CORPUS` for an existing orgmem
folder). The last form builds hnswlib and faiss HNSW graphs over clustered unit
vectors and reports build events/s, events/s per thread and recall@10 (exact inner product as
truth; search ef 64 for both).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ORGMEM = Path(__file__).resolve().parents[2] / "shared" / "orgmem"


def _same_files(a: Path, b: Path) -> bool:
    fa = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    return fa == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()) and \
        all((a / p).read_bytes() == (b / p).read_bytes() for p in fa)


def bench_ray(events: int, workers: list[int], shards: int, work: Path, dim: int) -> None:
    import ray

    from fastctx.index import build
    from fastctx.params import BuildParams
    corpus = work / "corpus"
    if not (corpus / "events.jsonl").exists():
        subprocess.run([sys.executable, str(ORGMEM / "generate.py"), str(corpus), "--events", str(events),
                        "--dim", str(dim), "--quiet"], check=True)
    params = BuildParams(threads=1, hnsw_min_rows=1024)   # every shard gets an HNSW graph
    t = time.perf_counter()
    build(corpus, work / "inproc", shards=shards, overwrite=True, params=params)
    base = time.perf_counter() - t
    print(f"{events} events, dim {dim}, {shards} shards, HNSW threads 1 per shard")
    print("| build | workers | start s | build s | events/s | identical |")
    print("|---|---|---|---|---|---|")
    print(f"| in process | 1 | - | {base:.1f} | {events / base:,.0f} | - |")
    for w in workers:
        t = time.perf_counter()
        ray.init(num_cpus=w, include_dashboard=False, log_to_driver=False, configure_logging=False)
        start = time.perf_counter() - t
        try:
            t = time.perf_counter()
            build(corpus, work / f"ray{w}", shards=shards, overwrite=True, params=params, ray="local")
            took = time.perf_counter() - t
        finally:
            ray.shutdown()
        same = _same_files(work / "inproc", work / f"ray{w}")
        print(f"| Ray local | {w} | {start:.1f} | {took:.1f} | {events / took:,.0f} | {same} |")
    bench_links_pass(corpus, workers, params)
    bench_graph_pass(corpus, workers, params, shards)


def bench_links_pass(corpus: Path, workers: list[int], params, similar_k: int = 3) -> None:
    """The derived links alone: `with_derived_links` in process against `ray_derived_links`
    (Ray tasks over time blocks, fastctx/ray_links.py), W CPUs, two blocks per CPU, workers
    warmed by a small call first (a build's read step starts them); with the build's parameters
    and with `similar` links on (`similar_k`), the costliest rule."""
    import dataclasses

    import ray

    from fastctx.derive import with_derived_links
    from fastctx.index import read_for_build
    from fastctx.ray_links import ray_derived_links
    batch, _ = read_for_build(corpus, corpus.parent / "unused", False, None)
    print("\nderived links (with_derived_links)")
    print("| params | pass | workers | s | links | same arrays |")
    print("|---|---|---|---|---|---|")
    for label, p in (("build's", params), (f"similar_k={similar_k}", dataclasses.replace(params, similar_k=similar_k))):
        t = time.perf_counter()
        want = with_derived_links(batch, p)
        base = time.perf_counter() - t
        links = len(want.link_src) - len(batch.link_src)
        print(f"| {label} | in process | 1 | {base:.2f} | {links:,} | - |")
        for w in workers:
            ray.init(num_cpus=w, include_dashboard=False, log_to_driver=False, configure_logging=False)
            try:
                # workers started and warm, as a build's read step leaves them
                ray_derived_links(batch.select(np.arange(min(len(batch), 4000))), p)
                t = time.perf_counter()
                got = ray_derived_links(batch, p)
                took = time.perf_counter() - t
            finally:
                ray.shutdown()
            same = np.array_equal(want.link_src, got.link_src) and np.array_equal(want.link_type, got.link_type) \
                and want.link_to == got.link_to
            print(f"| {label} | Ray tasks | {w} | {took:.2f} | {links:,} | {same} |")


def _timed(fn, *args):
    """(fn(*args), seconds it took)."""
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def bench_graph_pass(corpus: Path, workers: list[int], params, shards: int = 4) -> None:
    """The whole-corpus pass alone: `global_graph` and the shards' `sidecar_arrays` in process
    against Ray, W CPUs, two blocks per CPU, workers warmed by a small call first: the per-event
    inputs as per-block partial aggregations (fastctx/ray_graph.py), then the sorts and joins
    (order, link resolution, CSR, postings, supersession) as tasks over ranges giving
    `global_graph`'s arrays (`ray_global_graph`), and, as a Ray build runs it, the same tasks
    plus one per shard assembling its sidecar (`ray_sidecars`; fastctx/ray_order.py)."""
    import ray

    from fastctx.derive import with_derived_links
    from fastctx.index import read_for_build
    from fastctx.partition import global_graph, local_parts, shard_of, sidecar_arrays
    from fastctx.ray_graph import ray_parts
    from fastctx.ray_order import ray_global_graph, ray_sidecars
    batch, _ = read_for_build(corpus, corpus.parent / "unused", False, None)
    batch = with_derived_links(batch, params)
    n = len(batch)
    shard_in = shard_of(batch, shards)
    want_parts, t_parts = _timed(local_parts, batch, params)
    want, t_sort = _timed(global_graph, batch, params, want_parts)
    want_sc, t_sc = _timed(lambda: [sidecar_arrays(want, shard_in[want["order"]], k, shards) for k in range(shards)])
    print(f"\nwhole-corpus pass, {n:,} events, {shards} shards")
    print("| pass | workers | per-event inputs s | sorts and joins s | sorts, joins and sidecars s | events/s "
          "| same arrays |")
    print("|---|---|---|---|---|---|---|")
    print(f"| in process | 1 | {t_parts:.2f} | {t_sort:.2f} | {t_sort + t_sc:.2f} | "
          f"{n / (t_parts + t_sort + t_sc):,.0f} | - |")
    for w in workers:
        ray.init(num_cpus=w, include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            small = batch.select(np.arange(min(n, 2000)))
            ray_global_graph(small, params, ray_parts(small, params))   # workers started and warm
            parts, t_parts = _timed(ray_parts, batch, params)
            got, t_sort = _timed(ray_global_graph, batch, params, parts)
            got_sc, t_sc = _timed(lambda: ray.get(ray_sidecars(batch, params, parts, shard_in, shards)["sidecars"]))
        finally:
            ray.shutdown()
        same = all(np.array_equal(v, got[k]) if isinstance(v, np.ndarray) else v == got[k] for k, v in want.items()) \
            and all(list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a) for a, b in zip(want_sc, got_sc))
        print(f"| Ray tasks | {w} | {t_parts:.2f} | {t_sort:.2f} | {t_sc:.2f} | "
              f"{n / (t_parts + t_sc):,.0f} | {same} |")


def _clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((max(8, n // 200), dim)).astype(np.float32)
    x = centers[rng.integers(0, len(centers), n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def bench_hnsw(n: int, dim: int, threads: list[int], nq: int = 200) -> None:
    import hnswlib
    x = _clustered(n, dim, 1)
    q = _clustered(nq, dim, 2)
    truth = np.argsort(-(q @ x.T), axis=1)[:, :10]

    def recall(found) -> float:
        return float(np.mean([len(set(f[:10]) & set(t)) / 10 for f, t in zip(found, truth)]))

    print(f"{n} x {dim} clustered unit vectors, recall@10 over {nq} queries, search ef 64")
    print("| library | M | ef_construction | threads | build s | events/s | events/s per thread | recall@10 |")
    print("|---|---|---|---|---|---|---|---|")
    grid = [(16, 200, t) for t in threads] + [(8, 100, max(threads)), (16, 100, max(threads)),
                                              (32, 200, max(threads))]
    for m, efc, th in grid:
        idx = hnswlib.Index(space="ip", dim=dim)
        idx.init_index(max_elements=n, M=m, ef_construction=efc, random_seed=100)
        t = time.perf_counter()
        idx.add_items(x, np.arange(n), num_threads=th)
        took = time.perf_counter() - t
        idx.set_ef(64)
        found, _ = idx.knn_query(q, k=10, num_threads=1)
        print(f"| hnswlib | {m} | {efc} | {th} | {took:.1f} | {n / took:,.0f} | {n / took / th:,.0f} | "
              f"{recall(found):.3f} |")
    try:
        import faiss
    except ImportError:
        print("faiss not installed (pip install 'fastctx[bench]'): faiss rows skipped")
        return
    for m, efc, th in [(16, 200, t) for t in threads] + [(16, 100, max(threads))]:
        faiss.omp_set_num_threads(th)
        idx = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
        idx.hnsw.efConstruction = efc
        t = time.perf_counter()
        idx.add(x)
        took = time.perf_counter() - t
        idx.hnsw.efSearch = 64
        _, found = idx.search(q, 10)
        print(f"| faiss HNSWFlat | {m} | {efc} | {th} | {took:.1f} | {n / took:,.0f} | {n / took / th:,.0f} | "
              f"{recall(found):.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--workers", default="1,2", help="comma-separated Ray CPU counts")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--work", type=Path, default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--hnsw", action="store_true", help="the HNSW construction table instead")
    ap.add_argument("--links", type=Path, default=None, help="the derived-links table alone, on this corpus")
    ap.add_argument("--graph", type=Path, default=None, help="the whole-corpus pass table alone, on this corpus")
    ap.add_argument("--n", type=int, default=50000, help="--hnsw: vectors")
    ap.add_argument("--threads", default="1,2", help="--hnsw: comma-separated thread counts")
    a = ap.parse_args()
    if a.hnsw:
        bench_hnsw(a.n, a.dim, [int(t) for t in a.threads.split(",")])
        return
    if a.links:
        from fastctx.params import BuildParams
        bench_links_pass(a.links, [int(w) for w in a.workers.split(",")], BuildParams())
        return
    if a.graph:
        from fastctx.params import BuildParams
        bench_graph_pass(a.graph, [int(w) for w in a.workers.split(",")], BuildParams(), a.shards)
        return
    work = a.work or Path(tempfile.mkdtemp(prefix="bench_build_ray."))
    work.mkdir(parents=True, exist_ok=True)
    try:
        bench_ray(a.events, [int(w) for w in a.workers.split(",")], a.shards, work, a.dim)
    finally:
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
