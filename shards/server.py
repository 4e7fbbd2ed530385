"""gRPC servers: a shard server (service ``fastctx.Shard``) and a coordinator server (service
``fastctx.Coordinator``), both msgpack over generic method handlers, both with the standard
gRPC health service (``grpc.health.v1.Health``), and a client for the coordinator.

Requests are decoded and validated (`shards.wire`) before any work; a bad one gets
``INVALID_ARGUMENT`` with a message naming the field, and the server keeps serving. Any other
exception inside a handler becomes ``INTERNAL`` (the server keeps serving). Messages above
`wire.MAX_MESSAGE_BYTES` are refused by gRPC itself (``RESOURCE_EXHAUSTED``).

Security (see docs/SHARDED.md, "Security"): both servers serve TLS when given a certificate and
key, and otherwise listen on loopback only unless told `insecure`; a shard server can require
client certificates (mutual TLS); a coordinator server given a `TokenTable` requires
``authorization: Bearer <token>`` on every call and answers with the token's principals only.

Bounds: a shard request's cost is estimated from its sizes before it runs (`ShardCost`) and
refused above `wire.Limits` with ``RESOURCE_EXHAUSTED``; at most ``limits.max_concurrent`` RPCs
run at once per server (more are refused at once, not queued); a call whose deadline has passed
is refused before any work, and a coordinator query never runs past its caller's deadline.

Operations (docs/SHARDED.md, "Operations"): every RPC is counted and logged by a
`metrics.Observer` (Prometheus metrics with a metrics port; one access-log line per request).
A shard server reports its build identity in ``Stats.build``; a coordinator server refuses, at
start-up, a cluster that mixes builds (`check_builds`). docs/WIRE.md is the wire schema.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
from concurrent import futures
from dataclasses import fields
from pathlib import Path
from typing import Callable, Optional

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fastctx.answer import Answer
from fastctx.auth import (AuthError, SecurityConfigError, TokenTable, bearer, channel_credentials, check_bind,
                          effective_principals, is_loopback, server_credentials)
from fastctx.errors import AccessDeniedError, FastctxError, InvalidQueryError, ShardUnavailableError
from fastctx.types import Event

from . import wire
from .metrics import Observer
from .transport import CHANNEL_OPTIONS, GRPC_OPTIONS, SHARD_SERVICE

COORD_SERVICE = "fastctx.Coordinator"
log = logging.getLogger("fastctx.server")


def _handler(method: str, fn: Callable, schema: tuple, server: "_Server") -> Callable:
    spec, required = schema

    def handle(data: bytes, context) -> bytes:
        t0 = time.perf_counter()
        status, reply = "OK", b""
        try:
            reply = _serve(data, context)
            return reply
        except BaseException:
            status = _status_name(context)
            raise
        finally:
            try:
                server.obs.rpc(method, context.peer(), status, time.perf_counter() - t0, len(data), len(reply))
            except Exception:  # noqa: BLE001 - counting a request must never fail it
                log.exception("recording %s %s failed", server.service_name, method)

    def _serve(data: bytes, context) -> bytes:
        if server.delay_s:                      # test hook: a hanging server
            end = time.monotonic() + server.delay_s
            while time.monotonic() < end and context.is_active() and not server.stopping:
                time.sleep(0.01)
        left = context.time_remaining()
        if left is not None and left <= 0.001:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before the work began")
        try:
            caller = server.authenticate(method, context)
            req = wire.check_request(wire.decode(data), spec, required)
            server.admit(method, req)
            return wire.encode(fn(req, caller, context) if server.wants_caller else fn(req))
        except AuthError as e:
            log.warning("%s %s refused from %s: %s", server.service_name, method, context.peer(), e)
            code = grpc.StatusCode.PERMISSION_DENIED if e.code == "PERMISSION_DENIED" \
                else grpc.StatusCode.UNAUTHENTICATED
            context.abort(code, str(e)[:1000])
        except AccessDeniedError as e:       # e.g. an index with access lists asked without principals
            log.warning("%s %s refused from %s: %s", server.service_name, method, context.peer(), e)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(e)[:1000])
        except wire.CostError as e:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e)[:1000])
        except (wire.WireError, InvalidQueryError) as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e)[:1000])
        except ShardUnavailableError as e:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(e)[:1000])
        except FastctxError as e:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e)[:1000])
        except Exception as e:  # never let a request take the server down
            context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {str(e)[:500]}")
    return handle


def _status_name(context) -> str:
    """The status a handler aborted with (context.abort records it before raising)."""
    code = context.code() if hasattr(context, "code") else None
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"


class _Server:
    """A gRPC server: TLS when `credentials` are given (else loopback only, unless `insecure`),
    at most `limits.max_concurrent` RPCs in progress (more get RESOURCE_EXHAUSTED at once
    instead of queueing), message sizes capped at `wire.MAX_MESSAGE_BYTES` both ways. Every RPC
    is counted and logged by `self.obs` (`shards.metrics.Observer`); with `metrics_port` its
    Prometheus metrics are served over HTTP on `metrics_host` (loopback by default)."""
    wants_caller = False

    def __init__(self, service_name: str, methods: dict[str, Callable], schemas: dict, port: int,
                 host: str = "127.0.0.1", workers: int = 8, *, credentials=None, insecure: bool = False,
                 limits: Optional[wire.Limits] = None, metrics_port: Optional[int] = None,
                 metrics_host: str = "127.0.0.1"):
        check_bind(host, credentials is not None, insecure)
        self.delay_s = 0.0
        self.stopping = False
        self.service_name = service_name
        self.limits = limits or wire.Limits()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=GRPC_OPTIONS,
                                  maximum_concurrent_rpcs=self.limits.max_concurrent)
        handlers = {m: grpc.unary_unary_rpc_method_handler(_handler(m, fn, schemas[m], self))
                    for m, fn in methods.items()}
        self.method_names = tuple(methods)      # what this server answers (docs/WIRE.md documents each)
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service_name, handlers),))
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        bind = f"{host}:{port}"
        try:
            self.port = self.server.add_secure_port(bind, credentials) if credentials is not None \
                else self.server.add_insecure_port(bind)
        except RuntimeError:
            self.port = 0
        if self.port == 0:
            hint = " with TLS (check that the certificate and key files match)" if credentials is not None else ""
            raise OSError(f"cannot listen on {bind}{hint}")
        self.address = f"{host}:{self.port}"
        self.tls = credentials is not None
        try:
            self.obs = Observer(service_name, metrics_port, metrics_host)
        except BaseException:
            self.server.stop(None)
            raise

    def authenticate(self, method: str, context):
        """Who calls (None: no per-call authentication; TLS has done its part)."""
        return None

    def admit(self, method: str, req: dict) -> None:
        """Refuse a request whose estimated cost exceeds `self.limits` (raises wire.CostError)."""

    def start(self):
        self.server.start()
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        self.health.set(self.service_name, health_pb2.HealthCheckResponse.SERVING)
        return self

    def stop(self, grace: Optional[float] = 0) -> None:
        self.stopping = True
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        self.obs.close()

    def wait(self) -> None:
        self.server.wait_for_termination()


class ShardServer(_Server):
    """Serves one shard of a partitioned index (`ShardService`). `tls_cert`/`tls_key`: serve
    TLS; `tls_client_ca`: also require a client certificate signed by that CA (mutual TLS)."""

    def __init__(self, index_dir, shard: int, port: int = 0, host: str = "127.0.0.1", workers: int = 8, *,
                 tls_cert=None, tls_key=None, tls_client_ca=None, insecure: bool = False,
                 limits: Optional[wire.Limits] = None, metrics_port: Optional[int] = None,
                 metrics_host: str = "127.0.0.1"):
        from .service import ShardService
        creds = server_credentials(tls_cert, tls_key, tls_client_ca)
        check_bind(host, creds is not None, insecure)      # before the (slow) warm-up
        self.service = ShardService(index_dir, shard)
        self.build = build_identity(index_dir, self.service.meta)
        self.service.warm_up()
        self.cost = ShardCost(self.service)
        methods = {m: getattr(self.service, m) for m in wire.SHARD_SCHEMAS}
        methods["Stats"] = self._stats
        super().__init__(SHARD_SERVICE, methods, wire.SHARD_SCHEMAS, port, host, workers, credentials=creds,
                         insecure=insecure, limits=limits, metrics_port=metrics_port, metrics_host=metrics_host)
        self.obs.build(shard, self.build)
        self.service.on_reload.append(self._reloaded)

    def _reloaded(self) -> None:
        """After a write sync installed a new partition: its build identity and cost arrays."""
        self.build = build_identity(self.service.index_dir, self.service.meta)
        self.cost = ShardCost(self.service)

    def _stats(self, req: dict) -> dict:
        return {**self.service.Stats(req), "build": self.build}

    def admit(self, method: str, req: dict) -> None:
        self.limits.check(method, **self.cost.estimate(method, req))


class ShardCost:
    """Estimates what a shard request will cost from its sizes and the shard's own arrays (CSR
    pointers, postings), in O(request) numpy work, before the request runs. Walk entries are
    bounded by the postings inside each walk's time window (and by ``2 * max_per_entity`` when
    nothing can make entries ineligible)."""

    FETCH_BYTES = {"time": 8, "tokens": 8, "kind": 8, "sup": 24, "slot": 8, "actors": 32, "id": 96,
                   "entity_names": 96, "payload": 4096, "visible": 1, "rev": 8}
    PY_LOOP_FIELDS = ("slot", "id", "payload", "entity_names", "rev")

    def __init__(self, svc):
        self.svc = svc
        self._top: Optional[np.ndarray] = None
        ent_ptr = np.asarray(svc.ent_ptr, np.int64)
        self.post_len = np.diff(ent_ptr)
        post_t = np.asarray(svc.post_t, np.int64)
        self.key = None
        if len(post_t):
            self.tmin, self.tmax = int(post_t.min()), int(post_t.max())
            span = self.tmax - self.tmin + 3
            if span * (len(self.post_len) + 1) < (1 << 62):      # (entity, time) fits one sorted int64 key
                self.span = span
                post_e = np.repeat(np.arange(len(self.post_len), dtype=np.int64), self.post_len)
                self.key = post_e * span + (post_t - self.tmin + 1)

    def _count(self, le: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Postings of local entity `le` with time in [lo, hi] (float bounds, clipped)."""
        if self.key is None:
            return self.post_len[le] if len(self.post_len) else np.zeros(len(le), np.int64)
        lo = (np.clip(lo, self.tmin - 1, self.tmax + 1) - self.tmin + 1).astype(np.int64)
        hi = (np.clip(hi, self.tmin - 1, self.tmax + 1) - self.tmin + 1).astype(np.int64)
        a = np.searchsorted(self.key, le * self.span + lo, "left")
        b = np.searchsorted(self.key, le * self.span + hi, "right")
        return np.maximum(b - a, 0)

    def walk_entries(self, wt, wle, p: dict) -> np.ndarray:
        """Per walk (time wt, local entity wle; -1: not held here), an upper bound of the
        entries `walk_parts` lists for it."""
        wle = np.asarray(wle, np.int64)
        out = np.zeros(len(wle), np.int64)
        ok = wle >= 0
        if p["max_per_entity"] <= 0 or not ok.any():
            return out
        le, t = wle[ok], np.asarray(wt, np.float64)[ok]
        lim = np.where(np.asarray(self.svc.ent_df, np.int64)[le] > p["hub_postings"],
                       float(p["hub_window_s"]), np.inf)     # inf: t +- lim never cuts a window
        # a walk time this far out can overflow the kernel's int64 distance: assume no hub window
        lim = np.where((t < -2.0 ** 61) | (t > 2.0 ** 61), np.inf, lim)
        lo, hi = np.maximum(float(p["t_lo"]), t - lim), np.minimum(float(p["t_hi"]), t + lim)
        n = self._count(le, lo, hi)
        view = p.get("view") or {}
        if view.get("principals") is None and not view.get("scope"):   # only u and entries after as_of are ineligible
            extra = 1 + (self._count(le, np.maximum(lo, float(p["as_of"]) + 1), hi) if p["as_of"] is not None else 0)
            n = np.minimum(n, 2 * int(p["max_per_entity"]) + extra)
        out[ok] = n
        return out

    def estimate(self, method: str, req: dict) -> dict:
        svc = self.svc
        if method == "Search":
            v = req.get("vectors")
            nq = (len(v) if v is not None else 1) * max(len(req.get("per_entity") or ()), 1)
            hv = min(int(req.get("hit_rows") or 0), req["k"]) if v is not None and req.get("hit_fields") else 0
            per_row = sum(4 * int(svc.index.dim) if f == "vector" else self.FETCH_BYTES.get(f, 8)
                          for f in req.get("hit_fields") or ())
            lex = int(req.get("lex_k") or req["k"]) if v is not None and req.get("words") else 0
            reach = 3 * self.top_mentions(min(int(req.get("reach") or 0), req["k"])) if v is not None else 0
            hp = (min(max(int(req.get("hit_payloads") or 0), int(req.get("hit_rows") or 0)), req["k"])
                  if v is not None and req.get("hit_payloads") else 0)    # the first hits and their facts' others
            return {"cells": nq * req["k"] + hv * (int(svc.index.dim) + 4) + lex + reach + hp,
                    "nbytes": nq * req["k"] * 28 + hv * per_row + lex * 16 + 5 * reach + hp * self.FETCH_BYTES["payload"],
                    "loop": (hv if "slot" in (req.get("hit_fields") or ()) else 0) + hp, "payload_rows": hp}
        if method == "Fetch":
            loc = svc.local_rows(req["rows"])
            n, fields = len(loc), req["fields"]
            per_row = sum(4 * int(svc.index.dim) if f == "vector" else self.FETCH_BYTES.get(f, 8) for f in fields)
            cells, nbytes = n * len(fields), n * per_row
            if "rev" in fields:
                rp = np.asarray(svc.sc.rev_ptr, np.int64)
                deg = int((rp[loc + 1] - rp[loc]).sum())
                cells, nbytes = cells + 5 * deg, nbytes + 40 * deg
            loop = n if any(f in fields for f in self.PY_LOOP_FIELDS) else 0
            also = sum(len(req.get(f) if req.get(f) is not None else ()) for f in ("also_ids", "also_names"))
            cells, loop, nbytes = cells + also, loop + also, nbytes + 96 * also
            return {"cells": cells, "loop": loop, "nbytes": nbytes,
                    "payload_rows": n if "payload" in fields else 0}
        if method == "Expand":
            p = req["params"]
            cells = loop = 0
            rows = req.get("rows")
            if rows is not None and len(rows):
                loc = svc.local_rows(rows)
                links = 0
                for bit, ptr in ((1, "out_ptr"), (2, "in_ptr")):
                    if p["direction"] & bit:
                        a = np.asarray(getattr(svc.sc, ptr), np.int64)
                        links += int((a[loc + 1] - a[loc]).sum())
                ev_ptr = np.asarray(svc.ev_ptr, np.int64)
                n_ent = ev_ptr[loc + 1] - ev_ptr[loc]
                ents = int(n_ent.sum())
                loop += len(loc) + links + ents
                cells += 6 * links + 8 * ents
                if ents and p["max_per_entity"] > 0:   # one walk per (row, entity of positive weight)
                    idx = np.repeat(ev_ptr[loc], n_ent) + (np.arange(ents) - np.repeat(np.cumsum(n_ent) - n_ent, n_ent))
                    le = np.asarray(svc.ev_ent, np.int64)[idx]
                    walks = np.asarray(svc._ent_w(p))[le] > 0
                    cells += 4 * int(self.walk_entries(np.repeat(svc.times[loc], n_ent)[walks], le[walks], p).sum())
            wu, wt, we = req.get("walk_u"), req.get("walk_t"), req.get("walk_e")
            if wu is not None and we is not None and wt is not None and len(we) == len(wt):
                le = np.fromiter((svc.local_ent.get(int(e), -1) for e in np.asarray(we).tolist()), np.int64, len(we))
                loop += len(we)
                cells += 4 * int(self.walk_entries(wt, le, p).sum())
            if req.get("reach"):   # entity lists of reached rows: at most those of the rows with the most
                cells += 3 * self.top_mentions(int(req["reach"]))
            return {"cells": cells, "loop": loop, "nbytes": 5 * cells}
        return {}

    def top_mentions(self, n_rows: int) -> int:
        """Entity mentions (each with its holders, a few shards) of the `n_rows` rows that
        mention the most: a bound of what `reach` lists."""
        if self._top is None:
            per_row = np.sort(np.diff(np.asarray(self.svc.ev_ptr, np.int64)))[::-1]
            self._top = np.concatenate([[0], np.cumsum(per_row)])
        return int(self._top[min(max(n_rows, 0), len(self._top) - 1)]) * (1 + int(self.svc.meta["n_shards"]))


