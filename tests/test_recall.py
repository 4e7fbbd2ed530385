"""Seed recall@10 against exact brute force over the allowed rows, and the plan chosen per case.

20k clustered vectors (dim 32, 64 clusters) in one HNSW segment. Allowed fractions 100%, 30%, 10%,
1% and a handful of rows, each both random (a `bucket:` entity spread uniformly over events) and
time-correlated (a time window: a contiguous row range). `SearchParams` thresholds are set per
case to force each planner branch; the test asserts the branch and recall >= 0.95 (exact
branches: recall 1 and the exact scores). A reopened or copied index answers identically.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from conftest import make_corpus, query_vectors_near
from fastctx.index import Index, build
from fastctx.params import SearchParams
from fastctx.planner import WALK_MIN_FRACTION, walk_cost

N, DIM, CLUSTERS, NQ, K = 20_000, 32, 64, 40, 10


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("recall")
    c = make_corpus(root / "corpus", N, seed=1, dim=DIM, n_clusters=CLUSTERS, n_buckets=100)
    idx, _ = build(c.dir, root / "index")  # default BuildParams: 20k >= hnsw_min_rows -> HNSW
    assert idx.stats()["hnsw_segments"] == 1
    times = np.array([r["time"] for r in c.records], np.int64)
    bucket = np.array([int(next(e for e in r["entities"] if e.startswith("bucket:"))[len("bucket:b"):])
                       for r in c.records])
    fn = np.array([next(e for e in r["entities"] if e.startswith("fn:")) for r in c.records])
    ts = np.sort(times)
    return {"dir": root / "index", "corpus": c, "times": times, "bucket": bucket, "fn": fn, "ts": ts,
            "ids": np.array(c.ids), "line": {x: i for i, x in enumerate(c.ids)}, "vectors": c.vectors,
            "queries": query_vectors_near(c.centers, NQ, seed=7)}


def window(w, frac):
    """time_from/time_to covering about `frac` of the rows from the start (tied times included)."""
    ts = w["ts"]
    return {"time_from": int(ts[0]), "time_to": int(ts[int(frac * N) - 1])}


def buckets(n):
    return {"entities_any": [f"bucket:b{j}" for j in range(n)]}


def allowed_mask(w, kw) -> np.ndarray:
    m = np.ones(N, bool)
    if "time_from" in kw:
        m &= w["times"] >= kw["time_from"]
    if "time_to" in kw:
        m &= w["times"] <= kw["time_to"]
    if "entities_any" in kw:
        names = set(kw["entities_any"])
        m &= np.array([f"bucket:b{b}" in names for b in w["bucket"]]) | np.isin(w["fn"], list(names))
    return m


def brute_top(w, mask, q, k=K):
    rows = np.flatnonzero(mask)
    s = w["vectors"][rows] @ q
    best = np.argsort(-s, kind="stable")[:k]
    return set(w["ids"][rows[best]].tolist())


# (case id, filter kwargs (a function of the world), SearchParams, expected strategy)
G = 0.0  # hnsw_candidate_cost=0 switches the graph cost rules (walk, over-fetch) off, to force the graph
CASES = [
    ("100%-default", lambda w: {}, SearchParams(), "hnsw"),                   # 20000 > exact_max_rows 2048
    ("100%-exact", lambda w: {}, SearchParams(exact_max_rows=20_000), "exact-slice"),
    ("30%-random", lambda w: buckets(30), SearchParams(), "exact-rows"),      # walk ~7000 >= 6000 rows
    ("30%-time", lambda w: window(w, 0.30), SearchParams(), "exact-slice"),
    ("30%-random-graph", lambda w: buckets(30), SearchParams(hnsw_candidate_cost=G), "hnsw-walk"),
    ("30%-time-graph", lambda w: window(w, 0.30), SearchParams(hnsw_candidate_cost=G), "hnsw-walk"),
    ("10%-random", lambda w: buckets(10), SearchParams(), "exact-rows"),      # over-fetch ~2000 >= 2000 rows
    ("10%-time", lambda w: window(w, 0.10), SearchParams(), "exact-slice"),
    ("10%-random-graph", lambda w: buckets(10), SearchParams(exact_max_rows=1000, hnsw_candidate_cost=G),
     "hnsw-walk"),
    ("10%-time-graph", lambda w: window(w, 0.10), SearchParams(exact_max_rows=1000, hnsw_candidate_cost=G),
     "hnsw-walk"),
    ("10%-random-exact", lambda w: buckets(10), SearchParams(exact_max_rows=5000), "exact-rows"),
    ("10%-time-exact", lambda w: window(w, 0.10), SearchParams(exact_max_rows=5000), "exact-slice"),
    ("1%-random", lambda w: buckets(1), SearchParams(exact_max_rows=100), "exact-rows"),
    ("1%-time", lambda w: window(w, 0.01), SearchParams(exact_max_rows=100), "exact-slice"),
    ("1%-random-graph", lambda w: buckets(1),
     SearchParams(exact_max_rows=100, hnsw_min_fraction=0.005, hnsw_candidate_cost=G), "hnsw-filter"),
    ("1%-time-graph", lambda w: window(w, 0.01),
     SearchParams(exact_max_rows=100, hnsw_min_fraction=0.005, hnsw_candidate_cost=G), "hnsw-filter"),
    ("handful-random", lambda w: {"entities_any": ["fn:f100", "fn:f2000"]}, SearchParams(), "exact-rows"),
    ("handful-time", lambda w: {"time_from": int(w["ts"][900]), "time_to": int(w["ts"][900]) + 3600},
     SearchParams(), "exact-slice"),
    # the graph cannot find 10 of 8 allowed rows by over-fetching: it must fall back to a scan
    ("handful-random-graph", lambda w: {"entities_any": ["fn:f100", "fn:f2000"]},
     SearchParams(exact_max_rows=0, hnsw_min_fraction=0.0, hnsw_candidate_cost=G), "hnsw-filter"),
]
FRACTIONS = {"100%": 1.0, "30%": 0.30, "10%": 0.10, "1%": 0.01}


@pytest.mark.parametrize("name, make_kw, params, strategy", CASES, ids=[c[0] for c in CASES])
def test_recall_and_plan(world, name, make_kw, params, strategy):
    w = world
    kw = make_kw(w)
    mask = allowed_mask(w, kw)
    n_allowed = int(mask.sum())
    frac = FRACTIONS.get(name.split("-")[0])
    if frac is not None:
        assert abs(n_allowed / N - frac) < 0.25 * frac + 1e-9, n_allowed
    else:
        assert 1 <= n_allowed <= 10, n_allowed
    idx = Index(w["dir"], search_params=params)
    (plan,) = idx.explain(**kw)
    assert plan.allowed == n_allowed
    assert plan.strategy == strategy, str(plan)
    hits = idx.search(w["queries"], k=K, **kw)
    recalls = []
    for i, q in enumerate(w["queries"]):
        got = hits.ids(i)
        assert len(got) == min(K, n_allowed)
        truth = brute_top(w, mask, q)
        assert set(got) <= set(w["ids"][mask].tolist()), "a hit violates the filter"
        recalls.append(len(truth & set(got)) / len(truth))
        # scores are the exact cosine of the events returned
        rows = np.array([w["line"][x] for x in got[:3]], np.int64)
        np.testing.assert_allclose(hits.scores[i, :len(rows)], w["vectors"][rows] @ q, atol=1e-5)
    recall = float(np.mean(recalls))
    if strategy.startswith("exact") or name.startswith("handful"):
        assert recall == 1.0, (name, recall)
    assert recall >= 0.95, (name, strategy, recall)


@pytest.mark.parametrize("kw_name", ["30%-random", "30%-time", "1%-time"])
def test_thresholds_switch_strategy_exactly_at_the_allowed_count(world, kw_name):
    """exact_max_rows = allowed -> exact; allowed - 1 -> graph. hnsw_min_fraction just above the
    allowed fraction -> exact; just below -> graph."""
    w = world
    kw = next(c[1] for c in CASES if c[0] == kw_name)(w)
    a = int(allowed_mask(w, kw).sum())
    exact = "exact-slice" if "time" in kw_name else "exact-rows"
    graph = "hnsw-walk" if a / N >= WALK_MIN_FRACTION else "hnsw-filter"
    plan = lambda p: Index(w["dir"], search_params=p).explain(**kw)[0].strategy
    assert plan(SearchParams(exact_max_rows=a, hnsw_min_fraction=0.0, hnsw_candidate_cost=G)) == exact
    assert plan(SearchParams(exact_max_rows=a - 1, hnsw_min_fraction=0.0, hnsw_candidate_cost=G)) == graph
    frac = a / N
    assert plan(SearchParams(exact_max_rows=0, hnsw_min_fraction=frac * 1.01, hnsw_candidate_cost=G)) == exact
    assert plan(SearchParams(exact_max_rows=0, hnsw_min_fraction=frac * 0.99, hnsw_candidate_cost=G)) == graph
    # the cost rules: graph while k * overfetch / fraction candidates (the walk: `walk_cost`) cost
    # less than a scan
    cost = lambda c: plan(SearchParams(exact_max_rows=0, hnsw_min_fraction=0.0, hnsw_candidate_cost=c))
    scan = a * (SearchParams().slice_row_cost if "time" in kw_name else 1.0)
    unit = walk_cost(N, a, SearchParams(hnsw_candidate_cost=1.0), K) if graph == "hnsw-walk" else K * 2.0 * N / a
    per = scan / unit  # candidate cost at which the graph plan costs exactly the scan
    assert cost(per * 1.01) == exact
    assert cost(per * 0.99) == graph
    # nothing allowed: skip, whatever the thresholds
    assert Index(w["dir"], search_params=SearchParams(exact_max_rows=0)).explain(
        entities_any=["bucket:none"])[0].strategy == "skip"


def test_persist_reopen_and_copy_give_identical_answers(world, tmp_path):
    w = world
    copy = tmp_path / "copied-index"
    shutil.copytree(w["dir"], copy)
    for name, make_kw, params, strategy in CASES:
        kw = make_kw(w)
        answers = []
        for path in (w["dir"], w["dir"], copy):
            with Index(path, search_params=params) as idx:  # a fresh open each time
                h = idx.search(w["queries"][:10], k=K, **kw)
                answers.append((h.rows.copy(), h.scores.copy(), [h.ids(i) for i in range(10)]))
        for rows, scores, ids in answers[1:]:
            np.testing.assert_array_equal(rows, answers[0][0], err_msg=name)
            np.testing.assert_array_equal(scores, answers[0][1], err_msg=name)
            assert ids == answers[0][2], name
