"""A coordinator's graph replica: the whole index's expansion graph in global rows.

Without it, a chain query's expansion walks the graph through the shards: about six waves of
`Expand` rounds (docs/SHARDED.md, "Numbers"), each a round trip to several shard servers. With
it, the coordinator holds the arrays of the expansion kernel's contract (kernels/expand.py) for
every global row and runs the embedded engine's own expansion on them (`graph.expand_groups`):
one kernel call, no round. What a question reads after its seeds (vectors, times, token counts,
kinds, ids, entity names, payloads) is read from the shards' files here too, as their servers
read it; only the seeds come from the shards: one round instead of about eleven, and no vectors
on the wire.

The arrays are assembled from the shard directories, read-only: each shard's graph (times, the
entities of each row, entity postings) mapped to global rows and global entity ids through its
partition sidecar, and the sidecar's links, which already list every link of a row, other shards'
ends included, in one-shard order. The result equals the graph of a one-shard build of the same
corpus array for array (tests/test_replica.py), so the kernel gives the one-shard answer.

A replica is one state of the cluster. Each shard stamps its `Search` replies with the state it
serves (`state`: its disk state key and partition checksum); a query whose stamps differ from
the replica's (a sync installed new data), or that lacks a shard, expands through the shards as
before, and the coordinator reloads the replica in the background. Memory: about 77 bytes per
event, 16 per (event, entity) mention and 18 per link, held by the coordinator process.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Optional

import numpy as np

from fastctx.csr import marked_lists, min_marked, ranges
from fastctx.derive import FLAG_ACTOR
from fastctx.errors import CorruptIndexError, InvalidQueryError
from fastctx.format import read_marker
from fastctx.graph import Superseded, entity_weights, expand_groups, link_weights
from fastctx.kernels.expand import ExpandGraph
from fastctx.kernels.scan import gather_parts
from fastctx.params import AnswerParams
from fastctx.partition import check_sidecar
from fastctx.view import View

from .service import ShardService, shard_state
from .transport import Cluster, LocalReplica


class GraphReplica:
    """The expansion graph of every shard of a partitioned index, in global rows."""

    def __init__(self, index_dir, params: AnswerParams = AnswerParams()):
        t0 = time.perf_counter()
        self.path = Path(index_dir)
        marker = read_marker(self.path)
        names = list(marker.get("shards") or [])
        if len(names) < 2:
            raise InvalidQueryError(f"{self.path}: a graph replica is for a partitioned index (fastctx build --shards N)")
        self.params = params
        # one in-process shard service per shard directory, read-only: its mapped files are what
        # the replica is read from, and it answers what a query the replica serves fetches after
        # its seeds (payloads, supersession, visibility, ids) as the shard's server would
        services = self._services = [ShardService(self.path, k) for k in range(len(names))]
        parts = [(svc.sh, svc.sc, svc.meta) for svc in services]   # (shard, sidecar arrays, meta)
        # the coordinator's own requests to its own in-process services: not validated again (a
        # shard server validates every request it is sent)
        self.local = Cluster({k: [LocalReplica(svc, f"replica-{k}", check=False)] for k, svc in enumerate(services)})
        self.states = {k: shard_state(sh, meta) for k, (sh, _, meta) in enumerate(parts)}
        n = int(parts[0][2]["n_global"])
        n_ent = int(parts[0][2]["n_entities_global"])
        if any(int(meta["n_global"]) != n for _, _, meta in parts):
            raise CorruptIndexError(f"{self.path}: the shards disagree on the number of events (mixed builds)")
        self.n = n
        self.times = np.zeros(n, np.int64)
        self.owner = np.full(n, -1, np.int64)
        self.local_of = np.zeros(n, np.int64)        # a global row's row on its owner shard
        self.token_count = np.zeros(n, np.int64)
        self.kind_code = np.zeros(n, np.int32)       # one code per kind name across the shards
        kind_names: dict[str, int] = {}
        self.sup_by = np.full(n, -1, np.int64)       # the supersession overlay, from the sidecars
        self.sup_at = np.zeros(n, np.int64)
        live = np.zeros(n, np.uint8)
        ev_cnt, out_cnt, in_cnt = (np.zeros(n, np.int64) for _ in range(3))
        for k, (sh, sc, meta) in enumerate(parts):
            check_sidecar(sc.arrays(), meta, sh.n, self.path / names[k], sh.n_entities)
            g = np.asarray(sc.grow, np.int64)
            if (self.owner[g] >= 0).any():
                raise CorruptIndexError(f"{self.path / names[k]}: its global rows overlap another shard's")
            self.times[g], self.owner[g], self.local_of[g] = sh.graph.times, k, np.arange(len(g))
            self.token_count[g] = np.asarray(sh.tokens)
            codes = np.array([kind_names.setdefault(nm, len(kind_names)) for nm in sh.kinds] or [0], np.int32)
            self.kind_code[g] = codes[np.asarray(sh.kind_codes, np.int64)]
            self.sup_by[g], self.sup_at[g] = sc.sup_by, sc.sup_at
            live[g] = np.asarray(sh.deleted_mask) == 0
            ev_cnt[g], out_cnt[g], in_cnt[g] = np.diff(sh.graph.ev_ptr), np.diff(sc.out_ptr), np.diff(sc.in_ptr)
        if (self.owner < 0).any():
            raise CorruptIndexError(f"{self.path}: global row {int(np.argmax(self.owner < 0))} is on no shard")
        self.live = live
        self.ev_ptr, self.out_ptr, self.in_ptr = (_ptr(c) for c in (ev_cnt, out_cnt, in_cnt))
        self.ev_ent = np.zeros(int(self.ev_ptr[-1]), np.int64)
        self.out_dst = np.zeros(int(self.out_ptr[-1]), np.int64)
        self.out_type = np.zeros(int(self.out_ptr[-1]), np.int8)
        self.in_src = np.zeros(int(self.in_ptr[-1]), np.int64)
        self.in_type = np.zeros(int(self.in_ptr[-1]), np.int8)
        flags = np.zeros(n_ent, np.uint8)
        post_e, post_r = [], []
        for sh, sc, _ in parts:
            g, gent, graph = np.asarray(sc.grow, np.int64), np.asarray(sc.gent, np.int64), sh.graph
            # a shard's rows in ascending global order: their slices concatenate in its own order
            self.ev_ent[ranges(self.ev_ptr[g], ev_cnt[g])] = gent[np.asarray(graph.ev_ent, np.int64)]
            at = ranges(self.out_ptr[g], out_cnt[g])
            self.out_dst[at], self.out_type[at] = sc.out_dst, sc.out_type
            at = ranges(self.in_ptr[g], in_cnt[g])
            self.in_src[at], self.in_type[at] = sc.in_src, sc.in_type
            flags[gent] = np.asarray(sh.entity_flags, np.uint8)
            post_e.append(np.repeat(gent, np.diff(np.asarray(graph.ent_ptr, np.int64))))
            post_r.append(g[np.asarray(graph.ent_rows, np.int64)])
        # postings of each entity merged over its holders in (time, global row) order: the order
        # a one-shard build keeps them in (the kernel binary-searches them by it)
        pe, pr = np.concatenate(post_e), np.concatenate(post_r)
        order = np.lexsort((pr, self.times[pr], pe))
        self.ent_rows = pr[order]
        self.ent_ptr = _ptr(np.bincount(pe, minlength=n_ent))
        self.link_weight = link_weights(params)
        self.ent_weight = entity_weights(np.diff(self.ent_ptr), n, params, flags)
        self.slot = (flags & 1).astype(bool)         # slot entities (implicit supersession)
        self.actor = (flags & FLAG_ACTOR) != 0       # people, users, authors, speakers
        self._superseded = Superseded(self.sup_by)
        # what a view's hidden rows are computed from (each shard's access lists and scope entities)
        self._shards = [(sh, np.asarray(sc.grow, np.int64)) for sh, sc, _ in parts]
        self.dim = int(parts[0][0].dim)
        self._vec_parts, self._vec_part, self._vec_row = _vector_sources([(sh, g) for sh, g in self._shards], n)
        self._views: dict = {}
        self._lock = threading.Lock()
        self.read_s = time.perf_counter() - t0

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays the replica holds (the shards' mapped files not counted)."""
        return sum(v.nbytes for v in vars(self).values() if isinstance(v, np.ndarray)) + self._superseded.nbytes

    def describe(self) -> str:
        return f"{self.n} events, {self.nbytes / 2**20:.0f} MiB, read in {self.read_s:.1f} s"

    def current(self, states: dict) -> bool:
        """Whether every shard serves the state this replica was read from."""
        return len(states) == len(self.states) and all(states.get(k) == v for k, v in self.states.items())

    def allowed(self, view: View, as_of: Optional[int]) -> np.ndarray:
        """uint8 per global row: live, visible in `view`, and (given `as_of`) not later than it:
        the embedded `LocalGraph.allowed_mask` over every shard's rows."""
        key = repr(view) if view.restricts else ""
        with self._lock:
            base = self._views.get(key)
            if base is None:
                base = self.live.copy()
                if view.restricts:
                    for sh, grow in self._shards:
                        hidden = view.hidden_mask(sh)
                        if hidden is not None:
                            base[grow[hidden]] = 0
                if len(self._views) >= 64:
                    self._views.pop(next(iter(self._views)))
                self._views[key] = base
        return base if as_of is None else ((self.times <= as_of) & (base == 1)).astype(np.uint8)

    def expand(self, seeds, seed_scores, direction: int, t_lo: int, t_hi: int, as_of: Optional[int],
               view: View = View()) -> list[tuple[np.ndarray, ...]]:
        """The engine's expansion (`GraphAccess.expand`) on the replica: one kernel call."""
        graph = ExpandGraph(self.times, self.allowed(view, as_of), self.out_ptr, self.out_dst, self.out_type,
                            self.in_ptr, self.in_src, self.in_type, self.link_weight, self.ev_ptr, self.ev_ent,
                            self.ent_ptr, self.ent_rows, self.ent_weight)
        return expand_groups(graph, self.params, seeds, seed_scores, direction, t_lo, t_hi)

    # -- per-row attributes ---------------------------------------------------------------------
    # A chain reads these for ~1,300 hits and every reached row: from arrays in global rows, and
    # vectors straight from the shards' files, not through the local services' Fetch (validation
    # and per-row caches cost ~6 ms a chain question at 1e5, measured); the rest goes through
    # `local`.
    def tokens(self, rows) -> np.ndarray:
        return self.token_count[np.asarray(rows, np.int64)]

    def kinds(self, rows) -> np.ndarray:
        """A code per row, equal for rows of one kind (what the engine groups by)."""
        return self.kind_code[np.asarray(rows, np.int64)]

    def vectors(self, rows) -> np.ndarray:
        rows = np.asarray(rows, np.int64)
        if self._vec_parts is not None:    # one pass over the rows, whatever shard holds them
            out = np.empty((len(rows), self.dim), np.float32)
            gather_parts(self._vec_parts, self._vec_part[rows], self._vec_row[rows], out)
            return out
        own = self.owner[rows]
        out = np.empty((len(rows), self.dim), np.float32)
        for k in np.unique(own).tolist():
            at = np.flatnonzero(own == k)
            out[at] = self._shards[k][0].vectors(self.local_of[rows[at]])
        return out

    def ids(self, rows) -> list[str]:
        """Event ids of global rows, from their owners' files (what a shard's Fetch of "id" sends)."""
        rows = np.asarray(rows, np.int64)
        return [self._services[k]._id(r) for k, r in zip(self.owner[rows].tolist(), self.local_of[rows].tolist())]

    def entity_names(self, pairs) -> list[Optional[str]]:
        """Names of (global row, global entity id) pairs, from the row's owner (None: unknown)."""
        return [self._services[int(self.owner[r])]._entity_name(int(e)) for r, e in pairs]

    def supersession(self, rows) -> tuple[np.ndarray, np.ndarray]:
        rows = np.asarray(rows, np.int64)
        return self.sup_by[rows], self.sup_at[rows]

    def superseded(self, rows, view: View) -> list[list[int]]:
        """Per row, the rows it superseded that the view lets the asker see, ascending."""
        return self._superseded.lists(rows, self.allowed(view, None))

    def slot_entity(self, rows) -> np.ndarray:
        """Per row, the smallest global id of its slot entities (-1: none), as a shard's Fetch."""
        return min_marked(self.ev_ptr, self.ev_ent, np.asarray(rows, np.int64), self.slot)

    def actors(self, rows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per row, the global ids of its actor entities and the share of all events that mention
        each (CSR), as a shard's Fetch gives them."""
        ptr, ids = marked_lists(self.ev_ptr, self.ev_ent, np.asarray(rows, np.int64), self.actor)
        return ptr, ids, (self.ent_ptr[ids + 1] - self.ent_ptr[ids]) / max(self.n, 1)

    def warm_up(self) -> None:
        """Compile (or load) the kernel for the replica's array types before the first query."""
        one = np.zeros(1, np.int64)
        self.expand(one, np.ones(1, np.float32), 1, 0, 0, None)
        if self.n:
            self.vectors(one)


def _vector_sources(shards, n: int):
    """(matrices, part, row): every global row's vector as row `row[g]` of `matrices[part[g]]`,
    the segments (and memtable) of every shard as read-only float32 arrays of one type, for
    `gather_parts`; (None, None, None) where they are not all such arrays (the per-shard gather
    serves then)."""
    mats, part, row = [], np.zeros(n, np.int32), np.zeros(n, np.int64)
    for sh, grow in shards:
        for seg in sh.segments:
            v = np.asarray(seg.vectors)
            if v.dtype != np.float32 or v.ndim != 2 or not (v.flags.c_contiguous and v.flags.aligned):
                return None, None, None     # one array type for the kernel's tuple, or none
            v = v.view()
            v.flags.writeable = False
            g = grow[seg.row_base:seg.row_base + seg.n]
            part[g], row[g] = len(mats), np.arange(seg.n)
            mats.append(v)
    return tuple(mats), part, row


def _ptr(counts: np.ndarray) -> np.ndarray:
    out = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=out[1:])
    return out
