"""Writes to a partitioned cluster: route, log, then re-partition.

Design (docs/SHARDED.md, "Writes"). A partitioned shard answers with whole-corpus facts (global
rows, entity df and holders, cross-shard links, the supersession overlay; fastctx/partition.py).
An added event can change all of them on every shard, so a write has two phases:

1. **Write** (durable, acked): the coordinator routes each event to its owner with the index's
   recorded shard key (`partition.shard_of`, the function the partitioned build uses); the owner
   appends it to its shard's write-ahead log through the embedded `Index.upsert` (one fsync per
   batch). The id is the idempotency key: an event already there with the same content is
   skipped, so re-sending a batch is harmless. Logged events are not served yet.
2. **Sync** (visible): the coordinator collects every shard's live events (`Export`: segments
   plus log), runs the partitioned build's whole-corpus pass on them (`with_derived_links`,
   `global_graph`, `sidecar_arrays`), and sends each shard its events in global order and its
   new sidecar (`Install`). The shard rewrites its directory with the ordinary segment writer,
   swaps it in and reloads. Queries after a sync are those of a one-shot build of the same
   events. A sync is idempotent: re-running it after a failure converges.

`Export` returns a generation number and how many logged changes are `pending`; `Install`
carries the generation back and is not applied when writes arrived in between (nothing logged
is ever dropped): it answers `installed: false` and the coordinator syncs again. A sync with
nothing pending on any shard installs nothing (a re-run add of events already there).
"""
from __future__ import annotations

import os
import shutil
import threading
import time
from typing import Any, Optional

import numpy as np

from fastctx.errors import CorpusError, InvalidQueryError, ShardUnavailableError

from . import wire

OPS = ("add", "upsert", "delete")


# ------------------------------------------------------------------------------------ messages
def batch_msg(batch, derived: bool = False) -> dict:
    """An EventBatch as a wire message: orgmem records plus the vectors. With `derived`, the
    derived links (not orgmem link types) travel beside the records as `derived` columns."""
    from fastctx.build import event_record
    from fastctx.corpus import DERIVED_LINK_TYPES, LINK_CODE
    codes = {LINK_CODE[t] for t in DERIVED_LINK_TYPES}
    is_d = np.isin(np.asarray(batch.link_type, np.int8), list(codes))
    plain = batch
    if is_d.any():
        from dataclasses import replace
        keep = np.flatnonzero(~is_d)
        plain = replace(batch, link_src=np.asarray(batch.link_src)[keep], link_to=[batch.link_to[i] for i in keep.tolist()],
                        link_type=np.asarray(batch.link_type)[keep])
    msg = {"events": [event_record(plain, i) for i in range(len(batch))],
           "vectors": np.ascontiguousarray(batch.vectors, np.float32)}
    if derived:
        dd = np.flatnonzero(is_d)
        msg["derived"] = {"src": np.asarray(batch.link_src, np.int64)[dd],
                          "to": [batch.link_to[i] for i in dd.tolist()],
                          "type": np.asarray(batch.link_type, np.int8)[dd]}
    return msg


def msg_batch(msg: dict, where: str):
    """The validated EventBatch of a message's `events` (+ `vectors`)."""
    from fastctx.sources import read_source, to_batch
    src = read_source(list(msg.get("events") or []))
    if msg.get("vectors") is None:
        raise CorpusError(f"{where}: events come without vectors", field="vectors")
    src.vectors = np.asarray(msg["vectors"], np.float32)
    b = to_batch(src)
    d = msg.get("derived")
    if d and len(d["to"]):        # derived links back in, after each source row's own (as derive does)
        from dataclasses import replace
        all_src = np.concatenate([np.asarray(b.link_src, np.int64), np.asarray(d["src"], np.int64)])
        all_to = list(b.link_to) + list(d["to"])
        all_type = np.concatenate([np.asarray(b.link_type, np.int8), np.asarray(d["type"], np.int8)])
        o = np.argsort(all_src, kind="stable")
        b = replace(b, link_src=all_src[o], link_to=[all_to[i] for i in o.tolist()], link_type=all_type[o])
    return b


