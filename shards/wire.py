"""Wire format of the shard and coordinator protocols: msgpack maps, numpy arrays as
``{"__nd__": 1, "dtype", "shape", "data"}`` (raw little-endian bytes), a schema version field
``v`` in every request, and size limits checked before any work.

Every request is validated against its method's schema here, before it reaches a shard or the
engine: unknown fields, wrong types, out-of-range numbers and oversized arrays raise
`WireError` naming the field; servers turn that into gRPC ``INVALID_ARGUMENT`` with the message.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import msgpack
import numpy as np

SCHEMA_VERSION = 1
MAX_MESSAGE_BYTES = 64 << 20        # gRPC receive/send limit of servers and clients
MAX_K = 10_000                      # seeds per search
MAX_HIT_PAYLOADS = 256              # payloads sent with a Search's first hits
MAX_ROWS = 200_000                  # rows in one fetch / expand request
MAX_WALKS = 200_000                 # entity walks in one expand request
MAX_BUDGET = 10_000_000             # token budget of one answer
MAX_DIM = 65_536
MAX_NQ = 1_024                      # query vectors in one search request
MAX_LIST = 1_024                    # filter lists (entities, sources, kinds)
MAX_PER_ENTITY = 64                 # narrowed searches in one Search request (`per_entity`)
MAX_STR = 4_096                     # any string
MAX_DEADLINE_MS = 600_000
_DTYPES = {"<i8", "<i4", "<i2", "|i1", "<u8", "<u4", "<u2", "|u1", "<f4", "<f8", "|b1"}
_I64 = np.iinfo(np.int64)


class WireError(ValueError):
    """A malformed or out-of-range message (-> INVALID_ARGUMENT)."""


TOO_COSTLY = "request exceeds a per-request limit"


class CostError(WireError):
    """A well-formed request whose estimated cost exceeds `Limits` (-> RESOURCE_EXHAUSTED, with
    a message starting with `TOO_COSTLY`: every replica would refuse it, so callers do not retry)."""


@dataclass(frozen=True)
class Limits:
    """Per-request limits of a server, checked against a cost estimated from the request's
    sizes (and the shard's own arrays) before any work is done; plus the concurrency cap."""
    max_cells: int = 2_000_000          # values a request may produce (hits, walk entries, fetched values)
    max_loop: int = 1_000_000           # rows, links and entity entries walked by interpreted code
    max_reply_bytes: int = MAX_MESSAGE_BYTES // 2
    max_payload_rows: int = 4_096       # full events (text, attrs) in one Fetch
    max_concurrent: int = 16            # RPCs in progress per server; more are refused at once

    def check(self, method: str, cells: int = 0, loop: int = 0, nbytes: int = 0, payload_rows: int = 0) -> None:
        for what, got, lim in (("values produced", cells, self.max_cells),
                               ("rows/links/entity entries examined", loop, self.max_loop),
                               ("estimated reply bytes", nbytes, self.max_reply_bytes),
                               ("payload rows", payload_rows, self.max_payload_rows)):
            if got > lim:
                raise CostError(f"{TOO_COSTLY}: {method} would need {got:,} {what}, the limit is {lim:,}; "
                                f"split it into smaller requests")


def _default(obj):
    if isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        return {"__nd__": 1, "dtype": a.dtype.str, "shape": list(a.shape), "data": a.tobytes()}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (tuple, set, frozenset)):
        return list(obj)
    raise TypeError(f"cannot encode {type(obj).__name__}")


def _array(d: dict) -> np.ndarray:
    dtype, shape, data = d.get("dtype"), d.get("shape"), d.get("data")
    if set(d) != {"__nd__", "dtype", "shape", "data"} or dtype not in _DTYPES or not isinstance(data, bytes) \
            or not isinstance(shape, list) or len(shape) > 4 \
            or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_MESSAGE_BYTES for s in shape):
        raise WireError("malformed array (expected __nd__, a known dtype, shape <= 4 dims, bytes)")
    dt = np.dtype(dtype)
    count = math.prod(shape)   # Python ints: no overflow, and ~20x cheaper than np.prod per array
    if count * dt.itemsize != len(data):
        raise WireError(f"array of shape {shape} {dtype} needs {count * dt.itemsize} bytes, got {len(data)}")
    return np.frombuffer(data, dtype=dt).reshape(shape)


