#!/usr/bin/env python
"""Filtered top-k seed search: fastctx vs hnswlib (filter callable) vs faiss (IDSelector) vs numpy.

    python bench/bench_seeds.py --n 500000 --dim 384 --queries 200 --k 10 \
        [--fractions 1,0.3,0.1,0.01,0.001] [--out results.json]

Same data, same queries, same filters, one query per call, one thread, in one run:

  fastctx  `Index.search(q, k, **filters)`; SearchParams (ef_search, overfetch) swept until
           recall@k >= target; the plan (`Index.explain`) is recorded.
  hnswlib  `knn_query(q, k, filter=callable)`; the callable is `list.__getitem__` on a Python
           list of bools (the cheapest callable there is). The graph is fastctx's own hnsw.bin
           loaded into a separate `hnswlib.Index` (fastctx builds it with plain hnswlib, same
           M=16 / ef_construction=200), so both sides search the *same* graph and only the
           filtering strategy differs. ef swept.
  faiss    `IndexHNSWFlat(dim, 16, METRIC_INNER_PRODUCT)`, efConstruction=200, built with 2
           OpenMP threads, searched with 1; `SearchParametersHNSW(sel=IDSelectorBitmap /
           IDSelectorRange, efSearch=ef)`. ef swept.
  numpy    exact scan of the allowed rows (slice for a time window, gather for a bitmap).

Beside fastctx's chosen point, `Index.search_batch(all queries, k, **filters)` at the same
setting is timed once ("fastctx batch" column): one plan, one graph call per round.

"fastctx-beam" (filters the planner walks, allowed fraction below --beam-below): fastctx again with
the planner's beam walk switched on (`SearchParams.walk_beam_below`; off by default, see planner.py).

Filters: "none" (fraction 1), "random" (a `kinds` filter: every event has one of 1000 kinds,
exactly n/1000 events each, assigned by a random permutation, so listing round(f*1000) kinds
allows exactly f*n random rows) and "time" (a `time_from/time_to` window holding f*n contiguous
rows, centred). Ground truth: exact brute force over the allowed rows.

Generated data, queries and built indexes are cached under bench_data/ (gitignored), keyed by
their parameters, so a rerun skips straight to the queries.
"""
from __future__ import annotations

import os

# One BLAS / OpenMP thread for every timed search (set before numpy / faiss load). Builds ask
# for their threads explicitly (hnswlib num_threads, faiss.omp_set_num_threads).
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse
import json
from dataclasses import replace
import multiprocessing as mp
import platform
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

