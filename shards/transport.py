"""Calling shards: one interface for in-process and remote shards, with replicas, failover,
hedging and per-call deadlines.

A `Cluster` maps shard numbers to replica groups. `Cluster.scatter(method, {shard: request},
deadline)` sends every request at once, and for each shard:

* tries its replicas in order: the last one that answered first, replicas that failed recently
  last (they are marked down for `down_s` seconds);
* on an error (UNAVAILABLE, DEADLINE_EXCEEDED, ...) moves to the next replica while time is left;
* after `hedge_s` without an answer, sends the same request to the next replica too, and takes
  whichever answers first (the other call is cancelled);
* gives every attempt ``min(call_timeout_s, time left before the query deadline)``.

Remote calls are blocking gRPC calls run on a pool of threads the cluster owns. (gRPC's own
`future()` starts a channel "spin" thread whenever a channel has no call in flight, which is
every scatter: about 0.8 ms a call on a loaded 2-core machine, measured at 1e6 events.) A
hedged call that loses keeps its pool thread until it answers or times out.

A shard none of whose replicas answered comes back as missing (the caller flags the answer
partial). ``INVALID_ARGUMENT``, and ``RESOURCE_EXHAUSTED`` for a request over a shard's
per-request limits (`wire.TOO_COSTLY`), are not retried: they are raised, since every replica
would refuse the same request. A busy replica (its concurrency cap reached) is failed over.

Remote replicas are reached over TLS when the cluster is given channel credentials
(`fastctx.auth.channel_credentials`: the shards' CA, and a client certificate for shards that
require one).
"""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import CancelledError, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional, Sequence

import grpc

from fastctx.errors import InvalidQueryError

from . import wire

