"""Conversational memory: fastctx beside plain vector RAG and hybrid BM25+vector search, per category.

    python bench/bench_memory.py CORPUS [--work DIR] [--systems rag,hybrid,fastctx,fastctx-fill]

CORPUS is an orgmem-v1 corpus whose queries carry a `category` and a `scope` (for example one
made by bench/conv_corpus.py). Every system answers every query inside the query's scope and
budget:
- `rag`: exact cosine over the scope's events, the budget filled greedily in similarity order;
- `hybrid`: what users of Elasticsearch, Vespa or Qdrant run: BM25 (lower-cased word tokens,
  k1 1.2, b 0.75) over the scope's texts and the same cosine ranking, each cut at 100, fused by
  reciprocal rank (k = 60), the budget filled greedily in fused order;
- `fastctx`: the default index and engine (`Index.query_spec`); `fastctx-fill` pads to the budget.
Prints evidence recall (the share of a question's evidence events in the answer, within budget),
precision, distinct sessions per answer, and events outside the scope, per category and
overall, for each system. Only the scoring at the end reads truth.jsonl; no system does.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from fastctx.corpus import read_queries
from fastctx.index import Index, build

_TOKEN = re.compile(r"[a-z0-9]+")
RRF_K, CUT = 60, 100


def _jsonl(path: Path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class Scoped:
    """The corpus as the peers see it: vectors, tokens, texts and which events each scope holds."""

    def __init__(self, corpus: Path):
        self.events = _jsonl(corpus / "events.jsonl")
        self.vectors = np.load(corpus / "vectors.npy").astype(np.float32)
        self.tokens = np.array([int(e["tokens"]) for e in self.events])
        self.ids = [e["id"] for e in self.events]
        self.by_entity = defaultdict(list)
        for i, e in enumerate(self.events):
            for ent in e.get("entities") or []:
                self.by_entity[ent].append(i)
        self._bm25 = {}

    def rows(self, scope: dict) -> np.ndarray:
        any_of = (scope or {}).get("entities_any")
        if not any_of:
            return np.arange(len(self.events))
        return np.unique(np.concatenate([np.asarray(self.by_entity.get(e, []), np.int64) for e in any_of]))

    def fill(self, order, budget: int) -> list[str]:
        used, out = 0, []
        for r in order:
            if used + self.tokens[r] <= budget:
                used += int(self.tokens[r])
                out.append(self.ids[r])
        return out

    def cosine(self, rows: np.ndarray, qv: np.ndarray) -> np.ndarray:
        """Rows in descending cosine order."""
        return rows[np.argsort(-(self.vectors[rows] @ qv), kind="stable")]

    def bm25(self, rows: np.ndarray, text: str) -> np.ndarray:
        """Rows with a positive BM25 score, best first (statistics of the scope's own texts)."""
        key = rows.tobytes()
        if key not in self._bm25:
            docs = [Counter(_TOKEN.findall((self.events[r].get("text") or "").lower())) for r in rows]
            df = Counter(t for d in docs for t in d)
            lens = np.array([sum(d.values()) for d in docs], np.float64)
            self._bm25 = {key: (docs, df, lens)}   # one scope at a time is enough (queries come grouped)
        docs, df, lens = self._bm25[key]
        n, avg = len(docs), max(lens.mean(), 1e-9) if len(docs) else 1.0
        score = np.zeros(n)
        for t in set(_TOKEN.findall(text.lower())):
            if t not in df:
                continue
            idf = math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
            tf = np.array([d.get(t, 0) for d in docs], np.float64)
            score += idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * lens / avg))
        keep = np.flatnonzero(score > 0)
        return rows[keep[np.argsort(-score[keep], kind="stable")]]


def rag(sc: Scoped, q: dict, qv: np.ndarray) -> list[str]:
    return sc.fill(sc.cosine(sc.rows(q.get("scope")), qv), q["budget_tokens"])


def hybrid(sc: Scoped, q: dict, qv: np.ndarray) -> list[str]:
    rows = sc.rows(q.get("scope"))
    fused = defaultdict(float)
    for ranking in (sc.cosine(rows, qv)[:CUT], sc.bm25(rows, q.get("text") or "")[:CUT]):
        for rank, r in enumerate(ranking):
            fused[int(r)] += 1.0 / (RRF_K + rank + 1)
    order = sorted(fused, key=lambda r: (-fused[r], r))
    return sc.fill(order, q["budget_tokens"])


def run_fastctx(index: Path, corpus: Path, fill: bool, params: tuple = ()) -> dict[str, list[str]]:
    from fastctx.cli import _answer_params   # the CLI's --param KEY=VALUE reading
    idx = Index(index, answer_params=_answer_params(tuple(params), None))
    queries, qv = read_queries(corpus)
    out = {}
    for q, v in zip(queries, qv):
        out[q["qid"]] = [e.id for e in idx.query_spec(q, v, fill=fill).events]
    return out