# ------------------------------------------------------------------------------------ shard side
class ShardWriter:
    """The write stages of one shard server (`ShardService.Write/Export/Install` call these).
    Writes go to a second handle on the shard directory, the writer (it holds the shard's lock
    and its log); the serving handle keeps the installed state until `Install`."""

    def __init__(self, svc):
        self.svc = svc
        self.lock = threading.Lock()
        self.gen = 1                 # bumped by every write: an Install of an older Export is not applied
        self._w = None

    def _writer(self):
        from .service import ShardIndex
        if self._w is None:
            # never flush on its own: the directory is rewritten by Install
            self._w = ShardIndex(self.svc.index_dir, self.svc.name, writable=True, memtable_max_rows=1 << 62)
        return self._w

    def write(self, req: dict) -> dict:
        from fastctx.build import content_hashes
        from fastctx.columns import keys64
        from fastctx.partition import shard_of
        op, svc = req["op"], self.svc
        with self.lock:
            w = self._writer()
            if op == "delete":
                ids = list(req.get("ids") or [])
                # only ids that are there: a delete of nothing leaves nothing pending in the log
                there = [i for i, e in zip(ids, w._existing(keys64(ids))[0].tolist()) if e] if ids else []
                n = w.delete(there) if there else 0
                self.gen += 1
                return {"acked": len(ids), "changed": int(n)}
            batch = msg_batch(req, f"shard {svc.shard_no}")
            own = shard_of(batch, int(svc.meta["n_shards"]), svc.meta.get("key") or "id")
            if (own != svc.shard_no).any():
                i = int(np.flatnonzero(own != svc.shard_no)[0])
                raise InvalidQueryError(f"event {batch.ids[i]!r} belongs to shard {int(own[i])}, "
                                        f"not shard {svc.shard_no}")
            if op == "add":     # an id already there is fine only with the same content (a re-run)
                exists, old = w._existing(keys64(batch.ids))
                differs = exists & (old != content_hashes(batch))
                if differs.any():
                    raise CorpusError(f"id {batch.ids[int(np.flatnonzero(differs)[0])]!r} is already in "
                                      "the index with other content (use upsert)", field="id")
            if req.get("check"):
                return {"acked": 0, "checked": len(batch)}
            rep = w.add(batch, on_existing="upsert")
            self.gen += 1
            return {"acked": len(batch), "skipped": int(rep.skipped), "updated": int(rep.updated)}

    def export(self, req: dict) -> dict:
        """Every live event of the shard (installed segments and the log), derived links left out."""
        from fastctx.export import _record
        from .service import ShardIndex
        with self.lock:
            idx = self._w if self._w is not None else ShardIndex(self.svc.index_dir, self.svc.name)
            sh = idx.shards[0]
            recs, vecs = [], []
            deleted = sh.deleted_mask
            for seg in sh.segments:
                live = np.arange(seg.n) if seg is sh.memtable else \
                    np.flatnonzero(deleted[seg.row_base:seg.row_base + seg.n] == 0)
                recs.extend(_record(sh, seg, r) for r in live.tolist())
                vecs.append(np.asarray(seg.vectors[live], np.float32))
            vec = np.concatenate(vecs) if vecs else np.zeros((0, idx.dim), np.float32)
            log = idx._parts[0].log      # logged since the last install (adds and deletes)
            return {"events": recs, "vectors": np.ascontiguousarray(vec), "gen": self.gen,
                    "pending": int(log.n_added + len(log.overlay_add))}

    def install(self, req: dict) -> dict:
        """Rewrite the shard directory from `events` (global order) and `arrays`/`meta` (its new
        sidecar), swap it in and reload the serving state."""
        from fastctx.format import fsync_dir
        from fastctx.partition import write_sidecar
        from fastctx.shard import append_segment, create_shard, read_manifest
        svc = self.svc
        with self.lock:
            if int(req["gen"]) != self.gen:     # writes arrived since that export: not applied
                return {"installed": False, "gen": self.gen, "n_local": int(svc.sh.n)}
            batch = msg_batch(req, f"shard {svc.shard_no}")
            meta = dict(req["meta"])
            if int(meta.get("shard", -1)) != svc.shard_no:
                raise InvalidQueryError(f"install for shard {meta.get('shard')} sent to shard {svc.shard_no}")
            params = _install_params(meta)
            d = svc.index_dir
            tmp, old, cur = d / f".{svc.name}.install", d / f".{svc.name}.old", d / svc.name
            shutil.rmtree(tmp, ignore_errors=True)
            create_shard(tmp, batch.dim)
            if len(batch):   # the manifest records the actor_k the cluster's sync applied
                append_segment(tmp, read_manifest(tmp), batch, params)
            write_sidecar(tmp, {k: np.asarray(v) for k, v in req["arrays"].items()}, meta)
            if self._w is not None:     # releases the shard's lock and log
                self._w.close()
                self._w = None
            shutil.rmtree(old, ignore_errors=True)
            os.rename(cur, old)
            os.rename(tmp, cur)
            fsync_dir(d)
            try:
                svc.reload()    # opens and checks the new state (sidecar included) before serving it
            except Exception as e:  # noqa: BLE001 - any refusal: the previous state comes back
                failed = d / f".{svc.name}.failed"
                shutil.rmtree(failed, ignore_errors=True)
                os.rename(cur, failed)
                os.rename(old, cur)
                fsync_dir(d)
                shutil.rmtree(failed, ignore_errors=True)
                raise InvalidQueryError(f"install for shard {svc.shard_no} refused, the previous state kept: "
                                        f"{type(e).__name__}: {str(e)[:500]}") from None
            shutil.rmtree(old, ignore_errors=True)
            from .server import build_identity
            return {"installed": True, "gen": self.gen, "n_local": int(len(batch)),
                    "build": build_identity(svc.index_dir, svc.meta)}