def _hook(d: dict):
    if "__nd__" in d:
        return _array(d)
    return d


def encode(obj: Any) -> bytes:
    return msgpack.packb(obj, default=_default, use_bin_type=True)


def decode(data: bytes) -> Any:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError("payload is not bytes")
    if len(data) > MAX_MESSAGE_BYTES:
        raise WireError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        return msgpack.unpackb(bytes(data), raw=False, object_hook=_hook, strict_map_key=True,
                               max_str_len=MAX_MESSAGE_BYTES, max_bin_len=MAX_MESSAGE_BYTES,
                               max_array_len=4 * MAX_ROWS, max_map_len=4_096, max_ext_len=0)
    except WireError:
        raise
    except Exception as e:  # msgpack raises several types for garbage input
        raise WireError(f"payload is not valid msgpack ({type(e).__name__}: {str(e)[:120]})") from None


# ------------------------------------------------------------------------------------ field checks
def _int(lo: int, hi: int, optional: bool = False) -> Callable:
    def check(name, v):
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= int(v) <= hi:
            raise WireError(f"field '{name}' must be an integer in [{lo}, {hi}], got {_show(v)}")
        return int(v)
    return check


def _float(lo: float, hi: float) -> Callable:
    def check(name, v):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating)) or not lo <= float(v) <= hi:
            raise WireError(f"field '{name}' must be a number in [{lo}, {hi}], got {_show(v)}")
        return float(v)
    return check


def _bool(name, v):
    if not isinstance(v, bool):
        raise WireError(f"field '{name}' must be true or false, got {_show(v)}")
    return v


def _str(choices=None, optional: bool = False) -> Callable:
    def check(name, v):
        if v is None and optional:
            return None
        if not isinstance(v, str) or len(v) > MAX_STR or (choices is not None and v not in choices):
            want = f"one of {sorted(choices)}" if choices else f"a string of <= {MAX_STR} characters"
            raise WireError(f"field '{name}' must be {want}, got {_show(v)}")
        return v
    return check


def _strs(name, v):
    if v is None:
        return []
    if not isinstance(v, list) or len(v) > MAX_LIST or not all(isinstance(s, str) and 0 < len(s) <= MAX_STR for s in v):
        raise WireError(f"field '{name}' must be a list of <= {MAX_LIST} non-empty strings, got {_show(v)}")
    return v


def _nd(kinds: str, ndim: tuple, max_len: int, optional: bool = False) -> Callable:
    """Array check: dtype kind in `kinds` ('i', 'u', 'f', 'b'), ndim in `ndim`, <= max_len rows."""
    def check(name, v):
        if v is None and optional:
            return None
        if isinstance(v, list) and 1 in ndim and len(v) <= max_len and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            v = np.asarray(v, np.float64 if "f" in kinds and any(isinstance(x, float) for x in v) else np.int64)
        if not isinstance(v, np.ndarray) or v.dtype.kind not in kinds or v.ndim not in ndim \
                or (v.ndim and v.shape[0] > max_len):
            raise WireError(f"field '{name}' must be a {'/'.join(kinds)} array of {ndim} dims with <= {max_len} "
                            f"rows, got {_show(v)}")
        if v.dtype.kind == "f" and not np.isfinite(v).all():
            raise WireError(f"field '{name}' contains NaN or inf")
        return v
    return check


def _filters(name, v):
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise WireError(f"field '{name}' must be a map, got {_show(v)}")
    spec = {"time_from": _int(_I64.min, _I64.max, True), "time_to": _int(_I64.min, _I64.max, True),
            "entities_any": _strs, "entities_all": _strs, "sources": _strs, "kinds": _strs}
    return check_fields(v, spec, where=f"{name}.")


def _per_entity(name, v):
    if v is None:
        return []
    if not isinstance(v, list) or len(v) > MAX_PER_ENTITY or not all(isinstance(x, str) and 0 < len(x) <= MAX_STR
                                                                    for x in v):
        raise WireError(f"field '{name}' must be a list of <= {MAX_PER_ENTITY} non-empty entity names, got {_show(v)}")
    return v


