"""Causal-chain quality and end-to-end latency on the orgmem yardstick, fastctx beside plain RAG.

    python bench/bench_causal.py --work WORK_DIR --events 1e5 [--params knobs.json] [--seed 7]

Generates WORK_DIR/corpus with the yardstick's generator (unless present), builds
WORK_DIR/index (unless present), answers every query through the embedded engine (single
thread, after a warm-up; latency per query from the call's start to its answer), runs the
yardstick's plain-RAG baseline on the same corpus, scores both with its scorer and prints one
JSON object: chain recall, precision and full-chain hit rate, current/as_of accuracy and stale rate,
latency p50/p99 per query type, for fastctx and RAG side by side. `--params` passes a
generator knob file (e.g. {"explicit_link_fraction": 0.1}) to test robustness; the engine
gets no knob from it. The yardstick is looked up at ../shared/orgmem beside the checkout
unless --orgmem says otherwise.
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

ROOT = Path(__file__).resolve().parents[1]


def _score(orgmem: Path, corpus: Path, results: Path) -> dict:
    out = subprocess.run([sys.executable, str(orgmem / "score.py"), str(corpus), str(results), "--json"],
                         capture_output=True, text=True, check=True).stdout
    types = json.loads(out)["types"]
    keep = ("recall", "precision", "full_chain_hit_rate", "accuracy", "stale_rate")
    return {t: {m: round(v, 3) for m, v in types[t].items() if m in keep} for t in ("chain", "current", "as_of")}


def run(work: Path, events: float, orgmem: Path, params: Path | None, seed: int | None) -> dict:
    corpus, index = work / "corpus", work / "index"
    if not (corpus / "meta.json").exists():
        cmd = [sys.executable, str(orgmem / "generate.py"), str(corpus), "--events", str(events), "--quiet"]
        cmd += ["--params", str(params)] if params else []
        cmd += ["--seed", str(seed)] if seed is not None else []
        subprocess.run(cmd, check=True)
    if not (index / "fastctx.json").exists():
        t = time.perf_counter()
        build(corpus, index, overwrite=True)
        print(f"built {index} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    idx = Index(index)
    idx.warm_up()
    queries, qv = read_queries(corpus)
    ours = work / "fastctx.jsonl"
    lat: dict[str, list[float]] = {}
    with open(ours, "w") as f:
        for q, v in zip(queries, qv):
            t = time.perf_counter()
            a = idx.query_spec(q, v)
            ms = 1e3 * (time.perf_counter() - t)
            lat.setdefault(q["type"], []).append(ms)
            f.write(json.dumps({"qid": q["qid"], "events": [e.id for e in a.events],
                                "current": a.current.id if a.current else None, "latency_ms": ms}) + "\n")
    rag = work / "rag.jsonl"
    subprocess.run([sys.executable, str(orgmem / "rag_baseline.py"), str(corpus), str(rag)], check=True,
                   capture_output=True)
    every = [x for v in lat.values() for x in v]
    return {"events": idx.n, "queries": len(queries), "fastctx": _score(orgmem, corpus, ours),
            "rag": _score(orgmem, corpus, rag),
            "latency_ms": {t: {"p50": round(float(np.percentile(v, 50)), 2), "p99": round(float(np.percentile(v, 99)), 2)}
                           for t, v in list(lat.items()) + [("all", every)]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--events", type=float, default=1e5)
    ap.add_argument("--params", type=Path, help="generator knob overrides (JSON)")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--orgmem", type=Path, default=ROOT.parent / "shared" / "orgmem")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    print(json.dumps(run(a.work, a.events, a.orgmem, a.params, a.seed), indent=1))


if __name__ == "__main__":
    main()
