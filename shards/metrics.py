"""What the servers tell their operators: Prometheus metrics and one structured log line per
request (see docs/SHARDED.md, "Operations").

`Observer` is what a server calls once per RPC (`rpc`) and, on a coordinator, once per query
(`query`). Metrics are kept only when a metrics port is given; they need the optional extra
``metrics`` (prometheus-client), imported here lazily so the core stays light. Each observer has
its own registry, so several servers in one process (tests, `open_local`) do not share counters.

The access log goes to the ``fastctx.access`` logger at INFO: method, peer, status, duration and
message sizes, never a payload or a token. `configure_logging` installs a text or JSON handler.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from typing import Optional

from fastctx.errors import FastctxError

access_log = logging.getLogger("fastctx.access")

# gRPC status -> why a request was refused (None: not a refusal)
REFUSALS = {"UNAUTHENTICATED": "auth", "PERMISSION_DENIED": "permission", "RESOURCE_EXHAUSTED": "bounds",
            "INVALID_ARGUMENT": "wire", "DEADLINE_EXCEEDED": "deadline"}
LATENCY_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1.0, 2.5, 5.0, 10.0)


class MetricsUnavailableError(FastctxError):
    """--metrics-port given without the optional prometheus-client package."""


class Observer:
    """Metrics and access log of one server (`service`: its gRPC service name)."""

    def __init__(self, service: str, metrics_port: Optional[int] = None, metrics_host: str = "127.0.0.1"):
        self.service = service
        self.m = None
        self.http = None
        self.metrics_address: Optional[str] = None
        if metrics_port is not None:
            self._start_metrics(metrics_port, metrics_host)

    def _start_metrics(self, port: int, host: str) -> None:
        try:
            import prometheus_client as pc
        except ImportError:
            raise MetricsUnavailableError("--metrics-port needs the optional package prometheus-client: "
                                          "pip install 'fastctx[metrics]'") from None
        reg = pc.CollectorRegistry()
        by_method = ("service", "method")
        self.m = {
            "rpcs": pc.Counter("fastctx_rpcs", "RPCs served, by method and gRPC status", by_method + ("code",),
                               registry=reg),
            "rpc_seconds": pc.Histogram("fastctx_rpc_duration_seconds", "Time to serve an RPC", by_method,
                                        buckets=LATENCY_BUCKETS, registry=reg),
            "rx": pc.Counter("fastctx_rpc_received_bytes", "Request bytes received", by_method, registry=reg),
            "tx": pc.Counter("fastctx_rpc_sent_bytes", "Reply bytes sent", by_method, registry=reg),
            "refusals": pc.Counter("fastctx_refusals", "Requests refused: auth, permission, bounds (cost over "
                                   "the limits), wire (malformed), deadline; and replicas set aside for serving "
                                   "another build (build)", ("service", "reason"), registry=reg),
            "queries": pc.Counter("fastctx_queries", "Coordinator queries by type and outcome (ok, partial, error)",
                                  ("type", "outcome"), registry=reg),
            "stage": pc.Histogram("fastctx_query_stage_seconds", "Coordinator query time per stage (total: all)",
                                  ("type", "stage"), buckets=LATENCY_BUCKETS, registry=reg),
            "partial": pc.Counter("fastctx_partial_answers", "Answers missing at least one shard", registry=reg),
            "expansions": pc.Counter("fastctx_chain_expansions", "Chain expansions by where they ran: replica (the "
                                     "coordinator's graph replica) or shards (Expand rounds)", ("where",),
                                     registry=reg),
            "shard_calls": pc.Counter("fastctx_shard_calls", "Shard RPCs made by the coordinator", registry=reg),
            "failovers": pc.Counter("fastctx_shard_failovers", "Shard calls moved to another replica after an "
                                    "error", registry=reg),
            "hedges": pc.Counter("fastctx_shard_hedges", "Shard calls duplicated to another replica when slow",
                                 registry=reg),
            "shard_bytes": pc.Counter("fastctx_shard_bytes", "Bytes between coordinator and shards", ("direction",),
                                      registry=reg),
            "build": pc.Gauge("fastctx_build_info", "Shard and build identity served (value 1)",
                              ("shard", "build"), registry=reg),
        }
        try:
            self.http, _ = pc.start_http_server(port, addr=host, registry=reg)
        except OSError as e:
            raise OSError(f"cannot serve metrics on {host}:{port}: {e.strerror or e}") from None
        self.metrics_address = f"{host}:{self.http.server_port}"

    # -- per request ---------------------------------------------------------------------------
    def rpc(self, method: str, peer: str, code: str, seconds: float, rx: int, tx: int) -> None:
        """One RPC done (`code`: its gRPC status name). The log line holds sizes, never contents:
        not even a refusal's message, which may quote a request's value."""
        if self.m is not None:
            m = self.m
            m["rpcs"].labels(self.service, method, code).inc()
            m["rpc_seconds"].labels(self.service, method).observe(seconds)
            m["rx"].labels(self.service, method).inc(rx)
            m["tx"].labels(self.service, method).inc(tx)
            if code in REFUSALS:
                m["refusals"].labels(self.service, REFUSALS[code]).inc()
        if access_log.isEnabledFor(logging.INFO):
            rec = {"service": self.service, "method": method, "peer": peer, "status": code,
                   "duration_ms": round(seconds * 1e3, 3), "request_bytes": rx, "reply_bytes": tx}
            access_log.info("%s/%s %s", self.service, method, code, extra={"fields": rec})

    def query(self, qtype: str, ans=None) -> None:
        """A coordinator query done (`ans` None: it failed). Never raises: counting a query
        must not fail it."""
        if self.m is None:
            return
        try:
            self._query(self.m, qtype, ans)
        except Exception:  # noqa: BLE001
            logging.getLogger("fastctx.server").exception("recording a %s query failed", qtype)

    @staticmethod
    def _query(m: dict, qtype: str, ans) -> None:
        if ans is None:
            m["queries"].labels(qtype, "error").inc()
            return
        m["queries"].labels(qtype, "partial" if ans.partial else "ok").inc()
        if ans.partial:
            m["partial"].inc()
        t = ans.timings
        for k, v in t.items():
            if k.endswith("_ms"):
                m["stage"].labels(qtype, k[:-3]).observe(float(v) / 1e3)
        if qtype == "chain" and ans.events:
            m["expansions"].labels("replica" if t.get("on_replica") else "shards").inc()
        m["shard_calls"].inc(t.get("rpcs", 0))
        m["failovers"].inc(t.get("failovers", 0))
        m["hedges"].inc(t.get("hedges", 0))
        m["shard_bytes"].labels("out").inc(t.get("bytes_out", 0))
        m["shard_bytes"].labels("in").inc(t.get("bytes_in", 0))

    def refused(self, reason: str) -> None:
        """A refusal outside any one request (a coordinator setting aside a replica: ``build``)."""
        if self.m is not None:
            self.m["refusals"].labels(self.service, reason).inc()

    def build(self, shard, build: str) -> None:
        if self.m is not None:
            self.m["build"].labels(str(shard), build).set(1)

    def close(self) -> None:
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()
            self.http = None


# ------------------------------------------------------------------------------------ logging
class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and a request's fields."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
               "level": record.levelname.lower(), "logger": record.name}
        fields = getattr(record, "fields", None)
        if fields:
            out.update(fields)
        else:
            out["msg"] = record.getMessage()
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        head = f"{self.formatTime(record, '%Y-%m-%dT%H:%M:%S')} {record.levelname.lower()} {record.name}"
        if fields:
            return f"{head} " + " ".join(f"{k}={v}" for k, v in fields.items())
        return f"{head} {record.getMessage()}"


LOG_FORMATS = ("json", "text")
LOG_LEVELS = ("debug", "info", "warning", "error")


def configure_logging(fmt: str = "text", level: str = "info", stream=None) -> logging.Handler:
    """Send the ``fastctx`` loggers (access log included) to `stream` (stderr) in `fmt`."""
    if fmt not in LOG_FORMATS or level not in LOG_LEVELS:
        raise ValueError(f"log format {fmt!r} / level {level!r}: expected one of {LOG_FORMATS} / {LOG_LEVELS}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("fastctx")
    for h in list(root.handlers):
        if getattr(h, "_fastctx_serve", False):
            root.removeHandler(h)
    handler._fastctx_serve = True
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False
    return handler