def _install_params(meta: dict):
    """The build params a sync applied (`actor_k` in the install's meta; absent: the default)."""
    from fastctx.params import BuildParams
    k = meta.get("actor_k", BuildParams.actor_k)
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise InvalidQueryError(f"install meta: actor_k must be an integer >= 0, got {k!r}")
    return BuildParams(actor_k=k)


# ------------------------------------------------------------------------------------ coordinator side
def _call(cluster, k: int, method: str, req: dict, timeout_s: float) -> dict:
    """One shard's write stage on its only replica; ShardUnavailableError names shard and address."""
    import grpc

    from .transport import LocalReplica
    g = cluster.groups.get(k)
    if g is None:
        raise ShardUnavailableError(f"shard {k} is not in the cluster")
    if len(g.replicas) != 1:
        raise InvalidQueryError(f"shard {k} has {len(g.replicas)} replicas: writes need one replica per shard")
    r = g.replicas[0]
    name = getattr(r, "name", "?")
    msg = {"v": wire.SCHEMA_VERSION, **req}
    try:
        if isinstance(r, LocalReplica):
            return r.call(method, msg)
        real = getattr(r, "replica", r)    # a replica set aside by the build watch still takes writes
        return wire.decode(real.future(method, wire.encode(msg), timeout_s).result())
    except grpc.RpcError as e:
        code, details = e.code(), e.details()
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            raise InvalidQueryError(f"shard {k} at {name} refused {method}: {details}") from None
        if code == grpc.StatusCode.FAILED_PRECONDITION:     # the data refuses it (an id with other content)
            raise CorpusError(f"shard {k} at {name} refused {method}: {details}") from None
        raise ShardUnavailableError(f"shard {k} at {name} failed {method} ({code.name}: {details}); "
                                    "nothing of this batch beyond what was acked is promised: re-run it") from None
    except (ConnectionError, OSError) as e:
        raise ShardUnavailableError(f"shard {k} at {name} failed {method}: {e}") from None


