"""Fuzz the gRPC services: mutated shard requests (Search, Fetch, Expand, Write, Export) and
coordinator requests (Query, Write, Sync) sent as bytes to real servers on loopback. Every reply
must be a result or a refusal that names the problem (INVALID_ARGUMENT, RESOURCE_EXHAUSTED,
PERMISSION_DENIED, UNAUTHENTICATED, FAILED_PRECONDITION; UNAVAILABLE only naming the shards a
build check set aside while another coordinator's sync moves the cluster), never INTERNAL /
UNKNOWN (an unexpected exception inside a server) and never a hang.

    python bench/fuzz_rpc.py --seconds 120 [--seed 1] [--work DIR]

builds a small 2-shard index under WORK (a temporary folder by default), serves both shards and
two coordinators over them (one plain; one holding the graph replica, behind a bearer token, sent
hostile `authorization` metadata), and prints "requests: N, unexpected: M" with the first unexpected
replies and the requests that caused them. tests/test_fuzz_rpc.py runs it for a few seconds.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fastctx.index import build
from fastctx.shards import wire

DIM = 8
T0 = 1_700_000_000
EXPECTED = {"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "PERMISSION_DENIED", "FAILED_PRECONDITION", "UNAUTHENTICATED"}
HOSTILE = [2**70, -2**70, 2**63, -1, 0, 1, 3, 1.5, float("nan"), float("inf"), True, None, "", "x", "\ud800",
           [], {}, ["a"] * 70, "person:p1", ["person:p1", "person:p2"], [1, 2], {"a": 1}, [[[[]]]],
           np.zeros(3, np.float32), np.zeros((2, DIM), np.float32), np.full((1, DIM), np.nan, np.float32),
           np.zeros((1, DIM + 1), np.float32), np.full((1, DIM), 1e30, np.float32), np.array([-1, 2**40]),
           np.zeros((0, DIM), np.float32), np.ones(2, "<f8")]
ROWS = [-1, 0, 5, 59, 60, 119, 120, 2**40]
TOKEN = "fuzz-token-0123456789abcdef"
AUTH = [None, "", "Bearer", "Bearer ", f"Bearer {TOKEN}", f"bearer   {TOKEN}  ", f"Basic {TOKEN}", TOKEN,
        "Bearer " + TOKEN[:-1], "Bearer " + "x" * 5000, f"Bearer {TOKEN} extra"]


def corpus_events(n: int = 120) -> tuple[list[dict], np.ndarray]:
    rng = np.random.default_rng(3)
    evs = [{"id": f"e{i}", "time": T0 + 3600 * i, "source": "jira", "kind": ("decision", "patch")[i % 2],
            "tokens": 20 + i, "entities": [f"service:s{i % 3}", f"person:p{i % 5}", f"fn:f{i // 4}"]
            + ([f"decision:d{i % 4}"] if i % 2 == 0 else []),
            "links": [{"to": f"e{i - 1}", "type": "references"}] if i % 3 == 1 else [],
            "text": f"event {i} about fn_{i // 4} and service s{i % 3}"} for i in range(n)]
    vecs = rng.standard_normal((n, DIM)).astype(np.float32)
    return evs, vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


def make_index(work: Path) -> Path:
    c = work / "corpus"
    c.mkdir(parents=True, exist_ok=True)
    evs, vecs = corpus_events()
    (c / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evs))
    np.save(c / "vectors.npy", vecs)
    (c / "meta.json").write_text(json.dumps({"format": "orgmem-v1", "dim": DIM, "n_events": len(evs)}))
    build(c, work / "index", shards=2)
    return work / "index"


class RpcFuzzer:
    """Mutates valid requests: drops fields, puts hostile values in fields and in filters, views
    and expansion parameters, and row arrays on and off the shard."""

    def __init__(self, index_dir: Path, seed: int = 0):
        from fastctx.shards.coordinator import Coordinator
        from fastctx.shards.server import CoordinatorServer, ShardServer
        from fastctx.shards.transport import remote_cluster
        import grpc
        self.grpc = grpc
        self.rng = random.Random(seed)
        self.shards = [ShardServer(index_dir, k, port=0).start() for k in range(2)]
        self.coord = Coordinator(remote_cluster({k: [s.address] for k, s in enumerate(self.shards)},
                                                call_timeout_s=5.0), deadline_s=10.0)
        self.coord_server = CoordinatorServer(self.coord, port=0).start()
        # requests to it come with hostile authorization metadata
        from fastctx.auth import TokenTable
        # a second coordinator (its own cluster and build watch, as another process has), holding
        # the graph replica, behind bearer tokens
        self.coord2 = Coordinator(remote_cluster({k: [s.address] for k, s in enumerate(self.shards)},
                                                 call_timeout_s=5.0), deadline_s=10.0, replica=index_dir)
        self.auth_server = CoordinatorServer(self.coord2, port=0, tokens=TokenTable({TOKEN: ["user:ana"]}),
                                             build_check_s=0.5).start()
        self.channels = {"shard": grpc.insecure_channel(self.shards[0].address),
                         "coord": grpc.insecure_channel(self.coord_server.address),
                         "auth": grpc.insecure_channel(self.auth_server.address)}
        self.owned = [int(x) for x in np.asarray(self.shards[0].service.grow)[:8]]   # global rows shard 0 holds
        self.tried = 0
        self.unexpected: dict = {}

    def close(self) -> None:
        for ch in self.channels.values():
            ch.close()
        self.coord_server.stop(0)
        self.auth_server.stop(0)
        self.coord.close()
        self.coord2.close()
        for s in self.shards:
            s.stop(0)

    def _vec(self, nq: int = 1) -> np.ndarray:
        v = np.random.default_rng(self.rng.randrange(1 << 30)).standard_normal((nq, DIM)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def _event(self) -> dict:
        """A valid new event (ids w0..w49 come back: adds, upserts and deletes of the same ids)."""
        r = self.rng
        i = r.randrange(50)
        return {"id": f"w{i}", "time": T0 + 3600 * r.randrange(200), "source": "jira", "kind": "patch",
                "tokens": 10, "entities": [f"service:s{i % 3}", f"person:p{i % 5}"],
                "links": [{"to": "e3", "type": "references"}] if i % 2 else [], "text": f"write {i}"}

    def _base(self) -> tuple[str, str, dict]:
        r = self.rng
        v = self._vec()
        own = self.owned
        expand = {"direction": 3, "t_lo": 0, "t_hi": 2**62, "as_of": None, "link_weight": np.ones(14, np.float64),
                  "hub_postings": 4096, "hub_window_s": 86400 * 30, "max_per_entity": 64, "entity_weight": 0.8,
                  "entity_max_df": 16, "entity_max_share": 0.02, "max_edge_visits": 20000}
        choices = [
            ("shard", "Search", {"vectors": v, "k": r.choice([1, 5, 50]), "filters": {"entities_any": ["service:s1"]},
                                 "per_entity": ["person:p1", "person:p2", "fn:nope"]}),
            ("shard", "Search", {"vectors": v, "k": 10, "hit_rows": 4, "hit_fields": ["vector", "time", "slot", "rev", "actors"],
                                 "hit_payloads": 2, "reach": 3, "words": ["~w:fn", "service:s1"]}),
            ("shard", "Search", {"words": ["~w:event", "~t:fn_3"], "k": 10, "avg_len": 4.0}),
            ("shard", "Fetch", {"rows": np.array(own[:3], np.int64), "fields": ["time", "vector", "id", "payload",
                                                                             "sup", "rev", "slot", "actors"]}),
            ("shard", "Fetch", {"rows": np.array(own[:2], np.int64), "fields": ["entity_names"],
                                "entities": np.array([0, 1], np.int64), "also_ids": np.array(own[4:5], np.int64)}),
            ("shard", "Expand", {"rows": np.array(own[:2], np.int64), "params": expand, "reach": 4}),
            ("coord", "Query", {"vector": v[0], "type": r.choice(["chain", "current", "as_of"]), "as_of": T0 + 3600 * 60,
                                "budget_tokens": 500, "filters": {"entities_any": ["service:s0"]}, "direction": "back"}),
            ("coord", "Query", {"text": "fn_3 service s1", "type": "chain", "budget_tokens": 300}),
            ("shard", "Write", {"op": r.choice(["add", "upsert"]), "events": [self._event()],
                                "vectors": self._vec()}),
            ("shard", "Write", {"op": "delete", "ids": [f"w{r.randrange(50)}", "e3"]}),
            ("coord", "Write", {"op": r.choice(["add", "upsert"]), "events": [self._event(), self._event()],
                                "vectors": self._vec(2)}),
            ("coord", "Write", {"op": "delete", "ids": [f"w{r.randrange(50)}"]}),
            ("coord", "Sync", {}),
            ("shard", "Export", {}),
        ]
        target, method, req = r.choice(choices)
        return target, method, {"v": 1, **req}

    def _mutate(self, req: dict) -> dict:
        r = self.rng
        for _ in range(r.choice([0, 1, 1, 2, 3])):
            key = r.choice(list(req) + ["per_entity", "filters", "view", "as_of", "k", "rows", "fields", "scope",
                                         "principals", "deadline_ms", "also_ids", "entities", "x", "op", "ids"])
            roll = r.random()
            if roll < 0.15:
                req.pop(key, None)
            elif key in ("params", "filters", "view", "scope") and isinstance(req.get(key), dict) and roll < 0.7:
                sub = dict(req[key])
                sub[r.choice(list(sub) + ["entities_all", "time_from", "kinds", "principals", "x"])] = r.choice(HOSTILE)
                req[key] = sub
            elif key == "events" and isinstance(req.get(key), list) and req[key] and isinstance(req[key][0], dict) \
                    and roll < 0.7:
                ev = dict(req[key][0])
                ev[r.choice(list(ev) + ["acl", "x"])] = r.choice(HOSTILE)
                req[key] = [ev] + req[key][1:]
            elif key in ("rows", "also_ids", "entities") and roll < 0.6:
                req[key] = np.array([r.choice(ROWS + self.owned) for _ in range(r.randint(0, 4))], np.int64)
            else:
                req[key] = r.choice(HOSTILE)
        return req

    def one(self) -> None:
        target, method, req = self._base()
        req = self._mutate(req)
        try:
            data = wire.encode(req)
        except Exception:       # not encodable: nothing a client could send
            return
        service = "fastctx.Shard" if target == "shard" else "fastctx.Coordinator"
        metadata = None
        if target == "coord" and self.rng.random() < 0.5:       # the token-guarded coordinator
            target, auth = "auth", self.rng.choice(AUTH)
            metadata = None if auth is None else (("authorization", auth),)
        self.tried += 1
        try:
            self.channels[target].unary_unary(f"/{service}/{method}")(data, timeout=30, metadata=metadata)
        except self.grpc.RpcError as e:
            code = e.code().name
            # a sync through one coordinator moves the shards' build under the other: while part
            # of the cluster has moved, that one names the shards its build check set aside
            aside = code == "UNAVAILABLE" and "set aside by the build check" in (e.details() or "")
            if code not in EXPECTED and not aside:
                key = (method, code, (e.details() or "")[:160])
                self.unexpected.setdefault(key, {k: f"{type(v).__name__}: {str(v)[:60]}" for k, v in req.items()})

    def run(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.one()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--work", type=Path, default=None)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = a.work or Path(tmp)
        index = work / "index" if (work / "index").exists() else make_index(work)
        f = RpcFuzzer(index, a.seed)
        try:
            f.run(a.seconds)
        finally:
            f.close()
    print(f"requests: {f.tried}, unexpected: {len(f.unexpected)}")
    for (method, code, details), req in list(f.unexpected.items())[:10]:
        print(f"  {method} -> {code}: {details}\n    request: {req}")
    return 1 if f.unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
