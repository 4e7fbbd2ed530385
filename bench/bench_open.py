"""Open time and first-query time of an index, each measured in a fresh process.

    .venv/bin/python bench/bench_open.py --events 100000 [--work DIR] [--index DIR]
        [--repeat 5] [--src TREE ...] [--profile N]

Generates the corpus with the orgmem yardstick (`../shared/orgmem/generate.py OUT --events N
--seed 0`) and builds the index once (or reuses `--index DIR`). Then, per source tree given with
`--src` (default: this checkout; pass a `git worktree` of an older commit beside it to compare),
it starts a fresh Python process per measurement that imports fastctx from that tree, opens the
index and answers one query, and reports (median over `--repeat` processes, after one discarded
process that fills the page cache and the kernels' compile cache):

  import_s   importing fastctx
  open_s     `fastctx.open(index)`
  search_s   the first `Index.search(vector, k=10)` after the open (an unfiltered seed search:
             the graph walk reads each segment's HNSW graph in place, no hnswlib load)
  query_s    the first causal `Index.query(vector)` after the open, in its own process
  walk_s     the first walk (kernels/hnsw_search.py, every row allowed) over each HNSW segment
             after the open, called directly on the segments: the graph file read in place
             (checksummed first when at most 64 MiB); source trees without the walk show "-"

The page cache is warm (the discarded process read the files): the numbers are the process's
own work, not the disk's. `--profile N` prints a cProfile summary (top N by cumulative time) of
the first causal query in one more fresh process.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GENERATE = ROOT.parent / "shared" / "orgmem" / "generate.py"

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
sys.path.insert(0, sys.argv[1])
import numpy as np
import fastctx
t1 = time.perf_counter()
idx = fastctx.open(sys.argv[2])
t2 = time.perf_counter()
q = np.load(sys.argv[3], mmap_mode="r")[0]
if sys.argv[4] == "search":
    idx.search(np.array(q), k=10)
elif sys.argv[4] == "walk":     # the filtered walk over the graph file in place, nothing allowed filtered out
    for seg in idx.shards[0].segments:
        if getattr(seg, "has_hnsw", False):
            seg.walk.search(np.array(q, np.float32), np.ones(seg.n, np.uint8), 10, 64, False)
elif sys.argv[4] == "profile":  # the first causal query under cProfile (its summary goes to stderr)
    import cProfile, pstats
    pr = cProfile.Profile()
    pr.runcall(idx.query, np.array(q), unrestricted=True)
    pstats.Stats(pr, stream=sys.stderr).sort_stats("cumulative").print_stats(int(sys.argv[5]))
else:
    idx.query(np.array(q), unrestricted=True)
t3 = time.perf_counter()
assert fastctx.__file__.startswith(sys.argv[1]), fastctx.__file__
print(json.dumps({"import_s": t1 - t0, "open_s": t2 - t1, "first_s": t3 - t2}))
"""


def run_child(src: Path, index: Path, qvec: Path, what: str, top: int = 0) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(src), str(index), str(qvec), what, str(top)],
                         capture_output=True, text=True, cwd="/")
    if out.returncode != 0:
        raise SystemExit(f"measurement process failed ({src}, {what}):\n{out.stderr[-2000:]}")
    if what == "profile":
        print(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(src: Path, index: Path, qvec: Path, repeat: int) -> dict:
    res = {}
    for what in ("search", "query", "walk"):
        if what == "walk" and not (src / "kernels" / "hnsw_search.py").exists():
            res["walk_s"] = float("nan")
            continue
        run_child(src, index, qvec, what)            # discarded: page cache and compile cache
        runs = [run_child(src, index, qvec, what) for _ in range(repeat)]
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        res["import_s"] = med["import_s"]
        res.setdefault("open_s", med["open_s"])
        res[f"{what}_s"] = med["first_s"]
    return res


def prepare(a) -> tuple[Path, Path]:
    work = Path(a.work)
    corpus = work / "corpus"
    if not (corpus / "query_vectors.npy").exists():
        subprocess.run([sys.executable, str(GENERATE), str(corpus), "--events", str(a.events), "--seed", "0"],
                       check=True)
    index = Path(a.index) if a.index else work / "index"
    if not (index / "fastctx.json").exists():
        sys.path.insert(0, str(ROOT))
        import fastctx
        fastctx.build(corpus, index, overwrite=True)
    return index, corpus / "query_vectors.npy"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--work", default="/tmp/fastctx-bench-open", help="corpus and index go here")
    ap.add_argument("--index", default=None, help="reuse this index (built from --work's corpus)")
    ap.add_argument("--queries", default=None, help="query_vectors.npy to take the query from")
    ap.add_argument("--src", action="append", default=None,
                    help="source tree to import fastctx from (repeatable; default this checkout)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="also profile the first causal query in one more fresh process (top N by cumulative time)")
    a = ap.parse_args(argv)
    if a.index and a.queries:
        index, qvec = Path(a.index), Path(a.queries)
    else:
        index, qvec = prepare(a)
    srcs = [Path(s).resolve() for s in (a.src or [str(ROOT)])]
    size = sum(f.stat().st_size for f in index.rglob("*") if f.is_file())
    print(f"index {index} ({size / 2**20:.0f} MiB), median of {a.repeat} fresh processes, warm page cache")
    print(f"{'source tree':<40} {'import s':>9} {'open s':>8} {'1st search s':>13} {'1st query s':>12} "
          f"{'1st walk s':>11}")
    rows = []
    for src in srcs:
        r = measure(src, index, qvec, a.repeat)
        rows.append({"src": str(src), **r})
        print(f"{str(src):<40} {r['import_s']:>9.3f} {r['open_s']:>8.3f} {r['search_s']:>13.3f} {r['query_s']:>12.3f} "
              f"{r['walk_s']:>11.3f}")
        if a.profile:
            run_child(src, index, qvec, "profile", a.profile)
    if a.out:
        Path(a.out).write_text(json.dumps({"index": str(index), "bytes": size, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
