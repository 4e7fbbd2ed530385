"""Shared fixtures: fixed-seed orgmem-v1 corpora written to real folders, and indexes built from them.

Everything here is deterministic (numpy default_rng with fixed seeds). Helpers are plain functions
(importable as ``from conftest import ...``) and the expensive results are session-scoped fixtures.
Session-scoped indexes are shared: tests must treat them as read-only (copy them, or use the
function-scoped `fresh_index`, to mutate or corrupt one).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pytest

from fastctx.encoder import HashingEncoder
from fastctx.params import BuildParams

ORGMEM = Path(__file__).resolve().parents[1].parent / "shared" / "orgmem"


def need_orgmem() -> None:
    """Skip the calling test or fixture when the yardstick is not beside the checkout."""
    if not (ORGMEM / "generate.py").is_file():
        pytest.skip(f"orgmem yardstick not found at {ORGMEM} (needs shared/orgmem/generate.py beside the repo)")


T0 = 1_704_067_200          # 2024-01-01T00:00:00Z
HOUR, DAY = 3_600, 86_400
SOURCES = ("jira", "github", "slack", "confluence")
KINDS = ("decision", "patch", "incident", "discussion", "design_doc")


# ------------------------------------------------------------------------------------ vectors
def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered_vectors(n: int, dim: int, n_clusters: int, *, seed: int = 0, spread: float = 0.35):
    """(unit vectors float32 [n, dim], cluster label int [n], unit centers [n_clusters, dim])."""
    rng = np.random.default_rng(seed)
    centers = unit_rows(rng.standard_normal((n_clusters, dim)))
    labels = rng.integers(0, n_clusters, n)
    noise = rng.standard_normal((n, dim)).astype(np.float32) * (spread / np.sqrt(dim))
    return unit_rows(centers[labels] + noise), labels, centers


def query_vectors_near(centers: np.ndarray, nq: int, *, seed: int = 1, spread: float = 0.35) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dim = centers.shape[1]
    pick = rng.integers(0, len(centers), nq)
    return unit_rows(centers[pick] + rng.standard_normal((nq, dim)).astype(np.float32) * (spread / np.sqrt(dim)))


# ------------------------------------------------------------------------------------ corpus files
def write_corpus(root: Path, events: Sequence, vectors: np.ndarray, *, dim: Optional[int] = None,
                 queries: Optional[Sequence] = None, query_vectors: Optional[np.ndarray] = None,
                 truth: Optional[Sequence[dict]] = None, meta: Optional[dict] = None,
                 n_events: Optional[int] = None) -> Path:
    """Write an orgmem-v1 corpus folder. `events`: dicts or raw strings (one line each).
    `meta` overrides meta.json keys (a key mapped to ... is deleted)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    lines = [e if isinstance(e, str) else json.dumps(e) for e in events]
    (root / "events.jsonl").write_text("".join(x + "\n" for x in lines), encoding="utf-8")
    vectors = np.asarray(vectors)
    np.save(root / "vectors.npy", vectors)
    d = dim if dim is not None else (int(vectors.shape[1]) if vectors.ndim == 2 else 4)
    m = {"format": "orgmem-v1", "name": root.name, "dim": d,
         "n_events": len(lines) if n_events is None else n_events,
         "sources": list(SOURCES), "kinds": list(KINDS), "params": {}}
    if queries is not None:
        m["n_queries"] = len(queries)
        (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries), encoding="utf-8")
        np.save(root / "query_vectors.npy", np.asarray(query_vectors, dtype=np.float32))
    if truth is not None:
        (root / "truth.jsonl").write_text("".join(json.dumps(t) + "\n" for t in truth), encoding="utf-8")
    for k, v in (meta or {}).items():
        if v is ...:
            m.pop(k, None)
        else:
            m[k] = v
    (root / "meta.json").write_text(json.dumps(m), encoding="utf-8")
    return root


def event(i: int, *, time: Optional[int] = None, source: str = "jira", kind: str = "discussion",
          tokens: int = 100, entities=(), links=(), text: Optional[str] = None, **extra) -> dict:
    d = {"id": f"e{i:06d}", "time": T0 + i * HOUR if time is None else int(time), "source": source,
         "kind": kind, "tokens": int(tokens), "entities": list(entities),
         "links": [{"to": t, "type": ty} for t, ty in links]}
    if text is not None:
        d["text"] = text
    d.update(extra)
    return d


