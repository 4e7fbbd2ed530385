"""gRPC servers: a shard server (service ``fastctx.Shard``) and a coordinator server (service
``fastctx.Coordinator``), both msgpack over generic method handlers, both with the standard
gRPC health service (``grpc.health.v1.Health``), and a client for the coordinator.

Requests are decoded and validated (`shards.wire`) before any work; a bad one gets
``INVALID_ARGUMENT`` with a message naming the field, and the server keeps serving. Any other
exception inside a handler becomes ``INTERNAL`` (the server keeps serving). Messages above
`wire.MAX_MESSAGE_BYTES` are refused by gRPC itself (``RESOURCE_EXHAUSTED``).
"""
from __future__ import annotations

import threading
import time
from concurrent import futures
from dataclasses import asdict
from typing import Callable, Optional

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fastctx.answer import Answer
from fastctx.errors import FastctxError, InvalidQueryError, ShardUnavailableError
from fastctx.types import Event

from . import wire
from .transport import GRPC_OPTIONS, SHARD_SERVICE

COORD_SERVICE = "fastctx.Coordinator"


def _handler(fn: Callable[[dict], dict], schema: tuple, server: "_Server") -> Callable:
    spec, required = schema

    def handle(data: bytes, context) -> bytes:
        if server.delay_s:                      # test hook: a hanging server
            end = time.monotonic() + server.delay_s
            while time.monotonic() < end and context.is_active() and not server.stopping:
                time.sleep(0.01)
        try:
            req = wire.check_request(wire.decode(data), spec, required)
            return wire.encode(fn(req))
        except (wire.WireError, InvalidQueryError) as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e)[:1000])
        except ShardUnavailableError as e:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(e)[:1000])
        except FastctxError as e:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e)[:1000])
        except Exception as e:  # never let a request take the server down
            context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {str(e)[:500]}")
    return handle


class _Server:
    def __init__(self, service_name: str, methods: dict[str, Callable], schemas: dict, port: int,
                 host: str = "127.0.0.1", workers: int = 8):
        self.delay_s = 0.0
        self.stopping = False
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=GRPC_OPTIONS)
        handlers = {m: grpc.unary_unary_rpc_method_handler(_handler(fn, schemas[m], self))
                    for m, fn in methods.items()}
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service_name, handlers),))
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = self.server.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise OSError(f"cannot listen on {host}:{port}")
        self.address = f"{host}:{self.port}"
        self.service_name = service_name

    def start(self):
        self.server.start()
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        self.health.set(self.service_name, health_pb2.HealthCheckResponse.SERVING)
        return self

    def stop(self, grace: Optional[float] = 0) -> None:
        self.stopping = True
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()

    def wait(self) -> None:
        self.server.wait_for_termination()


class ShardServer(_Server):
    """Serves one shard of a partitioned index (`ShardService`)."""

    def __init__(self, index_dir, shard: int, port: int = 0, host: str = "127.0.0.1", workers: int = 8):
        from .service import ShardService
        self.service = ShardService(index_dir, shard)
        self.service.warm_up()
        super().__init__(SHARD_SERVICE, {m: getattr(self.service, m) for m in wire.SHARD_SCHEMAS},
                         wire.SHARD_SCHEMAS, port, host, workers)


# ------------------------------------------------------------------------------------ coordinator
def answer_to_msg(ans: Answer) -> dict:
    return {"type": ans.query_type, "events": [asdict(e) for e in ans.events],
            "current": asdict(ans.current) if ans.current is not None else None,
            "timings": {k: float(v) for k, v in ans.timings.items()}, "budget_tokens": ans.budget_tokens,
            "partial": ans.partial, "missing_shards": list(ans.missing_shards)}


def answer_from_msg(m: dict) -> Answer:
    ev = lambda d: Event(**d)  # noqa: E731
    return Answer(m["type"], [ev(d) for d in m["events"]], ev(m["current"]) if m["current"] else None, [],
                  dict(m["timings"]), int(m["budget_tokens"]), bool(m["partial"]), list(m["missing_shards"]))


