"""The engine's view of the event graph: the graph access protocol and its local implementation.

The engine reads the event graph only through a small *graph access protocol* (`GraphAccess`):
merged seeds, per-row attributes (times, tokens, vectors, supersession, slot entity), batched
best-first expansion, the reverse supersession overlay, ids, entity names and payloads.
`LocalGraph` (below) serves it from one local shard's arrays and the Numba kernel (the embedded
case); `fastctx.shards.coordinator.DistributedGraph` serves it from shard servers with the same
relaxation step (kernels/frontier.py). The engine code is the same for both, so both give one answer.
Every call is batched, so a remote implementation pays round trips per stage, not per row.

Also here: the link and entity weights the expansion walks with (shared with the shard servers,
so every layout weighs an edge alike) and the seed rules for rows found another way.
"""
from __future__ import annotations

import copy
import math
from typing import Optional, Protocol, Sequence

import numpy as np

from .corpus import LINK_TYPES
from .csr import marked_lists, min_marked
from .derive import FLAG_ACTOR, FLAG_LEXICAL, FLAG_NO_WALK, bm25
from .filters import Filters
from .kernels.expand import ExpandGraph, ExpandLimits, expand_batch
from .parallel import cuts, run_parts
from .params import AnswerParams
from .types import Event
from .view import View

DAY = 86_400
EXPAND_MIN_PART = 8     # seeds per part of a batch of expansions (fastctx.parallel)


# ------------------------------------------------------------------------------------ weights
def link_weights(p: AnswerParams) -> np.ndarray:
    """float32 weight per link type code (LINK_TYPES order)."""
    weights = dict(p.link_weights)
    return np.array([weights.get(t, 0.0) for t in LINK_TYPES], np.float32)


def entity_weights(df: np.ndarray, n_events: int, p: AnswerParams, flags: Optional[np.ndarray] = None) -> np.ndarray:
    """float32 rarity weight of entities with document frequencies `df` among `n_events` events.
    Computed per distinct df with scalar `math.log`, so a shard holding a few entities and a
    whole-corpus engine get bit-identical weights for equal df (no SIMD/tail differences).
    `flags` (derive.FLAG_* per entity): words and access lists weigh 0 (no relation); terms
    derived from text weigh `term_weight` times their rarity (a name in prose is weaker evidence
    than an entity the source system recorded)."""
    df = np.asarray(df, np.int64)
    out = np.zeros(len(df), np.float32)
    if len(df) == 0:
        return out
    if flags is not None and len(flags) == len(df):
        w = entity_weights(df, n_events, p)
        flags = np.asarray(flags)
        term = ((flags & FLAG_LEXICAL) != 0) & ((flags & FLAG_NO_WALK) == 0)
        w[term] = (w[term] * np.float32(p.term_weight)).astype(np.float32)
        w[(flags & FLAG_NO_WALK) != 0] = 0.0
        return w
    max_df = max(4.0, min(float(p.entity_max_df), p.entity_max_share * n_events))
    uniq, inv = np.unique(df, return_inverse=True)
    vals = np.empty(len(uniq), np.float32)
    for i, d in enumerate(uniq.tolist()):
        rarity = math.log(max_df / max(float(d), 1.0)) / math.log(max_df / 2)
        vals[i] = 0.0 if d < 2 else np.float32(p.entity_weight * min(max(rarity, 0.0), 1.0))
    return vals[inv.ravel()]


def filter_rows(index, shard_no: int, rows: np.ndarray, filters: Filters, view: View) -> np.ndarray:
    """bool per row (ascending shard rows): passes `filters` (time window and as_of included),
    is live and visible in `view` — the seed rules, for rows found another way (lexical)."""
    ok = np.zeros(len(rows), bool)
    for si, seg, allowed, _ in index.plans(filters, 1, view):
        if si != shard_no:
            continue
        inside = (rows >= seg.row_base) & (rows < seg.row_base + seg.n)
        if inside.any():
            ok[inside] = allowed.contains(rows[inside] - seg.row_base)
    return ok


