"""Filters against a plain-Python set model.

One index per module: random events (times with many ties, common and rare entities, sources and
kinds) in two segments (a build, then `Index.add` of a batch whose time range overlaps the first
and which introduces new entities, sources and kinds). Hypothesis varies the filters (including
names the index has never seen) and checks that

- `Index.explain` reports, per segment, exactly the allowed count of the model, with the strategy
  the planner documents for an index without HNSW (skip / exact-slice / exact-rows);
- `search(k=large)` returns exactly the model's allowed events, each once, best score first;
- `search(k=small)` returns the exact top-k scores among the allowed rows;
- no returned event ever violates a filter (checked on the event's own payload);
- the same holds through HNSW segments forced into the hnsw / hnsw-walk / hnsw-filter plans.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conftest import HOUR, T0, unit_rows, write_corpus
from conftest import event as make_event
from fastctx.corpus import EventBatch
from fastctx.filters import Filters
from fastctx.index import MAX_K, Index, build
from fastctx.params import BuildParams, SearchParams
from fastctx.planner import WALK_MIN_FRACTION

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
DIM = 8
N1, N2 = 240, 120
# (name, probability of an event mentioning it) per batch; batch 2 introduces new names
ENTS1 = [("service:a", 0.5), ("service:b", 0.3), ("team:x", 0.2)] + [(f"fn:r{j}", 0.04) for j in range(6)]
ENTS2 = [("service:a", 0.4), ("fn:r1", 0.1), ("fn:new", 0.15), ("team:y", 0.3)]
SOURCES1, SOURCES2 = ["jira", "github", "slack"], ["jira", "confluence"]
KINDS1, KINDS2 = ["decision", "patch", "incident", "discussion"], ["patch", "postmortem"]
UNKNOWN_ENTS = ["fn:unknown", "service:zzz"]
ALL_ENTS = sorted({e for e, _ in ENTS1 + ENTS2}) + UNKNOWN_ENTS
ALL_ENTS_AND = ["service:a", "service:b", "team:x", "team:y", "fn:r1", "fn:new"] + UNKNOWN_ENTS[:1]
ALL_SOURCES = sorted(set(SOURCES1 + SOURCES2)) + ["nosuch"]
ALL_KINDS = sorted(set(KINDS1 + KINDS2)) + ["nokind"]


def random_records(rng, n, start, hours, ents, sources, kinds, prefix):
    recs = []
    for i in range(n):
        mentioned = [e for e, p in ents if rng.random() < p]
        recs.append({"id": f"{prefix}{i:04d}", "time": int(T0 + rng.integers(hours[0], hours[1]) * HOUR),
                     "source": sources[int(rng.integers(len(sources)))], "kind": kinds[int(rng.integers(len(kinds)))],
                     "tokens": int(rng.integers(1, 500)), "entities": mentioned, "links": []})
    return recs


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    rng = np.random.default_rng(2024)
    recs1 = random_records(rng, N1, 0, (0, 40), ENTS1, SOURCES1, KINDS1, "a")
    recs2 = random_records(rng, N2, 0, (25, 60), ENTS2, SOURCES2, KINDS2, "b")
    vec1 = unit_rows(rng.standard_normal((N1, DIM)))
    vec2 = unit_rows(rng.standard_normal((N2, DIM)))
    root = tmp_path_factory.mktemp("filters-model")
    corpus = write_corpus(root / "corpus", recs1, vec1)
    params = BuildParams(bitmap_min_postings=6)  # frequent entities get stored bitmaps, rare ones do not
    idx, _ = build(corpus, root / "index", params=params)
    idx.add(EventBatch.from_records(recs2, vec2), params=params)
    idx = Index(root / "index")  # reopened from disk
    assert [s.n for s in idx.shards[0].segments] == [N1, N2]
    # the same events in HNSW segments, with plans forced onto the graph
    hnsw_params = BuildParams(bitmap_min_postings=6, hnsw_min_rows=64, hnsw_ef_construction=100)
    corpus_h = write_corpus(root / "corpus-h", recs1, vec1)
    idx_h0 = build(corpus_h, root / "index-h", params=hnsw_params)[0]
    idx_h0.add(EventBatch.from_records(recs2, vec2), params=hnsw_params)
    idx_h0.flush()  # the added events become an HNSW segment (until then the log is scanned exactly)
    idx_h0.close()
    idx_h = Index(root / "index-h", search_params=SearchParams(exact_max_rows=0, hnsw_min_fraction=0.0,
                                                                       hnsw_candidate_cost=0.0))
    assert idx_h.stats()["hnsw_segments"] == 2
    recs = recs1 + recs2
    return {"idx": idx, "idx_h": idx_h, "recs": recs, "seg_of": {r["id"]: (0 if k < N1 else 1) for k, r in enumerate(recs)},
            "vec": {r["id"]: v for r, v in zip(recs, np.vstack([vec1, vec2]))},
            "times": sorted({r["time"] for r in recs})}


def satisfies(f: Filters, time: int, source: str, kind: str, entities) -> bool:
    ents = set(entities)
    return ((f.time_from is None or time >= f.time_from) and (f.time_to is None or time <= f.time_to)
            and (f.as_of is None or time <= f.as_of)
            and (not f.entities_any or any(e in ents for e in f.entities_any))
            and (not f.entities_all or all(e in ents for e in f.entities_all))
            and (not f.sources or source in f.sources) and (not f.kinds or kind in f.kinds))


def allowed_ids(m, f: Filters) -> set:
    return {r["id"] for r in m["recs"] if satisfies(f, r["time"], r["source"], r["kind"], r["entities"])}


def drawn_allowed(m, f: Filters) -> set:
    """allowed_ids, recorded as a hypothesis event (see --hypothesis-show-statistics)."""
    out = allowed_ids(m, f)
    event("allowed: " + ("none" if not out else "all" if len(out) == len(m["recs"]) else "some"))
    return out


# time points: every distinct event time (ties!) and its neighbours, plus far outside the data
TIME_OFFSETS = st.sampled_from([-1, 0, 1])


@st.composite
def filters_st(draw, times):
    """Each filter field is present about a third of the time; a time window is usually ordered
    (from <= to), sometimes inverted; names include ones the index has never seen."""
    def present():
        return draw(st.integers(0, 2)) == 0

    def t():
        if draw(st.integers(0, 4)) == 0:  # far outside the data
            return draw(st.sampled_from([0, T0 - 10 * HOUR, T0 + 1000 * HOUR]))
        return draw(st.sampled_from(times)) + draw(TIME_OFFSETS)

    lo, hi, as_of = (t() if present() else None for _ in range(3))
    if lo is not None and hi is not None and lo > hi and not draw(st.integers(0, 4)) == 0:
        lo, hi = hi, lo

    def names(pool, max_size):
        return tuple(draw(st.lists(st.sampled_from(pool), min_size=1, max_size=max_size))) if present() else ()

    return Filters(time_from=lo, time_to=hi, as_of=as_of, entities_any=names(ALL_ENTS, 3),
                   entities_all=names(ALL_ENTS_AND, 2), sources=names(ALL_SOURCES, 2), kinds=names(ALL_KINDS, 3))


def query_vec(seed: int) -> np.ndarray:
    return unit_rows(np.random.default_rng(seed).standard_normal((1, DIM)))[0]


def check_hits(f, hits):
    ids = hits.ids(0)
    assert len(ids) == len(set(ids)) == int(hits.counts[0])
    for e in hits.events(0):
        assert satisfies(f, e.time, e.source, e.kind, e.entities), (f, e)
    scores = hits.scores[0, :hits.counts[0]]
    assert (np.diff(scores) <= 1e-7).all(), "hits are not best-first"
    return ids


@SETTINGS
@given(data=st.data())
def test_explain_counts_match_model(model, data):
    m = model
    f = data.draw(filters_st(m["times"]))
    expected = drawn_allowed(m, f)
    plans = m["idx"].explain(f)
    assert len(plans) == 2
    for seg_no, plan in enumerate(plans):
        want = sum(1 for e in expected if m["seg_of"][e] == seg_no)
        assert plan.allowed == want, (f, plan)
        assert plan.rows == (N1, N2)[seg_no]
        if want == 0:
            assert plan.strategy == "skip"
        else:
            assert plan.strategy == ("exact-rows" if f.has_bitmap_filters else "exact-slice"), (f, plan)
    # keyword form gives the same plans
    kw = {k: getattr(f, k) for k in ("time_from", "time_to", "as_of", "entities_any", "entities_all",
                                      "sources", "kinds")}
    assert m["idx"].explain(**kw) == plans


@SETTINGS
@given(data=st.data(), seed=st.integers(0, 10_000))
def test_search_large_k_returns_exactly_the_allowed_events(model, data, seed):
    m = model
    f = data.draw(filters_st(m["times"]))
    expected = drawn_allowed(m, f)
    q = query_vec(seed)
    hits = m["idx"].search(q, k=MAX_K, filters=f)
    ids = check_hits(f, hits)
    assert set(ids) == expected
    # scores are the exact cosine of each returned event
    want = np.array([m["vec"][i] @ q for i in ids], np.float32)
    np.testing.assert_allclose(hits.scores[0, :len(ids)], want, rtol=0, atol=1e-5)


@SETTINGS
@given(data=st.data(), seed=st.integers(0, 10_000), k=st.integers(1, 12))
def test_search_small_k_is_exact_top_k_of_allowed(model, data, seed, k):
    m = model
    f = data.draw(filters_st(m["times"]))
    expected = drawn_allowed(m, f)
    q = query_vec(seed)
    hits = m["idx"].search(q, k=k, filters=f)
    ids = check_hits(f, hits)
    assert set(ids) <= expected
    assert len(ids) == min(k, len(expected))
    brute = np.sort(np.array([m["vec"][i] @ q for i in expected], np.float32))[::-1][:k]
    np.testing.assert_allclose(hits.scores[0, :len(ids)], brute, rtol=0, atol=1e-5)
    # a batch of two identical queries answers both the same way
    hb = m["idx"].search(np.vstack([q, q]), k=k, filters=f)
    assert hb.ids(0) == hb.ids(1) == ids


@SETTINGS
@given(data=st.data(), seed=st.integers(0, 10_000))
def test_hnsw_plans_never_violate_filters(model, data, seed):
    m = model
    f = data.draw(filters_st(m["times"]))
    expected = drawn_allowed(m, f)
    idx = m["idx_h"]
    for seg_no, plan in enumerate(idx.explain(f)):
        want = sum(1 for e in expected if m["seg_of"][e] == seg_no)
        assert plan.allowed == want
        if want:
            graph = "hnsw-walk" if plan.fraction >= WALK_MIN_FRACTION else "hnsw-filter"
            assert plan.strategy == ("hnsw" if want == plan.rows else graph), plan
    q = query_vec(seed)
    hits = idx.search(q, k=MAX_K, filters=f)
    ids = check_hits(f, hits)
    # with k >= allowed the over-fetch reaches the whole (300-row) graph: every allowed event comes back
    assert set(ids) == expected
    small = idx.search(q, k=5, filters=f)
    assert set(small.ids(0)) <= expected
    assert int(small.counts[0]) == min(5, len(expected))


# ------------------------------------------------------------------------------------ fixed edge cases
@pytest.mark.parametrize("kw, expect_zero", [
    ({"time_from": T0 + 30 * HOUR, "time_to": T0 + 10 * HOUR}, True),     # empty window
    ({"entities_all": ["service:a", "fn:unknown"]}, True),                  # unknown name in an AND
    ({"entities_any": ["fn:unknown"]}, True),
    ({"sources": ["nosuch"]}, True),
    ({"kinds": ["nokind"]}, True),
    ({"as_of": T0 - 1}, True),                                               # before every event
    ({"entities_any": ["service:a", "fn:unknown"]}, False),                 # unknown name in an OR is ignored
    ({"sources": ["confluence"]}, False),                                   # only in the second segment
    ({"entities_any": ["fn:new"]}, False),                                  # entity introduced by the add
    ({"time_from": T0 + 25 * HOUR, "time_to": T0 + 25 * HOUR}, False),     # one tied timestamp, both segments
])
def test_edge_filters(model, kw, expect_zero):
    m = model
    f = Filters(**kw)
    expected = allowed_ids(m, f)
    assert (len(expected) == 0) == expect_zero
    assert sum(p.allowed for p in m["idx"].explain(f)) == len(expected)
    hits = m["idx"].search(query_vec(1), k=MAX_K, **kw)
    assert set(hits.ids(0)) == expected
    if expect_zero:
        assert int(hits.counts[0]) == 0 and (hits.rows[0] == -1).all() and np.isnan(hits.scores[0]).all()


def test_tied_timestamp_window_spans_both_segments(model):
    m = model
    t = T0 + 25 * HOUR
    per_seg = [sum(1 for r in m["recs"][a:b] if r["time"] == t) for a, b in ((0, N1), (N1, N1 + N2))]
    assert all(c >= 2 for c in per_seg), per_seg  # the data really has ties there, in both segments
    assert [p.allowed for p in m["idx"].explain(time_from=t, time_to=t)] == per_seg


# ------------------------------------------------------------------------------------ conftest's tiny corpus
def test_known_postings_of_the_tiny_corpus(built_index, tiny_corpus):
    """Per-name allowed counts of the shared tiny index equal the postings counted in its records."""
    recs = tiny_corpus.records
    count = lambda pred: sum(1 for r in recs if pred(r))
    names = [f"service:s{c}" for c in range(8)] + ["fn:f0", "fn:f57", "customer:c3", "decision:d1"]
    for name in names:
        want = count(lambda r: name in r["entities"])
        assert want > 0
        assert [p.allowed for p in built_index.explain(entities_any=[name])] == [want], name
    for src in ("jira", "slack"):
        assert built_index.explain(sources=[src])[0].allowed == count(lambda r: r["source"] == src) == 100
    assert built_index.explain(kinds=["decision"], entities_all=["decision:d2"])[0].allowed == count(
        lambda r: "decision:d2" in r["entities"])
    # supersedes links (every 25th event supersedes the one 25 before) are in the overlay
    by, _ = built_index.shards[0].supersession
    assert int((by >= 0).sum()) >= len(recs) // 25 - 1


def test_equal_scores_tie_break_by_row_across_segments(tmp_path):
    """Merged results order by (score desc, shard, global row): identical vectors come back in
    row order, first segment first, and a smaller k keeps the lowest rows."""
    v = unit_rows(np.ones((1, DIM)))
    corpus = write_corpus(tmp_path / "corpus", [make_event(i) for i in range(3)], np.repeat(v, 3, axis=0))
    idx, _ = build(corpus, tmp_path / "index")
    idx.add([make_event(10 + i, time=T0 - HOUR * (i + 1)) for i in range(3)], np.repeat(v, 3, axis=0))
    for i in (idx, Index(tmp_path / "index")):
        h = i.search(v[0], k=6)
        assert h.rows[0].tolist() == [0, 1, 2, 3, 4, 5]
        assert h.ids() == ["e000000", "e000001", "e000002", "e000012", "e000011", "e000010"]
        assert i.search(v[0], k=4).rows[0].tolist() == [0, 1, 2, 3]
        assert i.search(v[0], k=2, sources=["jira"], time_to=T0).ids() == ["e000000", "e000012"]


@SETTINGS
@given(data=st.data(), seed=st.integers(0, 10_000), qtype=st.sampled_from(["chain", "current", "as_of"]),
       direction=st.sampled_from(["back", "forward", "both"]), budget=st.integers(1, 3000))
def test_query_answers_respect_as_of_budget_and_seed_filters(model, data, seed, qtype, direction, budget):
    """Causal answers over the two-segment index: within budget, no duplicates, in time order,
    nothing after as_of (neither events nor supersessions), and every seed-ranked event obeys
    the filters when the answer consists of seeds only."""
    m = model
    f = data.draw(filters_st(m["times"]))
    if qtype == "as_of" and f.as_of is None:
        f = Filters(**{**{k: getattr(f, k) for k in ("time_from", "time_to", "entities_any", "entities_all",
                                                      "sources", "kinds")}, "as_of": m["times"][len(m["times"]) // 2]})
    expected = drawn_allowed(m, f)
    ans = m["idx"].query(query_vec(seed), type=qtype, filters=f, direction=direction, budget_tokens=budget)
    ids = [e.id for e in ans.events]
    assert len(ids) == len(set(ids))
    assert sum(e.tokens for e in ans.events) <= budget
    assert [(e.time, e.id) for e in ans.events] == sorted((e.time, e.id) for e in ans.events)
    if not expected:
        assert ans.events == [] and ans.current is None
    if f.as_of is not None:
        assert all(e.time <= f.as_of for e in ans.events)
        assert all(e.superseded_at is None or e.superseded_at <= f.as_of for e in ans.events)
    if qtype == "chain":
        assert ans.current is None
    elif ans.current is not None and f.as_of is not None:
        assert ans.current.time <= f.as_of
    for e in ans.events:
        if e.why in ("seed: similar to the question", "seed (alternative head)", "vector similarity"):
            assert e.id in expected, (e, f)


@SETTINGS
@given(data=st.data(), seed=st.integers(0, 10_000), k=st.integers(1, 12))
def test_search_per_entity_equals_one_narrowed_search_per_name(model, data, seed, k):
    """`search_per_entity` plans each name from the filters' own plans (their allowed rows
    narrowed to the name's); the hits are those of a search whose filters add the name to
    `entities_all`, on exact and on graph plans alike, unknown names included."""
    m = model
    f = data.draw(filters_st(m["times"]))
    names = data.draw(st.lists(st.sampled_from(ALL_ENTS), min_size=1, max_size=4))
    q = query_vec(seed)
    for idx in (m["idx"], m["idx_h"]):
        got = idx.search_per_entity(q, k, names, filters=f)
        assert len(got) == len(names)
        for name, hits in zip(names, got):
            narrowed = Filters(time_from=f.time_from, time_to=f.time_to, as_of=f.as_of, entities_any=f.entities_any,
                               entities_all=f.entities_all + (name,), sources=f.sources, kinds=f.kinds)
            want = idx.search(q, k=k, filters=narrowed)
            for a in ("shards", "rows", "counts"):
                np.testing.assert_array_equal(getattr(hits, a), getattr(want, a), err_msg=f"{a} {name} {f}")
            np.testing.assert_array_equal(hits.scores, want.scores, err_msg=f"scores {name} {f}")
            check_hits(narrowed, hits)
