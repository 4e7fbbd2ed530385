"""Sharded serving over gRPC: partitioned builds, shard servers, the coordinator, failover,
partial answers, deadlines, hostile requests, and the CLI. Real servers on 127.0.0.1 with
ephemeral ports, started and stopped here."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import msgpack
import numpy as np
import pytest

from conftest import T0, HOUR, make_corpus, make_records, query_vectors_near, server_address, write_corpus

from fastctx.answer import AnswerParams
from fastctx.errors import InvalidQueryError, ShardUnavailableError
from fastctx.filters import Filters
from fastctx.index import build
from fastctx.shards import open_local, wire
from fastctx.shards.coordinator import Coordinator
from fastctx.shards.server import CoordinatorServer, ShardServer, connect
from fastctx.shards.transport import remote_cluster

N_SHARDS = 4
SCORE_TOL = 1e-4


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharded")
    c = make_corpus(root / "corpus", 1500, seed=3, dim=16, n_buckets=120)
    one, _ = build(c.dir, root / "one")
    four, report = build(c.dir, root / "four", shards=N_SHARDS)
    return {"root": root, "corpus": c, "one": one, "four_dir": root / "four", "report": report,
            "queries": query_vectors_near(c.centers, 8, seed=4)}


def _cases(qs):
    for qi, q in enumerate(qs):
        for typ in ("chain", "current", "as_of"):
            for d in ("back", "forward", "both"):
                kw = {}
                if typ == "as_of":
                    kw["as_of"] = T0 + 300 * HOUR
                if qi % 3 == 1:
                    kw["entities_any"] = ["customer:c3"]
                if qi % 3 == 2:
                    kw["time_from"] = T0 + 60 * HOUR
                yield q, dict(type=typ, direction=d, budget_tokens=2000 + 500 * (qi % 3), **kw)


def _same(a, b, where=""):
    assert [e.id for e in a.events] == [e.id for e in b.events], where
    np.testing.assert_allclose([e.score for e in a.events], [e.score for e in b.events], rtol=SCORE_TOL,
                               atol=SCORE_TOL, err_msg=where)
    assert [e.why for e in a.events] == [e.why for e in b.events], where
    assert [e.superseded_by for e in a.events] == [e.superseded_by for e in b.events], where
    assert (a.current.id if a.current else None) == (b.current.id if b.current else None), where


class Cluster:
    """Shard servers (replicas per shard) + a coordinator server, all on loopback. The per-call
    timeout is generous (a 2 s one timed an Expand out on a loaded 2-core machine and made a
    shard "missing"); the tests about timeouts pass their own."""

    def __init__(self, index_dir, replicas=(1,) * N_SHARDS, call_timeout_s=10.0, hedge_s=0.25, deadline_s=30.0):
        self.shards = {k: [ShardServer(index_dir, k, port=0).start() for _ in range(r)]
                       for k, r in enumerate(replicas)}
        self.cluster = remote_cluster({k: [s.address for s in v] for k, v in self.shards.items()},
                                      call_timeout_s=call_timeout_s, hedge_s=hedge_s, down_s=30.0)
        self.coord = Coordinator(self.cluster, deadline_s=deadline_s)
        self.server = CoordinatorServer(self.coord, port=0).start()
        self.client = connect(self.server.address)

    def stop(self):
        self.client.close()
        self.server.stop(0)
        self.coord.close()
        for v in self.shards.values():
            for s in v:
                s.stop(0)


@pytest.fixture(scope="module")
def cluster(world):
    c = Cluster(world["four_dir"], replicas=(2, 1, 1, 1))
    yield c
    c.stop()


# ------------------------------------------------------------------------------------ build
def test_partitioned_build_layout(world):
    d = world["four_dir"]
    marker = json.loads((d / "fastctx.json").read_text())
    assert marker["shards"] == [f"shard-{k:03d}" for k in range(N_SHARDS)]
    assert marker["partition"]["key"] == "id"
    sizes = [json.loads((d / f"shard-{k:03d}" / "PARTITION.json").read_text()) for k in range(N_SHARDS)]
    assert all(s["n_global"] == 1500 for s in sizes)
    from fastctx.index import Index
    four = Index(d)
    assert four.n == 1500 and len(four.shards) == N_SHARDS
    assert min(sh.n for sh in four.shards) > 200          # a hash spreads events evenly
    # cross-shard links are not dangling: the report counts the whole corpus
    one_links = world["one"].stats()["links"]
    assert world["report"].n_links == one_links and world["report"].dangling_links == 0


# ------------------------------------------------------------------------------------ identity
def test_in_process_coordinator_equals_embedded(world):
    co = open_local(world["four_dir"])
    for i, (q, kw) in enumerate(_cases(world["queries"])):
        _same(world["one"].query(q, **kw), co.query(q, **kw), f"case {i} {kw}")


def test_specific_seeds_second_search_same_answers_sharded(world, monkeypatch):
    """The chain's second seed search (query less the hits' mean) runs through the same
    protocol call, and the wider candidate pool is chosen by the same allowed count (the
    coordinator's from its shards' Search replies), so the coordinator answers exactly as the
    embedded engine does."""
    from fastctx.answer import Engine
    added, pools = [], []
    inner, inner_c = Engine._specific_seeds, Engine._candidates

    def spy(self, g, q, mean, rows, *rest):
        out = inner(self, g, q, mean, rows, *rest)
        added.append(len(out[0]) - len(rows))
        return out

    def spy_c(self, g, q, rows, vecs, times, base, n_cands, *rest):
        pools.append(n_cands)
        return inner_c(self, g, q, rows, vecs, times, base, n_cands, *rest)
    monkeypatch.setattr(Engine, "_specific_seeds", spy)
    monkeypatch.setattr(Engine, "_candidates", spy_c)
    params = AnswerParams(seed_k=64, specific_seeds=64, candidates=8, many_candidates=24)
    one = Engine(world["one"], params=params)
    co = open_local(world["four_dir"], params=params)
    n = 0
    for i, (q, kw) in enumerate(_cases(world["queries"])):
        if kw["type"] != "chain":
            continue
        f = Filters.from_dict({k: v for k, v in kw.items() if k in ("entities_any", "time_from")})
        a = one.run(q, "chain", f, kw["direction"], kw["budget_tokens"])
        _same(a, co.query(q, **kw), f"case {i} {kw}")
        n += 1
    assert n == 8 * 3 and sum(x > 0 for x in added) >= 8   # the second search found new hits
    assert pools[0::2] == pools[1::2] and set(pools) == {8, 24}   # each pool as one process chose it


def test_four_servers_equal_one_embedded_shard(world, cluster):
    n = 0
    for i, (q, kw) in enumerate(_cases(world["queries"])):
        a = world["one"].query(q, **kw)
        b = cluster.client.query(q, **kw)
        assert not b.partial
        _same(a, b, f"case {i} {kw}")
        n += 1
    assert n == 8 * 9


def test_the_asked_kind_reranks_alike_over_grpc(world, cluster, monkeypatch):
    """The kind prior reads each hit's kind: the coordinator gets it with the seed round (an
    index per row into the names of the kinds sent), so it re-ranks the heads exactly as the
    embedded engine does."""
    from fastctx.answer import Engine
    moved = []
    inner = Engine._asked_kind

    def spy(self, g, rows, specific, cands, confidence):
        out = inner(self, g, rows, specific, cands, confidence)
        moved.append(out[1] is not None and out[0][0][1] != cands[0][1])
        return out
    monkeypatch.setattr(Engine, "_asked_kind", spy)
    n = 0
    for i, (q, kw) in enumerate(_cases(world["queries"])):
        if kw["type"] != "chain":
            continue
        _same(world["one"].query(q, **kw), cluster.client.query(q, **kw), f"case {i} {kw}")
        n += 1
    assert n == 8 * 3 and any(moved[0::2]) and moved[0::2] == moved[1::2]


def test_side_by_side_coordinators_agree(world, cluster):
    other = Coordinator(remote_cluster({k: [s.address for s in v] for k, v in cluster.shards.items()},
                                       call_timeout_s=30.0))
    try:
        for q, kw in list(_cases(world["queries"]))[:9]:
            _same(cluster.client.query(q, **kw), other.query(q, **kw))
    finally:
        other.close()


@pytest.mark.parametrize("params", [AnswerParams(),
                                    AnswerParams(max_edge_visits=150, max_per_entity=3, max_results=40),
                                    AnswerParams(max_hops=2, hub_postings=8, hub_window_days=2.0, min_score=0.3,
                                                 time_scale_days=0.0)])
def test_frontier_kernels_equal_the_expansion_kernel(world, params):
    """Reference check of kernels/frontier.py: the coordinator's searches over neighbour lists
    fetched in waves return exactly what the embedded kernel returns on the one-shard build
    (rows, float32 scores, parents, via kinds and ids, hops), budget cuts and hub windows
    included, with and without prefetch."""
    from fastctx.graph import LocalGraph
    from fastctx.shards.coordinator import DistributedGraph
    local = LocalGraph(world["one"], params=params)
    seeds = np.arange(0, 1500, 23, dtype=np.int64)
    ones = np.ones(len(seeds), np.float32)
    lo, hi, big = T0 + 40 * HOUR, T0 + 400 * HOUR, np.iinfo(np.int64).max
    for prefetch in (64, 0):
        co = open_local(world["four_dir"], params=params, prefetch=prefetch)
        for d, t_lo, t_hi, as_of in ((1, -big, big, None), (2, -big, big, None), (3, -big, big, None),
                                     (3, lo, hi, None), (1, -big, T0 + 300 * HOUR, T0 + 300 * HOUR)):
            g = DistributedGraph(co, time.monotonic() + 60)
            for k, grp in co.cluster.groups.items():      # owners, as a seed search would teach them
                g.owner.a[grp.replicas[0].service.grow] = k + 1
            want = local.expand(seeds, ones, d, t_lo, t_hi, as_of)
            got = g.expand(seeds, ones, d, t_lo, t_hi, as_of)
            assert g.waves >= 1
            for i, (a, b) in enumerate(zip(want, got)):
                for x, y in zip(a, b):
                    assert x.dtype == y.dtype and np.array_equal(x, y), (prefetch, d, t_lo, as_of, i)


def test_rows_outside_the_known_build_are_refused_before_the_kernels(world):
    """The frontier kernels index per-row arrays unchecked: rows beyond the build the
    coordinator knows (a query racing a sync) fail the query with a clear error instead."""
    from fastctx.shards.coordinator import DistributedGraph
    g = DistributedGraph(open_local(world["four_dir"]), time.monotonic() + 10)
    g._in_range(np.array([0, g.n - 1]))
    for bad in (g.n, -1):
        with pytest.raises(ShardUnavailableError, match="changed build"):
            g._in_range(np.array([0, bad]))
    with pytest.raises(ShardUnavailableError, match="changed build"):
        g.owner[g.n] = 1


def test_reached_entity_lists_save_expand_rounds_same_answers(world):
    """With `reach`, Expand replies list the entities of the rows they reach, so most waves ask
    owners and holders in one round; answers are the same as with two rounds per wave."""
    one_round = open_local(world["four_dir"])
    two_rounds = open_local(world["four_dir"], reach=0)
    waves = rounds = rounds0 = 0
    for i, (q, kw) in enumerate(_cases(world["queries"])):
        if kw["type"] != "chain":
            continue
        a, b = one_round.query(q, **kw), two_rounds.query(q, **kw)
        _same(world["one"].query(q, **kw), a, f"case {i}")
        _same(b, a, f"case {i}")
        assert b.timings["expand_rounds"] <= 2 * b.timings["waves"]
        waves, rounds, rounds0 = waves + a.timings["waves"], rounds + a.timings["expand_rounds"], \
            rounds0 + b.timings["expand_rounds"]
    assert waves > 10 and rounds < 0.8 * rounds0, (waves, rounds, rounds0)   # measured: 237 vs 318


class _Rounds:
    """Records the scatter rounds (method, shards asked) of an in-process coordinator."""

    def __init__(self, co):
        self.log, inner = [], co.cluster.scatter

        def scatter(method, reqs, *a, **kw):
            self.log.append((method, sorted(reqs), sorted({f for r in reqs.values() for f in r.get("fields", ())})))
            return inner(method, reqs, *a, **kw)
        co.cluster.scatter = scatter


@pytest.fixture(scope="module")
def text_world(text_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("sharded-text")
    one, _ = build(text_corpus.dir, root / "one")
    build(text_corpus.dir, root / "four", shards=N_SHARDS)
    return one, root / "four"


def test_text_queries_seed_round_carries_lexical_hits_and_vectors(text_corpus, text_world):
    """Vector and lexical seeds come back in one Search round; a chain query's hits bring their
    vectors and times along (no Fetch of seed vectors), a current query's hits their slot
    entities, supersession, the versions they replaced and the first hits' payloads (the whole
    answer: one round); why-path ids and entity names ride with the vector fetch after the
    expansion; a chain's payloads are fetched once; answers equal the embedded ones."""
    one, four = text_world
    co = open_local(four)
    rounds = _Rounds(co)
    for spec, vec in zip(text_corpus.queries, text_corpus.query_vectors):
        for d in ("back", "forward", "both"):
            rounds.log.clear()
            want = one.query_spec({**spec, "direction": d}, vec)
            got = co.query_spec({**spec, "direction": d}, vec)
            _same(want, got, f"{spec['qid']} {d}")
            methods = [m for m, _, _ in rounds.log if m != "Stats"]   # (Stats: once per coordinator)
            fetched = [f for m, _, f in rounds.log if m == "Fetch"]
            assert methods.count("Search") == 1 and methods[0] == "Search", rounds.log
            if spec["type"] == "chain":
                assert sum("payload" in f for f in fetched) == 1, rounds.log   # 16 + 5/4 * 1024 / 4 hits per shard cover the 68 events
                assert methods[1] == "Expand", rounds.log
                # why-path ids and names rode along; an id fetch left names superseders (after payloads)
                assert ["entity_names"] not in fetched, rounds.log
                assert ["id"] not in fetched[:fetched.index(["payload", "sup"])], rounds.log
            else:   # the versions the winner replaced and the payloads came with the hits: one round
                assert methods == ["Search"], rounds.log