def expand_groups(graph: ExpandGraph, p: AnswerParams, seeds, seed_scores, direction: int, t_lo: int,
                  t_hi: int) -> list[tuple[np.ndarray, ...]]:
    """One independent expansion per seed over `graph` (the kernel contract of kernels/expand.py,
    `graph.allowed` already limited to what the asker sees at as_of): a list of (rows, scores,
    parent, via_kind, via_id, hops) per seed, each best first, from one kernel call per part. The one
    place an engine's expansion is run: embedded (`LocalGraph`) and a coordinator's graph
    replica (shards/replica.py) alike."""
    seeds = np.asarray(seeds, np.int64)
    limits = ExpandLimits(direction, t_lo, t_hi, p.max_hops, p.max_results, p.max_edge_visits,
                          p.hub_postings, int(p.hub_window_days * DAY), p.max_per_entity, p.min_score,
                          float(p.time_scale_days * DAY))
    scores = np.asarray(seed_scores, np.float32)
    ppr = None if p.expansion == "best_first" else (p.ppr_alpha, p.ppr_epsilon)
    if ppr is not None:
        limits = limits._replace(min_score=0.0)

    def batch(lo: int, hi: int) -> list[tuple[np.ndarray, ...]]:
        res_ptr, *out = expand_batch(np.arange(hi - lo + 1, dtype=np.int64), seeds[lo:hi], scores[lo:hi], graph,
                                     limits, ppr=ppr)
        bounds = res_ptr.tolist()
        return [tuple([a[a0:a1] for a in out]) for a0, a1 in zip(bounds[:-1], bounds[1:])]

    # the seeds' expansions are independent: a few groups of seeds run at once (fastctx.parallel)
    got = [g for part in run_parts([(batch, ab) for ab in cuts(len(seeds), p.threads, EXPAND_MIN_PART)])
           for g in part]
    if ppr is None:
        return got
    groups = []
    for part in got:  # best first, scores relative to the group's best (the seed: 1)
        part = list(part)
        order = np.lexsort((part[0], -part[1]))
        part = [a[order] for a in part]
        if len(part[1]):
            part[1] = (part[1] / part[1][0]).astype(np.float32)
        groups.append(tuple(part))
    return groups


class Superseded:
    """The supersession overlay reversed: for a row, the rows it superseded (sorted once, then a
    binary search per row). One implementation for the embedded graph and a coordinator's graph
    replica."""

    def __init__(self, superseded_by: np.ndarray):
        by = np.asarray(superseded_by)
        rows = np.flatnonzero(by >= 0)                       # only superseded rows are kept
        self.rows = rows[np.argsort(by[rows], kind="stable")]
        self.by = by[self.rows]

    @property
    def nbytes(self) -> int:
        return self.rows.nbytes + self.by.nbytes

    def lists(self, rows, allowed: np.ndarray) -> list[list[int]]:
        """Per row of `rows`, the rows it superseded that `allowed` (uint8 per row) lets through,
        ascending."""
        rows = np.asarray(rows, np.int64)
        lo, hi = np.searchsorted(self.by, rows), np.searchsorted(self.by, rows, "right")
        out = []
        for a, b in zip(lo.tolist(), hi.tolist()):
            prev = self.rows[a:b]
            out.append(prev[allowed[prev] == 1].tolist())
        return out