@dataclass
class Corpus:
    """A corpus folder plus the records and vectors it was written from (row i = line i)."""
    dir: Path
    records: list
    vectors: np.ndarray
    queries: list = field(default_factory=list)
    query_vectors: Optional[np.ndarray] = None
    centers: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None

    @property
    def ids(self) -> list:
        return [r["id"] for r in self.records]

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


def make_records(n: int, *, seed: int = 0, dim: int = 16, n_clusters: int = 8, t0: int = T0,
                 tie_every: int = 3, step: int = HOUR, n_buckets: int = 0, n_people: int = 0):
    """Fixed-seed synthetic events with known structure:

    - time: ``t0 + (i // tie_every) * step`` (groups of `tie_every` equal times), written with
      adjacent pairs swapped every 7th line (roughly, not strictly, time-ordered lines);
    - source ``SOURCES[i % 4]``, kind ``KINDS[i % 5]``;
    - entities: ``service:s<cluster>`` (common), ``fn:f<i // 4>`` (rare: 4 consecutive events),
      ``customer:c<i % 7>`` on every 5th event, ``bucket:b<k>`` (k uniform in [0, n_buckets)) if
      n_buckets, ``person:p<k>`` (k uniform in [0, n_people)) if n_people, and
      ``decision:d<(i // 5) % 4>`` on kind=decision events (slot entities);
    - links: ``reply`` to the previous event when i % 3 == 1, ``supersedes`` to event i - 25 when
      i % 25 == 0 and i >= 25.
    Returns (records, vectors, labels, centers)."""
    rng = np.random.default_rng(seed + 17)
    vectors, labels, centers = clustered_vectors(n, dim, n_clusters, seed=seed)
    buckets = rng.integers(0, max(n_buckets, 1), n)
    people = np.random.default_rng(seed + 29).integers(0, max(n_people, 1), n)
    recs = []
    for i in range(n):
        ents = [f"service:s{labels[i]}", f"fn:f{i // 4}"]
        if i % 5 == 0:
            ents.append(f"customer:c{i % 7}")
        if n_buckets:
            ents.append(f"bucket:b{buckets[i]}")
        if n_people:
            ents.append(f"person:p{people[i]}")
        kind = KINDS[i % 5]
        if kind == "decision":
            ents.append(f"decision:d{(i // 5) % 4}")
        links = []
        if i % 3 == 1:
            links.append((f"e{i - 1:06d}", "reply"))
        if i % 25 == 0 and i >= 25:
            links.append((f"e{i - 25:06d}", "supersedes"))
        recs.append(event(i, time=t0 + (i // tie_every) * step, source=SOURCES[i % 4], kind=kind,
                          tokens=20 + (i * 37) % 300, entities=ents, links=links))
    order = np.arange(n)
    for a in range(0, n - 1, 7):
        order[a], order[a + 1] = order[a + 1], order[a]
    return [recs[j] for j in order], vectors[order], labels[order], centers


def make_corpus(root: Path, n: int, **kw) -> Corpus:
    recs, vecs, labels, centers = make_records(n, **kw)
    write_corpus(root, recs, vecs)
    return Corpus(Path(root), recs, vecs, centers=centers, labels=labels)


# ------------------------------------------------------------------------------------ a text corpus
STORY = [  # (offset days, source, kind, tokens, entities, links, text)
    (0, "confluence", "design_doc", 400, ["service:payments", "fn:retry_ledger_v2", "customer:acme"], [],
     "Design doc: retry ledger v2 for the payments service, idempotent retries of ledger writes"),
    (20, "jira", "security_review", 300, ["service:payments", "fn:retry_ledger_v2", "ticket:PAY-1432"],
     [("s0", "references")], "Security review of retry ledger v2: replay risk on payments ledger retries"),
    (45, "github", "patch", 250, ["service:payments", "fn:retry_ledger_v2", "pr:812"], [("s1", "fixes")],
     "Patch: retry ledger v2 dedupe key fixes replay risk in payments ledger retries"),
    (90, "salesforce", "customer_complaint", 200, ["service:payments", "customer:acme", "ticket:PAY-1432"], [],
     "Acme complains about duplicate payments charges after ledger retries"),
    (100, "jira", "deferral", 150, ["service:payments", "ticket:PAY-1432", "fn:retry_ledger_v2"],
     [("s3", "follow_up")], "Deferred: retry ledger v2 rollout paused after duplicate payments charges"),
]
DECISIONS = [  # versions of one decision (slot entity decision:retry-limit); v2 supersedes v1 explicitly
    (10, "confluence", "decision", 120, ["service:payments", "decision:retry-limit"], [],
     "Decision: payments retry limit is three attempts"),
    (60, "confluence", "decision", 120, ["service:payments", "decision:retry-limit"], [("d0", "supersedes")],
     "Decision: payments retry limit raised to five attempts"),
    (120, "confluence", "decision", 120, ["service:payments", "decision:retry-limit"], [],
     "Decision: payments retry limit back to three attempts with jitter"),
]
NOISE_TOPICS = ["search indexing latency", "frontend build cache", "oncall rotation handoff",
                "billing invoice pdf export", "kubernetes node upgrade", "mobile push notifications"]


def make_text_corpus(root: Path, *, dim: int = 64, n_noise: int = 60) -> Corpus:
    """A small corpus with real text, embedded with the built-in hashing encoder (recorded in
    meta.params.encoder so `fastctx query TEXT` works), a 5-event payments story, a 3-version
    decision, and `n_noise` background events about other topics. Ids: s0..s4 (story),
    d0..d2 (decision versions), n000.. (noise). Two queries (chain + current) with truth."""
    rng = np.random.default_rng(5)
    recs = []
    for prefix, rows in (("s", STORY), ("d", DECISIONS)):
        for j, (off, src, kind, tok, ents, links, text) in enumerate(rows):
            recs.append({"id": f"{prefix}{j}", "time": T0 + off * DAY, "source": src, "kind": kind,
                         "tokens": tok, "entities": ents, "links": [{"to": t, "type": ty} for t, ty in links],
                         "text": text})
    for j in range(n_noise):
        topic = NOISE_TOPICS[j % len(NOISE_TOPICS)]
        recs.append({"id": f"n{j:03d}", "time": T0 + int(rng.integers(0, 150 * DAY)),
                     "source": SOURCES[j % 4], "kind": KINDS[1 + j % 4], "tokens": int(rng.integers(50, 400)),
                     "entities": [f"service:{topic.split()[0]}", f"person:p{j % 9}"],
                     "links": [], "text": f"{topic} note {j}: {topic} follow-up and status"})
    enc = HashingEncoder(dim=dim)
    vecs = enc.encode([r["text"] for r in recs])
    queries = [
        {"qid": "q1", "type": "chain", "text": "why was the retry ledger v2 rollout deferred after duplicate charges",
         "filters": {"entities_any": ["service:payments"]}, "as_of": None, "direction": "back",
         "budget_tokens": 1200},
        {"qid": "q2", "type": "current", "text": "what is the payments retry limit decision", "filters": {},
         "as_of": None, "direction": "back", "budget_tokens": 600},
        {"qid": "q3", "type": "as_of", "text": "what is the payments retry limit decision", "filters": {},
         "as_of": T0 + 80 * DAY, "direction": "back", "budget_tokens": 600},
    ]
    truth = [{"qid": "q1", "relevant": ["s0", "s1", "s2", "s3", "s4"], "current": None, "stale": []},
             {"qid": "q2", "relevant": [], "current": "d2", "stale": ["d0", "d1"]},
             {"qid": "q3", "relevant": [], "current": "d1", "stale": ["d0"]}]
    qv = enc.encode([q["text"] for q in queries])
    write_corpus(root, recs, vecs, queries=queries, query_vectors=qv, truth=truth,
                 meta={"params": {"encoder": HashingEncoder.name},
                       "sources": sorted({r["source"] for r in recs}), "kinds": sorted({r["kind"] for r in recs})})
    return Corpus(Path(root), recs, vecs, queries=queries, query_vectors=qv)


def derived_links(idx, ids, kind: str) -> dict:
    """Per id, the sorted targets of its links of type `kind` (derived links are stored too)."""
    return {e.id: sorted(to for to, ty in e.links if ty == kind) for e in idx.get(ids)}


def built_and_added(tmp_path: Path, events: Sequence, split: int):
    """(a one-shot build of `events`, a build of the first `split` with the rest added in one
    batch, the ids added): what an add derives is checked against what a build derives."""
    from fastctx.index import build
    one, _ = build(events, tmp_path / "one")
    inc, _ = build(events[:split], tmp_path / "inc")
    inc.add(events[split:])
    return one, inc, [e["id"] for e in events[split:]]


def copy_index(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def leftovers(parent: Path, name: str) -> list:
    """Temporary build/trash directories a build of `parent/name` may leave behind."""
    return sorted(p.name for p in Path(parent).iterdir() if p.name.startswith(f".{name}."))


# ------------------------------------------------------------------------------------ fixtures
TINY_N = 400


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Corpus:
    """400 events, dim 16, 8 clusters, ties in time, links incl. supersedes (no HNSW)."""
    return make_corpus(tmp_path_factory.mktemp("tiny") / "corpus", TINY_N, seed=3, dim=16)


@pytest.fixture(scope="session")
def built_index(tiny_corpus, tmp_path_factory):
    """Read-only index of `tiny_corpus` (session-scoped: never mutate it)."""
    from fastctx.index import build
    idx, report = build(tiny_corpus.dir, tmp_path_factory.mktemp("tiny-index") / "index")
    return idx


@pytest.fixture
def fresh_index(tiny_corpus, tmp_path):
    """A private, mutable copy of the tiny index (built anew into tmp_path)."""
    from fastctx.index import build
    idx, _ = build(tiny_corpus.dir, tmp_path / "index")
    return idx


@pytest.fixture(scope="session")
def hnsw_small_corpus(tmp_path_factory) -> Corpus:
    return make_corpus(tmp_path_factory.mktemp("hnsw-small") / "corpus", 300, seed=11, dim=16)


SMALL_HNSW_PARAMS = BuildParams(hnsw_min_rows=64, hnsw_ef_construction=64)


@pytest.fixture(scope="session")
def hnsw_small_index_dir(hnsw_small_corpus, tmp_path_factory) -> Path:
    """Directory of a 300-event index whose one segment has an HNSW graph (copy it to mutate)."""
    from fastctx.index import build
    out = tmp_path_factory.mktemp("hnsw-small-index") / "index"
    idx, _ = build(hnsw_small_corpus.dir, out, params=SMALL_HNSW_PARAMS)
    assert idx.stats()["hnsw_segments"] == 1
    return out


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory) -> Corpus:
    return make_text_corpus(tmp_path_factory.mktemp("text") / "corpus")


@pytest.fixture(scope="module")
def ray_cluster():
    """A real local Ray cluster of 2 CPUs for one test module (the Ray build tests). Starting one
    right after the previous module's shut down can time out on a loaded 2-core machine (its
    raylet never registered, once in a CI run): the start is tried up to three times."""
    import time
    ray = pytest.importorskip("ray")
    for attempt in range(3):
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
            break
        except Exception:
            ray.shutdown()
            if attempt == 2:
                raise
            time.sleep(5)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def generated_3k(tmp_path_factory):
    """`generated_3k(seed)`: a 3,000-event yardstick corpus of that generator seed (dim 32), read
    as a build reads it (no derived links yet), generated once per session. A function rather
    than a parametrized fixture, so pytest does not interleave the modules using it (each module
    starts and stops its own Ray cluster)."""
    import subprocess
    import sys
    from fastctx.index import read_for_build
    made = {}

    def get(seed: int):
        need_orgmem()
        if seed not in made:
            root = tmp_path_factory.mktemp(f"generated{seed}")
            subprocess.run([sys.executable, str(ORGMEM / "generate.py"), str(root / "c"), "--events", "3000",
                            "--dim", "32", "--queries", "5", "--seed", str(seed), "--quiet"], check=True)
            made[seed] = read_for_build(root / "c", root / "unused", False, None)[0]
        return made[seed]
    return get


# ------------------------------------------------------------------------------------ servers
def server_address(proc, pattern: str = "serving on", timeout: float = 120.0) -> str:
    """The address a server process (stderr piped, text mode) prints on its `pattern` line. Its
    stderr is then drained in the background: a server writes an access-log line per call, and a
    full pipe would block it (later calls time out and answers come back partial)."""
    import threading
    import time
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        line = proc.stderr.readline()
        if not line:
            if proc.poll() is not None:
                raise AssertionError(f"server exited with {proc.returncode}")
            continue
        if pattern in line:
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return line.strip().rsplit(" ", 1)[-1].strip('"}')
    raise AssertionError("server did not start in time")