class ClusterWriter:
    """The coordinator's write path over a `Cluster` of single-replica shards."""

    def __init__(self, cluster, timeout_s: float = 120.0):
        self.cluster, self.timeout_s = cluster, timeout_s
        self.lock = threading.Lock()     # one sync at a time

    def _partition(self) -> dict:
        st = _call(self.cluster, self.cluster.shards[0], "Stats", {}, self.timeout_s)
        return {"n": int(st["n_shards"]), "key": st.get("key") or "id"}

    def write(self, op: str, events: Optional[list] = None, vectors: Any = None,
              ids: Optional[list] = None) -> dict:
        """Route one batch to its owners (each owner's part is one durable log record).
        Raises ShardUnavailableError naming the first shard that failed; `acked` counts only
        events whose owner acknowledged them."""
        if op not in OPS:
            raise InvalidQueryError(f"op must be one of {OPS}, got {op!r}")
        part = self._partition()
        acked, out = 0, {"skipped": 0, "updated": 0, "changed": 0}
        if op == "delete":
            ids = list(dict.fromkeys(ids or []))
            for k in self.cluster.shards:      # any shard may hold the id under another key
                got = _call(self.cluster, k, "Write", {"op": "delete", "ids": ids}, self.timeout_s)
                out["changed"] += int(got.get("changed", 0))
            return {"acked": len(ids), **out}
        from fastctx.partition import shard_of
        batch = msg_batch({"events": events, "vectors": vectors}, "write")
        own = shard_of(batch, part["n"], part["key"])
        owners = np.unique(own).tolist()
        if op == "add" and len(owners) > 1:
            # every owner checks its part first (an id already there with other content), so a
            # refused batch is refused whole rather than logged on some shards only
            for k in owners:
                sub = batch.select(np.flatnonzero(own == k))
                _call(self.cluster, int(k), "Write", {"op": op, "check": True, **batch_msg(sub)}, self.timeout_s)
        for k in owners:
            sub = batch.select(np.flatnonzero(own == k))
            got = _call(self.cluster, int(k), "Write", {"op": op, **batch_msg(sub)}, self.timeout_s)
            acked += int(got["acked"])
            out["skipped"] += int(got.get("skipped", 0))
            out["updated"] += int(got.get("updated", 0))
        return {"acked": acked, **out}

    def sync(self, attempts: int = 3) -> dict:
        """Re-partition the cluster's live events (module doc, phase 2). Returns sizes and time."""
        with self.lock:
            for _ in range(attempts):
                got = self._sync()
                if got is not None:
                    return got
            raise ShardUnavailableError(f"sync: writes kept arriving during {attempts} attempts; sync again")

    def _sync(self) -> dict:
        from fastctx.columns import keys64
        from fastctx.derive import corpus_params, with_derived_links
        from fastctx.params import BuildParams
        from fastctx.partition import global_graph, shard_of, sidecar_arrays
        t0 = time.perf_counter()
        stats = {k: _call(self.cluster, k, "Stats", {}, self.timeout_s) for k in self.cluster.shards}
        one = stats[self.cluster.shards[0]]
        n, key = int(one["n_shards"]), one.get("key") or "id"
        exports = {k: _call(self.cluster, k, "Export", {}, self.timeout_s) for k in self.cluster.shards}
        if not any(int(e.get("pending", 1)) for e in exports.values()):
            return {"n_global": int(one["n_global"]), "synced": False,
                    "seconds": round(time.perf_counter() - t0, 3)}
        recs = [r for k in sorted(exports) for r in exports[k]["events"]]
        vecs = [np.asarray(exports[k]["vectors"], np.float32) for k in sorted(exports)]
        batch = msg_batch({"events": recs, "vectors": np.concatenate(vecs) if vecs else None}, "sync")
        # input order (time, id key): the same for any layout of the same events, so a re-run agrees
        batch = batch.select(np.lexsort((keys64(batch.ids), batch.times)))
        # the build's params as this corpus applies them: same-actor links only where people work
        # in sittings, which each shard's manifest records for its later adds
        params, _ = corpus_params(batch, BuildParams())
        batch = with_derived_links(batch, params) if len(batch) else batch
        g = global_graph(batch, params)
        shard_no = shard_of(batch, n, key)[g["order"]]
        spec = one.get("encoder")
        builds = set()
        for k in self.cluster.shards:
            sub = batch.select(g["order"][shard_no == k])
            arrays = sidecar_arrays(g, shard_no, k, n)
            meta = {"shard": k, "n_shards": n, "key": key, "n_global": g["n"],
                    "n_entities_global": len(g["ent_names"]), "dim": batch.dim,
                    "slot_kinds": list(params.slot_kinds), "encoder": spec, "actor_k": params.actor_k}
            got = _call(self.cluster, k, "Install", {"gen": int(exports[k]["gen"]), "arrays": arrays, "meta": meta,
                                                     **batch_msg(sub, derived=True)}, self.timeout_s)
            if not got.get("installed", True):
                return None     # writes arrived on shard k since its export: sync again
            builds.add(got.get("build"))
        if len(builds) != 1:
            raise ShardUnavailableError(f"sync: the shards installed different builds {sorted(map(str, builds))}; "
                                        "sync again")
        # the cluster's new build identity: the coordinator's build watch takes it over
        return {"n_global": int(g["n"]), "synced": True, "build": builds.pop(),
                "seconds": round(time.perf_counter() - t0, 3)}
