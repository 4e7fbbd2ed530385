"""End to end on the orgmem yardstick: generate a 20k-event corpus, build it with the CLI, run
`fastctx eval`, score with the yardstick's `score.py`, and compare with its plain vector-RAG
baseline. Floors are well under what the engine measures (at 2e4: chain recall ~0.89, current
~0.99, as_of 1.0; RAG ~0.44 / 0.17 / 0.28), so they catch breakage, not noise.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ORGMEM = Path(__file__).resolve().parents[1].parent / "shared" / "orgmem"
FASTCTX = Path(sys.executable).parent / "fastctx"
N_EVENTS = 20_000

pytestmark = pytest.mark.slow


def _run(*args, timeout=120):
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, (args, p.stdout[-2000:], p.stderr[-2000:])
    return p.stdout


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    if not (ORGMEM / "generate.py").is_file():
        pytest.skip(f"orgmem yardstick not found at {ORGMEM} (needs shared/orgmem/generate.py beside the repo)")
    root = tmp_path_factory.mktemp("e2e")
    corpus, index = root / "corpus", root / "index"
    _run(sys.executable, ORGMEM / "generate.py", corpus, "--events", N_EVENTS, "--quiet")
    meta = json.loads((corpus / "meta.json").read_text())
    assert meta["n_events"] == N_EVENTS
    out = _run(FASTCTX, "build", corpus, index, "--quiet")
    assert f"{N_EVENTS} events" in out
    results = root / "fastctx.jsonl"
    _run(FASTCTX, "eval", index, corpus, "--out", results, "--quiet")
    rag = root / "rag.jsonl"
    _run(sys.executable, ORGMEM / "rag_baseline.py", corpus, rag)
    score = lambda res: json.loads(_run(sys.executable, ORGMEM / "score.py", corpus, res, "--json"))
    return {"corpus": corpus, "meta": meta, "results": results, "fastctx": score(results), "rag": score(rag)}


def test_every_query_answered_within_budget(run):
    s = run["fastctx"]
    assert s["n_queries"] == run["meta"]["n_queries"] > 0
    assert s["missing"] == 0 and s["duplicate_result_lines"] == 0 and s["results_for_unknown_queries"] == 0
    assert s["unknown_event_ids"] == 0
    assert s["over_budget_results_truncated"] == 0
    lines = run["results"].read_text().splitlines()
    assert len(lines) == s["n_queries"]
    assert all(set(json.loads(x)) == {"qid", "events", "current", "latency_ms"} for x in lines)


def test_quality_floors(run):
    t = run["fastctx"]["types"]
    assert set(t) == {"chain", "current", "as_of"}
    assert t["chain"]["recall"] >= 0.75, t["chain"]
    assert t["current"]["accuracy"] >= 0.85, t["current"]
    assert t["as_of"]["accuracy"] >= 0.85, t["as_of"]
    assert t["current"]["stale_rate"] <= 0.10 and t["as_of"]["stale_rate"] <= 0.10


def test_beats_the_rag_baseline(run):
    ours, rag = run["fastctx"]["types"], run["rag"]["types"]
    assert run["rag"]["missing"] == 0
    assert ours["chain"]["recall"] > rag["chain"]["recall"], (ours["chain"], rag["chain"])
    assert ours["current"]["accuracy"] > rag["current"]["accuracy"]
    assert ours["as_of"]["accuracy"] > rag["as_of"]["accuracy"]
