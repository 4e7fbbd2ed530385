"""Graph expansion: fastctx's Numba kernel against networkx, scipy.sparse.csgraph and igraph.

The same expansion everywhere: for each chain query, each of its top `--seeds` filtered vector
hits (the engine's candidate heads) is expanded on its own: max-product best-first search backwards in
time over explicit links (typed weights) and rare shared entities (rarity weight x time decay),
keeping every event whose best path scores >= min_score. For the peers the event graph is
materialised as an explicit weighted edge list (weight -log w, so max-product = shortest path);
fastctx walks its CSR arrays directly. Each peer's reached set is checked against the kernel's.

    python bench/bench_expand.py --index INDEX_DIR --corpus CORPUS_DIR [--queries 100]

Build INDEX_DIR first with `fastctx build CORPUS_DIR INDEX_DIR` (e.g. a corpus from
`python ../shared/orgmem/generate.py CORPUS_DIR --events 100000`). Single thread throughout.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from fastctx.answer import DIRECTIONS
from fastctx.corpus import read_queries
from fastctx.filters import Filters
from fastctx.index import Index


def materialise(engine, direction: int):
    """Every edge the kernel may take (back direction): (src, dst, weight), best per pair."""
    g = engine.graph
    n = g.n
    src = np.repeat(np.arange(n, dtype=np.int64), np.diff(g.out_ptr))
    w = engine.link_weight[g.out_type].astype(np.float64)
    keep = (w > 0) & (g.times[g.out_dst] <= g.times[src]) & (g.out_dst != src)
    parts = [(src[keep], g.out_dst[keep].astype(np.int64), w[keep])]
    scale = engine.params.time_scale_days * 86_400
    for e in np.flatnonzero(engine.ent_weight > 0):
        rows = np.asarray(g.ent_rows[g.ent_ptr[e]:g.ent_ptr[e + 1]], dtype=np.int64)
        a, b = np.meshgrid(rows, rows, indexing="ij")
        a, b = a.ravel(), b.ravel()
        ok = (a != b) & (g.times[b] <= g.times[a])
        a, b = a[ok], b[ok]
        dt = np.abs(g.times[a] - g.times[b]).astype(np.float64)
        parts.append((a, b, float(engine.ent_weight[e]) / (1.0 + dt / scale)))
    s = np.concatenate([p[0] for p in parts])
    d = np.concatenate([p[1] for p in parts])
    w = np.concatenate([p[2] for p in parts])
    order = np.lexsort((-w, d, s))  # best weight first per (src, dst)
    s, d, w = s[order], d[order], w[order]
    first = np.ones(len(s), bool)
    first[1:] = (s[1:] != s[:-1]) | (d[1:] != d[:-1])
    return s[first], d[first], w[first], n


def run(index_dir: Path, corpus_dir: Path, n_queries: int, min_score: float, per_query: int) -> dict:
    import igraph
    import networkx as nx
    import scipy.sparse as sp
    from scipy.sparse.csgraph import dijkstra

    idx = Index(index_dir)
    idx.engine().warm_up()
    engine = idx.engine().g  # the local graph access: its arrays, weights and allowed mask
    back = DIRECTIONS["back"]
    queries, qv = read_queries(corpus_dir)
    seeds = []
    for q, v in zip(queries, qv):
        if q["type"] == "chain" and len(seeds) < n_queries:
            hits = idx.search(v, k=per_query, filters=Filters.from_dict(q["filters"]))
            if hits.counts[0]:
                seeds.append(hits.rows[0, :hits.counts[0]].astype(np.int64))
    t0 = time.perf_counter()
    s, d, w, n = materialise(engine, back)
    t_mat = time.perf_counter() - t0
    cost = -np.log(w)
    limit = -math.log(min_score)
    csr = sp.csr_matrix((cost, (s, d)), shape=(n, n))
    G = nx.DiGraph()
    G.add_nodes_from(range(n))
    G.add_weighted_edges_from(zip(s.tolist(), d.tolist(), cost.tolist()))
    ig = igraph.Graph(n=n, edges=list(zip(s.tolist(), d.tolist())), directed=True)
    ig.es["weight"] = cost.tolist()
    big = 10 ** 9

    # each library answers every query in its own loop (as a service dedicated to it would), so
    # none runs with caches the others just evicted; then every reached set is compared
    timings = {"fastctx": [], "networkx": [], "scipy": [], "igraph": []}
    got: dict[str, list] = {k: [] for k in timings}

    def timed(name, fn):
        for group in seeds:
            t = time.perf_counter()
            out = fn(group)
            timings[name].append(time.perf_counter() - t)
            got[name].append(out)

    timed("fastctx", lambda group: _kernel(engine, group, back, min_score, big))
    timed("networkx", lambda group: [nx.single_source_dijkstra_path_length(G, int(sd), cutoff=limit) for sd in group])
    timed("scipy", lambda group: dijkstra(csr, directed=True, indices=group, limit=limit))
    timed("igraph", lambda group: np.asarray(ig.distances(source=group.tolist(), weights="weight", mode="out")))

    differ = {"networkx": 0, "scipy": 0, "igraph": 0}  # events reached by one side only, summed
    thr = min_score * (1 + 1e-5)  # ignore events within float rounding of the threshold
    reached = []
    for gi, group in enumerate(seeds):
        res_ptr, rows, scores = got["fastctx"][gi]
        ours = [set(rows[res_ptr[i]:res_ptr[i + 1]][scores[res_ptr[i]:res_ptr[i + 1]] >= thr].tolist())
                for i in range(len(group))]
        reached.append(sum(len(o) for o in ours))
        differ["networkx"] += sum(len(o ^ {v for v, c in d.items() if math.exp(-c) >= thr})
                                  for o, d in zip(ours, got["networkx"][gi]))
        for name in ("scipy", "igraph"):
            for o, row in zip(ours, got[name][gi]):
                reach = np.flatnonzero(np.isfinite(row) & (row <= limit))
                differ[name] += len(o ^ set(reach[np.exp(-row[reach]) >= thr].tolist()))

    med = {k: 1e3 * float(np.median(v)) for k, v in timings.items()}
    p99 = {k: 1e3 * float(np.percentile(v, 99)) for k, v in timings.items()}
    return {"events": n, "edges": int(len(s)), "queries": len(seeds), "seeds_per_query": per_query,
            "mean_events_reached_per_query": float(np.mean(reached)), "min_score": min_score,
            "materialise_s": t_mat, "median_ms": med, "p99_ms": p99,
            "speedup_vs": {k: med[k] / med["fastctx"] for k in ("networkx", "scipy", "igraph")},
            "events_reached_by_one_side_only": differ}


def _kernel(engine, seeds: np.ndarray, direction: int, min_score: float, big: int):
    """One independent expansion per seed, in one kernel call (as the engine runs them)."""
    from fastctx.kernels.expand import expand_best_first_batch
    p, g = engine.params, engine.graph
    out = expand_best_first_batch(
        np.arange(len(seeds) + 1, dtype=np.int64), seeds, np.ones(len(seeds), np.float32),
        g.times, engine.allowed,
        g.out_ptr, g.out_dst, g.out_type, g.in_ptr, g.in_src, g.in_type, engine.link_weight,
        g.ev_ptr, g.ev_ent, g.ent_ptr, g.ent_rows, engine.ent_weight, direction,
        -(2 ** 62), 2 ** 62, big, big, big, big, 0, big, min_score, float(p.time_scale_days * 86_400))
    return out[0], out[1], out[2].astype(np.float64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", type=Path, required=True)
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--seeds", type=int, default=20, help="top hits expanded per query (engine default 20)")
    ap.add_argument("--min-score", type=float, default=0.02, help="engine default 0.02")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    res = run(a.index, a.corpus, a.queries, a.min_score, a.seeds)
    print(json.dumps(res, indent=1))
    if a.out:
        a.out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
