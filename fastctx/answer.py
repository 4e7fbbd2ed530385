"""Causal-chain answers: seeds -> graph expansion -> rerank -> token-budgeted timeline.

seeds   : the filtered vector top hits, plus, when the query has text, the rows its own words
          and identifier terms match best (BM25 over the derived `~w:`/`~t:` entities, see
          derive.py); a hit's lexical match (relative to the best) adds to its similarity.
chain   : which of the seed hits is the situation the query is about? Hits are first ranked by
          query-specific similarity (cosine after subtracting the mean of all the hits, so the
          words every hit shares stop counting) and lexical match, plus their place in the
          query's time window (asking "what led here" anchors at the latest matching
          situation) and their closeness to a date the question's text names, minus a penalty
          growing with how close a later hit is (an older version of the same thing). The best
          `candidates` are expanded over the event graph (explicit links, rare shared entities
          and identifier terms) in the asked direction and gain the
          relevance of their chain (how much the events they reach are about the query: a
          look-alike usually stands alone or sits among unrelated events). Each candidate's
          chain counts with a softmax weight of its score; a candidate whose chain reaches
          another inherits that one's weight times the path between them (a later event that
          explains the best match continues its story). The answer is the pooled chains, best
          evidence first: one scale for chain events and direct hits (a hit is its own
          one-event chain). How broad it is follows how much causal structure the best chain
          has (its evidence mass through anything but replies and same-actor links, relative
          to `chain_evidence`): a causal question gets its chain and ends there; a question
          whose evidence is several unrelated hits (a fact asked of a conversation) pools
          candidates more widely and lets direct hits, by fused relevance, take the
          unexplained share of the budget.
          `fill` pads the whole budget with direct hits.
current : the top hits are grouped by their slot entity (e.g. `decision:...`) or, lacking
as_of     one, by their explicit supersession chain; the best group (sum of its two best
          similarities) is followed along the supersession overlay to the version that is
          current now, or at `as_of` (events and supersessions after as_of are invisible).
view    : every stage sees the graph as the asker does (view.py): rows outside the query's
          scope or the asker's access are never seeds, never walked through, never returned,
          never current (the walk along supersessions may pass a hidden version but lands only
          on visible ones), never named as a superseder or in a why-path.

The engine reads the event graph only through a small *graph access protocol* (`GraphAccess`):
merged seeds, per-row attributes (times, tokens, vectors, supersession, slot entity), batched
best-first expansion, the reverse supersession overlay, ids, entity names and payloads.
`LocalGraph` serves it from one local shard's arrays and the Numba kernel (the embedded case);
`fastctx.shards.coordinator.DistributedGraph` serves it from shard servers, reproducing the
kernel's semantics hop by hop. The engine code is the same for both, so both give one answer.
Every call is batched, so a remote implementation pays round trips per stage, not per row.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Optional, Protocol, Sequence

import numpy as np

from .corpus import LINK_TYPES
from .derive import FLAG_LEXICAL, FLAG_NO_WALK, bm25, query_words
from .errors import InvalidQueryError
from .filters import Filters
from .kernels.expand import expand_best_first_batch, expand_ppr_push_batch
from .results import Answer  # noqa: F401 - re-exported (shards import it from here)
from .timeexpr import date_intervals
from .types import Event
from .view import View

DIRECTIONS = {"back": 1, "forward": 2, "both": 3}
QUERY_TYPES = ("chain", "current", "as_of")
DAY = 86_400


@dataclass(frozen=True)
class AnswerParams:
    """Knobs of the causal engine. Defaults are measured on the orgmem yardstick (see docs)."""
    seed_k: int = 1024               # seed hits considered (their mean is what "specific" is relative
                                     # to; a fact's versions and mentions group together among them)
    current_seed_k: int = 1024       # ... for `current` / `as_of`: a fact's versions must be among
                                     # the hits to group. At 3.4M events 4096 lifts current from
                                     # 0.84 to 0.93 at twice the latency; no change at 1e6 or below
    # "best_first" (max-product paths; the sharded coordinator reproduces it exactly) or "ppr"
    # (personalized PageRank push; embedded only for now; measured in the issue notes)
    expansion: str = "best_first"
    ppr_alpha: float = 0.3           # PPR teleport probability
    ppr_epsilon: float = 1e-3        # PPR push threshold
    candidates: int = 64             # hits expanded as possible chain heads
    # a reply is conversation structure (what came next), not a cause: it weighs what the other
    # non-causal adjacencies (similar, same_actor) weigh, well below a reference
    link_weights: tuple[tuple[str, float], ...] = (
        ("reply", 0.3), ("references", 0.85), ("fixes", 0.9), ("follow_up", 0.9),
        ("reverts", 0.8), ("backport_of", 0.8), ("supersedes", 0.8), ("similar", 0.3),
        ("same_actor", 0.3), ("relands", 0.8))
    entity_weight: float = 0.8       # weight of sharing an entity mentioned by 2 events ...
    term_weight: float = 0.5         # ... times this for identifier terms derived from text
    entity_max_df: int = 16          # ... falling (log) to 0 at this many events: hubs are no evidence
    entity_max_share: float = 0.02   # ... or at this share of the shard's events, if that is fewer
    time_scale_days: float = 240.0   # entity edges decay as 1 / (1 + |dt| / scale): a story spans months
    hub_postings: int = 4096         # postings longer than this are scanned only ...
    hub_window_days: float = 30.0    # ... this close in time to the node
    max_per_entity: int = 64         # candidates examined per (node, entity)
    max_hops: int = 6
    max_results: int = 256           # events reached per expansion
    max_edge_visits: int = 20_000    # work cap per expansion
    min_score: float = 0.02
    relevance: float = 0.8           # weight of how much a candidate's chain is about the query
    relevance_mass: float = 1.5      # ... counting up to this many units of evidence behind it, those
                                     # past the first only through causal links: a head with a
                                     # linked history beats a look-alike with one neighbour
    recency: float = 0.6             # weight of a candidate's place in the query's time window
    older_version_cos: float = 0.6   # a later hit more similar than this marks an older version ...
    older_version_penalty: float = 1.3  # ... penalised by this times the excess similarity
    inherit: bool = True             # a candidate whose chain reaches another inherits its weight
    pool_temperature: float = 0.03   # softmax temperature pooling candidates' chains (0: winner only);
                                     # chains of candidates weighted below 1e-3 are not evidence
    # How much causal structure the best chain has decides the answer's breadth: its evidence
    # mass (path scores of the events it reaches through anything but reply or same-actor
    # links) relative to `chain_evidence` is the confidence c in [0, 1]. The pooling
    # temperature moves from `wide_temperature` (c = 0) to `pool_temperature` (c = 1), and
    # direct hits, in fused relevance order, take the share 1 - c of the budget the chains leave.
    chain_evidence: float = 0.5
    wide_temperature: float = 0.3
    window_slack_days: float = 0.0   # expansion may leave the seed time window by this much
    lexical_k: int = 256             # lexical seeds (the query's words against the index vocabulary)
    lexical: float = 0.75            # weight of a hit's lexical match (0..1, relative to the best)
                                     # beside its query-specific similarity
    bm25_k1: float = 1.2             # textbook BM25 constants (presence only: tf = 1)
    bm25_b: float = 0.75
    # a question that names a date ("what did Kate cook on 29 Dec 2023?") is about what happened
    # then: a hit's closeness to it (1 on the day, 1/2 three days away; timeexpr.py) adds this
    # much to its head and direct-hit score, a prior like `recency`, never a filter
    date_weight: float = 0.4
    date_scale_days: float = 3.0

    def __post_init__(self):
        if self.expansion not in ("best_first", "ppr"):
            raise InvalidQueryError(f"AnswerParams.expansion must be 'best_first' or 'ppr', got {self.expansion!r}")


# links that say what came next in a conversation or a person's sitting, not why
_NOT_CAUSAL = np.array([LINK_TYPES.index("reply"), LINK_TYPES.index("same_actor")], np.int64)


def _causal(expansion) -> np.ndarray:
    """Which events an expansion reached (its head excluded) through anything but those links."""
    via_kind, via_id = expansion[3][1:], expansion[4][1:]
    return ~((via_kind == 1) & np.isin(via_id, _NOT_CAUSAL))


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


# ------------------------------------------------------------------------------------ protocol
class GraphAccess(Protocol):
    """What the engine needs from the event graph. Rows are this graph's row ids (global rows
    of the corpus for a partitioned index); every call takes and returns batches."""
    missing: Sequence[int]

    def seeds(self, q: np.ndarray, k: int, filters: Filters) -> tuple[np.ndarray, np.ndarray]:
        """(rows int64, similarities float64) best first, ties by row."""

    def times(self, rows: Sequence[int]) -> np.ndarray: ...

    def tokens(self, rows: Sequence[int]) -> np.ndarray: ...

    def vectors(self, rows: Sequence[int]) -> np.ndarray: ...

    def supersession(self, rows: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(superseded_by row or -1, superseded_at) per row."""

    def superseded(self, rows: Sequence[int]) -> list[list[int]]:
        """Per row, the rows whose superseded_by is that row, ascending."""

    def slot_entity(self, rows: Sequence[int]) -> np.ndarray:
        """Per row, the smallest id of a slot entity it mentions, or -1."""

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
        self._sup_rows = np.argsort(self.superseded_by, kind="stable")  # reverse overlay: who did r supersede
        self._sup_by = self.superseded_by[self._sup_rows]
        # deleted rows are never walked through or returned (the graph already drops their edges;
        # the mask keeps that true even for a seed or a window edge case)
        self.allowed = (self.shard.deleted_mask == 0).astype(np.uint8)
        self.slot = (self.shard.entity_flags & 1).astype(bool)
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

    def tokens(self, rows):
        return np.asarray(self.shard.tokens)[np.asarray(rows, np.int64)]

    def vectors(self, rows):
        segs = self.shard.segments
        if len(segs) == 1:
            return np.asarray(segs[0].vectors[np.asarray(rows, np.int64)])
        out = np.empty((len(rows), self.shard.dim), np.float32)
        for j, r in enumerate(np.asarray(rows).tolist()):
            seg, local = self.shard.locate(r)
            out[j] = seg.vectors[local]
        return out

    def supersession(self, rows):
        rows = np.asarray(rows, np.int64)
        return self.superseded_by[rows], self.superseded_at[rows]

    def superseded(self, rows):
        out = []
        for f in rows:
            prev = self._sup_rows[np.searchsorted(self._sup_by, f):np.searchsorted(self._sup_by, f, "right")]
            out.append(prev[self.allowed[prev] == 1].tolist())
        return out

    def slot_entity(self, rows):
        g = self.graph
        out = np.full(len(rows), -1, np.int64)
        for j, r in enumerate(rows):
            ents = g.ev_ent[g.ev_ptr[r]:g.ev_ptr[r + 1]]
            slots = ents[self.slot[ents]]
            if len(slots):
                out[j] = int(slots.min())
        return out

    def expand(self, seeds, seed_scores, direction, t_lo, t_hi, as_of):
        """One independent expansion per seed; a list of (rows, scores, parent, via_kind, via_id,
        hops) per seed, each best first. One kernel call for all of them."""
        p, g = self.params, self.graph
        seeds = np.asarray(seeds, np.int64)
        args = (np.arange(len(seeds) + 1, dtype=np.int64), seeds, np.asarray(seed_scores, np.float32),
                g.times, self.allowed_mask(as_of),
                g.out_ptr, g.out_dst, g.out_type, g.in_ptr, g.in_src, g.in_type, self.link_weight,
                g.ev_ptr, g.ev_ent, g.ent_ptr, g.ent_rows, self.ent_weight,
                direction, t_lo, t_hi, p.max_hops, p.max_results, p.max_edge_visits,
                p.hub_postings, int(p.hub_window_days * DAY), p.max_per_entity)
        scale = float(p.time_scale_days * DAY)
        if p.expansion == "best_first":
            res_ptr, *out = expand_best_first_batch(*args, p.min_score, scale)
            return [tuple(a[res_ptr[i]:res_ptr[i + 1]] for a in out) for i in range(len(seeds))]
        res_ptr, *out = expand_ppr_push_batch(*args, 0.0, scale, p.ppr_alpha, p.ppr_epsilon)
        groups = []
        for i in range(len(seeds)):  # best first, scores relative to the group's best (the seed: 1)
            part = [a[res_ptr[i]:res_ptr[i + 1]] for a in out]
            order = np.lexsort((part[0], -part[1]))
            part = [a[order] for a in part]
            if len(part[1]):
                part[1] = (part[1] / part[1][0]).astype(np.float32)
            groups.append(tuple(part))
        return groups

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
            by, at = int(self.superseded_by[r]), int(self.superseded_at[r])
            if by >= 0 and (as_of is None or at <= as_of) and self.allowed[by] == 1:
                e.superseded_by, e.superseded_at = self.ids([by])[0], at
            out.append(e)
        return out


