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
          `candidates` (`many_candidates` where the hits are a small sample of many allowed
          rows) are expanded over the event graph (explicit links, rare shared entities
          and identifier terms) in the asked direction and gain the
          relevance of their chain (how much the events they reach are about the query: a
          look-alike usually stands alone or sits among unrelated events) and how much of that
          chain their own people worked (events sharing a person, user, author or speaker
          with them: a look-alike's neighbourhood is other people's work). Each candidate's
          chain counts with a softmax weight of its score; a candidate whose chain reaches
          another inherits that one's weight times the path between them (a later event that
          explains the best match continues its story), if that path is not too weak for the
          chain's confidence. The answer is the pooled chains, best evidence first (ties by
          similarity to the question): one scale for chain events and direct hits (a hit is its own
          one-event chain). Weak pooled evidence (below `people_floor` of the best) stays only
          where someone it names is named elsewhere in the pooled evidence. How broad the
          answer is follows how much causal structure the best chain has (its evidence mass
          through anything but replies and same-actor links, relative to `chain_evidence`): a
          causal question gets its chain and ends there; a question whose evidence is several
          unrelated hits (a fact asked of a conversation) pools candidates more widely and lets
          direct hits, by fused relevance, take the unexplained share of the budget.
          The best chain's people (its actors: `person:`, `author:`, ...) bring their other events
          that are most like the chain, on the asked side of its head, as weak evidence after
          every stronger event: a story's steps are often worked by the same few people with no
          written link and no rare name in common (`team_k`).
          `fill` pads the whole budget with direct hits.
current : the top hits are grouped by their slot entity (e.g. `decision:...`) or, lacking
as_of     one, by their explicit supersession chain; the best group (sum of its two best
          similarities) is followed along the supersession overlay to the version that is
          current now, or at `as_of` (events and supersessions after as_of are invisible):
          current.py.
budget  : both kinds of answer take their ranked events in order while they fit the token
          budget (packing.py).
view    : every stage sees the graph as the asker does (view.py): rows outside the query's
          scope or the asker's access are never seeds, never walked through, never returned,
          never current (the walk along supersessions may pass a hidden version but lands only
          on visible ones), never named as a superseder or in a why-path.

