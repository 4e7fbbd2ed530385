"""Each implicit-relation signal on and off, on any orgmem corpora (yardstick or real git), beside RAG.

    python bench/bench_ablation.py CORPUS_DIR [CORPUS_DIR ...] --work WORK_DIR [--orgmem ../shared/orgmem]

For every corpus: builds the default index and one index per build-time variant (`BUILDS`:
identifier terms off, words off = no lexical seeds, derived `similar` links on, and the derived
`same_actor`, `relands`, `co_mention` and `co_cited` links each off), answers every query with
the default engine and with each engine variant (`ENGINES`: lexical weight 0 and 0.5, no weight
inheritance, inheritance through any path, fixed breadth, replies at 0.5, entity decay over 120
days, named dates ignored, one unit of chain relevance, time coherence off, direct hits only
after the chains, textbook BM25 length normalisation, question focus off, the asked kind off or
without history, the chain's people off, a chain's own people not weighed in the head choice,
lexical matches many rows share not capped, `fill`),
scores each with the yardstick's scorer and prints one markdown row
per variant: chain recall / precision and current accuracy, with plain RAG (the yardstick's
`rag_baseline.py`, k=100) in the first row. Never reads truth.jsonl itself: only the scorer does.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from fastctx.answer import AnswerParams, Engine
from fastctx.corpus import read_queries
from fastctx.index import Index, build
from fastctx.params import BuildParams

ROOT = Path(__file__).resolve().parents[1]
BUILDS = {"default": BuildParams(), "terms off": BuildParams(text_terms=False),
          "words off (no lexical seeds)": BuildParams(text_words=False),
          "similar links on (k=3)": BuildParams(similar_k=3), "same_actor links off": BuildParams(actor_k=0),
          "same_actor links at any actor excess (actor_min_excess 0)": BuildParams(actor_min_excess=0),
          "relands off": BuildParams(relands=False), "co_mention links off": BuildParams(comention_k=0),
          "co_cited links off": BuildParams(cocite_k=0)}
_REPLY_HALF = tuple((t, 0.5 if t == "reply" else w) for t, w in AnswerParams().link_weights)
ENGINES = {"lexical weight 0": dict(lexical=0.0), "no inheritance": dict(inherit=False),
           "breadth fixed (chain_evidence 0: always ends with the chains)": dict(chain_evidence=0.0),
           "reply links at 0.5": dict(link_weights=_REPLY_HALF), "lexical weight 0.5": dict(lexical=0.5),
           "entity edges decay over 120 days": dict(time_scale_days=120.0),
           "dates named in the question ignored": dict(date_weight=0.0),
           "chain relevance counts one unit of evidence (relevance_mass 1)": dict(relevance_mass=1.0),
           "time coherence off": dict(time_coherence_days=0.0),
           "direct hits only after the chains (hits_first 0)": dict(hits_first=0.0),
           "BM25 b 0.75 (textbook length normalisation)": dict(bm25_b=0.75),
           "question focus off": dict(question_focus=0.0),
           "asked kind off (kind_weight 0)": dict(kind_weight=0.0),
           "asked kind without history (kind_history 0)": dict(kind_history=0.0),
           "inheritance through any path (inherit_min_path 0)": dict(inherit_min_path=0.0),
           "the chain's people off (team_k 0)": dict(team_k=0),
           "a chain's own people not weighed in the head choice (actor_coherence 0)": dict(actor_coherence=0.0),
           "weak evidence by strangers kept (people_floor 0)": dict(people_floor=0.0),
           "thin chains not widened (widen_below 0)": dict(widen_below=0.0),
           "no wider candidate pool among many look-alikes (many_candidates 64)": dict(many_candidates=64),
           "lexical matches many rows share not capped (lexical_max_matches 0)": dict(lexical_max_matches=0),
           "fill": "fill"}


def _score(orgmem: Path, corpus: Path, results: Path) -> dict:
    out = subprocess.run([sys.executable, str(orgmem / "score.py"), str(corpus), str(results), "--json"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)["types"]


def _answer(index: Path, corpus: Path, out: Path, params: AnswerParams, fill: bool) -> None:
    idx = Index(index)
    idx._engine = Engine(idx, params=params)
    queries, qv = read_queries(corpus)
    with open(out, "w") as f:
        for q, v in zip(queries, qv):
            a = idx.query_spec(q, v, fill=fill, unrestricted=True)
            f.write(json.dumps({"qid": q["qid"], "events": [e.id for e in a.events],
                                "current": a.current.id if a.current else None, "latency_ms": 0}) + "\n")


def _row(name: str, t: dict) -> str:
    c, cur = t.get("chain", {}), t.get("current", {})
    return (f"| {name} | {c.get('recall', 0):.3f} | {c.get('precision', 0):.3f} | "
            f"{cur.get('accuracy', float('nan')):.3f} |")


def run(corpus: Path, work: Path, orgmem: Path) -> list[str]:
    work.mkdir(parents=True, exist_ok=True)
    rows = [f"\n**{corpus.name}**\n", "| variant | chain recall | chain precision | current acc. |",
            "| --- | --- | --- | --- |"]
    rag = work / "rag.jsonl"
    subprocess.run([sys.executable, str(orgmem / "rag_baseline.py"), str(corpus), str(rag)], check=True,
                   capture_output=True)
    rows.append(_row("plain RAG (k=100, fills the budget)", _score(orgmem, corpus, rag)))
    for name, bp in BUILDS.items():
        index = work / ("idx-" + "-".join(name.split()[:2]))
        build(corpus, index, overwrite=True, params=bp)
        out = work / "res.jsonl"
        _answer(index, corpus, out, AnswerParams(), False)
        rows.append(_row(name, _score(orgmem, corpus, out)))
        if name == "default":
            for ename, kw in ENGINES.items():
                fill = kw == "fill"
                _answer(index, corpus, out, AnswerParams() if fill else replace(AnswerParams(), **kw), fill)
                rows.append(_row(ename, _score(orgmem, corpus, out)))
        print("\n".join(rows[-1:]), file=sys.stderr)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpora", nargs="+", type=Path)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--orgmem", type=Path, default=ROOT.parent / "shared" / "orgmem")
    a = ap.parse_args()
    for c in a.corpora:
        print("\n".join(run(c, a.work / c.name, a.orgmem)), flush=True)


if __name__ == "__main__":
    main()