# ------------------------------------------------------------------------------------ engine
def check_query(query_type, direction, budget) -> None:
    if query_type not in QUERY_TYPES:
        raise InvalidQueryError(f"type must be one of {QUERY_TYPES}, got {query_type!r}")
    if direction not in DIRECTIONS:
        raise InvalidQueryError(f"direction must be one of {tuple(DIRECTIONS)}, got {direction!r}")
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget <= 0:
        raise InvalidQueryError(f"budget_tokens must be a positive integer, got {budget!r}")


class Engine:
    """Runs causal queries over a `GraphAccess`: by default one shard of an `Index` (the
    embedded, one-shard case); `Engine(graph=...)` runs the same logic over any other."""

    def __init__(self, index=None, shard_no: int = 0, params: AnswerParams = AnswerParams(), *, graph=None):
        self.index, self.shard_no, self.params = index, shard_no, params
        self.g = graph if graph is not None else LocalGraph(index, shard_no, params)

    def warm_up(self) -> None:
        if hasattr(self.g, "warm_up"):
            self.g.warm_up()

    # -- entry point ---------------------------------------------------------------------------
    def run(self, q: np.ndarray, query_type: str, filters: Filters, direction: str, budget: int,
            graph=None, *, view: View = View(), text: Optional[str] = None, fill: bool = False) -> Answer:
        """Answer one query. `graph` overrides the engine's graph for this call (a coordinator
        passes a per-query one); `view` limits what the asker may see; `text` (the query's words)
        adds lexical seeds; `fill` pads the answer with direct hits up to the budget."""
        check_query(query_type, direction, budget)
        g = (graph if graph is not None else self.g).for_view(view)
        t0 = time.perf_counter()
        k = self.params.seed_k if query_type == "chain" else self.params.current_seed_k
        rows, sims, lex = self._seeds(g, q, k, filters, text)
        t1 = time.perf_counter()
        if query_type == "chain":
            picked, current = self._chain(g, q, rows, sims, lex, filters, DIRECTIONS[direction], budget, fill,
                                          date_intervals(text))
        else:
            picked, current = self._current(g, rows, sims, lex, filters, budget, fill)
        t2 = time.perf_counter()
        picked = self._explain(g, picked)
        got = g.events([r for r, _, _ in picked], [s for _, s, _ in picked], filters.as_of)
        events = []
        for e, (_, _, why) in zip(got, picked):
            if e is not None:
                e.why = why
                events.append(e)
        events.sort(key=lambda e: (e.time, e.id))
        cur = None
        if current is not None:
            cur = g.events([current], [0.0], filters.as_of)[0]
            if cur is not None:
                cur.score = next((e.score for e in events if e.row == cur.row), 0.0)
        t3 = time.perf_counter()
        return Answer(query_type, events, cur, [], {"seeds_ms": 1e3 * (t1 - t0), "expand_ms": 1e3 * (t2 - t1),
                                                    "fetch_ms": 1e3 * (t3 - t2)}, int(budget),
                      partial=bool(g.missing), missing_shards=sorted(g.missing))

    # -- seeds ---------------------------------------------------------------------------------
    def _seeds(self, g, q, k: int, filters: Filters, text: Optional[str]):
        """Vector seeds, plus the rows the query's own words match best (BM25 over the derived
        word and term entities). Returns rows, their vector similarities, and their lexical
        match in [0, 1] relative to the best lexical score (0 without text)."""
        rows, sims = g.seeds(q, k, filters)
        rows, sims = np.asarray(rows, np.int64), np.asarray(sims, np.float64)
        lex = np.zeros(len(rows))
        names = query_words(text)
        if not names or not hasattr(g, "lexical"):
            return rows, sims, lex
        lrows, lscores = g.lexical(names, self.params.lexical_k, filters)
        lrows, lscores = np.asarray(lrows, np.int64), np.asarray(lscores, np.float64)
        if len(lrows) == 0:
            return rows, sims, lex
        new = lrows[~np.isin(lrows, rows)]
        if len(new):
            vsim = np.asarray(g.vectors(new), np.float64) @ np.asarray(q, np.float64)
            rows, sims = np.concatenate([rows, new]), np.concatenate([sims, vsim])
        pos = dict(zip(lrows.tolist(), (lscores / lscores.max()).tolist()))
        lex = np.array([pos.get(r, 0.0) for r in rows.tolist()])
        order = np.lexsort((rows, -(sims + self.params.lexical * lex)))
        return rows[order], sims[order], lex[order]

    # -- chain ---------------------------------------------------------------------------------
    @staticmethod
    def _recency(times: np.ndarray, filters: Filters, direction: int) -> np.ndarray:
        """Place of each hit inside the asked time window: a question scoped to a window is about
        the situation at its end, so "what led here" is anchored at the latest matching event
        (back), "what followed" at the earliest (forward). No window, no such prior."""
        t = times.astype(np.float64)
        if (filters.time_from is None and filters.time_to is None) or direction == DIRECTIONS["both"]:
            return np.zeros_like(t)
        w_lo = float(filters.time_from) if filters.time_from is not None else t.min()
        w_hi = float(filters.time_to) if filters.time_to is not None else t.max()
        recency = np.clip((t - w_lo) / max(w_hi - w_lo, 1.0), 0.0, 1.0)
        return 1.0 - recency if direction == DIRECTIONS["forward"] else recency

    @staticmethod
    def _named_dates(times: np.ndarray, dates: Sequence[tuple[int, int]], scale_days: float) -> np.ndarray:
        """How close each hit is to a date the question names: 1 inside a named interval, falling
        as 1 / (1 + days away / scale) outside it; 0 for every hit when no date is named."""
        if not dates or len(times) == 0:
            return np.zeros(len(times))
        t = times.astype(np.float64)
        away = np.min([np.maximum(np.maximum(lo - t, t - hi), 0.0) for lo, hi in dates], axis=0)
        return 1.0 / (1.0 + away / (scale_days * DAY))

    @staticmethod
    def _specific_similarity(vecs: np.ndarray, q: np.ndarray) -> np.ndarray:
        """Cosine of each hit to the query after removing what all the hits share (their mean):
        the words every hit has (the service, the topic) stop counting, and what is specific to
        the query's situation decides. Plain similarity when there are too few hits to tell."""
        if len(vecs) < 8:
            return vecs @ np.asarray(q, np.float64)
        mean = vecs.mean(axis=0)
        qc, vc = np.asarray(q, np.float64) - mean, vecs - mean
        return (vc @ qc) / np.maximum(np.linalg.norm(vc, axis=1) * np.linalg.norm(qc), 1e-12)

    @staticmethod
    def _chain_relevance(g, q: np.ndarray, expansions, mass_cap: float = 1.0) -> np.ndarray:
        """Per candidate, how much its chain is about the query: the evidence-weighted mean query
        similarity of the events its expansion reaches (the candidate itself excluded), times the
        units of evidence behind it: at most one, plus the causal evidence (anything but reply and
        same-actor links) past the first unit, up to `mass_cap` in all. A look-alike standing
        alone, or one whose neighbourhood is about something else, gets little; a situation with
        a relevant, linked history gets the most."""
        reached = [res[0][1:] for res in expansions]
        flat = np.concatenate(reached) if reached else np.zeros(0, np.int64)
        qsim = np.maximum(np.asarray(g.vectors(flat), np.float64) @ np.asarray(q, np.float64), 0.0) if len(flat) else flat
        out = np.zeros(len(expansions))
        at = 0
        for i, res in enumerate(expansions):
            ev = res[1][1:].astype(np.float64)
            mass = ev.sum()
            if mass > 0:
                units = min(mass, 1.0)
                if mass_cap > 1.0:
                    units += min(max(float(ev[_causal(res)].sum()) - 1.0, 0.0), mass_cap - 1.0)
                out[i] = float(ev @ qsim[at:at + len(ev)]) / mass * units
            at += len(ev)
        return out

    def _chain(self, g, q, rows, sims, lex, filters: Filters, direction: int, budget: int, fill: bool,
               dates: Sequence[tuple[int, int]] = ()):
        p = self.params
        if len(rows) == 0:
            return [], None
        t_lo, t_hi = filters.time_bounds()
        slack = int(p.window_slack_days * DAY)
        t_lo = max(t_lo - slack, np.iinfo(np.int64).min // 2) if filters.time_from is not None else t_lo
        exp_hi = np.iinfo(np.int64).max if filters.as_of is None else filters.as_of
        vecs = np.asarray(g.vectors(rows), np.float64)
        times = np.asarray(g.times(rows), np.int64)
        specific = self._specific_similarity(vecs, q)
        recency = self._recency(times, filters, direction)
        named = self._named_dates(times, dates, p.date_scale_days)
        # possible chain heads: the hits that look most like the asked situation, less a penalty
        # growing with how close a later hit is (an older version of it). The penalty only
        # lowers a score, so it is computed for a pool of twice the candidates, not all hits.
        base = specific + p.recency * recency + p.lexical * lex + p.date_weight * named
        pool = np.lexsort((np.arange(len(rows)), -base))[:2 * p.candidates]
        later = times[None, :] > times[pool][:, None]
        later_cos = np.where(later, vecs[pool] @ vecs.T, -1.0).max(axis=1)
        prior = base[pool] - p.older_version_penalty * np.maximum(later_cos - p.older_version_cos, 0.0)
        top = np.lexsort((pool, -prior))[:p.candidates]
        chosen = pool[top]
        expansions = g.expand(rows[chosen], np.ones(len(chosen), np.float32), direction, t_lo, exp_hi, filters.as_of)
        relevance = self._chain_relevance(g, q, expansions, p.relevance_mass)
        cands = [(float(pr + p.relevance * rel), i, res)
                 for i, pr, rel, res in zip(chosen.tolist(), prior[top].tolist(), relevance.tolist(), expansions)]
        cands.sort(key=lambda c: (-c[0], c[1]))
        confidence = self._confidence(cands[0][2], p.chain_evidence)
        temperature = p.pool_temperature + (p.wide_temperature - p.pool_temperature) * (1.0 - confidence)
        # evidence per event, pooled over candidates: each candidate's chain counts with a
        # softmax weight of its score, so a close runner-up's chain still gets budget and
        # events several candidates reach are reinforced
        best = cands[0][0]
        weights = [math.exp((c[0] - best) / temperature) if temperature > 0 else float(rank == 0)
                   for rank, c in enumerate(cands)]
        if p.inherit:
            weights = self._inherit(rows, cands, weights)
        keep = [j for j, w in enumerate(weights) if w >= 1e-3]
        parts = [cands[j][2] for j in keep]
        r_all = np.concatenate([res[0] for res in parts]).astype(np.int64)
        contrib = np.concatenate([weights[j] * cands[j][2][1].astype(np.float64) for j in keep])
        uniq, inv = np.unique(r_all, return_inverse=True)
        value = np.bincount(inv.ravel(), weights=contrib)   # summed in (rank, position) order
        # why: the first largest contribution of each row (parent, via kind, via id, rank)
        first = np.lexsort((np.arange(len(r_all)), -contrib, inv.ravel()))
        first = first[np.r_[True, np.diff(inv.ravel()[first]) != 0]] if len(first) else first
        par = np.concatenate([res[2] for res in parts])[first].tolist()
        vk = np.concatenate([res[3] for res in parts])[first].tolist()
        vid = np.concatenate([res[4] for res in parts])[first].tolist()
        rank = np.repeat(np.asarray(keep), [len(res[0]) for res in parts])[first].tolist()
        best_first = np.lexsort((uniq, -value))
        ranked = [(int(uniq[x]), float(value[x]), (par[x], vk[x], vid[x], rank[x])) for x in best_first.tolist()]
        # the evidence ends with the chains, unless they explain little of the question: direct
        # hits (fused relevance order) then take the unexplained share of the budget left (all of
        # it with `fill`)
        share = 1.0 if fill else 1.0 - confidence
        hits = []
        if share > 0:
            by_base = np.lexsort((np.arange(len(rows)), -base))
            hits = [(int(rows[x]), float(base[x]), "direct hit") for x in by_base.tolist()]
        return self._pack(g, ranked, budget, hits, share), None

    @staticmethod
    def _confidence(expansion, unit: float) -> float:
        """How much causal structure a chain has, in [0, 1]: the path scores of the events its
        expansion reaches (the head excluded) through anything but a reply or same-actor link,
        over `unit`. Those say what came next in a conversation or a sitting, not why."""
        if unit <= 0:
            return 1.0
        scores = np.asarray(expansion[1][1:], np.float64)
        return float(min(1.0, float(scores[_causal(expansion)].sum()) / unit))

    @staticmethod
    def _inherit(rows, cands, weights) -> list[float]:
        """A candidate whose chain reaches another candidate (in the asked direction) explains it:
        it weighs at least that candidate's weight times the path score between them. "What led
        to X" then also gets the events of X's story that lie beyond the best-matching one."""
        cand_rows = np.array([int(rows[i]) for _, i, _ in cands], np.int64)
        sorter = np.argsort(cand_rows, kind="stable")
        w_in = np.asarray(weights, np.float64)
        out = w_in.copy()
        for j, (_, _, res) in enumerate(cands):
            reached, sc = res[0][1:], res[1][1:].astype(np.float64)
            pos = np.minimum(np.searchsorted(cand_rows, reached, sorter=sorter), len(cand_rows) - 1)
            hit = cand_rows[sorter[pos]] == reached
            if hit.any():
                out[j] = max(out[j], float((w_in[sorter[pos[hit]]] * sc[hit]).max()))
        return out.tolist()

    @staticmethod
    def _pack(g, order, budget: int, pad=(), pad_share: float = 0.0):
        """The events of `order` (best first) that fit the budget, each once; then those of `pad`
        that fit in `pad_share` of the budget `order` left. Token counts of `pad` are asked in
        growing chunks: a remote graph fetches only what the budget can take."""
        picked, seen = [], set()
        used = Engine._take(g, order, budget, 0, picked, seen)
        if pad_share > 0 and pad:
            limit, lo, step = used + int(pad_share * (budget - used)), 0, 64
            while lo < len(pad) and used < limit:
                used = Engine._take(g, pad[lo:lo + step], limit, used, picked, seen)
                lo, step = lo + step, 2 * step
        return picked

    @staticmethod
    def _take(g, items, limit: int, used: int, picked: list, seen: set) -> int:
        """Append the items that fit under `limit` tokens to `picked`; the tokens now used."""
        tokens = np.asarray(g.tokens([r for r, _, _ in items]), np.int64).tolist() if items else []
        for (r, v, reason), tok in zip(items, tokens):
            if r in seen or used + tok > limit:
                continue
            seen.add(r)
            used += tok
            picked.append((r, v, reason))
        return used

    # -- current / as_of -----------------------------------------------------------------------
    def _current(self, g, rows, sims, lex, filters: Filters, budget: int, fill: bool):
        if len(rows) == 0:
            return [], None
        as_of = filters.as_of
        sims = sims + self.params.lexical * lex
        row_list = rows.tolist()
        slots = np.asarray(g.slot_entity(row_list), np.int64).tolist()
        no_slot = [r for r, s in zip(row_list, slots) if s < 0]
        latest = dict(zip(no_slot, self._latest(g, no_slot, as_of)))
        groups: dict[tuple, list[float]] = {}
        first_row: dict[tuple, int] = {}
        for r, s, slot in zip(row_list, sims.tolist(), slots):
            key = ("slot", slot) if slot >= 0 else ("version", latest[r])
            groups.setdefault(key, []).append(s)
            first_row.setdefault(key, r)
        best = max(groups, key=lambda k: (sum(sorted(groups[k], reverse=True)[:2]), -first_row[k]))
        current = self._latest(g, [self._start(g, row_list, slots, best, first_row[best])], as_of)[0]
        # the answer: the current fact first, then its earlier versions (flagged), then context
        chain = self._versions(g, current, as_of)
        # the answer: the current fact, its earlier versions (flagged), and what else mentions
        # its slot among the hits; further look-alikes only with `fill`
        slot_of = dict(zip(row_list, slots))
        mine = slot_of.get(first_row[best], -1)
        related = [r for r in row_list if mine >= 0 and slot_of[r] == mine]
        order = ([(current, 1.0, "current version")] + [(r, 0.5, "earlier version") for r in chain]
                 + [(r, 0.5, "mentions the same fact") for r in related])
        if fill:
            order += [(r, 0.25, "vector similarity") for r in row_list]
        return self._pack(g, order, budget), current

    @staticmethod
    def _start(g, rows: list[int], slots: list[int], key: tuple, first: int) -> int:
        """Where to follow the winning group to its current version. For a slot group, its best
        hit that is a version of the fact (superseded, or superseding another): a hit that only
        mentions the fact (a discussion) is never its current version. Else the group's best hit."""
        if key[0] != "slot":
            return first
        members = [r for r, s in zip(rows, slots) if s == key[1]]
        by = np.asarray(g.supersession(members)[0]).tolist()
        earlier = g.superseded(members)
        for r, b, e in zip(members, by, earlier):
            if b >= 0 or e:
                return r
        return first

    @staticmethod
    def _latest(g, rows: list[int], as_of: Optional[int]) -> list[int]:
        """Follow superseded_by from each row to the version current now (or at as_of); all rows
        advance together, one batched lookup per step."""
        cur = list(rows)
        seen = [{r} for r in rows]
        active = list(range(len(rows)))
        walk = list(rows)   # may pass through versions the asker cannot see; lands only on visible ones
        while active:
            by, at = g.supersession([walk[i] for i in active])
            nxt = []
            for i, b, a in zip(active, np.asarray(by).tolist(), np.asarray(at).tolist()):
                if b < 0 or (as_of is not None and a > as_of) or b in seen[i]:
                    continue
                seen[i].add(b)
                walk[i] = b
                nxt.append(i)
            if nxt:
                vis = np.asarray(g.visible([walk[i] for i in nxt])).tolist()
                for i, v in zip(nxt, vis):
                    if v:
                        cur[i] = walk[i]
            active = nxt
        return cur

    @staticmethod
    def _versions(g, current: int, as_of: Optional[int]) -> list[int]:
        """Earlier versions that `current` (transitively) superseded, latest first."""
        out, frontier = [], [current]
        while frontier:
            prev = [int(r) for lst in g.superseded(frontier) for r in lst]
            at = np.asarray(g.supersession(prev)[1]).tolist() if prev else []
            prev = [r for r, a in zip(prev, at) if (as_of is None or a <= as_of) and r not in out and r != current]
            out += prev
            frontier = prev
        if not out:
            return out
        t = dict(zip(out, np.asarray(g.times(out)).tolist()))
        return sorted(out, key=lambda r: -int(t[r]))

    # -- why-paths -----------------------------------------------------------------------------
    def _explain(self, g, picked):
        """Turn deferred why-paths (parent, via_kind, via_id, rank) into text, in two batched
        lookups (parent ids, entity names) for the picked rows only."""
        deferred = [(j, why) for j, (_, _, why) in enumerate(picked) if isinstance(why, tuple)]
        parents = sorted({why[0] for _, why in deferred if why[1] != 0})
        pid = dict(zip(parents, g.ids(parents))) if parents else {}
        ents = sorted({(why[0], why[2]) for _, why in deferred if why[1] not in (0, 1)})
        ename = dict(zip([e for _, e in ents], g.entity_names(ents))) if ents else {}
        out = list(picked)
        for j, (par, vk, vid, rank) in deferred:
            if vk == 0:
                text = "seed: similar to the question" if rank == 0 else "seed (alternative head)"
            elif vk == 1:
                text = f"{LINK_TYPES[vid]} link with {pid[par]}"
            else:
                text = f"shares {ename[vid]} with {pid[par]}"
            out[j] = (picked[j][0], picked[j][1], text)
        return out
