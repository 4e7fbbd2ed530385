"""Bounded requests: a shard estimates each request's cost from its sizes before doing the work
and refuses what exceeds its limits (RESOURCE_EXHAUSTED, not retried on other replicas); a
server caps concurrent RPCs (excess refused at once); the caller's deadline bounds a coordinator
query. Real gRPC servers on 127.0.0.1 over a real partitioned index with hub entities."""
from __future__ import annotations

import resource
import threading
import time

import grpc
import numpy as np
import pytest

from conftest import make_corpus, query_vectors_near

from fastctx.errors import InvalidQueryError
from fastctx.index import build
from fastctx.shards import wire
from fastctx.shards.coordinator import Coordinator
from fastctx.shards.server import CoordinatorServer, ShardServer
from fastctx.shards.transport import remote_cluster


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("bounded")
    # 2 clusters: every event mentions one of two service entities (~750 postings per shard each)
    c = make_corpus(root / "corpus", 3000, seed=1, dim=16, n_clusters=2, n_buckets=40)
    build(c.dir, root / "two", shards=2)
    return {"dir": root / "two", "queries": query_vectors_near(c.centers, 2, seed=2)}


@pytest.fixture(scope="module")
def shard(world):
    srv = ShardServer(world["dir"], 0).start()
    yield srv
    srv.stop(0)


def _call(address, method, msg, timeout=10.0):
    with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
        return wire.decode(ch.unary_unary(f"/fastctx.Shard/{method}")(wire.encode({"v": 1, **msg}), timeout=timeout))


def _params(**kw):
    p = {"direction": 3, "t_lo": -(1 << 62), "t_hi": 1 << 62, "as_of": None, "link_weight": np.ones(8, np.float64),
         "hub_postings": 1 << 40, "hub_window_s": 0, "max_per_entity": 100_000, "entity_weight": 1.0,
         "entity_max_df": 1 << 40, "entity_max_share": 1.0, "max_edge_visits": 100_000_000}
    p.update(kw)
    return p


def _hub(svc) -> int:
    """Global id of this shard's entity with the most postings."""
    return int(svc.gent[int(np.argmax(np.diff(np.asarray(svc.ent_ptr))))])