def evidence_group(n: int) -> str:
    """Questions grouped by how many evidence turns they have: one turn is what single-hop means."""
    return "1 turn" if n == 1 else "2-3 turns" if n <= 3 else "4+ turns"


def score(corpus: Path, sc: Scoped, answers: dict[str, list[str]], by_evidence: bool = False) -> dict:
    """Per category (or per evidence count) and overall: evidence recall, precision, sessions per
    answer, out-of-scope events."""
    truth = {t["qid"]: set(t["relevant"]) for t in _jsonl(corpus / "truth.jsonl")}
    pos = {eid: i for i, eid in enumerate(sc.ids)}
    by = defaultdict(lambda: defaultdict(list))
    for q in _jsonl(corpus / "queries.jsonl"):
        got = answers.get(q["qid"], [])
        rel = truth[q["qid"]]
        inside = set(sc.ids[r] for r in sc.rows(q.get("scope")))
        sessions = {e for g in got for e in sc.events[pos[g]].get("entities", []) if e.startswith("session:")}
        group = evidence_group(len(rel)) if by_evidence else q.get("category", "all")
        for cat in (group, "overall"):
            m = by[cat]
            m["recall"].append(len(rel & set(got)) / len(rel))
            m["precision"].append(len(rel & set(got)) / len(got) if got else 0.0)
            m["sessions"].append(len(sessions))
            m["outside"].append(sum(g not in inside for g in got))
            m["events"].append(len(got))
    return {c: {"n": len(m["recall"]), "recall": float(np.mean(m["recall"])),
                "precision": float(np.mean(m["precision"])), "sessions": float(np.mean(m["sessions"])),
                "events": float(np.mean(m["events"])), "outside": int(np.sum(m["outside"]))}
            for c, m in by.items()}


def margins(results: dict) -> dict[str, dict[str, float]]:
    """Per fastctx system, its evidence recall less the better of plain RAG and hybrid search, per
    category and overall (what the issue's target is stated in); empty without both baselines."""
    if not {"rag", "hybrid"} <= set(results):
        return {}
    return {name: {c: r[c]["recall"] - max(results["rag"][c]["recall"], results["hybrid"][c]["recall"])
                   for c in r}
            for name, r in results.items() if name.startswith("fastctx")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", type=Path)
    ap.add_argument("--work", type=Path, default=None, help="where the index is built (default CORPUS/../NAME-index)")
    ap.add_argument("--systems", default="rag,hybrid,fastctx,fastctx-fill")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="an engine knob for fastctx (fastctx.params.AnswerParams), as `fastctx eval --param`")
    ap.add_argument("--by-evidence", action="store_true",
                    help="group questions by their number of evidence turns instead of by category")
    a = ap.parse_args(argv)
    sc = Scoped(a.corpus)
    queries, qv = read_queries(a.corpus)
    results = {}
    for name in a.systems.split(","):
        t0 = time.perf_counter()
        if name in ("rag", "hybrid"):
            fn = rag if name == "rag" else hybrid
            ans = {q["qid"]: fn(sc, q, v) for q, v in zip(queries, qv)}
        elif name in ("fastctx", "fastctx-fill"):
            index = a.work or a.corpus.parent / f"{a.corpus.name}-index"
            if not (index / "fastctx.json").exists():
                build(a.corpus, index)
            ans = run_fastctx(index, a.corpus, fill=name.endswith("fill"), params=a.param)
        else:
            raise SystemExit(f"unknown system {name!r} (rag, hybrid, fastctx, fastctx-fill)")
        results[name] = score(a.corpus, sc, ans, by_evidence=a.by_evidence)
        print(f"{name}: answered {len(ans)} questions in {time.perf_counter() - t0:.1f}s")
    cats = sorted({c for r in results.values() for c in r}, key=lambda c: (c == "overall", c))
    label = (lambda c: c if a.by_evidence or c == "overall" else f"cat {c}")  # noqa: E731
    n_of = results[next(iter(results))]
    print("\n| system | " + " | ".join(f"{label(c)} (n={n_of[c]['n']})" if c != "overall" else "overall" for c in cats)
          + " | events | sessions | outside scope |")
    print("| --- " * (len(cats) + 4) + "|")
    for name, r in results.items():
        o = r["overall"]
        print(f"| {name} | " + " | ".join(f"{r[c]['recall']:.3f} / {r[c]['precision']:.2f}" for c in cats)
              + f" | {o['events']:.1f} | {o['sessions']:.1f} | {o['outside']} |")
    print("\ncells: evidence recall / precision")
    for name, margin in margins(results).items():
        print(f"{name} over the stronger of rag and hybrid, evidence recall: "
              + ", ".join(f"{label(c)} {margin[c]:+.3f}" for c in cats if c in margin))
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
