"""HNSW build throughput: hnswlib (what fastctx builds with) beside faiss IndexHNSWFlat.

    python bench/bench_hnsw_build.py --n 50000 --dims 384,128 --threads 1,2 --m 8,16,32 --efc 50,100,200

For each dim, builds an inner-product HNSW graph over clustered unit vectors (centres plus
noise; closer to sentence embeddings than uniform noise, and harder for a graph index) for every
(M, ef_construction, threads), and prints build time, events/s, events/s per thread and
recall@10 against exact inner product at the query ef fastctx searches with
(SearchParams.ef_search). faiss rows need the `bench` extra; they are skipped without it.
"""
from __future__ import annotations

import argparse
import itertools
import time

import numpy as np

from fastctx.params import BuildParams, SearchParams


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((max(8, n // 200), dim)).astype(np.float32)
    x = centers[rng.integers(0, len(centers), n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def build_hnswlib(x, m, efc, threads, ef):
    import hnswlib
    idx = hnswlib.Index(space="ip", dim=x.shape[1])
    idx.init_index(max_elements=len(x), M=m, ef_construction=efc, random_seed=BuildParams().seed)
    t = time.perf_counter()
    idx.add_items(x, np.arange(len(x)), num_threads=threads)
    took = time.perf_counter() - t
    idx.set_ef(ef)
    return took, lambda q: idx.knn_query(q, k=10, num_threads=1)[0]


def build_faiss(x, m, efc, threads, ef):
    import faiss
    faiss.omp_set_num_threads(threads)
    idx = faiss.IndexHNSWFlat(x.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    idx.hnsw.efConstruction = efc
    t = time.perf_counter()
    idx.add(x)
    took = time.perf_counter() - t
    idx.hnsw.efSearch = ef
    return took, lambda q: idx.search(q, 10)[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ints = lambda s: [int(v) for v in s.split(",")]  # noqa: E731
    ap.add_argument("--n", type=int, default=50000, help="vectors per index")
    ap.add_argument("--dims", type=ints, default=[384, 128])
    ap.add_argument("--threads", type=ints, default=[1, 2])
    ap.add_argument("--m", type=ints, default=[8, 16, 32])
    ap.add_argument("--efc", type=ints, default=[50, 100, 200])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--libs", default="hnswlib,faiss")
    a = ap.parse_args()
    ef = SearchParams().ef_search
    libs = {"hnswlib": build_hnswlib, "faiss": build_faiss}
    wanted = [name for name in a.libs.split(",") if name in libs]
    if "faiss" in wanted:
        try:
            import faiss  # noqa: F401
        except ImportError:
            print("faiss not installed (pip install 'fastctx[bench]'): faiss rows skipped")
            wanted.remove("faiss")
    d = BuildParams()
    print(f"build defaults: M {d.hnsw_m}, ef_construction {d.hnsw_ef_construction}, threads {d.threads}; "
          f"query ef {ef}")
    for dim in a.dims:
        x = clustered(a.n, dim, 1)
        q = clustered(a.queries, dim, 2)
        truth = np.argsort(-(q @ x.T), axis=1)[:, :10]
        print(f"\n{a.n} x {dim}, recall@10 over {a.queries} queries at ef {ef}")
        print("| library | M | ef_construction | threads | build s | events/s | events/s per thread | recall@10 |")
        print("|---|---|---|---|---|---|---|---|")
        for lib, m, efc, th in itertools.product(wanted, a.m, a.efc, a.threads):
            took, search = libs[lib](x, m, efc, th, ef)
            found = search(q)
            rec = float(np.mean([len(set(f[:10].tolist()) & set(t.tolist())) / 10 for f, t in zip(found, truth)]))
            print(f"| {lib} | {m} | {efc} | {th} | {took:.1f} | {a.n / took:,.0f} | {a.n / took / th:,.0f} | "
                  f"{rec:.3f} |", flush=True)


if __name__ == "__main__":
    main()