def test_lexical_matches_many_rows_share_weigh_the_same_through_the_coordinator(tmp_path):
    """When more than `lexical_max_matches` rows match a question's words about equally, the
    coordinator scales their lexical match as the embedded engine does: the same answers."""
    from conftest import event, write_corpus
    rng = np.random.default_rng(11)
    events = [event(i, kind="commit", tokens=40, entities=[f"person:p{i % 9}"],
                    text=("ledger retry" if i < 120 else f"other{i % 7} thing{i % 5}") + f" step{i}")
              for i in range(400)]
    events[9]["text"] = "ledger retry settle_ledger_fast"
    vecs = rng.normal(size=(400, 16)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    corpus = write_corpus(tmp_path / "c", events, vecs)
    one, _ = build(corpus, tmp_path / "one")
    build(corpus, tmp_path / "four", shards=N_SHARDS)
    co = open_local(tmp_path / "four")
    for text in ("what about the ledger retry?", "who wrote settle_ledger_fast?", "thing3 other2"):
        for qv in rng.normal(size=(3, 16)).astype(np.float32):
            spec = {"qid": "q", "type": "chain", "text": text, "direction": "back", "budget_tokens": 600}
            _same(one.query_spec(spec, qv), co.query_spec(spec, qv), text)


# ------------------------------------------------------------------------------------ failures
@pytest.fixture(scope="module")
def people_world(tmp_path_factory):
    """The `world` corpus with people: each event names one of 13 people (`person:`), so chain
    answers bring the chain's people's other events (`AnswerParams.team_k`)."""
    root = tmp_path_factory.mktemp("sharded-people")
    recs, vecs, _, centers = make_records(1500, seed=3, dim=16, n_buckets=120)
    for r in recs:
        r["entities"] = r["entities"] + [f"person:p{int(r['id'][1:]) % 13}"]
    write_corpus(root / "corpus", recs, vecs)
    one, _ = build(root / "corpus", root / "one")
    build(root / "corpus", root / "four", shards=N_SHARDS)
    return one, root / "four", query_vectors_near(centers, 8, seed=4)


def test_chain_people_searched_in_one_round_same_answers(people_world):
    """A chain answer's people are searched once each (the query's filters narrowed to the
    person), all in one Search round of the coordinator; answers equal the embedded ones, in
    process and over gRPC."""
    one, four, queries = people_world
    co = open_local(four)
    rounds = _Rounds(co)
    # a large budget lets the people's events (ranked after every stronger one) into answers
    cases = [(q, {**kw, "budget_tokens": kw["budget_tokens"] * (1 + 9 * (i % 2))})
             for i, (q, kw) in enumerate(_cases(queries)) if kw["type"] == "chain"]
    people_rounds = with_people = 0
    for i, (q, kw) in enumerate(cases):
        rounds.log.clear()
        want, got = one.query(q, **kw), co.query(q, **kw)
        _same(want, got, f"case {i}")
        searches = [r for r in rounds.log if r[0] == "Search"]
        assert 1 <= len(searches) <= 2, rounds.log      # the seeds; the people's searches
        people_rounds += len(searches) == 2
        with_people += any(e.why == "same people, like the chain" for e in got.events)
    assert people_rounds >= len(cases) // 2 and with_people >= 2, (people_rounds, with_people, len(cases))
    c = Cluster(four)
    try:
        for i, (q, kw) in enumerate(cases[::3]):
            _same(one.query(q, **kw), c.client.query(q, **kw), f"grpc case {i}")
    finally:
        c.stop()


def test_a_chains_own_people_weigh_alike_on_a_cluster_with_no_round_of_their_own(people_world):
    """How much of a candidate's chain its own people worked (`AnswerParams.actor_coherence`)
    changes answers in this world, and the coordinator gives the embedded answers either way
    (with the people floor on weak evidence too):
    the rows' actors ride with the hits and the reached rows' vectors, never in a Fetch round
    of their own."""
    from dataclasses import replace
    one, four, queries = people_world
    cases = [(q, kw) for q, kw in _cases(queries) if kw["type"] == "chain"]
    fetches = {}
    for w in (0.0, AnswerParams().actor_coherence):
        # off: neither actor signal (the head choice's term, the people floor on weak evidence)
        params = replace(AnswerParams(), actor_coherence=w, people_floor=AnswerParams().people_floor if w else 0.0)
        co = open_local(four, params=params)
        rounds = _Rounds(co)
        one.answer_params, one._engine = params, None
        for i, (q, kw) in enumerate(cases):
            _same(one.query(q, **kw), co.query(q, **kw), f"weight {w} case {i}")
        fetches[w] = [r for r in rounds.log if r[0] == "Fetch"]
        assert all("actors" in r[2] for r in fetches[w] if "vector" in r[2]) == (w > 0), fetches[w]
        assert not [r for r in fetches[w] if r[2] == ["actors"]], fetches[w]     # never a round of their own
    one.answer_params, one._engine = AnswerParams(), None
    plain = replace(AnswerParams(), actor_coherence=0.0)
    differ = 0
    for q, kw in cases:
        with_term = [e.id for e in one.query(q, **kw).events]
        one.answer_params, one._engine = plain, None
        differ += with_term != [e.id for e in one.query(q, **kw).events]
        one.answer_params, one._engine = AnswerParams(), None
    assert differ >= 1


def test_killed_replica_mid_run_every_query_answered(world):
    c = Cluster(world["four_dir"], replicas=(2, 2, 1, 1), hedge_s=None)
    try:
        cases = list(_cases(world["queries"]))[:27]
        for i, (q, kw) in enumerate(cases):
            if i == 5:
                c.shards[0][0].stop(0)       # the preferred replica of shard 0 dies
            if i == 15:
                c.shards[1][1].stop(0)
            b = c.client.query(q, **kw)
            assert not b.partial, (i, b.missing_shards)
            _same(world["one"].query(q, **kw), b, f"case {i}")
    finally:
        c.stop()


def test_all_replicas_down_gives_partial_answer_naming_the_shard(world):
    c = Cluster(world["four_dir"], replicas=(1, 1, 1, 1))
    try:
        for s in c.shards[2]:
            s.stop(0)
        for q, kw in list(_cases(world["queries"]))[:9]:
            ans = c.client.query(q, **kw)
            assert ans.partial and ans.missing_shards == [2]
            assert all(e.shard != 2 for e in ans.events)
        with pytest.raises(ShardUnavailableError, match=r"\[2\]"):
            c.client.query(world["queries"][0], require_all=True)
    finally:
        c.stop()


def test_hanging_shard_deadline_holds_answer_partial_on_time(world):
    c = Cluster(world["four_dir"], replicas=(1, 1, 1, 1), call_timeout_s=0.4, hedge_s=None)
    try:
        c.shards[3][0].delay_s = 30.0   # every call to shard 3 hangs
        t0 = time.monotonic()
        ans = c.client.query(world["queries"][0], deadline_s=1.0)
        took = time.monotonic() - t0
        assert ans.partial and ans.missing_shards == [3]
        assert took < 1.5, took
        # a whole-query deadline shorter than one call also holds (the bound leaves room for a
        # loaded 2-core machine: what it rules out is waiting for the hanging shard, 30 s)
        t0 = time.monotonic()
        ans = c.client.query(world["queries"][1], type="current", deadline_s=0.2)
        assert time.monotonic() - t0 < 1.5 and ans.partial
    finally:
        c.shards[3][0].delay_s = 0
        c.stop()


def test_hedged_request_beats_a_slow_replica(world):
    c = Cluster(world["four_dir"], replicas=(2, 1, 1, 1), call_timeout_s=5.0, hedge_s=0.05)
    try:
        c.coord.shard_stats()
        c.shards[0][0].delay_s = 3.0    # slow, not dead
        t0 = time.monotonic()
        q, kw = next(iter(_cases(world["queries"])))
        ans = c.client.query(q, **kw)
        assert time.monotonic() - t0 < 2.5 and not ans.partial
        _same(world["one"].query(q, **kw), ans)
        assert ans.timings["hedges"] >= 1
    finally:
        c.shards[0][0].delay_s = 0
        c.stop()


# ------------------------------------------------------------------------------------ hostile input
def _raw(address, service, method, payload: bytes):
    ch = grpc.insecure_channel(address)
    try:
        return ch.unary_unary(f"/{service}/{method}")(payload, timeout=5)
    finally:
        ch.close()


def _refused(address, service, method, payload, match=None):
    with pytest.raises(grpc.RpcError) as ei:
        _raw(address, service, method, payload)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (ei.value.code(), ei.value.details())
    if match:
        assert match in ei.value.details(), ei.value.details()


def test_malformed_and_hostile_requests_refused_cleanly(world, cluster):
    shard = cluster.shards[1][0].address
    coord = cluster.server.address
    vec = np.ones((1, 16), np.float32)
    enc = lambda m: wire.encode({"v": 1, **m})  # noqa: E731
    _refused(shard, "fastctx.Shard", "Search", b"\xc1\xff garbage", "msgpack")
    _refused(shard, "fastctx.Shard", "Search", b"")
    _refused(shard, "fastctx.Shard", "Search", msgpack.packb([1, 2, 3]))
    _refused(shard, "fastctx.Shard", "Search", wire.encode({"v": 99, "vectors": vec, "k": 5}), "'v'")
    _refused(shard, "fastctx.Shard", "Search", wire.encode({"v": np.ones((1, 3)), "vectors": vec, "k": 5}), "'v'")
    _refused(coord, "fastctx.Coordinator", "Query", wire.encode({"v": np.ones(2), "vector": vec[0]}), "'v'")
    _refused(shard, "fastctx.Shard", "Search", enc({"vectors": vec, "k": 10 ** 9}), "'k'")
    _refused(shard, "fastctx.Shard", "Search", enc({"vectors": vec, "k": "5"}), "'k'")
    _refused(shard, "fastctx.Shard", "Search", enc({"vectors": vec, "k": 5, "evil": 1}), "evil")
    _refused(shard, "fastctx.Shard", "Search", enc({"vectors": np.ones((1, 7), np.float32), "k": 5}), "dim")
    _refused(shard, "fastctx.Shard", "Search", enc({"vectors": vec, "k": 5, "filters": {"sources": 3}}), "sources")
    bad_arr = {"__nd__": 1, "dtype": "<f4", "shape": [1000000, 1000000], "data": b"\0" * 16}
    _refused(shard, "fastctx.Shard", "Search", msgpack.packb({"v": 1, "vectors": bad_arr, "k": 5}), "bytes")
    obj_arr = {"__nd__": 1, "dtype": "|O", "shape": [1], "data": b"\0" * 8}
    _refused(shard, "fastctx.Shard", "Search", msgpack.packb({"v": 1, "vectors": obj_arr, "k": 5}), "dtype")
    _refused(shard, "fastctx.Shard", "Search", enc({"vectors": vec, "k": 5, "per_entity": ["p:x"] * 65}), "per_entity")
    _refused(shard, "fastctx.Shard", "Search", enc({"vectors": vec, "k": 5, "per_entity": ["p:x"], "words": ["a"]}),
             "per_entity")
    _refused(shard, "fastctx.Shard", "Search", enc({"vectors": np.ones((2, 16), np.float32), "k": 5,
                                                    "per_entity": ["p:x"]}), "one query vector")
    _refused(shard, "fastctx.Shard", "Fetch", enc({"rows": np.array([10 ** 12]), "fields": ["id"]}), "not on shard")
    _refused(shard, "fastctx.Shard", "Fetch", enc({"rows": np.array([0]), "fields": ["password"]}), "fields")
    _refused(shard, "fastctx.Shard", "Expand", enc({"rows": np.array([0]), "params": {"direction": 1}}), "params")
    # coordinator: huge budget, wrong types, unknown fields, both text and vector
    _refused(coord, "fastctx.Coordinator", "Query", enc({"vector": vec[0], "budget_tokens": 10 ** 12}), "budget")
    _refused(coord, "fastctx.Coordinator", "Query", enc({"vector": vec[0], "type": "everything"}), "type")
    _refused(coord, "fastctx.Coordinator", "Query", enc({"vector": "abc"}), "vector")
    _refused(coord, "fastctx.Coordinator", "Query", enc({"vector": vec[0], "x": 1}), "x")
    _refused(coord, "fastctx.Coordinator", "Query", enc({"vector": vec[0][:3]}), "shape")
    _refused(coord, "fastctx.Coordinator", "Query", enc({"vector": vec[0], "filters": {"kinds": ["a"] * 5000}}))
    _refused(coord, "fastctx.Coordinator", "Query", enc({"vector": vec[0] * np.nan}), "NaN")
    _refused(coord, "fastctx.Coordinator", "Query", enc({"vector": vec[0], "type": "as_of"}), "as_of")
    with pytest.raises(grpc.RpcError) as ei:       # above the message limit: gRPC refuses it
        _raw(shard, "fastctx.Shard", "Search", b"\0" * (wire.MAX_MESSAGE_BYTES + 10))
    assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(InvalidQueryError):
        cluster.client.query(world["queries"][0], budget_tokens=-5)
    # ... and everyone keeps serving
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    for addr in (shard, coord):
        with grpc.insecure_channel(addr) as ch:
            st = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert st.status == health_pb2.HealthCheckResponse.SERVING
    q, kw = next(iter(_cases(world["queries"])))
    _same(world["one"].query(q, **kw), cluster.client.query(q, **kw))


# ------------------------------------------------------------------------------------ CLI
_wait_listening = server_address


@pytest.mark.slow
def test_cli_serve_shards_coordinator_and_remote_eval(text_corpus, tmp_path):
    exe = Path(sys.executable).parent / "fastctx"
    idx = tmp_path / "idx"
    subprocess.run([str(exe), "build", str(text_corpus.dir), str(idx), "--shards", "2", "--quiet"], check=True,
                   capture_output=True, timeout=120)
    procs = []
    try:
        addrs = []
        for k in range(2):
            p = subprocess.Popen([str(exe), "serve", "shard", "--index", str(idx), "--shard", str(k), "--port", "0"],
                                 stderr=subprocess.PIPE, text=True)
            procs.append(p)
            addrs.append(_wait_listening(p, "serving on"))
        p = subprocess.Popen([str(exe), "serve", "coordinator", "--port", "0",
                              "--shard", f"0={addrs[0]}", "--shard", f"1={addrs[1]}"], stderr=subprocess.PIPE, text=True)
        procs.append(p)
        coord = _wait_listening(p, "serving on")

        def remote_eval(address, name):
            out = tmp_path / name
            r = subprocess.run([str(exe), "eval", "--remote", address, str(text_corpus.dir), "--out", str(out),
                                "--quiet"], capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, r.stderr
            return [json.loads(x) for x in out.read_text().splitlines()]

        got = remote_eval(coord, "r.jsonl")
        local = tmp_path / "l.jsonl"
        one = tmp_path / "one"
        subprocess.run([str(exe), "build", str(text_corpus.dir), str(one), "--quiet"], check=True, capture_output=True)
        subprocess.run([str(exe), "eval", str(one), str(text_corpus.dir), "--out", str(local), "--quiet"], check=True,
                       capture_output=True)
        want = [json.loads(x) for x in local.read_text().splitlines()]
        assert [(g["qid"], g["events"], g["current"]) for g in got] == \
               [(w["qid"], w["events"], w["current"]) for w in want]
        with connect(coord) as client:
            ans = client.query("what is the payments retry limit decision", type="current")
            assert ans.current.id == "d2"
        # a coordinator holding the graph replica (given by its environment variable): same answers
        p = subprocess.Popen([str(exe), "serve", "coordinator", "--port", "0", "--shard", f"0={addrs[0]}",
                              "--shard", f"1={addrs[1]}"], stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "FASTCTX_GRAPH_REPLICA": str(idx)})
        procs.append(p)
        got2 = remote_eval(_wait_listening(p, "graph replica of"), "r2.jsonl")
        assert [(g["qid"], g["events"], g["current"]) for g in got2] == \
               [(w["qid"], w["events"], w["current"]) for w in want]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def test_a_sidecar_lacking_an_array_is_refused_naming_it(world, tmp_path):
    """A consistent (checksummed) sidecar written without one of the arrays a shard serves from
    is refused when the shard opens, not by a KeyError mid-query."""
    import shutil
    from fastctx.errors import CorruptIndexError
    from fastctx.partition import read_sidecar, write_sidecar
    from fastctx.shards.service import ShardService
    d = tmp_path / "four"
    shutil.copytree(world["four_dir"], d)
    shard = d / "shard-001"
    arrays, meta = read_sidecar(shard)
    del arrays["out_time"]
    write_sidecar(shard, arrays, {k: v for k, v in meta.items() if k not in ("version", "npz", "checksum")})
    with pytest.raises(CorruptIndexError, match="out_time"):
        ShardService(d, 1)


def test_a_second_coordinator_takes_over_the_build_another_synced(tmp_path):
    """Two coordinators over the same shard servers: events written and synced through one give
    the shards a new build; the other's build watch finds every shard on it and takes it over
    (new global sizes), rather than setting every shard aside as serving a foreign build."""
    c = make_corpus(tmp_path / "c", 400, seed=5, dim=16)
    build(c.dir, tmp_path / "four", shards=2)
    shards = [ShardServer(tmp_path / "four", k, port=0).start() for k in range(2)]
    coords, servers, clients = [], [], []
    try:
        for _ in range(2):      # separate clusters and watches, as two coordinator processes have
            co = Coordinator(remote_cluster({k: [s.address] for k, s in enumerate(shards)}, call_timeout_s=10.0))
            srv = CoordinatorServer(co, port=0, build_check_s=3600).start()
            coords.append(co), servers.append(srv), clients.append(connect(srv.address))
        a, b = clients
        q = c.vectors[3]
        assert len(b.query(q, type="chain").events) and b.stats()["n_global"] == 400
        new = [{**c.records[3], "id": "added-1"}]
        assert a.add(new, c.vectors[3:4]) == 1 and a.stats()["n_global"] == 401
        servers[1].watch.check_once()
        assert not servers[1].watch.refused()
        assert b.stats()["n_global"] == 401
        got = b.query(q, type="chain", fill=True, budget_tokens=100_000)
        assert not got.partial and "added-1" in [e.id for e in got.events]
    finally:
        for cl in clients:
            cl.close()
        for srv in servers:
            srv.stop(0)
        for co in coords:
            co.close()
        for s in shards:
            s.stop(0)


def test_errors_name_replicas_the_build_check_set_aside():
    from types import SimpleNamespace
    from fastctx.shards.coordinator import set_aside
    from fastctx.shards.server import _RefusedReplica
    ok = SimpleNamespace(name="10.0.0.1:7001")
    refused = _RefusedReplica(SimpleNamespace(name="10.0.0.2:7001"), "serves build b2, the cluster serves build b1")
    cluster = SimpleNamespace(groups={0: SimpleNamespace(replicas=[ok, refused]), 1: SimpleNamespace(replicas=[ok])})
    assert set_aside(cluster, {1}) == ""
    assert set_aside(cluster, {0, 1}) == (" (set aside by the build check: shard 0 replica 10.0.0.2:7001 serves "
                                          "build b2, the cluster serves build b1)")


def test_sidecar_checks_refuse_arrays_that_do_not_fit(world):
    """Every sidecar of a real partitioned build passes; a dropped entry, an out-of-range row,
    entity, shard or link type, or a broken pointer array is refused naming the array."""
    from fastctx.errors import CorruptIndexError
    from fastctx.partition import check_sidecar, read_sidecar
    for k in range(N_SHARDS):
        arrays, meta = read_sidecar(world["four_dir"] / f"shard-{k:03d}")
        n = len(arrays["grow"])
        check_sidecar(arrays, meta, n, f"shard {k}")
    bad = {"grow": arrays["grow"][:-1], "out_dst": np.full_like(arrays["out_dst"], meta["n_global"]),
           "hold": np.full_like(arrays["hold"], N_SHARDS), "out_ptr": arrays["out_ptr"][::-1].copy(),
           "in_type": np.full_like(arrays["in_type"], 120), "gent": arrays["gent"][::-1].copy(),
           "sup_by": np.full_like(arrays["sup_by"], -2), "rev_ptr": arrays["rev_ptr"][:-1]}
    for name, value in bad.items():
        with pytest.raises(CorruptIndexError, match=name):
            check_sidecar({**arrays, name: value}, meta, n, "shard 3")


def test_an_install_that_does_not_open_keeps_the_previous_state(tmp_path):
    """An Install whose sidecar does not fit its events is refused, and the shard keeps serving,
    and reopening, the state it had."""
    c = make_corpus(tmp_path / "c", 300, seed=6, dim=16)
    build(c.dir, tmp_path / "two", shards=2)
    srv = ShardServer(tmp_path / "two", 0, port=0).start()
    try:
        svc = srv.service
        exp = svc.Export({})
        from fastctx.partition import read_sidecar
        arrays, meta = read_sidecar(tmp_path / "two" / "shard-000")
        req = {"v": 1, "gen": exp["gen"], "events": exp["events"], "vectors": exp["vectors"], "meta": meta,
               "arrays": {**arrays, "grow": arrays["grow"][:-1]}}
        call = grpc.insecure_channel(srv.address).unary_unary("/fastctx.Shard/Install")
        with pytest.raises(grpc.RpcError) as ei:
            call(wire.encode(req), timeout=30)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "previous state kept" in ei.value.details()
        q = np.asarray(c.vectors[:1], np.float32)
        assert len(svc.Search({"vectors": q, "k": 3})["rows"][0]) == 3
        from fastctx.shards.service import ShardService
        assert ShardService(tmp_path / "two", 0).sh.n == svc.sh.n          # the directory still opens
    finally:
        srv.stop(0)