# ------------------------------------------------------------------------------------ protocol
class GraphAccess(Protocol):
    """What the engine needs from the event graph. Rows are this graph's row ids (global rows
    of the corpus for a partitioned index); every call takes and returns batches."""
    missing: Sequence[int]

    def seeds(self, q: np.ndarray, k: int, filters: Filters) -> tuple[np.ndarray, np.ndarray]:
        """(rows int64, similarities float64) best first, ties by row."""

    def allowed_count(self, k: int, filters: Filters) -> Optional[int]:
        """How many rows the last `seeds(..., k, filters)` could choose from (the planner's
        count under the filters and the view), or None when not known."""

    def seeds_per_entity(self, q: np.ndarray, k: int, filters: Filters,
                         names: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per entity name, `seeds(q, k, filters narrowed to rows that also mention it)`: many
        searches, one round where the graph is remote."""

    def times(self, rows: Sequence[int]) -> np.ndarray: ...

    def tokens(self, rows: Sequence[int]) -> np.ndarray: ...

    def kinds(self, rows: Sequence[int]) -> np.ndarray:
        """A label per row, equal for rows of one event kind (codes or names)."""

    def vectors(self, rows: Sequence[int]) -> np.ndarray: ...

    def supersession(self, rows: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(superseded_by row or -1, superseded_at) per row."""

    def superseded(self, rows: Sequence[int]) -> list[list[int]]:
        """Per row, the rows whose superseded_by is that row, ascending."""

    def slot_entity(self, rows: Sequence[int]) -> np.ndarray:
        """Per row, the smallest id of a slot entity it mentions, or -1."""

    def actors(self, rows: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The actors (entities flagged derive.FLAG_ACTOR: people, users, authors, speakers) each
        row mentions, in CSR form: (pointer over `rows`, their global entity ids, the share of
        all events that mention each). Optional, as `lexical` is: a graph without it gives no
        chain a bonus for its own people."""

    def expand(self, seeds: np.ndarray, seed_scores: np.ndarray, direction: int, t_lo: int, t_hi: int,
               as_of: Optional[int]) -> list[tuple[np.ndarray, ...]]:
        """One independent best-first expansion per seed (the kernel contract of
        kernels/expand.py, allowed = time <= as_of)."""

    def ids(self, rows: Sequence[int]) -> list[str]: ...

    def entity_names(self, pairs: Sequence[tuple[int, int]]) -> list[str]:
        """Names of entity ids, each asked with a row that mentions it."""

    def events(self, rows: Sequence[int], scores: Sequence[float], as_of: Optional[int]) -> list[Optional[Event]]:
        """Payloads, with superseded_by/at set when visible at as_of (None: unavailable)."""


class LocalGraph:
    """`GraphAccess` over one local shard: its arrays and the Numba kernel."""

    def __init__(self, index, shard_no: int = 0, params: AnswerParams = AnswerParams()):
        self.index, self.shard_no, self.params = index, shard_no, params
        self.shard = index.shards[shard_no]
        g = self.shard.graph
        self.graph = g
        self.link_weight = link_weights(params)
        self.ent_weight = entity_weights(g.entity_df, g.n, params, np.asarray(self.shard.entity_flags))
        self.superseded_by, self.superseded_at = self.shard.supersession
        self._superseded = Superseded(self.superseded_by)
        # deleted rows are never walked through or returned (the graph already drops their edges;
        # the mask keeps that true even for a seed or a window edge case)
        self.allowed = (self.shard.deleted_mask == 0).astype(np.uint8)
        self.slot = (self.shard.entity_flags & 1).astype(bool)
        self.actor = (self.shard.entity_flags & FLAG_ACTOR) != 0
        self.missing: list[int] = []
        self.view = View()
        self.doc_len = np.diff(g.ev_ptr)   # entities per row (BM25 document length)

    def for_view(self, view: View) -> "LocalGraph":
        """This graph as one asker sees it: rows outside the view's scope or access are neither
        seeds nor walked nor returned."""
        if not view.restricts:
            return self
        g = copy.copy(self)
        g.view = view
        hidden = view.hidden_mask(self.shard)
        if hidden is not None:
            g.allowed = ((self.allowed == 1) & ~hidden).astype(np.uint8)
        return g

    def visible(self, rows) -> np.ndarray:
        return self.allowed[np.asarray(rows, np.int64)] == 1

    def warm_up(self) -> None:
        """Compile the kernel for this shard's exact array types (memory maps are read-only
        arrays to Numba, a different signature from in-memory ones)."""
        one = np.zeros(1, np.int64)
        self.expand(one, np.ones(1, np.float32), 1, 0, 0, None)
        self.expand(one, np.ones(1, np.float32), 1, 0, 0, 0)

    def allowed_mask(self, as_of: Optional[int]) -> np.ndarray:
        if as_of is None:
            return self.allowed
        return ((self.graph.times <= as_of) & (self.allowed == 1)).astype(np.uint8)

    def seeds(self, q, k, filters):
        hits = self.index.search(q, k=k, filters=filters, view=self.view)
        n_hits = int(hits.counts[0])
        mine = hits.shards[0, :n_hits] == self.shard_no
        return hits.rows[0, :n_hits][mine], hits.scores[0, :n_hits][mine].astype(np.float64)

    def allowed_count(self, k, filters):
        return self.index.allowed_count(filters, k, self.view, self.shard_no)

    def seeds_per_entity(self, q, k, filters, names):
        out = []
        for hits in self.index.search_per_entity(q, k, names, filters=filters, view=self.view):
            n_hits = int(hits.counts[0])
            mine = hits.shards[0, :n_hits] == self.shard_no
            out.append((hits.rows[0, :n_hits][mine], hits.scores[0, :n_hits][mine].astype(np.float64)))
        return out

    def lexical(self, names, k, filters):
        """(rows, BM25 scores) of the best `k` rows matching the query's words and terms (derived
        entities, see derive.py), under `filters` and the view; best first, ties by row."""
        p, g = self.params, self.graph
        ids = self.shard.entity_ids(names)
        empty = (np.zeros(0, np.int64), np.zeros(0, np.float64))
        if not ids or g.n == 0:
            return empty
        doc_len = self.doc_len
        postings = [g.ent_rows[g.ent_ptr[e]:g.ent_ptr[e + 1]] for e in ids]
        rows, scores = bm25(postings, [len(x) for x in postings], g.n, doc_len, float(g.ev_ptr[-1]) / g.n,
                            p.bm25_k1, p.bm25_b)
        keep = filter_rows(self.index, self.shard_no, rows, filters, self.view)
        rows, scores = rows[keep], scores[keep]
        top = np.lexsort((rows, -scores))[:k]
        return rows[top], scores[top]

    def times(self, rows):
        return self.graph.times[np.asarray(rows, np.int64)]

    def kinds(self, rows):
        return np.asarray(self.shard.kind_codes)[np.asarray(rows, np.int64)]   # codes: one per kind name

    def tokens(self, rows):
        return np.asarray(self.shard.tokens)[np.asarray(rows, np.int64)]

    def vectors(self, rows):
        return self.shard.vectors(rows)

    def supersession(self, rows):
        rows = np.asarray(rows, np.int64)
        return self.superseded_by[rows], self.superseded_at[rows]

    def superseded(self, rows):
        return self._superseded.lists(rows, self.allowed)

    def slot_entity(self, rows):
        return min_marked(self.graph.ev_ptr, self.graph.ev_ent, rows, self.slot)

    def actors(self, rows):
        g = self.graph
        ptr, ids = marked_lists(g.ev_ptr, g.ev_ent, rows, self.actor)
        return ptr, ids, (g.ent_ptr[ids + 1] - g.ent_ptr[ids]) / max(g.n, 1)

    def expand(self, seeds, seed_scores, direction, t_lo, t_hi, as_of):
        """One independent expansion per seed; a list of (rows, scores, parent, via_kind, via_id,
        hops) per seed, each best first. One kernel call for all of them."""
        g = self.graph
        graph = ExpandGraph(g.times, self.allowed_mask(as_of), g.out_ptr, g.out_dst, g.out_type, g.in_ptr,
                            g.in_src, g.in_type, self.link_weight, g.ev_ptr, g.ev_ent, g.ent_ptr, g.ent_rows,
                            self.ent_weight)
        return expand_groups(graph, self.params, seeds, seed_scores, direction, t_lo, t_hi)

    def ids(self, rows):
        out = []
        for r in rows:
            seg, local = self.shard.locate(int(r))
            out.append(seg.ids[local])
        return out

    def entity_names(self, pairs):
        return [self.shard.entity_name(int(e)) for _, e in pairs]

    def events(self, rows, scores, as_of):
        out = []
        for r, s in zip(rows, scores):
            e = self.index.event(self.shard_no, int(r), float(s))
            e.links = self.index.seen_links(e.links, self.view)
            by, at = int(self.superseded_by[r]), int(self.superseded_at[r])
            if by >= 0 and (as_of is None or at <= as_of) and self.allowed[by] == 1:
                e.superseded_by, e.superseded_at = self.ids([by])[0], at
            out.append(e)
        return out