def _view(name, v):
    """Who asks: {"scope": filters or None, "principals": [str] or None} (see fastctx/view.py)."""
    if v is None:
        return None
    spec = {"scope": lambda n, x: None if x is None else _filters(n, x),
            "principals": lambda n, x: None if x is None else _strs(n, x)}
    return check_fields(v, spec, where=f"{name}.")


def _records(name, v):
    """Events of a write: a list of orgmem event maps (fields checked by the corpus reader)."""
    if v is None:
        return []
    if not isinstance(v, list) or len(v) > MAX_ROWS or not all(isinstance(e, dict) for e in v):
        raise WireError(f"field '{name}' must be a list of <= {MAX_ROWS} event maps, got {_show(v)}")
    return v


def _ids(name, v):
    if v is None:
        return []
    if not isinstance(v, list) or len(v) > MAX_ROWS or not all(isinstance(s, str) and 0 < len(s) <= MAX_STR for s in v):
        raise WireError(f"field '{name}' must be a list of <= {MAX_ROWS} non-empty id strings, got {_show(v)}")
    return v


def _map(name, v):
    if not isinstance(v, dict):
        raise WireError(f"field '{name}' must be a map, got {_show(v)}")
    return v


def _show(v) -> str:
    if isinstance(v, np.ndarray):
        return f"array {v.dtype} {list(v.shape)}"
    s = repr(v)
    return s if len(s) <= 80 else s[:77] + "..."


def check_fields(msg: Any, spec: dict, required: tuple = (), where: str = "") -> dict:
    """Validate a request map against `spec` {field: check}; returns the checked values."""
    if not isinstance(msg, dict):
        raise WireError(f"{where or 'request'} must be a map, got {_show(msg)}")
    unknown = sorted(set(msg) - set(spec))
    if unknown:
        raise WireError(f"unknown field(s) {[where + str(u) for u in unknown][:8]}; known: {sorted(spec)}")
    for r in required:
        if r not in msg:
            raise WireError(f"missing field '{where}{r}'")
    return {k: spec[k](where + k, msg[k]) for k in msg}


_VERSIONED: dict = {}   # id(spec) -> (spec, the spec with "v"): built once per schema, not per request


def check_request(msg: Any, spec: dict, required: tuple = ()) -> dict:
    # `type is int`: an array or a float in `v` must be refused, not compared element-wise
    if isinstance(msg, dict) and not (type(msg.get("v")) is int and msg.get("v") == SCHEMA_VERSION):
        raise WireError(f"field 'v' (schema version) must be {SCHEMA_VERSION}, got {_show(msg.get('v'))}")
    got = _VERSIONED.get(id(spec))
    if got is None or got[0] is not spec:
        got = _VERSIONED[id(spec)] = (spec, {"v": _int(SCHEMA_VERSION, SCHEMA_VERSION), **spec})
    return check_fields(msg, got[1], ("v",) + tuple(required))


# ------------------------------------------------------------------------------------ schemas
I64 = _int(_I64.min, _I64.max)
EXPAND_PARAMS = {
    "direction": _int(1, 3), "t_lo": I64, "t_hi": I64, "as_of": _int(_I64.min, _I64.max, True),
    "link_weight": _nd("f", (1,), 64), "hub_postings": _int(0, _I64.max), "hub_window_s": _int(0, _I64.max),
    "max_per_entity": _int(0, 100_000), "entity_weight": _float(0, 1e6), "entity_max_df": _int(0, _I64.max),
    "entity_max_share": _float(0, 1), "max_edge_visits": _int(0, 100_000_000), "view": _view,
    "term_weight": _float(0, 1e6),
}
ENTITY_PARAMS = {k: EXPAND_PARAMS[k] for k in ("entity_weight", "entity_max_df", "entity_max_share", "term_weight",
                                               "max_per_entity")}
WRITE = {"op": _str({"add", "upsert", "delete"}), "events": _records, "ids": _ids,
         "vectors": _nd("f", (2,), MAX_ROWS, True)}