def _produced(out: dict) -> int:
    """Values an Expand reply holds, counted as `ShardCost` counts them."""
    walk = sum(len(out.get(k, ())) for k in ("ew_rows", "w_rows"))
    return 4 * walk + 6 * len(out.get("l_v", ())) + 8 * len(out.get("e_gid", ()))


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------------ the estimate
def test_estimate_is_an_upper_bound_of_the_real_work(shard):
    svc, cost = shard.service, shard.cost
    rng = np.random.default_rng(0)
    spec, req_fields = wire.SHARD_SCHEMAS["Expand"]
    times = np.asarray(svc.times)
    for trial in range(100):
        n_rows, n_walks = int(rng.integers(0, 200)), int(rng.integers(0, 300))
        rows = rng.choice(svc.grow, n_rows) if n_rows else None
        ents = np.concatenate([rng.choice(svc.gent, n_walks // 2), np.full(n_walks - n_walks // 2, _hub(svc))])
        t = rng.choice(times, n_walks)
        if rng.random() < 0.3:      # hostile walk times: int64 extremes (the kernel's distance wraps around)
            t[::7] = rng.choice([np.iinfo(np.int64).min, np.iinfo(np.int64).max, -(1 << 61) - 5], len(t[::7]))
        view = [None, {"scope": None, "principals": ["user:x"]}][trial % 2]
        p = _params(direction=int(rng.integers(1, 4)), max_per_entity=int(rng.integers(0, 50)),
                    as_of=None if trial % 3 else int(rng.choice(times)),
                    hub_postings=int(rng.integers(0, 1000)),
                    hub_window_s=int(rng.integers(0, 30 * 86400)) if rng.random() < 0.7 else int(np.iinfo(np.int64).max),
                    t_lo=int(times.min() + rng.integers(0, 1000) * 3600) if rng.random() < 0.5 else -(1 << 62),
                    t_hi=int(times.max()), view=view)
        msg = {"v": 1, "params": p, **({"rows": rows} if rows is not None else {}),
               **({"walk_u": rng.choice(svc.grow, n_walks), "walk_t": t, "walk_e": ents} if n_walks else {})}
        req = wire.check_request(msg, spec, req_fields)
        est, out = cost.estimate("Expand", req), svc.Expand(req)
        assert est["cells"] >= _produced(out), trial
        if n_walks:             # and walk by walk
            le = np.array([svc.local_ent.get(int(e), -1) for e in req["walk_e"]], np.int64)
            assert (cost.walk_entries(req["walk_t"], le, p) >= np.diff(out["w_ptr"])).all(), trial
    fields = ["time", "tokens", "vector", "sup", "slot", "rev"]
    rows = rng.choice(svc.grow, 500)
    req = wire.check_request({"v": 1, "rows": rows, "fields": fields}, *wire.SHARD_SCHEMAS["Fetch"])
    assert cost.estimate("Fetch", req)["nbytes"] + 4096 >= len(wire.encode(svc.Fetch(req)))


# ------------------------------------------------------------------------------------ hostile requests
def test_a_077_mb_expand_is_refused_fast_with_bounded_memory(shard):
    svc, n = shard.service, 32_000
    hub = _hub(svc)
    msg = {"walk_u": np.full(n, int(svc.grow[0]), np.int64), "walk_t": np.full(n, int(svc.times[0]), np.int64),
           "walk_e": np.full(n, hub, np.int64), "params": _params()}
    size = len(wire.encode({"v": 1, **msg}))
    assert 0.7e6 < size < 0.8e6
    # what it would cost: 1/100 of it, done for real
    small = wire.check_request({"v": 1, **{k: (v[: n // 100] if k != "params" else v) for k, v in msg.items()}},
                               *wire.SHARD_SCHEMAS["Expand"])
    assert 100 * _produced(svc.Expand(small)) > 20 * wire.Limits().max_cells
    peak, t0 = _peak_mb(), time.perf_counter()
    with pytest.raises(grpc.RpcError) as ei:
        _call(shard.address, "Expand", msg)
    took = time.perf_counter() - t0
    assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert ei.value.details().startswith(wire.TOO_COSTLY) and "Expand" in ei.value.details()
    assert took < 1.0 and _peak_mb() - peak < 64, (took, _peak_mb() - peak)
    # the same size as a frontier: 96,000 (repeated) rows, each walking its entities
    rows = {"rows": np.resize(np.asarray(svc.grow, np.int64), 96_000), "params": _params()}
    assert 0.7e6 < len(wire.encode({"v": 1, **rows})) < 0.8e6
    peak, t0 = _peak_mb(), time.perf_counter()
    with pytest.raises(grpc.RpcError) as ei:
        _call(shard.address, "Expand", rows)
    assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, ei.value.details()
    assert time.perf_counter() - t0 < 1.0 and _peak_mb() - peak < 64
    assert _call(shard.address, "Stats", {})["shard"] == 0          # still serving


def test_a_16_mb_fetch_is_refused_fast_with_bounded_memory(shard):
    svc = shard.service
    rows = np.resize(np.asarray(svc.grow, np.int64), 200_000)      # valid rows, repeated
    for fields in (["payload"], ["payload", "id", "vector", "rev", "slot"], ["id", "entity_names"]):
        msg = {"rows": rows, "fields": fields}
        if "entity_names" in fields:
            msg["entities"] = np.zeros(len(rows), np.int64)
        assert len(wire.encode({"v": 1, **msg})) > 1.6e6
        peak, t0 = _peak_mb(), time.perf_counter()
        with pytest.raises(grpc.RpcError) as ei:
            _call(shard.address, "Fetch", msg)
        took = time.perf_counter() - t0
        assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, ei.value.details()
        assert ei.value.details().startswith(wire.TOO_COSTLY) and "Fetch" in ei.value.details()
        assert took < 1.0 and _peak_mb() - peak < 64, (fields, took, _peak_mb() - peak)
    got = _call(shard.address, "Fetch", {"rows": rows[:50], "fields": ["payload", "time"]})   # a sane one is served
    assert len(got["payload"]) == 50


def test_oversized_search_refused(shard):
    vec = np.ones((wire.MAX_NQ, 16), np.float32)
    with pytest.raises(grpc.RpcError) as ei:
        _call(shard.address, "Search", {"vectors": vec, "k": wire.MAX_K})
    assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "Search" in ei.value.details()


def test_search_sends_its_first_hits_payloads_as_fetch_would(shard, world):
    q = world["queries"][:1]
    got = _call(shard.address, "Search", {"vectors": q, "k": 40, "hit_payloads": 5})
    want = _call(shard.address, "Fetch", {"rows": got["rows"][0, :5], "fields": ["payload"]})["payload"]
    assert len(want) == 5 and got["hit_payload"] == want and got["hit_payload_at"].tolist() == list(range(5))
    with pytest.raises(grpc.RpcError) as ei:
        _call(shard.address, "Search", {"vectors": q, "k": 40, "hit_payloads": wire.MAX_HIT_PAYLOADS + 1})
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "hit_payloads" in ei.value.details()


def test_limits_are_configurable_and_a_refusal_is_not_retried_on_replicas(world):
    tight = wire.Limits(max_cells=50)
    shards = {k: [ShardServer(world["dir"], k, limits=tight).start() for _ in range(2)] for k in range(2)}
    coord = Coordinator(remote_cluster({k: [s.address for s in v] for k, v in shards.items()}))
    try:
        with pytest.raises(grpc.RpcError) as ei:
            _call(shards[0][0].address, "Search", {"vectors": np.ones((1, 16), np.float32), "k": 100})
        assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "50" in ei.value.details()
        with pytest.raises(InvalidQueryError, match="per-request limit"):
            coord.query(world["queries"][0])
        assert all(t == 0.0 for g in coord.cluster.groups.values() for t in g.down_until)   # nobody marked down
    finally:
        coord.close()
        for v in shards.values():
            for s in v:
                s.stop(0)


# ------------------------------------------------------------------------------------ concurrency, deadlines
def test_concurrency_cap_refuses_excess_at_once(world):
    srv = ShardServer(world["dir"], 1, limits=wire.Limits(max_concurrent=2)).start()
    srv.delay_s = 1.5
    results: list = []

    def one():
        t0 = time.perf_counter()
        try:
            _call(srv.address, "Stats", {}, timeout=10)
            results.append(("ok", time.perf_counter() - t0))
        except grpc.RpcError as e:
            results.append((e.code(), time.perf_counter() - t0))

    try:
        threads = [threading.Thread(target=one) for _ in range(6)]
        for t in threads:
            t.start()
            time.sleep(0.02)
        for t in threads:
            t.join(20)
        refused = [dt for code, dt in results if code == grpc.StatusCode.RESOURCE_EXHAUSTED]
        assert sum(code == "ok" for code, _ in results) == 2 and len(refused) == 4, results
        assert max(refused) < 0.5, results
    finally:
        srv.stop(0)


class TimedCoordinator(Coordinator):
    def query_spec(self, spec, vector=None, **kw):
        self.seen = (kw.get("deadline_s"), time.perf_counter())
        try:
            return super().query_spec(spec, vector, **kw)
        finally:
            self.took = time.perf_counter() - self.seen[1]


def test_the_callers_deadline_bounds_a_coordinator_query(world):
    shards = [ShardServer(world["dir"], k).start() for k in range(2)]
    coord = TimedCoordinator(remote_cluster({k: [s.address] for k, s in enumerate(shards)}, call_timeout_s=30.0),
                             deadline_s=30.0)
    coord.shard_stats()
    shards[1].delay_s = 10.0                                  # then a shard hangs
    srv = CoordinatorServer(coord).start()
    try:
        with grpc.insecure_channel(srv.address) as ch:
            try:            # the coordinator stops just inside the caller's deadline: a partial answer,
                got = wire.decode(ch.unary_unary("/fastctx.Coordinator/Query")(
                    wire.encode({"v": 1, "vector": world["queries"][0]}), timeout=3.0))
                # the hung shard is missing; on a loaded machine the healthy one may be late too
                assert got["partial"] and 1 in got["missing_shards"]
            except grpc.RpcError as e:      # ... or, on a loaded machine, just too late for it
                assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        end = time.monotonic() + 10
        while not hasattr(coord, "took") and time.monotonic() < end:
            time.sleep(0.05)
        assert coord.seen[0] is not None and coord.seen[0] <= 3.0      # not the coordinator's 30 s default
        assert coord.took < 6.0                                         # the shard hangs 10 s, the default is 30 s
    finally:
        srv.stop(0)
        coord.close()
        for s in shards:
            s.stop(0)