class CoordinatorServer(_Server):
    """Serves `Coordinator.query` over gRPC (method ``Query``) and ``Stats``."""

    def __init__(self, coordinator, port: int = 0, host: str = "127.0.0.1", workers: int = 8):
        self.coordinator = coordinator
        super().__init__(COORD_SERVICE, {"Query": self._query, "Stats": self._stats}, wire.COORD_SCHEMAS,
                         port, host, workers)

    def _query(self, req: dict) -> dict:
        from fastctx.filters import Filters
        text, vector = req.get("text"), req.get("vector")
        if (text is None) == (vector is None):
            raise wire.WireError("exactly one of 'text' and 'vector' must be given")
        f = Filters.from_dict(req.get("filters") or {}, as_of=req.get("as_of"))
        deadline_ms = req.get("deadline_ms")
        ans = self.coordinator.query(text if text is not None else vector, type=req.get("type", "chain"), filters=f,
                                     direction=req.get("direction", "back"),
                                     budget_tokens=req.get("budget_tokens", 4000),
                                     require_all=req.get("require_all", False),
                                     deadline_s=deadline_ms / 1e3 if deadline_ms else None)
        return answer_to_msg(ans)

    def _stats(self, req: dict) -> dict:
        s = self.coordinator.shard_stats()
        return {"n_global": s["n_global"], "n_shards": s["n_shards"], "dim": s["dim"], "encoder": s["encoder"]}


class RemoteClient:
    """`fastctx.connect("host:port")`: a coordinator server's client with `Index.query`'s API."""

    def __init__(self, address: str, timeout_s: float = 30.0):
        self.address, self.timeout_s = address, timeout_s
        self.channel = grpc.insecure_channel(address, options=GRPC_OPTIONS)
        self._query = self.channel.unary_unary(f"/{COORD_SERVICE}/Query")
        self._stats = self.channel.unary_unary(f"/{COORD_SERVICE}/Stats")
        self.last_bytes = (0, 0)

    def _call(self, stub, msg: dict, timeout: float) -> dict:
        data = wire.encode({"v": wire.SCHEMA_VERSION, **msg})
        try:
            raw = stub(data, timeout=timeout)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidQueryError(e.details()) from None
            if e.code() == grpc.StatusCode.UNAVAILABLE:
                raise ShardUnavailableError(f"{self.address}: {e.details()}") from None
            raise FastctxError(f"{self.address}: {e.code().name}: {e.details()}") from None
        self.last_bytes = (len(data), len(raw))
        return wire.decode(raw)

    def stats(self) -> dict:
        return self._call(self._stats, {}, self.timeout_s)

    def query(self, query, *, type: str = "chain", filters=None, as_of: Optional[int] = None,
              direction: str = "back", budget_tokens: int = 4000, require_all: bool = False,
              deadline_s: Optional[float] = None, **filter_kw) -> Answer:
        import numpy as np
        from fastctx.filters import Filters
        if filters is not None and filter_kw:
            raise InvalidQueryError("pass either filters= or filter keywords, not both")
        f = filters if filters is not None else Filters.from_dict(filter_kw)
        msg = {"type": type, "direction": direction, "budget_tokens": budget_tokens, "require_all": require_all,
               "filters": {k: (list(v) if isinstance(v, tuple) else v) for k, v in
                           {n: getattr(f, n) for n in ("time_from", "time_to", "entities_any", "entities_all",
                                                        "sources", "kinds")}.items()
                           if v not in (None, (), [])},
               "as_of": as_of if as_of is not None else f.as_of}
        if isinstance(query, str):
            msg["text"] = query
        else:
            msg["vector"] = np.asarray(query, np.float32).ravel()
        if deadline_s is not None:
            msg["deadline_ms"] = max(1, int(deadline_s * 1e3))
        timeout = (deadline_s + 5.0) if deadline_s is not None else self.timeout_s
        return answer_from_msg(self._call(self._query, msg, timeout))

    def query_spec(self, spec: dict, vector=None, **kw) -> Answer:
        from fastctx.filters import Filters
        f = Filters.from_dict(spec.get("filters"))
        q = vector if vector is not None else spec.get("text")
        return self.query(q, type=spec.get("type", "chain"), filters=f, as_of=spec.get("as_of"),
                          direction=spec.get("direction", "back"), budget_tokens=spec.get("budget_tokens", 4000), **kw)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def connect(address: str, **kw) -> RemoteClient:
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