SHARD_SCHEMAS = {
    "Stats": ({}, ()),
    "Search": ({"vectors": _nd("f", (2,), MAX_NQ), "k": _int(1, MAX_K), "filters": _filters,
                "as_of": _int(_I64.min, _I64.max, True), "view": _view, "words": _strs,
                "avg_len": _float(0, 1e12), "bm25": _nd("f", (1,), 2, True),
                # with `vectors`: per-row attributes (`hit_fields`) of the first `hit_rows` hits (one
                # round trip less); `words` beside `vectors`: the lexical hits too (`lex_k` of them)
                "hit_rows": _int(0, MAX_K), "hit_fields": lambda n, v: _fields(n, v, HIT_FIELDS),
                # with `vectors`: the payloads of the first `hit_payloads` hits (a current question's
                # winners are among the first hits: its answer then needs no Fetch round)
                "hit_payloads": _int(0, MAX_HIT_PAYLOADS),
                "lex_k": _int(1, MAX_K),
                # with `vectors`: the walkable entities of the first `reach` hits (as Expand's `reach`)
                "reach": _int(0, MAX_K), "entity_params": lambda n, v: check_fields(v, ENTITY_PARAMS, (), n + "."),
                # with one query vector and nothing else: one search per entity name, the filters
                # narrowed to rows that also mention it (a chain's people, in one round)
                "per_entity": _per_entity},
               ("k",)),
    "Expand": ({"rows": _nd("i", (1,), MAX_ROWS, True), "walk_u": _nd("i", (1,), MAX_WALKS, True),
                "walk_t": _nd("i", (1,), MAX_WALKS, True), "walk_e": _nd("i", (1,), MAX_WALKS, True),
                "reach": _int(0, MAX_ROWS), "reach_rows": _nd("i", (1,), MAX_ROWS, True),
                "params": lambda n, v: check_fields(v, EXPAND_PARAMS, tuple(k for k in EXPAND_PARAMS if k not in ("view", "term_weight")),
                                                    n + ".")},
               ("params",)),
    "Fetch": ({"rows": _nd("i", (1,), MAX_ROWS), "fields": lambda n, v: _fields(n, v),
               # riders: ids of other owned rows, and entity names asked with owned rows (one round less)
               "also_ids": _nd("i", (1,), MAX_ROWS, True), "also_names": _nd("i", (1,), MAX_ROWS, True),
               "also_entities": _nd("i", (1,), MAX_ROWS, True),
               "entities": _nd("i", (1,), MAX_ROWS, True), "view": _view,
               "check_ids": _ids}, ("rows", "fields")),
    # writes (shards/writes.py): log a batch, export live events, install a re-partitioned shard
    # `check`: validate an add (ownership, ids already there with other content) and write nothing
    "Write": ({**WRITE, "check": _bool}, ("op",)),
    "Export": ({}, ()),
    "Install": ({"events": _records, "vectors": _nd("f", (2,), MAX_ROWS, True), "arrays": _map, "meta": _map,
                 "gen": _int(0, _I64.max), "derived": _map}, ("events", "vectors", "arrays", "meta", "gen")),
}
FETCH_FIELDS = frozenset({"time", "tokens", "kind", "vector", "sup", "slot", "rev", "id", "payload",
                          "entity_names", "visible", "actors"})


HIT_FIELDS = frozenset({"vector", "time", "tokens", "kind", "slot", "sup", "rev", "actors"})


def _fields(name, v, allowed=FETCH_FIELDS):
    if not isinstance(v, list) or not v or not all(isinstance(f, str) for f in v) or set(v) - allowed:
        raise WireError(f"field '{name}' must be a non-empty list drawn from {sorted(allowed)}, got {_show(v)}")
    return v


COORD_SCHEMAS = {
    "Stats": ({}, ()),
    "Query": ({"text": _str(optional=True), "vector": _nd("f", (1,), MAX_DIM, True),
               "type": _str({"chain", "current", "as_of"}), "direction": _str({"back", "forward", "both"}),
               "budget_tokens": _int(1, MAX_BUDGET), "filters": _filters,
               "as_of": _int(_I64.min, _I64.max, True), "require_all": _bool,
               "scope": lambda n, x: None if x is None else _filters(n, x),
               "principals": lambda n, x: None if x is None else _strs(n, x), "fill": _bool,
               "deadline_ms": _int(1, MAX_DEADLINE_MS)}, ()),
    "Write": (WRITE, ("op",)),
    "Sync": ({}, ()),
}
