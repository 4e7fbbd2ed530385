"""Causal-chain answers: seeds -> graph expansion -> rerank -> token-budgeted timeline.

chain   : which of the top seed hits is the situation the query is about? Each candidate is
          expanded over the event graph (explicit links, rare shared entities) in the asked
          direction. Its score: similarity, plus its place in the hits' time span (asking "what
          led here" anchors at the latest matching situation), plus how much of the other hits
          its chain reaches (a real chain is coherent; a look-alike usually stands alone), minus
          a penalty when a later near-duplicate exists (an older version of the same thing).
          The winner's chain fills the budget first, best evidence first; the rest goes to the
          next candidates' chains and then to plain seed hits.
current : the top hits are grouped by their slot entity (e.g. `decision:...`) or, lacking
as_of     one, by their explicit supersession chain; the best group (sum of its two best
          similarities) is followed along the supersession overlay to the version that is
          current now, or at `as_of` (events and supersessions after as_of are invisible).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np

from .corpus import LINK_TYPES
from .errors import InvalidQueryError
from .filters import Filters
from .kernels.expand import expand_best_first_batch
from .types import Event

DIRECTIONS = {"back": 1, "forward": 2, "both": 3}
QUERY_TYPES = ("chain", "current", "as_of")
DAY = 86_400


@dataclass(frozen=True)
class AnswerParams:
    """Knobs of the causal engine. Defaults are measured on the orgmem yardstick (see docs)."""
    seed_k: int = 64                 # seed hits considered
    candidates: int = 20             # top hits expanded as possible chain heads
    link_weights: tuple[tuple[str, float], ...] = (
        ("reply", 0.7), ("references", 0.85), ("fixes", 0.9), ("follow_up", 0.9),
        ("reverts", 0.8), ("backport_of", 0.8), ("supersedes", 0.8))
    entity_weight: float = 0.8       # weight of sharing an entity mentioned by 2 events ...
    entity_max_df: int = 16          # ... falling (log) to 0 at this many events: hubs are no evidence
    entity_max_share: float = 0.02   # ... or at this share of the shard's events, if that is fewer
    time_scale_days: float = 120.0   # entity edges decay as 1 / (1 + |dt| / scale)
    hub_postings: int = 4096         # postings longer than this are scanned only ...
    hub_window_days: float = 30.0    # ... this close in time to the node
    max_per_entity: int = 64         # candidates examined per (node, entity)
    max_hops: int = 6
    max_results: int = 256           # events reached per expansion
    max_edge_visits: int = 20_000    # work cap per expansion
    min_score: float = 0.02
    coherence: float = 0.1           # weight of the other hits a candidate's chain reaches
    recency: float = 0.3             # weight of a candidate's place in the hits' time span
    duplicate_cos: float = 0.85      # a later hit this similar marks a candidate as an older version
    duplicate_penalty: float = 0.05  # subtracted from such a candidate's score
    pool_temperature: float = 0.02   # softmax temperature pooling candidates' chains (0: winner only)
    window_slack_days: float = 0.0   # expansion may leave the seed time window by this much


@dataclass
class Answer:
    query_type: str
    events: list[Event]
    current: Optional[Event] = None
    seeds: list[Event] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    budget_tokens: int = 0

    @property
    def tokens(self) -> int:
        return sum(e.tokens for e in self.events)

    def headline(self) -> str:
        s = f"{len(self.events)} events, {self.tokens}/{self.budget_tokens} tokens"
        if self.current is not None:
            s += f"; current: {self.current.id} ({self.current.date})"
        return s

    def to_dict(self) -> dict:
        from dataclasses import asdict
        return {"type": self.query_type, "current": self.current.id if self.current else None,
                "events": [asdict(e) for e in self.events], "timings_ms": self.timings}


class Engine:
    """Runs causal queries over one shard of an `Index` (the embedded, one-shard case)."""

    def __init__(self, index, shard_no: int = 0, params: AnswerParams = AnswerParams()):
        self.index, self.shard_no, self.params = index, shard_no, params
        self.shard = index.shards[shard_no]
        p, g = params, self.shard.graph
        self.graph = g
        weights = dict(p.link_weights)
        self.link_weight = np.array([weights.get(t, 0.0) for t in LINK_TYPES], np.float32)
        df = g.entity_df.astype(np.float64)
        max_df = max(4.0, min(float(p.entity_max_df), p.entity_max_share * g.n))
        rarity = np.log(max_df / np.maximum(df, 1)) / math.log(max_df / 2)
        self.ent_weight = (p.entity_weight * np.clip(rarity, 0, 1)).astype(np.float32)
        self.ent_weight[df < 2] = 0  # an entity only one event mentions connects nothing
        self.superseded_by, self.superseded_at = self.shard.supersession
        self._sup_rows = np.argsort(self.superseded_by, kind="stable")  # reverse overlay: who did r supersede
        self._sup_by = self.superseded_by[self._sup_rows]
        self.allowed = np.ones(self.shard.n, np.uint8)
        self.slot = (self.shard.entity_flags & 1).astype(bool)

    def warm_up(self) -> None:
        """Compile the kernel for this shard's exact array types (memory maps are read-only
        arrays to Numba, a different signature from in-memory ones)."""
        self.expand(np.zeros(1, np.int64), np.ones(1, np.float32), 1, 0, 0, self.allowed)
        self.expand(np.zeros(1, np.int64), np.ones(1, np.float32), 1, 0, 0, self.allowed_mask(0))

    # -- kernel call ---------------------------------------------------------------------------
    def expand(self, seeds: np.ndarray, seed_scores: np.ndarray, direction: int, t_lo: int, t_hi: int,
               allowed: np.ndarray) -> list[tuple[np.ndarray, ...]]:
        """One independent expansion per seed; a list of (rows, scores, parent, via_kind, via_id,
        hops) per seed, each best first. One kernel call for all of them."""
        p, g = self.params, self.graph
        seeds = np.asarray(seeds, np.int64)
        res_ptr, *out = expand_best_first_batch(
            np.arange(len(seeds) + 1, dtype=np.int64), seeds, seed_scores.astype(np.float32),
            g.times, allowed,
            g.out_ptr, g.out_dst, g.out_type, g.in_ptr, g.in_src, g.in_type, self.link_weight,
            g.ev_ptr, g.ev_ent, g.ent_ptr, g.ent_rows, self.ent_weight,
            direction, t_lo, t_hi, p.max_hops, p.max_results, p.max_edge_visits,
            p.hub_postings, int(p.hub_window_days * DAY), p.max_per_entity, p.min_score,
            float(p.time_scale_days * DAY))
        return [tuple(a[res_ptr[i]:res_ptr[i + 1]] for a in out) for i in range(len(seeds))]

    def allowed_mask(self, as_of: Optional[int]) -> np.ndarray:
        if as_of is None:
            return self.allowed
        return (self.graph.times <= as_of).astype(np.uint8)

    # -- entry point ---------------------------------------------------------------------------
    def run(self, q: np.ndarray, query_type: str, filters: Filters, direction: str, budget: int) -> Answer:
        if query_type not in QUERY_TYPES:
            raise InvalidQueryError(f"type must be one of {QUERY_TYPES}, got {query_type!r}")
        if direction not in DIRECTIONS:
            raise InvalidQueryError(f"direction must be one of {tuple(DIRECTIONS)}, got {direction!r}")
        if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget <= 0:
            raise InvalidQueryError(f"budget_tokens must be a positive integer, got {budget!r}")
        t0 = time.perf_counter()
        hits = self.index.search(q, k=self.params.seed_k, filters=filters)
        n_hits = int(hits.counts[0])
        rows = hits.rows[0, :n_hits][hits.shards[0, :n_hits] == self.shard_no]
        sims = hits.scores[0, :n_hits][hits.shards[0, :n_hits] == self.shard_no].astype(np.float64)
        t1 = time.perf_counter()
        if query_type == "chain":
            picked, current = self._chain(q, rows, sims, filters, DIRECTIONS[direction], budget)
        else:
            picked, current = self._current(rows, sims, filters, budget)
        t2 = time.perf_counter()
        events = [self._event(r, s, why, filters.as_of) for r, s, why in picked]
        events.sort(key=lambda e: (e.time, e.id))
        cur = self._event(current, 0.0, None, filters.as_of) if current is not None else None
        if cur is not None:
            cur.score = next((e.score for e in events if e.row == cur.row), 0.0)
        t3 = time.perf_counter()
        return Answer(query_type, events, cur, [], {"seeds_ms": 1e3 * (t1 - t0), "expand_ms": 1e3 * (t2 - t1),
                                                    "fetch_ms": 1e3 * (t3 - t2)}, int(budget))

    # -- chain ---------------------------------------------------------------------------------
    def _chain(self, q, rows, sims, filters: Filters, direction: int, budget: int):
        p, g = self.params, self.graph
        if len(rows) == 0:
            return [], None
        t_lo, t_hi = filters.time_bounds()
        slack = int(p.window_slack_days * DAY)
        t_lo = max(t_lo - slack, np.iinfo(np.int64).min // 2) if filters.time_from is not None else t_lo
        exp_hi = np.iinfo(np.int64).max if filters.as_of is None else filters.as_of
        allowed = self.allowed_mask(filters.as_of)
        vecs = self._vectors(rows)
        # older versions: a later hit that is a near-duplicate
        dup = (vecs @ vecs.T) >= p.duplicate_cos
        later = g.times[rows][None, :] > g.times[rows][:, None]
        is_old = (dup & later).any(axis=1)
        # recency inside the hits' own time span: "what led here" is anchored at the latest
        # matching situation (back), "what followed" at the earliest (forward)
        t_hits = g.times[rows].astype(np.float64)
        span = max(float(t_hits.max() - t_hits.min()), 1.0)
        recency = (t_hits - t_hits.min()) / span
        if direction == DIRECTIONS["forward"]:
            recency = 1.0 - recency
        elif direction == DIRECTIONS["both"]:
            recency = np.zeros_like(recency)
        hit_sim = dict(zip(rows.tolist(), sims.tolist()))
        cands = []
        n_cand = min(p.candidates, len(rows))
        expansions = self.expand(rows[:n_cand], np.ones(n_cand, np.float32), direction, t_lo, exp_hi, allowed)
        for i, res in enumerate(expansions):
            # coherence: how much of the other hits this candidate's chain reaches, and how strongly
            reach = sum(s * hit_sim.get(r, 0.0) for r, s in zip(res[0][1:].tolist(), res[1][1:].tolist()))
            score = (sims[i] + p.recency * recency[i] + p.coherence * reach
                     - p.duplicate_penalty * float(is_old[i]))
            cands.append((score, i, res))
        cands.sort(key=lambda c: (-c[0], c[1]))
        # evidence per event, pooled over candidates: each candidate's chain counts with a
        # softmax weight of its score, so a close runner-up's chain still gets budget and
        # events several candidates reach are reinforced
        best = cands[0][0]
        value: dict[int, float] = {}
        why: dict[int, tuple[float, str]] = {}
        for rank, (cscore, i, res) in enumerate(cands):
            w = math.exp((cscore - best) / p.pool_temperature) if p.pool_temperature > 0 else float(rank == 0)
            if w < 1e-3:
                continue
            for r, s, par, vk, vid in zip(res[0].tolist(), res[1].tolist(), res[2].tolist(),
                                          res[3].tolist(), res[4].tolist()):
                contrib = w * s
                value[r] = value.get(r, 0.0) + contrib
                if contrib > why.get(r, (-1.0, ""))[0]:
                    why[r] = (contrib, self._why(par, vk, vid, rank))
        tokens = self.shard.tokens
        picked, used, seen = [], 0, set()
        ranked = sorted(value.items(), key=lambda kv: (-kv[1], kv[0]))
        fill = [(r, s, "vector similarity") for r, s in zip(rows.tolist(), sims.tolist())]
        for r, v, reason in [(r, v, why[r][1]) for r, v in ranked] + fill:
            tok = int(tokens[r])
            if r in seen or used + tok > budget:
                continue
            seen.add(r)
            used += tok
            picked.append((r, v, reason))
        return picked, None

    # -- current / as_of -----------------------------------------------------------------------
    def _current(self, rows, sims, filters: Filters, budget: int):
        g = self.graph
        if len(rows) == 0:
            return [], None
        as_of = filters.as_of
        groups: dict[tuple, list[float]] = {}
        first_row: dict[tuple, int] = {}
        for r, s in zip(rows.tolist(), sims.tolist()):
            key = self._group_key(r, as_of)
            groups.setdefault(key, []).append(s)
            first_row.setdefault(key, r)
        best = max(groups, key=lambda k: (sum(sorted(groups[k], reverse=True)[:2]), -first_row[k]))
        current = self._latest(first_row[best], as_of)
        # the answer: the current fact first, then its earlier versions (flagged), then context
        picked, used, seen = [], 0, set()
        chain = self._versions(current, as_of)
        for r in [current] + chain + rows.tolist():
            tok = int(self.shard.tokens[r])
            if r in seen or used + tok > budget:
                continue
            seen.add(r)
            used += tok
            why = "current version" if r == current else ("earlier version" if r in chain else "vector similarity")
            picked.append((r, 1.0 if r == current else 0.5, why))
        return picked, current

    def _group_key(self, row: int, as_of: Optional[int]) -> tuple:
        g = self.graph
        ents = g.ev_ent[g.ev_ptr[row]:g.ev_ptr[row + 1]]
        slots = ents[self.slot[ents]]
        if len(slots):
            return ("slot", int(slots.min()))
        return ("version", self._latest(row, as_of))

    def _latest(self, row: int, as_of: Optional[int]) -> int:
        """Follow superseded_by to the version current now (or at as_of)."""
        seen = {row}
        while True:
            nxt, at = int(self.superseded_by[row]), int(self.superseded_at[row])
            if nxt < 0 or (as_of is not None and at > as_of) or nxt in seen:
                return row
            seen.add(nxt)
            row = nxt

    def _versions(self, current: int, as_of: Optional[int]) -> list[int]:
        """Earlier versions that `current` (transitively) superseded, latest first."""
        at = self.superseded_at
        out, frontier = [], [current]
        while frontier:
            prev = [int(r) for f in frontier
                    for r in self._sup_rows[np.searchsorted(self._sup_by, f):np.searchsorted(self._sup_by, f, "right")]]
            prev = [r for r in prev if (as_of is None or at[r] <= as_of) and r not in out and r != current]
            out += prev
            frontier = prev
        return sorted(out, key=lambda r: -int(self.graph.times[r]))

    # -- helpers -------------------------------------------------------------------------------
    def _vectors(self, rows: np.ndarray) -> np.ndarray:
        segs = self.shard.segments
        if len(segs) == 1:
            return np.asarray(segs[0].vectors[np.asarray(rows, np.int64)])
        out = np.empty((len(rows), self.shard.dim), np.float32)
        for j, r in enumerate(np.asarray(rows).tolist()):
            seg, local = self.shard.locate(r)
            out[j] = seg.vectors[local]
        return out

    def _why(self, parent: int, via_kind: int, via_id: int, rank: int) -> str:
        if via_kind == 0:
            return "seed: similar to the question" if rank == 0 else "seed (alternative head)"
        pid = self._id(parent)
        if via_kind == 1:
            return f"{LINK_TYPES[via_id]} link with {pid}"
        return f"shares {self.shard.entity_name(int(via_id))} with {pid}"

    def _id(self, row: int) -> str:
        seg, local = self.shard.locate(int(row))
        return seg.ids[local]

    def _event(self, row: int, score: float, why: Optional[str], as_of: Optional[int]) -> Event:
        e = self.index.event(self.shard_no, int(row), float(score))
        e.why = why
        by, at = int(self.superseded_by[row]), int(self.superseded_at[row])
        if by >= 0 and (as_of is None or at <= as_of):
            e.superseded_by, e.superseded_at = self._id(by), at
        return e