T0 = 1_600_000_000          # time of row 0; row i has time T0 + i (so the index keeps row order)
N_KINDS = 1000              # random-filter granularity: fraction f lists round(f * N_KINDS) kinds
HNSW_M, HNSW_EFC = 16, 200
EF_LADDER = [10, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
FASTCTX_LADDER = [(10, 1.0), (16, 1.0), (32, 1.0), (32, 2.0), (64, 2.0), (128, 2.0), (128, 4.0),
                  (256, 4.0), (512, 4.0), (512, 8.0), (1024, 8.0), (2048, 16.0)]
FASTCTX_DEFAULT = (64, 2.0)   # SearchParams() defaults: ef_search, overfetch


def log(*a) -> None:
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def source_fingerprint() -> str:
    """sha1 over fastctx/*.py: which version of the (moving) code a result belongs to."""
    import hashlib
    h = hashlib.sha1()
    for f in sorted((ROOT / "fastctx").glob("*.py")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:12]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---------------------------------------------------------------------------------------- data
def data_key(a) -> str:
    return f"n{a.n}_d{a.dim}_c{a.clusters}_noise{a.noise:g}_s{a.seed}"


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_data(a, ddir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(vectors [n, dim] unit float32, kind bucket [n] int32 in [0, N_KINDS))."""
    xp, bp = ddir / "vectors.npy", ddir / "bucket.npy"
    if xp.exists() and bp.exists():
        return np.load(xp), np.load(bp)
    ddir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    rng = np.random.default_rng(a.seed)
    centres = unit(rng.standard_normal((a.clusters, a.dim)))
    np.save(ddir / "centres.npy", centres)
    assign = rng.integers(0, a.clusters, a.n)
    x = np.empty((a.n, a.dim), np.float32)
    sigma = a.noise / np.sqrt(a.dim)
    for lo in range(0, a.n, 50_000):
        hi = min(a.n, lo + 50_000)
        x[lo:hi] = unit(centres[assign[lo:hi]] + sigma * rng.standard_normal((hi - lo, a.dim)))
    bucket = (rng.permutation(a.n) % N_KINDS).astype(np.int32)
    np.save(str(xp) + ".tmp.npy", x)
    os.replace(str(xp) + ".tmp.npy", xp)
    np.save(bp, bucket)
    log(f"generated data {a.n}x{a.dim} in {time.perf_counter() - t:.1f}s")
    return x, bucket


def make_queries(a, ddir: Path) -> np.ndarray:
    qp = ddir / f"queries_nq{a.queries}_qs{a.seed + 1}.npy"
    if qp.exists():
        return np.load(qp)
    centres = np.load(ddir / "centres.npy")
    rng = np.random.default_rng(a.seed + 1)
    qc = rng.integers(0, a.clusters, a.queries)
    q = unit(centres[qc] + a.noise / np.sqrt(a.dim) * rng.standard_normal((a.queries, a.dim)))
    np.save(qp, q)
    return q


# --------------------------------------------------------------------------------------- builds
def _build_fastctx(xpath: str, bpath: str, out: str, threads: int, result) -> None:
    """Child process: build the fastctx index; report timings and this process's peak RSS."""
    from fastctx.corpus import EventBatch
    from fastctx.index import Index
    from fastctx.params import BuildParams

    x = np.load(xpath, mmap_mode="r")
    bucket = np.load(bpath)
    n = len(x)
    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    records = [{"id": f"e{i}", "time": T0 + i, "source": "bench", "kind": f"k{int(b)}", "tokens": 10,
                "entities": [f"tag:{i % 1000}"]} for i, b in enumerate(bucket.tolist())]
    t1 = time.perf_counter()
    batch = EventBatch.from_records(records, x)
    del records
    t2 = time.perf_counter()
    last = [t2]

    def progress(stage, done, total):
        now = time.perf_counter()
        stages[stage] = stages.get(stage, 0.0) + now - last[0]
        last[0] = now

    import inspect
    bp = BuildParams(hnsw_m=HNSW_M, hnsw_ef_construction=HNSW_EFC, threads=threads)
    open_kw = {}
    sig = inspect.signature(Index.__init__).parameters
    if "memtable_max_rows" in sig:  # write-ahead-log versions: keep the batch in the log, flush once
        open_kw["memtable_max_rows"] = 1 << 62
    if "build_params" in sig:
        open_kw["build_params"] = bp
    index = Index.create(out, x.shape[1], **open_kw)
    index.add(batch, params=bp, progress=progress)
    t3 = time.perf_counter()
    if hasattr(index, "flush"):  # the segment (and its HNSW graph) is written here
        last[0] = t3
        index.flush(progress=progress)
    t4 = time.perf_counter()
    if hasattr(index, "close"):
        index.close()
    result.update({"n": n, "records_s": t1 - t0, "from_records_s": t2 - t1, "add_s": t4 - t2,
                   "add_call_s": t3 - t2, "flush_s": t4 - t3, "stages_s": stages, "peak_rss_mib": peak_rss_mib()})


def _build_faiss(xpath: str, out: str, threads: int, result) -> None:
    import faiss
    faiss.omp_set_num_threads(threads)
    x = np.load(xpath)
    t = time.perf_counter()
    index = faiss.IndexHNSWFlat(x.shape[1], HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW_EFC
    index.add(x)
    dt = time.perf_counter() - t
    faiss.write_index(index, out + ".tmp")
    os.replace(out + ".tmp", out)
    result.update({"n": len(x), "add_s": dt, "peak_rss_mib": peak_rss_mib()})


def in_child(fn, *args) -> dict:
    """Run a build in a fresh process so its peak RSS is its own."""
    ctx = mp.get_context("spawn")
    with ctx.Manager() as m:
        result = m.dict()
        p = ctx.Process(target=fn, args=(*args, result))
        p.start()
        p.join()
        if p.exitcode != 0:
            raise SystemExit(f"build {fn.__name__} failed (exit code {p.exitcode})")
        return dict(result)


def cached_build(path: Path, stats_path: Path, build, check=None) -> dict:
    if path.exists() and stats_path.exists() and check is not None:
        try:
            check(path)
        except Exception as e:  # e.g. the on-disk format changed since the cache was built
            log(f"cached {path.name} unusable ({type(e).__name__}: {str(e)[:120]}); rebuilding")
            (shutil.rmtree if path.is_dir() else os.remove)(path)
    if path.exists() and stats_path.exists():
        stats = json.loads(stats_path.read_text())
        stats["cached"] = True
        return stats
    stats = build()
    stats_path.write_text(json.dumps(stats, indent=1))
    stats["cached"] = False
    return stats


def build_fastctx(a, ddir: Path) -> tuple[Path, dict]:
    path = ddir / f"fastctx_M{HNSW_M}_efc{HNSW_EFC}"

    def build():
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        log(f"building fastctx index ({a.n} events, {a.build_threads} threads) ...")
        s = in_child(_build_fastctx, str(ddir / "vectors.npy"), str(ddir / "bucket.npy"), str(tmp),
                     a.build_threads)
        os.replace(tmp, path)
        s["total_s"] = s["records_s"] + s["from_records_s"] + s["add_s"]
        s["events_per_s"] = s["n"] / s["total_s"]
        s["add_events_per_s"] = s["n"] / s["add_s"]
        s["fastctx_source_sha1"] = source_fingerprint()
        return s

    def check(p):
        from fastctx.index import Index
        Index(p)

    return path, cached_build(path, ddir / (path.name + ".stats.json"), build, check)


def build_faiss(a, ddir: Path) -> tuple[Path, dict]:
    path = ddir / f"faiss_hnswflat_M{HNSW_M}_efc{HNSW_EFC}.index"

    def build():
        log(f"building faiss IndexHNSWFlat ({a.n} vectors, {a.build_threads} threads) ...")
        s = in_child(_build_faiss, str(ddir / "vectors.npy"), str(path), a.build_threads)
        s["events_per_s"] = s["n"] / s["add_s"]
        return s

    return path, cached_build(path, ddir / (path.name + ".stats.json"), build)


# ------------------------------------------------------------------------------------- filters
def make_filters(a, bucket: np.ndarray) -> list[dict]:
    n = len(bucket)
    out = [{"type": "none", "fraction": 1.0, "kw": {}, "mask": None, "range": (0, n)}]
    for f in a.fractions:
        if f >= 1.0:
            continue
        m = max(1, round(f * N_KINDS))
        out.append({"type": "random", "fraction": f, "kw": {"kinds": [f"k{b}" for b in range(m)]},
                    "mask": bucket < m, "range": None})
    for f in a.fractions:
        if f >= 1.0:
            continue
        cnt = max(1, round(f * n))
        lo = (n - cnt) // 2
        mask = np.zeros(n, bool)
        mask[lo:lo + cnt] = True
        out.append({"type": "time", "fraction": f, "kw": {"time_from": T0 + lo, "time_to": T0 + lo + cnt - 1},
                    "mask": mask, "range": (lo, lo + cnt)})
    for flt in out:
        flt["allowed"] = n if flt["mask"] is None else int(flt["mask"].sum())
    return out


def ground_truth(x: np.ndarray, q: np.ndarray, flt: dict, k: int, scores: np.ndarray) -> list[set]:
    if flt["mask"] is None:
        s = scores
        rows = None
    else:
        rows = np.flatnonzero(flt["mask"])
        s = scores[:, rows]
    kk = min(k, s.shape[1])
    part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
    if rows is not None:
        part = rows[part]
    return [set(r.tolist()) for r in part]


def recall(found: list[np.ndarray], truth: list[set], k: int) -> float:
    vals = []
    for f, t in zip(found, truth):
        f = [int(v) for v in np.asarray(f)[:k] if v >= 0]
        vals.append(len(t.intersection(f)) / max(1, min(k, len(t))))
    return float(np.mean(vals)) if vals else 0.0


# ----------------------------------------------------------------------------------- measuring
REPEATS = 5    # --repeats: timed passes over the queries per sweep step, the fastest one counts


def timed_pass(run_one, q: np.ndarray, budget_s: float, warmup: int = 3, reset=None):
    """Run queries one at a time (after `warmup` untimed ones; then `reset()`). Stops early once
    `budget_s` is spent (at least 10 queries run). A pass that leaves room in the budget is
    repeated (up to REPEATS passes in all, each after `reset()`) and the fastest pass counts: on
    a shared machine a 20-50 ms pass is easily hit by another job. -> (results of the first pass,
    seconds of the fastest, queries run)."""
    for i in range(min(warmup, len(q))):
        run_one(q[i])
    first, best, spent = None, float("inf"), 0.0
    for _ in range(REPEATS):
        if reset is not None:
            reset()
        out = []
        t = time.perf_counter()
        for i in range(len(q)):
            out.append(run_one(q[i]))
            if i + 1 >= 10 and time.perf_counter() - t > budget_s:
                break
        dt = time.perf_counter() - t
        first = out if first is None else first
        best, spent = min(best, dt), spent + dt
        if len(out) < len(q) or spent + dt > budget_s:
            break
    return first, best, len(first)


def sweep(name: str, settings: list, make_runner, q, truth, a) -> dict:
    """Try settings in order until recall >= target, then bisect between the last miss and the
    first hit, `a.refine` times at most, for every method alike: on the ef of the peers, on
    fastctx's (ef, overfetch) ef when both points share the overfetch. Returns the chosen point
    (the cheapest setting that reached the target) and the whole sweep."""
    points = []
    spent = 0.0
    chosen = None

    def measure(s):
        nonlocal spent
        run_one, extra, reset = make_runner(s)
        res, dt, nq = timed_pass(run_one, q, a.step_budget, reset=reset)
        spent += dt
        r = recall(res, truth[:nq], a.k)
        p = {"setting": s, "recall": r, "qps": nq / dt, "ms": 1e3 * dt / nq, "nq": nq}
        p.update(extra() if extra else {})
        points.append(p)
        return p

    def midpoint(miss, hit):
        if isinstance(hit, int) and hit - miss > 2:
            return (hit + miss) // 2
        if isinstance(hit, tuple) and hit[1] == miss[1] and hit[0] - miss[0] > 2:
            return ((hit[0] + miss[0]) // 2, hit[1])
        return None

    prev = None
    for s in settings:
        p = measure(s)
        if p["recall"] >= a.target:
            chosen, miss, hit = p, prev, s
            for _ in range(a.refine):
                mid = midpoint(miss, hit) if miss is not None else None
                if mid is None or spent >= a.sweep_budget:
                    break
                pm = measure(mid)
                if pm["recall"] >= a.target:
                    chosen, hit = pm, mid
                else:
                    miss = mid
            break
        prev = s
        if spent > a.sweep_budget:
            break
    reached = chosen is not None
    if chosen is None:  # target never reached: report the most accurate point
        chosen = max(points, key=lambda p: (p["recall"], p["qps"]))
    return {**chosen, "reached": reached, "sweep": points}


def run_fastctx_beam(index, flt, q, truth, a):
    """`run_fastctx` with the beam walk on below --beam-below (`SearchParams.walk_beam_below`)."""
    return run_fastctx(index, flt, q, truth, a, beam_below=a.beam_below)


def run_fastctx(index, flt, q, truth, a, force_hnsw: bool = False, beam_below: float = 0.0):
    """Sweep fastctx's SearchParams. force_hnsw: every threshold that can send a segment to an exact
    scan set to 0 (exact_max_rows, hnsw_min_fraction, hnsw_candidate_cost where it exists), so the
    planner picks hnsw-filter whenever the segment has a graph (to locate the exact/HNSW crossover)."""
    from dataclasses import fields

    from fastctx import seeds
    from fastctx.params import SearchParams
    # one thread, as every peer is timed (exact scans may run in SearchParams().scan_threads)
    base = SearchParams(walk_beam_below=beam_below)
    if "scan_threads" in {f.name for f in fields(SearchParams)}:
        base = replace(base, scan_threads=1)
    if force_hnsw:
        names = {f.name for f in fields(SearchParams)}
        base = replace(base, **{f: 0 for f in ("exact_max_rows", "hnsw_min_fraction", "hnsw_candidate_cost")
                                if f in names})

    import fastctx.index as index_mod
    counters = {"hnsw_calls": 0, "exact_calls": 0, "walk_calls": 0}
    orig_h, orig_e = seeds._hnsw_query, seeds.exact_search
    orig_b = getattr(seeds, "_hnsw_knn", None)   # the batch graph call (searches since the batch path)
    # the filtered graph walk (versions that have it; a one-segment walk's runner is made once per
    # plan, so walk_calls counts the multi-segment path's walks only)
    orig_w = getattr(index_mod, "walk_search", None)

    def hq(*args, **kw):
        counters["hnsw_calls"] += 1
        return orig_h(*args, **kw)

    def hb(*args, **kw):
        counters["hnsw_calls"] += 1
        return orig_b(*args, **kw)

    def ex(*args, **kw):
        counters["exact_calls"] += 1
        return orig_e(*args, **kw)

    def wk(*args, **kw):
        counters["walk_calls"] += 1
        return orig_w(*args, **kw)

    index.search_params = base
    plans = index.explain(**flt["kw"])
    assert sum(p.allowed for p in plans) == flt["allowed"], (plans, flt["allowed"])
    kw, k = flt["kw"], a.k
    timings: list = []

    def make_runner(s):
        ef, over = s
        index.search_params = replace(base, ef_search=ef, overfetch=over)
        # the plan can depend on the params (cost-based planners use overfetch): record it per point
        strategy = ",".join(sorted({p.strategy for p in index.explain(**kw)}))

        def reset():
            counters.update(hnsw_calls=0, exact_calls=0, walk_calls=0)
            timings.clear()

        def one(v):
            h = index.search(v, k=k, **kw)
            timings.append(h.timings[0])
            return h.rows[0]

        def extra():
            nq = max(1, len(timings))
            return {"plan_ms": sum(t["plan_ms"] for t in timings) / nq,
                    "seeds_ms": sum(t["seeds_ms"] for t in timings) / nq,
                    "hnsw_calls_per_q": counters["hnsw_calls"] / nq,
                    "exact_calls_per_q": counters["exact_calls"] / nq,
                    "walk_calls_per_q": counters["walk_calls"] / nq, "strategy": strategy}
        return one, extra, reset

    seeds._hnsw_query, seeds.exact_search = hq, ex
    if orig_b is not None:
        seeds._hnsw_knn = hb
    if orig_w is not None:
        index_mod.walk_search = wk
    try:
        res = sweep("fastctx", list(FASTCTX_LADDER), make_runner, q, truth, a)
        default = [p for p in res["sweep"] if tuple(p["setting"]) == FASTCTX_DEFAULT]
        if not default:  # always report the out-of-the-box point too
            default = sweep("fastctx", [FASTCTX_DEFAULT], make_runner, q, truth, a)["sweep"]
        res["default"] = {k: v for k, v in default[0].items()}
        if hasattr(index, "search_batch"):   # all queries in one call, at the chosen setting
            ef, over = res["setting"]
            index.search_params = replace(base, ef_search=ef, overfetch=over)
            index.search_batch(q[:3], k=k, **kw)
            dt = float("inf")
            for _ in range(REPEATS):     # the fastest of REPEATS calls, as for the single queries
                t = time.perf_counter()
                h = index.search_batch(q, k=k, **kw)
                dt = min(dt, time.perf_counter() - t)
            res["batch"] = {"qps": len(q) / dt, "recall": recall(list(h.rows), truth, k)}
    finally:
        seeds._hnsw_query, seeds.exact_search = orig_h, orig_e
        if orig_b is not None:
            seeds._hnsw_knn = orig_b
        if orig_w is not None:
            index_mod.walk_search = orig_w
        from fastctx.params import SearchParams as SP
        index.search_params = SP()
    res["plan"] = [str(p) for p in plans]  # with the default params (+ forcing)
    res["default_strategy"] = ",".join(sorted({p.strategy for p in plans}))
    res.setdefault("strategy", res["default_strategy"])  # chosen point's plan
    return res


def run_hnswlib(hidx, flt, q, truth, a):
    k = a.k
    filt = None if flt["mask"] is None else flt["mask"].tolist().__getitem__

    def make_runner(ef):
        hidx.set_ef(max(ef, k))
        fails = [0]

        def one(v):
            try:
                labels, _ = hidx.knn_query(v[None, :], k=k, num_threads=1, filter=filt)
                return labels[0]
            except RuntimeError:  # fewer than k allowed items reached by the search
                fails[0] += 1
                return np.zeros(0, np.int64)
        return one, lambda: {"errors": fails[0]}, lambda: fails.__setitem__(0, 0)

    return sweep("hnswlib", list(EF_LADDER), make_runner, q, truth, a)


def run_faiss(fidx, flt, q, truth, a, n):
    import faiss
    k = a.k
    keep = []
    if flt["mask"] is None:
        sel = None
    elif flt["type"] == "time":
        sel = faiss.IDSelectorRange(*flt["range"])
    else:
        bits = np.packbits(flt["mask"], bitorder="little")
        keep.append(bits)
        sel = faiss.IDSelectorBitmap(n, faiss.swig_ptr(bits))
    keep.append(sel)

    def make_runner(ef):
        params = faiss.SearchParametersHNSW()
        params.efSearch = max(ef, k)
        if sel is not None:
            params.sel = sel
        keep.append(params)

        def one(v):
            _, labels = fidx.search(v[None, :], k, params=params)
            return labels[0]
        return one, None, None

    return sweep("faiss", list(EF_LADDER), make_runner, q, truth, a)


def run_numpy(x, flt, q, truth, a):
    k = a.k
    if flt["mask"] is None or flt["type"] == "time":
        lo, hi = flt["range"]

        def one(v):
            s = x[lo:hi] @ v
            kk = min(k, len(s))
            return np.argpartition(-s, kk - 1)[:kk] + lo
    else:
        rows = np.flatnonzero(flt["mask"])

        def one(v):
            s = x[rows] @ v
            kk = min(k, len(s))
            return rows[np.argpartition(-s, kk - 1)[:kk]]

    res, dt, nq = timed_pass(one, q, a.step_budget * 4)
    return {"setting": "exact", "recall": recall(res, truth[:nq], k), "qps": nq / dt, "ms": 1e3 * dt / nq,
            "nq": nq, "reached": True}


# -------------------------------------------------------------------------------------- report
def fmt_setting(m, r) -> str:
    s = r["setting"]
    if m == "fastctx":
        return f"ef{s[0]}/o{s[1]:g}"
    return "exact" if s == "exact" else f"ef{s}"


def best_peer(r: dict) -> float:
    """QPS of the faster of hnswlib and faiss among those that reached the target (else of both)."""
    peers = [r[m] for m in ("hnswlib", "faiss") if m in r]
    reached = [p for p in peers if p["reached"]] or peers
    return max(p["qps"] for p in reached)


def table(rows: list[dict]) -> str:
    head = ("| filter | frac | allowed | fastctx plan | fastctx R@k / QPS (params) | hnswlib-callable R@k / QPS (ef) "
            "| faiss R@k / QPS (ef) | numpy QPS | fc/hnswlib | fc/faiss | fc/numpy | fastctx batch R@k / QPS "
            "| fastctx beam R@k / QPS (params) | beam/best peer |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        cells = [r["filter"], f"{r['fraction']:g}", str(r["allowed"]), r["fastctx"]["strategy"]]
        for m in ("fastctx", "hnswlib", "faiss"):
            x = r[m]
            mark = "" if x["reached"] else "!"
            cells.append(f"{x['recall']:.3f}{mark} / {x['qps']:.0f} ({fmt_setting(m, x)})")
        cells.append(f"{r['numpy']['qps']:.0f}")
        for m in ("hnswlib", "faiss", "numpy"):
            cells.append(f"{r['ratios'][m]:.2f}")
        bt = r["fastctx"].get("batch")
        cells.append(f"{bt['recall']:.3f} / {bt['qps']:.0f}" if bt else "-")
        b = r.get("fastctx_beam")
        cells += ([f"{b['recall']:.3f}{'' if b['reached'] else '!'} / {b['qps']:.0f} ({fmt_setting('fastctx', b)})",
                   f"{b['qps'] / best_peer(r):.2f}"] if b else ["-", "-"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def planner_table(rows: list[dict]) -> str:
    head = ("| filter | frac | allowed | plan | plan ms/q | default (ef64/o2) R@k / QPS | tuned R@k / QPS (params) "
            "| forced hnsw-filter R@k / QPS (params) | hnsw calls/q, exact fallbacks/q (forced) | numpy QPS |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        f, d = r["fastctx"], r["fastctx"]["default"]
        cells = [r["filter"], f"{r['fraction']:g}", str(r["allowed"]), f["strategy"], f"{f['plan_ms']:.3f}",
                 f"{d['recall']:.3f} / {d['qps']:.0f}",
                 f"{f['recall']:.3f}{'' if f['reached'] else '!'} / {f['qps']:.0f} ({fmt_setting('fastctx', f)})"]
        h = r.get("fastctx_hnsw")
        if h:
            cells += [f"{h['recall']:.3f}{'' if h['reached'] else '!'} / {h['qps']:.0f} ({fmt_setting('fastctx', h)})",
                      f"{h['hnsw_calls_per_q']:.2f}, {h['exact_calls_per_q']:.2f}"]
        else:
            cells += ["-", "-"]
        cells.append(f"{r['numpy']['qps']:.0f}" if "numpy" in r else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    global REPEATS
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="events (size knob)")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--fractions", default="1,0.3,0.1,0.01,0.001",
                    type=lambda s: [float(v) for v in s.split(",") if v.strip()])
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--noise", type=float, default=1.0,
                    help="per-vector gaussian noise norm around its centre (before renormalising)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--target", type=float, default=0.95, help="recall@k to reach in the sweeps")
    ap.add_argument("--build-threads", type=int, default=2)
    ap.add_argument("--step-budget", type=float, default=20.0,
                    help="seconds per sweep step; a step over budget stops early (>= 10 queries)")
    ap.add_argument("--refine", type=int, default=2,
                    help="bisection steps between the last ef that missed the target and the first that reached it")
    ap.add_argument("--sweep-budget", type=float, default=60.0,
                    help="seconds per (method, filter) sweep before giving up on the target")
    ap.add_argument("--methods", default="fastctx,fastctx-beam,fastctx-hnsw,hnswlib,faiss,numpy",
                    help="fastctx-hnsw = fastctx with the planner forced to hnsw-filter (crossover study); "
                         "fastctx-beam = fastctx with the planner's beam walk on (see --beam-below)")
    ap.add_argument("--repeats", type=int, default=REPEATS,
                    help="timed passes per sweep step while the step budget allows; the fastest counts")
    ap.add_argument("--beam-below", type=float, default=0.2,
                    help="fastctx-beam: the allowed fraction below which the planner runs the beam walk")
    ap.add_argument("--data-dir", default=str(ROOT / "bench_data"))
    ap.add_argument("--build-only", action="store_true", help="generate and build the caches, then stop")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    a = ap.parse_args(argv)
    methods = a.methods.split(",")
    REPEATS = max(1, a.repeats)

    import hnswlib
    try:
        import faiss
    except ImportError:
        if "faiss" in methods:
            ap.error("faiss is not installed: pip install 'fastctx[bench]' (faiss-cpu), "
                     "or leave faiss out of --methods")
        faiss = None

    search_sha = source_fingerprint()
    from dataclasses import asdict

    from fastctx.index import Index
    from fastctx.params import SearchParams
    search_defaults = asdict(SearchParams())
    log(f"fastctx sources {search_sha}; SearchParams() = {search_defaults}")

    load_start = list(os.getloadavg())
    ddir = Path(a.data_dir) / data_key(a)
    log(f"data {ddir}")
    x, bucket = make_data(a, ddir)
    q = make_queries(a, ddir)
    fc_path, fc_build = build_fastctx(a, ddir)
    log(f"fastctx build: {json.dumps(fc_build)}")
    fa_path, fa_build = build_faiss(a, ddir) if "faiss" in methods else (None, {})
    log(f"faiss build: {json.dumps(fa_build)}")
    if a.build_only:
        return 0

    # -- open everything
    t = time.perf_counter()
    index = Index(fc_path)
    open_first = time.perf_counter() - t
    del index
    opens = []
    for _ in range(3):
        t = time.perf_counter()
        index = Index(fc_path)
        opens.append(time.perf_counter() - t)
        if _ < 2:
            del index
    seg = index.shards[0].segments[0]
    assert len(index.shards[0].segments) == 1 and seg.n == a.n
    assert np.array_equal(np.asarray(seg.times[:3]), T0 + np.arange(3)), "fastctx rows must keep input order"
    assert np.allclose(np.asarray(seg.vectors[a.n // 2]), x[a.n // 2])
    open_stats = {"first_s": open_first, "warm_min_s": min(opens), "warm_s": opens}
    log(f"fastctx open: {open_stats}")

    hidx = None
    if "hnswlib" in methods:
        t = time.perf_counter()
        hidx = hnswlib.Index(space="ip", dim=a.dim)
        hidx.load_index(str(seg.dir / "hnsw.bin"), max_elements=a.n)
        hidx.set_num_threads(1)
        log(f"hnswlib load (fastctx's hnsw.bin) {time.perf_counter() - t:.2f}s")
    fidx = None
    if "faiss" in methods:
        t = time.perf_counter()
        fidx = faiss.read_index(str(fa_path))
        faiss.omp_set_num_threads(1)
        fa_build["load_s"] = time.perf_counter() - t
        log(f"faiss load {fa_build['load_s']:.2f}s")

    t = time.perf_counter()
    all_scores = q @ x.T
    log(f"brute-force scores {all_scores.shape} in {time.perf_counter() - t:.1f}s")
    filters = make_filters(a, bucket)

    rows = []
    for flt in filters:
        truth = ground_truth(x, q, flt, a.k, all_scores)
        row = {"filter": flt["type"], "fraction": flt["fraction"], "allowed": flt["allowed"], "kw_summary":
               {k: (v if not isinstance(v, list) else f"{len(v)} names") for k, v in flt["kw"].items()}}
        log(f"== filter {flt['type']} fraction {flt['fraction']:g} allowed {flt['allowed']}")
        if "fastctx" in methods:
            row["fastctx"] = run_fastctx(index, flt, q, truth, a)
            log(f"   fastctx {row['fastctx']['strategy']}: R={row['fastctx']['recall']:.3f} "
                f"QPS={row['fastctx']['qps']:.0f} {row['fastctx']['setting']}"
                + (f" batch R={row['fastctx']['batch']['recall']:.3f} QPS={row['fastctx']['batch']['qps']:.0f}"
                   if "batch" in row["fastctx"] else ""))
        from fastctx.planner import WALK_MIN_FRACTION
        if "fastctx-beam" in methods and WALK_MIN_FRACTION <= flt["fraction"] < a.beam_below:
            row["fastctx_beam"] = b = run_fastctx_beam(index, flt, q, truth, a)
            log(f"   fastctx beam {b['strategy']}: R={b['recall']:.3f} QPS={b['qps']:.0f} {b['setting']}")
        if "fastctx-hnsw" in methods:
            row["fastctx_hnsw"] = h = run_fastctx(index, flt, q, truth, a, force_hnsw=True)
            log(f"   fastctx forced {h['strategy']}: R={h['recall']:.3f} QPS={h['qps']:.0f} {h['setting']} "
                f"hnsw calls/q {h['hnsw_calls_per_q']:.2f} exact/q {h['exact_calls_per_q']:.2f}")
        if "hnswlib" in methods:
            row["hnswlib"] = run_hnswlib(hidx, flt, q, truth, a)
            log(f"   hnswlib: R={row['hnswlib']['recall']:.3f} QPS={row['hnswlib']['qps']:.0f} "
                f"ef={row['hnswlib']['setting']}")
        if "faiss" in methods:
            row["faiss"] = run_faiss(fidx, flt, q, truth, a, a.n)
            log(f"   faiss:   R={row['faiss']['recall']:.3f} QPS={row['faiss']['qps']:.0f} "
                f"ef={row['faiss']['setting']}")
        if "numpy" in methods:
            row["numpy"] = run_numpy(x, flt, q, truth, a)
            log(f"   numpy:   R={row['numpy']['recall']:.3f} QPS={row['numpy']['qps']:.0f}")
        if "fastctx" in methods:
            row["ratios"] = {m: row["fastctx"]["qps"] / row[m]["qps"] for m in ("hnswlib", "faiss", "numpy")
                             if m in row}
            if "hnswlib" in row or "faiss" in row:
                row["ratios"]["best_peer"] = row["fastctx"]["qps"] / best_peer(row)
        rows.append(row)

    result = {
        "args": {k: v for k, v in vars(a).items()},
        "fastctx_source_sha1_at_search": search_sha,
        "fastctx_search_params_default": search_defaults,
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "numpy": np.__version__, "faiss": getattr(faiss, "__version__", None),
                    "hnswlib": getattr(hnswlib, "__version__", "0.8.x"),
                    "loadavg_start": load_start, "loadavg_end": list(os.getloadavg())},
        "fastctx_build": fc_build, "faiss_build": fa_build, "fastctx_open": open_stats,
        "peak_rss_mib_bench_process": peak_rss_mib(), "results": rows,
    }
    if all(m in methods for m in ("fastctx", "hnswlib", "faiss", "numpy")):
        print()
        print(f"n={a.n} dim={a.dim} queries={a.queries} k={a.k} target recall@{a.k}>={a.target} "
              f"(QPS: one query per call, 1 thread; '!' = target not reached, best point shown; "
              f"ratios = fastctx QPS / peer QPS)")
        print(table(rows))
        print("\nfastctx planner detail (plan ms/q = filter evaluation + planning inside Index.search):")
        print(planner_table(rows))
        fb = fc_build
        print(f"\nfastctx build: {fb['n']} events in {fb['total_s']:.1f}s = {fb['events_per_s']:.0f} events/s "
              f"(add {fb['add_s']:.1f}s, of which hnsw {fb['stages_s'].get('hnsw', 0):.1f}s; "
              f"from_records {fb['from_records_s']:.1f}s); peak RSS {fb['peak_rss_mib']:.0f} MiB")
        if fa_build:
            print(f"faiss build:   {fa_build['n']} vectors in {fa_build['add_s']:.1f}s = "
                  f"{fa_build['events_per_s']:.0f} vectors/s; peak RSS {fa_build['peak_rss_mib']:.0f} MiB")
        print(f"fastctx open (Index(path)): first {open_stats['first_s'] * 1e3:.0f} ms, "
              f"warm {open_stats['warm_min_s'] * 1e3:.0f} ms")
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1, default=str))
        log(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