SHARD_SERVICE = "fastctx.Shard"
GRPC_OPTIONS = [("grpc.max_receive_message_length", wire.MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", wire.MAX_MESSAGE_BYTES),
                ("grpc.enable_retries", 0)]
# a channel to a shard server that went down tries to reconnect at most a second apart: gRPC's
# default backoff grows to two minutes, so a shard restarted after a long outage stayed
# unreachable (a write re-run right after the restart failed again) until the channel next tried
CHANNEL_OPTIONS = GRPC_OPTIONS + [("grpc.initial_reconnect_backoff_ms", 200),
                                  ("grpc.min_reconnect_backoff_ms", 200),
                                  ("grpc.max_reconnect_backoff_ms", 1000)]


class LocalReplica:
    """An in-process shard (`ShardService`): requests are validated exactly as a server would
    (unless `check` is off: a graph replica's reads of its own services), then the stage runs
    in the calling thread."""

    def __init__(self, service, name: str = "local", *, check: bool = True):
        self.service, self.name, self.check = service, name, check
        self.fail = False  # test hook: behave like a dead replica

    def call(self, method: str, req: dict) -> dict:
        if self.fail:
            raise ConnectionError(f"{self.name}: replica marked failed")
        if not self.check:
            return getattr(self.service, method)(req)
        spec, required = wire.SHARD_SCHEMAS[method]
        return getattr(self.service, method)(wire.check_request(req, spec, required))


class RemoteReplica:
    """One shard server address; calls run on `pool`."""

    def __init__(self, address: str, pool: ThreadPoolExecutor, credentials=None):
        self.name, self.pool = address, pool
        self.channel = grpc.secure_channel(address, credentials, options=CHANNEL_OPTIONS) if credentials is not None \
            else grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        self._stubs = {m: self.channel.unary_unary(f"/{SHARD_SERVICE}/{m}") for m in wire.SHARD_SCHEMAS}

    def future(self, method: str, data: bytes, timeout: float):
        return self.pool.submit(self._stubs[method], data, timeout=timeout)

    def close(self) -> None:
        self.channel.close()


@dataclass
class ReplicaGroup:
    replicas: list
    down_until: list = field(default_factory=list)
    preferred: int = 0

    def __post_init__(self):
        self.down_until = [0.0] * len(self.replicas)

    def order(self, now: float) -> list[int]:
        n = len(self.replicas)
        ring = [(self.preferred + i) % n for i in range(n)]
        return sorted(ring, key=lambda i: self.down_until[i] > now)  # stable: healthy first


@dataclass
class CallStats:
    calls: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    failovers: int = 0
    hedges: int = 0


class Cluster:
    """Replica groups per shard number (see the module doc)."""

    def __init__(self, groups: dict[int, Sequence], *, call_timeout_s: float = 2.0, hedge_s: Optional[float] = 0.25,
                 down_s: float = 5.0):
        self.groups = {int(k): ReplicaGroup(list(v)) for k, v in groups.items()}
        self.call_timeout_s, self.hedge_s, self.down_s = call_timeout_s, hedge_s, down_s
        self._lock = threading.Lock()
        self.pools: list[ThreadPoolExecutor] = []   # shut down with the cluster

    @property
    def shards(self) -> list[int]:
        return sorted(self.groups)

    def close(self) -> None:
        for g in self.groups.values():
            for r in g.replicas:
                if hasattr(r, "close"):
                    r.close()
        for pool in self.pools:
            pool.shutdown(wait=False, cancel_futures=True)

    def _down(self, k: int, i: int) -> None:
        with self._lock:
            self.groups[k].down_until[i] = time.monotonic() + self.down_s

    def _ok(self, k: int, i: int) -> None:
        with self._lock:
            g = self.groups[k]
            g.down_until[i] = 0.0
            g.preferred = i

    # -- scatter -------------------------------------------------------------------------------
    def scatter(self, method: str, reqs: dict[int, dict], deadline: float,
                stats: Optional[CallStats] = None) -> tuple[dict[int, dict], set[int]]:
        """Send each shard its request; returns ({shard: response}, {shards that failed})."""
        stats = stats if stats is not None else CallStats()
        results: dict[int, dict] = {}
        failed: set[int] = set()
        remote: dict[int, dict] = {}
        for k, req in reqs.items():
            g = self.groups.get(k)
            if g is None:
                failed.add(k)
                continue
            if all(isinstance(r, LocalReplica) for r in g.replicas):
                self._local(k, g, method, req, results, failed, stats, deadline)
            else:
                remote[k] = req
        if remote:
            self._remote(method, remote, deadline, results, failed, stats)
        return results, failed

    def _local(self, k, g, method, req, results, failed, stats, deadline: float) -> None:
        for i in g.order(time.monotonic()):
            if time.monotonic() >= deadline:    # the query's deadline bounds in-process stages too
                break
            stats.calls += 1
            try:
                results[k] = g.replicas[i].call(method, {"v": wire.SCHEMA_VERSION, **req})
                self._ok(k, i)
                return
            except wire.WireError as e:
                raise InvalidQueryError(f"shard {k} refused {method}: {e}") from None
            except Exception:
                self._down(k, i)
                stats.failovers += 1
        failed.add(k)

    def _remote(self, method, reqs, deadline, results, failed, stats) -> None:
        done_q: queue.Queue = queue.Queue()
        data = {k: wire.encode({"v": wire.SCHEMA_VERSION, **r}) for k, r in reqs.items()}
        now = time.monotonic()
        todo = {k: self.groups[k].order(now) for k in reqs}      # replicas not tried yet
        inflight: dict[int, dict[int, tuple]] = {k: {} for k in reqs}

        def launch(k: int) -> bool:
            left = deadline - time.monotonic()
            if not todo[k] or left <= 0:
                return False
            i = todo[k].pop(0)
            fut = self.groups[k].replicas[i].future(method, data[k], min(self.call_timeout_s, left))
            inflight[k][i] = (fut, time.monotonic())
            stats.calls += 1
            stats.bytes_out += len(data[k])
            fut.add_done_callback(lambda f, k=k, i=i: done_q.put((k, i, f)))
            return True

        pending = set(reqs)
        for k in reqs:
            if not launch(k):
                pending.discard(k)
                failed.add(k)
        while pending:
            now = time.monotonic()
            wait = deadline - now
            if self.hedge_s is not None:
                for k in pending:
                    if len(inflight[k]) == 1 and todo[k]:
                        started = next(iter(inflight[k].values()))[1]
                        wait = min(wait, started + self.hedge_s - now)
            try:
                k, i, fut = done_q.get(timeout=max(wait, 0.0) + 0.002)
            except queue.Empty:
                now = time.monotonic()
                if now >= deadline + 0.05:
                    break
                if self.hedge_s is not None:
                    for k in list(pending):
                        if len(inflight[k]) == 1 and todo[k] and \
                                next(iter(inflight[k].values()))[1] + self.hedge_s <= now:
                            stats.hedges += launch(k)
                continue
            if k not in pending:
                continue
            inflight[k].pop(i, None)
            try:
                raw = fut.result()
                resp = wire.decode(raw)
                stats.bytes_in += len(raw)
            except grpc.RpcError as e:
                code = e.code() if hasattr(e, "code") else None
                if code == grpc.StatusCode.INVALID_ARGUMENT or code == grpc.StatusCode.RESOURCE_EXHAUSTED and \
                        (e.details() or "").startswith(wire.TOO_COSTLY):
                    for f, _ in inflight[k].values():
                        f.cancel()
                    raise InvalidQueryError(f"shard {k} refused {method}: {e.details()}") from None
                self._down(k, i)
                stats.failovers += 1
                if not inflight[k] and not launch(k):
                    pending.discard(k)
                    failed.add(k)
                continue
            except (CancelledError, wire.WireError):
                self._down(k, i)
                if not inflight[k] and not launch(k):
                    pending.discard(k)
                    failed.add(k)
                continue
            results[k] = resp
            pending.discard(k)
            self._ok(k, i)
            for f, _ in inflight[k].values():
                f.cancel()
            inflight[k].clear()
        for k in pending:
            for f, _ in inflight[k].values():
                f.cancel()
            failed.add(k)


def remote_cluster(shard_addresses: dict[int, Sequence[str]], *, credentials=None, **kw) -> Cluster:
    """A cluster of shard servers; `credentials`: grpc channel credentials for TLS (None: plaintext)."""
    n = sum(len(a) for a in shard_addresses.values())
    # enough threads for several concurrent queries, each calling every replica at once
    pool = ThreadPoolExecutor(max_workers=max(32, 8 * n), thread_name_prefix="fastctx-shard-call")
    cluster = Cluster({k: [RemoteReplica(a, pool, credentials) for a in addrs]
                       for k, addrs in shard_addresses.items()}, **kw)
    cluster.pools.append(pool)
    return cluster