# ------------------------------------------------------------------------------------ builds
class BuildMismatchError(FastctxError):
    """A coordinator given shard servers of different builds, or a replica serving another shard."""


def build_identity(index_dir, sidecar_meta: dict) -> str:
    """A partitioned build's identity, the same on every shard and replica of one build: the
    marker's ``build`` field if it has one, else a digest of the marker and of the partition
    fields all shards of a build share (whole-corpus sizes, shard key, dimension, encoder, slot
    kinds). Two builds of different corpora or settings differ; identical rebuilds agree."""
    from fastctx.format import read_marker
    marker = read_marker(Path(index_dir))
    if isinstance(marker.get("build"), str):
        return marker["build"]
    shared = {k: v for k, v in sidecar_meta.items() if k not in ("shard", "npz", "checksum")}
    blob = json.dumps({"marker": marker, "partition": shared}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def check_builds(cluster, timeout_s: float = 2.0) -> tuple[Optional[str], list[str]]:
    """Ask every replica of every shard for its Stats at once, and raise `BuildMismatchError`
    naming each replica that serves another shard number, another build than the rest of the
    cluster, or another manifest version than the other replicas of its shard. Returns the
    cluster's build (None if no replica answered) and the replicas that did not answer (not
    checked now; `BuildWatch` checks them later). In-process replicas are one index directory
    and are not asked."""
    from collections import Counter
    from .transport import LocalReplica
    data = wire.encode({"v": wire.SCHEMA_VERSION})
    calls = [(k, r, r.future("Stats", data, timeout_s)) for k in cluster.shards
             for r in cluster.groups[k].replicas if not isinstance(r, LocalReplica)]
    seen, down = [], []
    for k, r, fut in calls:
        try:
            seen.append((k, r.name, wire.decode(fut.result())))
        except Exception as e:  # noqa: BLE001 - any failure: this replica is not checked now
            down.append(f"shard {k} at {r.name} ({e.code().name if isinstance(e, grpc.RpcError) else type(e).__name__})")
    problems = [f"{name} serves shard {st.get('shard')}, not shard {k}" for k, name, st in seen
                if st.get("shard") != k]
    builds = Counter(st.get("build") for _, _, st in seen)
    if len(builds) > 1:    # the build most replicas serve (a tie: the lowest shard's) is the reference
        ref = next(st.get("build") for _, _, st in seen if builds[st.get("build")] == max(builds.values()))
        ref_n = next(st.get("n_global") for _, _, st in seen if st.get("build") == ref)
        for k, name, st in seen:
            if st.get("build") != ref:
                got = "no build identity (an older fastctx)" if st.get("build") is None \
                    else f"build {st.get('build')} ({st.get('n_global')} events)"
                problems.append(f"shard {k} at {name} serves {got}; the rest of the cluster serves build {ref} "
                                f"({ref_n} events)")
    for k in cluster.shards:
        versions = {name: st.get("version") for kk, name, st in seen if kk == k}
        if len(set(versions.values())) > 1:
            problems.append(f"the replicas of shard {k} serve different manifest versions "
                            f"({', '.join(f'{n}: {v}' for n, v in versions.items())})")
    if problems:
        raise BuildMismatchError("refusing to mix builds: " + "; ".join(problems[:8]) +
                                 ("" if len(problems) <= 8 else f"; and {len(problems) - 8} more"))
    return (seen[0][2].get("build") if seen else None), down


class _RefusedReplica:
    """Stands in for a replica that serves another shard or build: its calls fail at once, so
    the cluster fails over to the other replicas (or the shard comes back missing)."""

    def __init__(self, replica, why: str):
        self.replica, self.name, self.why = replica, replica.name, why

    def future(self, method: str, data: bytes, timeout: float):
        fut: futures.Future = futures.Future()
        fut.set_exception(wire.WireError(f"replica {self.name} refused: it {self.why}"))
        return fut

    def close(self) -> None:
        self.replica.close()


class BuildWatch:
    """Asks every remote replica for its Stats every `every_s` seconds, so that a replica that
    was down at start-up, or restarts on another index, is checked too. One that serves another
    shard number or build than the cluster is set aside (`_RefusedReplica`) until it serves the
    cluster's build again; each refusal is logged and counted. When every shard answers and all
    their replicas serve one other build, the cluster has moved (a write sync through another
    coordinator, every shard restarted on a new build): that build is taken over (`on_adopt`)."""

    def __init__(self, cluster, build: Optional[str], every_s: float, timeout_s: float, on_refuse=None,
                 on_adopt=None):
        self.cluster, self.build, self.every_s, self.timeout_s = cluster, build, every_s, timeout_s
        self.on_refuse = on_refuse or (lambda: None)
        self.on_adopt = on_adopt or (lambda: None)
        self._stop = threading.Event()
        self.lock = threading.Lock()    # a write sync holds it while shards change build
        self._thread = threading.Thread(target=self._run, name="fastctx-build-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.check_once()
            except Exception:  # noqa: BLE001 - the watch must outlive a bad round
                log.exception("build check failed")

    def refused(self) -> list[str]:
        return [r.name for k in self.cluster.shards for r in self.cluster.groups[k].replicas
                if isinstance(r, _RefusedReplica)]

    def check_once(self) -> None:
        with self.lock:
            self._check()

    def _check(self) -> None:
        from .transport import LocalReplica
        data = wire.encode({"v": wire.SCHEMA_VERSION})
        calls = []
        for k in self.cluster.shards:
            for i, r in enumerate(list(self.cluster.groups[k].replicas)):
                if not isinstance(r, LocalReplica):
                    real = r.replica if isinstance(r, _RefusedReplica) else r
                    calls.append((k, i, r, real, real.future("Stats", data, self.timeout_s)))
        answers = []
        for k, i, r, real, fut in calls:
            try:
                answers.append((k, i, r, real, wire.decode(fut.result())))
            except Exception:  # noqa: BLE001 - down: failover already handles it
                continue
        builds = {st.get("build") for k, _, _, _, st in answers if st.get("shard") == k}
        if self.build is not None and len(builds) == 1 and self.build not in builds and \
                {k for k, *_ in answers} == set(self.cluster.shards) and \
                all(st.get("shard") == k for k, _, _, _, st in answers):
            new = builds.pop()
            log.warning("every shard now serves build %s (was %s): taking it over", new, self.build)
            self.build = new
            self.on_adopt()
        for k, i, r, real, st in answers:
            why = None
            if st.get("shard") != k:
                why = f"serves shard {st.get('shard')}, not shard {k}"
            elif self.build is None:
                self.build = st.get("build")
            elif st.get("build") != self.build:
                why = f"serves build {st.get('build')}, the cluster serves build {self.build}"
            group = self.cluster.groups[k]
            if why and not isinstance(r, _RefusedReplica):
                group.replicas[i] = _RefusedReplica(real, why)
                log.error("refusing shard %d replica %s: it %s", k, real.name, why)
                self.on_refuse()
            elif why is None and isinstance(r, _RefusedReplica):
                group.replicas[i] = real
                log.warning("shard %d replica %s serves build %s again", k, real.name, self.build)


# ------------------------------------------------------------------------------------ coordinator
_EVENT_FIELDS = tuple(f.name for f in fields(Event))


def _event_msg(e: Event) -> dict:
    """An event's fields as they go on the wire (shallow: the encoder walks the payload's lists and
    attributes itself; `dataclasses.asdict` deep-copied them, a third of a millisecond an answer)."""
    return {name: getattr(e, name) for name in _EVENT_FIELDS}


def answer_to_msg(ans: Answer) -> dict:
    return {"type": ans.query_type, "events": [_event_msg(e) for e in ans.events],
            "current": _event_msg(ans.current) if ans.current is not None else None,
            "timings": {k: float(v) for k, v in ans.timings.items()}, "budget_tokens": ans.budget_tokens,
            "partial": ans.partial, "missing_shards": list(ans.missing_shards)}


def answer_from_msg(m: dict) -> Answer:
    ev = lambda d: Event(**d)  # noqa: E731
    return Answer(m["type"], [ev(d) for d in m["events"]], ev(m["current"]) if m["current"] else None, [],
                  dict(m["timings"]), int(m["budget_tokens"]), bool(m["partial"]), list(m["missing_shards"]))


class CoordinatorServer(_Server):
    """Serves `Coordinator.query` over gRPC (method ``Query``) and ``Stats``. With `tokens`
    (a `TokenTable`, or a path to its JSON file) every call needs a known bearer token, and a
    query runs with the token's principals, narrowed by the request's ``principals`` if any.

    Before serving, every shard replica is asked for its build (`check_builds`): a cluster that
    mixes builds is refused with `BuildMismatchError`; replicas that do not answer are logged.
    While serving, a `BuildWatch` re-checks every replica each `build_check_s` seconds."""
    wants_caller = True

    def __init__(self, coordinator, port: int = 0, host: str = "127.0.0.1", workers: int = 8, *,
                 tls_cert=None, tls_key=None, tokens=None, insecure: bool = False,
                 limits: Optional[wire.Limits] = None, metrics_port: Optional[int] = None,
                 metrics_host: str = "127.0.0.1", check: bool = True, build_check_s: Optional[float] = 10.0):
        self.coordinator = coordinator
        self.tokens = TokenTable.load(tokens) if tokens is not None and not isinstance(tokens, TokenTable) \
            else tokens
        cluster = coordinator.cluster
        build, self.unchecked = check_builds(cluster, cluster.call_timeout_s) if check else (None, [])
        for r in self.unchecked:
            log.warning("build not checked yet: %s did not answer Stats", r)
        from .writes import ClusterWriter
        self.writer = ClusterWriter(cluster)
        if hasattr(coordinator, "warm_up"):
            coordinator.warm_up()                       # the expansion kernels, before serving
        super().__init__(COORD_SERVICE, {"Query": self._query, "Stats": self._stats, "Write": self._write,
                                         "Sync": self._sync}, wire.COORD_SCHEMAS,
                         port, host, workers, credentials=server_credentials(tls_cert, tls_key), insecure=insecure,
                         limits=limits, metrics_port=metrics_port, metrics_host=metrics_host)
        self.watch = BuildWatch(cluster, build, build_check_s, cluster.call_timeout_s,
                                lambda: self.obs.refused("build"), self._adopted) if check and build_check_s else None

    def _adopted(self) -> None:
        """The cluster serves a new build (synced through another coordinator): new global sizes,
        and the graph replica of the new state."""
        self.coordinator._stats = None
        if getattr(self.coordinator, "replica", None) is not None:
            try:
                self.coordinator.refresh_replica()
            except Exception as e:  # noqa: BLE001 - chains expand through the shards meanwhile
                log.warning("graph replica reload after a new build failed: %s", e)

    def start(self):
        super().start()
        if self.watch is not None:
            self.watch.start()
        return self

    def stop(self, grace: Optional[float] = 0) -> None:
        if self.watch is not None:
            self.watch.stop()
        super().stop(grace)

    def authenticate(self, method: str, context) -> Optional[tuple]:
        """The caller's principals from its bearer token (None when no tokens are configured)."""
        if self.tokens is None:
            return None
        token = bearer(context.invocation_metadata())
        if token is None:
            raise AuthError("this coordinator requires a bearer token (metadata 'authorization: Bearer <token>')")
        held = self.tokens.lookup(token)
        if held is None:
            raise AuthError("unknown bearer token")
        return held

    def _query(self, req: dict, caller: Optional[tuple], context) -> dict:
        text, vector = req.get("text"), req.get("vector")
        if text is None and vector is None:   # with both, the vector seeds and the text adds its words
            raise wire.WireError("one of 'text' and 'vector' must be given")
        principals = req.get("principals")
        if caller is not None:      # the token says who asks; the request can only narrow it
            principals = list(effective_principals(caller, principals))
        deadline_s = req["deadline_ms"] / 1e3 if req.get("deadline_ms") else None
        left = context.time_remaining()
        if left is not None and left < 1e6:     # never work past the caller's own deadline
            deadline_s = min(deadline_s, left) if deadline_s is not None else left
            deadline_s = max(deadline_s - 0.01, 0.001)
        spec = {"type": req.get("type", "chain"), "direction": req.get("direction", "back"),
                "budget_tokens": req.get("budget_tokens", 4000), "filters": req.get("filters") or {},
                "as_of": req.get("as_of")}
        if text is not None:
            spec["text"] = text
        if req.get("scope"):
            spec["scope"] = req["scope"]
        if principals is not None:
            spec["principals"] = principals
        try:
            ans = self.coordinator.query_spec(spec, vector, require_all=req.get("require_all", False),
                                              fill=req.get("fill", False), deadline_s=deadline_s)
        except BaseException:
            self.obs.query(spec["type"])
            raise
        self.obs.query(spec["type"], ans)
        return answer_to_msg(ans)

    def _write(self, req: dict, caller, context) -> dict:
        return self.writer.write(req["op"], req.get("events"), req.get("vectors"), req.get("ids"))

    def _sync(self, req: dict, caller, context) -> dict:
        # the shards change build one by one: the build watch waits (else it would set aside the
        # shards installed first), then takes over the new build
        with self.watch.lock if self.watch is not None else contextlib.nullcontext():
            try:
                got = self.writer.sync()
                if self.watch is not None and got.get("build"):
                    self.watch.build = got["build"]
            finally:     # new global sizes
                self.coordinator._stats = None
            if got.get("synced") and getattr(self.coordinator, "replica", None) is not None:
                try:     # the new state's graph at once (other coordinators reload on their next chain)
                    self.coordinator.refresh_replica()
                except Exception as e:
                    log.warning("graph replica reload after the sync failed (chains expand through the "
                                "shards until a reload succeeds): %s", e)
        if self.watch is not None:
            self.watch.check_once()     # take back at once replicas set aside before the sync
        return got

    def _stats(self, req: dict, caller, context) -> dict:
        s = self.coordinator.shard_stats()
        one = next(iter(s.get("shards", {}).values()), {})
        return {"n_global": s["n_global"], "n_shards": s["n_shards"], "dim": s["dim"], "encoder": s["encoder"],
                "build": one.get("build")}


def _host(address: str) -> str:
    return address.rsplit(":", 1)[0] if ":" in address else address


class RemoteClient:
    """`fastctx.connect("host:port")`: a coordinator server's client with `Index.query`'s API.

    TLS when `ca` (the CA that signed the server's certificate) or `tls=True` (system roots) is
    given, with a client certificate when `client_cert` and `client_key` are. `token` is sent as
    ``authorization: Bearer <token>`` on every call; over plaintext only to a loopback address,
    unless `insecure=True`."""

    def __init__(self, address: str, timeout_s: float = 30.0, *, token: Optional[str] = None, ca=None,
                 client_cert=None, client_key=None, tls: bool = False, insecure: bool = False):
        self.address, self.timeout_s = address, timeout_s
        secure = tls or ca is not None or client_cert is not None
        if token is not None and (not isinstance(token, str) or not token.strip() or not token.isprintable()):
            raise SecurityConfigError("token must be a non-empty printable string")
        if token is not None and not secure and not insecure and not is_loopback(_host(address)):
            raise SecurityConfigError(f"refusing to send a bearer token in plaintext to {address}: pass ca= "
                                      "(TLS), or insecure=True")
        self._metadata = (("authorization", f"Bearer {token.strip()}"),) if token is not None else None
        self.channel = grpc.secure_channel(address, channel_credentials(ca, client_cert, client_key),
                                           options=CHANNEL_OPTIONS) if secure \
            else grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        self._query = self.channel.unary_unary(f"/{COORD_SERVICE}/Query")
        self._stats = self.channel.unary_unary(f"/{COORD_SERVICE}/Stats")
        self._write = self.channel.unary_unary(f"/{COORD_SERVICE}/Write")
        self._sync = self.channel.unary_unary(f"/{COORD_SERVICE}/Sync")
        self.last_bytes = (0, 0)

    def _call(self, stub, msg: dict, timeout: float) -> dict:
        data = wire.encode({"v": wire.SCHEMA_VERSION, **msg})
        try:
            raw = stub(data, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            code, details = e.code(), e.details()
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidQueryError(details) from None
            if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                raise AuthError(f"{self.address}: {code.name}: {details}", code.name) from None
            if code == grpc.StatusCode.UNAVAILABLE:
                raise ShardUnavailableError(f"{self.address}: {details}") from None
            raise FastctxError(f"{self.address}: {code.name}: {details}") from None
        self.last_bytes = (len(data), len(raw))
        return wire.decode(raw)

    def stats(self) -> dict:
        return self._call(self._stats, {}, self.timeout_s)

    # -- writes (shards/writes.py) ---------------------------------------------------------------
    def add(self, events, vectors=None, *, batch: int = 1000, on_existing: str = "error",
            progress=None) -> int:
        """Add events to the cluster: batches of `batch` events routed to their owners' logs,
        then one sync makes them visible. Returns how many events were acked. Re-running the
        same add after a failure completes it (ids are the idempotency key)."""
        from .writes import batch_msg
        from fastctx.sources import read_source, to_batch
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise InvalidQueryError(f"batch must be a positive integer, got {batch!r}")
        src = read_source(events)
        if vectors is not None:
            src.vectors = vectors
        b = to_batch(src)
        op = "upsert" if on_existing == "upsert" else "add"
        acked = 0
        for lo in range(0, len(b), batch):
            m = batch_msg(b.select(np.arange(lo, min(lo + batch, len(b)))))
            acked += int(self._call(self._write, {"op": op, **m}, self.timeout_s * 4)["acked"])
            if progress:
                progress("add", acked, len(b))
        self.sync()
        return acked

    def upsert(self, events, vectors=None, **kw) -> int:
        return self.add(events, vectors, on_existing="upsert", **kw)

    def delete(self, ids) -> int:
        """Delete events by id on every shard, then sync; returns how many live events that hid."""
        if isinstance(ids, str) or not all(isinstance(i, str) and i for i in ids):
            raise InvalidQueryError("delete() takes a list of non-empty id strings")
        got = self._call(self._write, {"op": "delete", "ids": list(ids)}, self.timeout_s * 4)
        self.sync()
        return int(got.get("changed", 0))

    def sync(self) -> dict:
        """Make logged writes visible (re-partition the cluster; see docs/SHARDED.md, Writes)."""
        return self._call(self._sync, {}, max(self.timeout_s, 600.0))

    def query(self, query, *, type: str = "chain", filters=None, as_of: Optional[int] = None,
              direction: str = "back", budget_tokens: int = 4000, require_all: bool = False,
              deadline_s: Optional[float] = None, principals=None, scope=None, fill: bool = False,
              text: Optional[str] = None, **filter_kw) -> Answer:
        """`principals`: narrow the token's principals to these (the server never widens them).
        `text`: the query's words when `query` is a vector (lexical seeds, as `Index.query`)."""
        from fastctx.filters import Filters
        if filters is not None and filter_kw:
            raise InvalidQueryError("pass either filters= or filter keywords, not both")
        f = filters if filters is not None else Filters.from_dict(filter_kw)
        msg = {"type": type, "direction": direction, "budget_tokens": budget_tokens, "require_all": require_all,
               "filters": f.to_dict(), "as_of": as_of if as_of is not None else f.as_of}
        if principals is not None:
            if isinstance(principals, str):
                raise InvalidQueryError("principals must be a list of strings, e.g. ['user:ana']")
            msg["principals"] = list(principals)
        if fill:
            msg["fill"] = True
        if scope is not None:
            msg["scope"] = (scope if isinstance(scope, Filters) else Filters.from_dict(scope)).to_dict()
        if isinstance(query, str):
            msg["text"] = query
        else:
            msg["vector"] = np.asarray(query, np.float32).ravel()
            if text is not None:
                msg["text"] = text
        if deadline_s is not None:
            msg["deadline_ms"] = max(1, int(deadline_s * 1e3))
        timeout = (deadline_s + 5.0) if deadline_s is not None else self.timeout_s
        return answer_from_msg(self._call(self._query, msg, timeout))

    def query_spec(self, spec: dict, vector=None, **kw) -> Answer:
        from fastctx.filters import Filters
        f = Filters.from_dict(spec.get("filters"))
        q = vector if vector is not None else spec.get("text")
        return self.query(q, type=spec.get("type", "chain"), filters=f, as_of=spec.get("as_of"),
                          direction=spec.get("direction", "back"), budget_tokens=spec.get("budget_tokens", 4000),
                          principals=spec.get("principals"), scope=spec.get("scope"),
                          text=spec.get("text") if vector is not None else None, **kw)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def connect(address: str, **kw) -> RemoteClient:
    """A coordinator server's client: ``connect(addr, token=..., ca=..., client_cert=..., client_key=...)``."""
    return RemoteClient(address, **kw)


def serve_forever(server: _Server) -> None:
    """Run until SIGINT/SIGTERM."""
    import signal
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    stop.wait()
    server.stop(1.0)