The engine reads the event graph only through the graph access protocol of graph.py
(`GraphAccess`): `LocalGraph` there for one local shard, the coordinator's `DistributedGraph` for
shard servers; the engine code is the same for both, so both give one answer.
"""
from __future__ import annotations

import time
from typing import Optional, Sequence

import numpy as np

from . import heads, pooling
from .corpus import LINK_TYPES
from .current import answer_current
from .derive import query_words
from .errors import InvalidQueryError
from .filters import Filters
from .graph import DAY, LocalGraph
from .heads import DIRECTIONS
from .packing import pack
from .params import AnswerParams
from .results import Answer  # noqa: F401 - re-exported (shards import it from here)
from .timeexpr import date_intervals
from .view import View

QUERY_TYPES = ("chain", "current", "as_of")


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
        heads.later_cos(np.zeros((1, 1), np.float32), np.zeros(1, np.int64), np.zeros(1, np.int64))

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
            picked, current = answer_current(g, rows, sims, lex, filters, budget, fill, self.params.lexical)
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
        match in [0, 1] relative to the best lexical score (0 without text), scaled down when
        more than `lexical_max_matches` rows match at least half as well as the best."""
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
        rel = lscores / lscores.max()
        matches = int(np.count_nonzero(rel >= 0.5))
        if 0 < self.params.lexical_max_matches < matches:
            rel = rel * (self.params.lexical_max_matches / matches)
        pos = dict(zip(lrows.tolist(), rel.tolist()))
        lex = np.array([pos.get(r, 0.0) for r in rows.tolist()])
        order = np.lexsort((rows, -(sims + self.params.lexical * lex)))
        return rows[order], sims[order], lex[order]

    def _many_allowed(self, g, filters: Filters) -> bool:
        p = self.params
        n = g.allowed_count(p.seed_k, filters) if hasattr(g, "allowed_count") else None
        return n is None or n >= p.specific_allowed_ratio * p.seed_k

    def _specific_seeds(self, g, q, mean, rows, sims, lex, vecs, filters: Filters):
        """Add the hits of a second search with the query less what the first hits share (their
        mean): among many look-alikes the asked event may rank low by plain similarity, yet high
        once the words every hit has stop counting (the head-choice score, `specific`)."""
        qc = np.asarray(q, np.float64) - mean
        norm = float(np.linalg.norm(qc))
        if norm <= 1e-9:
            return rows, sims, lex, vecs
        extra, _ = g.seeds((qc / norm).astype(np.float32), self.params.specific_seeds, filters)
        new = np.asarray(extra, np.int64)
        new = new[~np.isin(new, rows)]
        if len(new) == 0:
            return rows, sims, lex, vecs
        nv = np.asarray(g.vectors(new), np.float32)
        nsims = (nv @ np.asarray(q, np.float32)).astype(np.float64)
        return (np.concatenate([rows, new]), np.concatenate([sims, nsims]),
                np.concatenate([lex, np.zeros(len(new))]), np.vstack([vecs, nv]))

    # -- chain ---------------------------------------------------------------------------------
    def _chain(self, g, q, rows, sims, lex, filters: Filters, direction: int, budget: int, fill: bool,
               dates: Sequence[tuple[int, int]] = ()):
        """A chain answer (the module doc): its candidate heads scored and expanded, their chains
        pooled into ranked evidence, packed into the budget with direct hits where the chains
        explain little. Returns (picked, None)."""
        p = self.params
        if len(rows) == 0:
            return [], None
        t_lo, _ = filters.time_bounds()
        slack = int(p.window_slack_days * DAY)
        t_lo = max(t_lo - slack, np.iinfo(np.int64).min // 2) if filters.time_from is not None else t_lo
        t_hi = np.iinfo(np.int64).max if filters.as_of is None else filters.as_of
        # single precision as stored: a float64 copy of every hit's vector costs more than it buys
        vecs = np.asarray(g.vectors(rows), np.float32)
        mean = vecs.mean(axis=0, dtype=np.float64) if len(rows) >= 8 else None
        # the first search may have missed many rows: it returned all it was asked, out of several
        # times as many allowed rows (or an unknown number). Then a second, centred search, and a
        # wider pool of candidate heads
        many = mean is not None and len(rows) >= p.seed_k and self._many_allowed(g, filters)
        if many and p.specific_seeds > 0:
            rows, sims, lex, vecs = self._specific_seeds(g, q, mean, rows, sims, lex, vecs, filters)
        times = np.asarray(g.times(rows), np.int64)
        specific = heads.specific_similarity(vecs, q, mean)
        # what a hit is worth as a head before its chain is seen, and as a direct hit
        base = (specific + p.recency * heads.recency(times, filters, direction) + p.lexical * lex
                + p.date_weight * heads.named_dates(times, dates, p.date_scale_days))
        n_cands = p.many_candidates if many else p.candidates
        cands, people = self._candidates(g, q, rows, vecs, times, base, n_cands, direction, t_lo, t_hi,
                                         filters.as_of)
        confidence = self._confidence(g, cands[0][2])
        free = None
        if p.kind_weight > 0 and mean is not None:
            head = cands[0][1]
            cands, free = self._asked_kind(g, rows, specific, cands, confidence)
            if cands[0][1] != head:
                confidence = self._confidence(g, cands[0][2])
        temperature = p.pool_temperature + (p.wide_temperature - p.pool_temperature) * (1.0 - confidence)
        weights, in_time = self._pool_weights(rows, times, cands, free, people, confidence, temperature, direction)
        uniq, value, why = pooling.pooled_evidence(cands, weights, p.pool_min_weight)
        if p.people_floor > 0 and hasattr(g, "actors"):
            keep = pooling.same_people(g, uniq, value, p.people_floor)
            uniq, value, why = uniq[keep], value[keep], [w for w, k in zip(why, keep.tolist()) if k]
        # below full confidence the order, not the reported evidence, also follows the question
        order = pooling.focus(g, q, uniq, value, confidence, mean, dates, p) if p.question_focus > 0 else value
        best_first = np.lexsort((uniq, -pooling.tie_break(g, q, uniq, order, mean), -order))
        ranked = [(int(uniq[x]), float(value[x]), why[x]) for x in best_first.tolist()]
        if p.team_k > 0 and mean is not None and confidence > 0:
            ranked = pooling.add_team(g, p, mean, cands[0][2], ranked, filters, direction, confidence)
        # the evidence ends with the chains, unless they explain little of the question: direct
        # hits (fused relevance order) then take the unexplained share of the budget left (all of
        # it with `fill`), part of it before the chains (`hits_first`)
        share = 1.0 if fill else 1.0 - confidence
        hits = []
        if share > 0:
            # the candidates' pooling weight exp((base - best) / temperature) times the same support
            fused = base + temperature * np.log(np.maximum(in_time, 1e-12))
            by_fused = np.lexsort((np.arange(len(rows)), -fused))
            hits = [(int(rows[x]), float(fused[x]), "direct hit") for x in by_fused.tolist()]
        return pack(g, ranked, budget, hits, share, p.hits_first * (1.0 - confidence)), None

    def _candidates(self, g, q, rows, vecs, times, base, n_cands: int, direction: int, t_lo: int, t_hi: int,
                    as_of):
        """The possible chain heads, best first, as (score, hit, expansion): the `n_cands` hits
        with the best prior, `base` less a penalty growing with how close a later hit is (an
        older version of it), each expanded over the event graph in the asked direction and
        scored with its chain's relevance and how much of it the candidate's own people worked
        (also returned: that part of each score, by hit). The penalty only lowers a score, so it
        is computed for a pool of twice the candidates, not all hits."""
        p = self.params
        pool = np.lexsort((np.arange(len(rows)), -base))[:2 * n_cands]
        later = heads.later_cos(vecs, times, pool, p.threads)
        prior = base[pool] - p.older_version_penalty * np.maximum(later - p.older_version_cos, 0.0)
        top = np.lexsort((pool, -prior))[:n_cands]
        chosen = pool[top]
        expansions = g.expand(rows[chosen], np.ones(len(chosen), np.float32), direction, t_lo, t_hi, as_of)
        expansions = heads.widen_thin(g, rows[chosen], expansions, direction, t_lo, t_hi, as_of, p.widen_below)
        relevance = heads.chain_relevance(g, q, expansions, p.relevance_mass)
        # read after the relevance: a coordinator fetches the reached rows' actors with their vectors
        weigh = p.actor_coherence > 0 and hasattr(g, "actors")
        people = heads.actor_coherence(g, expansions) if weigh else np.zeros(len(chosen))
        cands = [(float(pr + p.relevance * rel + p.actor_coherence * own), i, res)
                 for i, pr, rel, own, res in zip(chosen.tolist(), prior[top].tolist(), relevance.tolist(),
                                                 people.tolist(), expansions)]
        cands.sort(key=lambda c: (-c[0], c[1]))
        return cands, {i: p.actor_coherence * own for i, own in zip(chosen.tolist(), people.tolist())}

    def _confidence(self, g, expansion) -> float:
        """How much causal structure a chain has (`heads.confidence`), events reached through a
        shared context entity (a session, a thread) counting as conversation structure."""
        p = self.params
        context = heads.context_reached(g, expansion, tuple(p.context_prefixes), p.chain_evidence)
        return heads.confidence(expansion, p.chain_evidence, context)

    def _asked_kind(self, g, rows, specific, cands, confidence: float):
        """The candidates re-ranked by the kind of event the question asks about ("the current
        incident"), weighted by the best chain's `confidence`: look-alikes of another kind stop
        winning the head. Returns (candidates, their kind-free scores by hit), or (candidates,
        None) when the kinds of the hits tell nothing or no chain is causal."""
        p = self.params
        if confidence <= 0:
            return cands, None
        prior = heads.kind_affinity(specific, np.asarray(g.kinds(rows)), p.kind_prior_hits)
        if not prior.any():
            return cands, None
        shift = p.kind_weight * confidence
        free = {i: s for s, i, _ in cands}
        return sorted(((s + shift * float(prior[i]), i, res) for s, i, res in cands), key=lambda c: (-c[0], c[1])), free

    def _pool_weights(self, rows, times, cands, free, people, confidence: float, temperature: float,
                      direction: int):
        """Each candidate's pooling weight (pooling.py), and each hit's support in time (1 for
        all at full confidence), which also ranks the direct hits."""
        p = self.params
        weights = pooling.softmax_weights(cands, temperature)
        if temperature > 0 and any(people.values()):
            weights = pooling.same_story(weights, cands, rows, people, temperature)
        if free is not None and temperature > 0:
            weights = pooling.kind_history(weights, cands, free, times, direction, temperature, p.kind_history)
        # below full confidence, candidates and direct hits alike count towards their support in
        # time: a look-alike from another year is likelier another story than the best one's
        in_time = np.ones(len(rows))
        if p.time_coherence_days > 0 and confidence < 1.0:
            in_time = confidence + (1.0 - confidence) * pooling.time_coherence(
                times, times[[c[1] for c in cands]], weights, p.time_coherence_days * DAY)
            weights = [w * float(in_time[c[1]]) for w, c in zip(weights, cands)]
        if p.inherit:
            weights = pooling.inherit(rows, cands, weights, p.inherit_min_path * confidence)
        return weights, in_time

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
