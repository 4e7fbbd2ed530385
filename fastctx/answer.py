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
          explains the best match continues its story), if that path is not too weak for the
          chain's confidence. The answer is the pooled chains, best evidence first (ties by
          similarity to the question): one scale for chain events and direct hits (a hit is its own
          one-event chain). How broad it is follows how much causal structure the best chain
          has (its evidence mass through anything but replies and same-actor links, relative
          to `chain_evidence`): a causal question gets its chain and ends there; a question
          whose evidence is several unrelated hits (a fact asked of a conversation) pools
          candidates more widely and lets direct hits, by fused relevance, take the
          unexplained share of the budget.
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

import math
import time
from typing import Optional, Sequence

import numpy as np

from .corpus import LINK_TYPES
from .derive import query_words
from .errors import InvalidQueryError
from .filters import Filters
from .graph import DAY, LocalGraph
from .current import answer_current
from .packing import pack
from .parallel import cuts, run_parts
from .params import AnswerParams
from .results import Answer  # noqa: F401 - re-exported (shards import it from here)
from .timeexpr import date_intervals
from .view import View

DIRECTIONS = {"back": 1, "forward": 2, "both": 3}
QUERY_TYPES = ("chain", "current", "as_of")
LATER_COS_MIN_PART = 32   # pool rows per part of the older-version test (each scans the later hits)


# links that say what came next in a conversation or a person's sitting, or what else touched
# the same files, not why
_NOT_CAUSAL = np.zeros(len(LINK_TYPES), bool)
_NOT_CAUSAL[[LINK_TYPES.index(t) for t in ("reply", "same_actor", "co_mention")]] = True


def _causal(expansion) -> np.ndarray:
    """Which events an expansion reached (its head excluded) through anything but those links."""
    return _causal_flags(expansion[3][1:], expansion[4][1:])


def _causal_flags(via_kind: np.ndarray, via_id: np.ndarray) -> np.ndarray:
    """Per reached event (how it was reached: `via_kind`, `via_id`), whether that was causal."""
    out = np.ones(len(via_kind), bool)
    link = np.flatnonzero(via_kind == 1)      # reached by a link: via_id is its type code
    out[link] = ~_NOT_CAUSAL[via_id[link]]
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
        self._later_cos(np.zeros((1, 1), np.float32), np.zeros(1, np.int64), np.zeros(1, np.int64))

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
        nv = np.asarray(g.vectors(new), np.float64)
        return (np.concatenate([rows, new]), np.concatenate([sims, nv @ np.asarray(q, np.float64)]),
                np.concatenate([lex, np.zeros(len(new))]), np.vstack([vecs, nv]))

    @staticmethod
    def _specific_similarity(vecs: np.ndarray, q: np.ndarray, mean: Optional[np.ndarray] = None) -> np.ndarray:
        """Cosine of each hit to the query after removing what the hits share (`mean`, by default
        their mean): the words every hit has (the service, the topic) stop counting, and what is
        specific to the query's situation decides. Plain similarity when there are too few hits."""
        q = np.asarray(q, np.float64)
        if len(vecs) < 8:
            return vecs @ q
        if mean is None:
            mean = vecs.mean(axis=0)
        # (v - m).(q - m) and |v - m| expanded, so no centred copy of the hits is made
        qc = q - mean
        v_m = vecs @ mean
        sq = np.maximum(np.einsum("ij,ij->i", vecs, vecs) - 2.0 * v_m + float(mean @ mean), 0.0)
        return (vecs @ qc - float(mean @ qc)) / np.maximum(np.sqrt(sq) * np.linalg.norm(qc), 1e-12)

    @staticmethod
    def _kind_affinity(specific: np.ndarray, kinds: np.ndarray, prior_hits: int) -> np.ndarray:
        """Per hit, how far its kind lies below the kind the question is most about (0 for that
        kind, negative for the others). A kind's score is the query-specific similarity of its
        hits less the hits' mean, summed and divided by its hit count plus `prior_hits` (a kind
        seen a few times is taken as average), in standard deviations of that similarity. All
        zero when every hit is one kind."""
        uniq, inv = np.unique(kinds, return_inverse=True)
        sigma = float(specific.std()) if len(uniq) > 1 else 0.0
        if sigma <= 1e-12:
            return np.zeros(len(kinds))
        inv = inv.ravel()
        counts = np.bincount(inv, minlength=len(uniq))
        summed = np.bincount(inv, weights=specific - specific.mean(), minlength=len(uniq))
        score = summed / (counts + prior_hits) / sigma
        return (score - score.max())[inv]

    def _asked_kind(self, g, rows, specific, cands, confidence: float):
        """The candidates re-ranked by the kind of event the question asks about ("the current
        incident"), weighted by the best chain's `confidence`: look-alikes of another kind stop
        winning the head. Returns (candidates, their kind-free scores by hit), or (candidates,
        None) when the kinds of the hits tell nothing or no chain is causal."""
        p = self.params
        if confidence <= 0:
            return cands, None
        prior = self._kind_affinity(specific, np.asarray(g.kinds(rows)), p.kind_prior_hits)
        if not prior.any():
            return cands, None
        shift = p.kind_weight * confidence
        free = {i: s for s, i, _ in cands}
        return sorted(((s + shift * float(prior[i]), i, res) for s, i, res in cands), key=lambda c: (-c[0], c[1])), free

    def _kind_history(self, weights, cands, free, times, direction: int, temperature: float) -> list[float]:
        """The asked kind picks the head, not what led to it: a candidate on the asked side of the
        head (earlier for "what led here", later for "what followed", either for both), which
        may be the head's own history of another kind, keeps at least `kind_history` of the
        pooling weight its kind-free score gives it against the head's."""
        head = cands[0][1]
        t_head, f_head, keep = times[head], free[head], self.params.kind_history
        out = []
        for (_, i, _), w in zip(cands, weights):
            side = (times[i] < t_head if direction == DIRECTIONS["back"] else
                    times[i] > t_head if direction == DIRECTIONS["forward"] else i != head)
            out.append(max(w, keep * min(1.0, math.exp((free[i] - f_head) / temperature))) if side else w)
        return out

    def _focus(self, g, q, rows, value, confidence: float, mean, dates) -> np.ndarray:
        """The order of pooled chain events: their evidence `value`, scaled when the best chain is
        short of full confidence by exp(question_focus * (1 - confidence) * aboutness),
        aboutness being an event's query-specific similarity plus its closeness to a date the
        question names. Where replies, a shared session or look-alike heads are all the chains
        have, what the question asks about decides among their events; a chain of causal evidence
        keeps its own order."""
        p = self.params
        if confidence >= 1.0:
            return value
        about = self._question_similarity(g, q, rows, mean)
        if dates:
            about = about + p.date_weight * self._named_dates(np.asarray(g.times(rows), np.int64), dates,
                                                              p.date_scale_days)
        return value * np.exp(p.question_focus * (1.0 - confidence) * about)

    @staticmethod
    def _tie_break(g, q, rows, order, mean) -> np.ndarray:
        """Among events of equal evidence (one link type, one hop from one head), what the
        question asks about comes first: their query-specific similarity; 0 for the others."""
        out = np.zeros(len(rows))
        _, inv, counts = np.unique(order, return_inverse=True, return_counts=True)
        tied = np.flatnonzero(counts[inv.ravel()] > 1)
        if len(tied):
            out[tied] = Engine._question_similarity(g, q, rows[tied], mean)
        return out

    @staticmethod
    def _question_similarity(g, q: np.ndarray, rows: np.ndarray, mean: Optional[np.ndarray]) -> np.ndarray:
        """Query-specific similarity of any rows (reached events too) relative to the hits' `mean`;
        plain similarity where there were too few hits to have one."""
        vecs = np.asarray(g.vectors(rows), np.float64)
        if mean is None:
            return vecs @ np.asarray(q, np.float64)
        return Engine._specific_similarity(vecs, q, mean)

    @staticmethod
    def _later_cos(vecs: np.ndarray, times: np.ndarray, pool: np.ndarray, threads: int = 1) -> np.ndarray:
        """Per hit of `pool`, its highest cosine to a later hit (-1 if none is later), over the
        vectors in place (`kernels.scan.later_max_dot`), the pool cut into up to `threads` parts
        run at once. Single precision: it is a threshold test (`older_version_cos`)."""
        from .kernels.scan import later_max_dot
        times = np.ascontiguousarray(times, np.int64)
        vecs, by_time = np.ascontiguousarray(vecs, np.float32), np.argsort(times, kind="stable")
        pool = np.ascontiguousarray(pool, np.int64)
        out = run_parts([(later_max_dot, (vecs, times, by_time, pool[a:b]))
                         for a, b in cuts(len(pool), threads, LATER_COS_MIN_PART)])
        return out[0] if len(out) == 1 else np.concatenate(out)

    @staticmethod
    def _chain_relevance(g, q: np.ndarray, expansions, mass_cap: float = 1.0) -> np.ndarray:
        """Per candidate, how much its chain is about the query: the evidence-weighted mean query
        similarity of the events its expansion reaches (the candidate itself excluded), times the
        units of evidence behind it: at most one, plus the causal evidence (anything but reply and
        same-actor links) past the first unit, up to `mass_cap` in all. A look-alike standing
        alone, or one whose neighbourhood is about something else, gets little; a situation with
        a relevant, linked history gets the most."""
        n = len(expansions)
        lens = [max(len(res[0]) - 1, 0) for res in expansions]
        if not n or not sum(lens):
            return np.zeros(n)
        flat = np.concatenate([res[0][1:] for res in expansions])
        # candidates reach many of the same rows: each row's vector is read once
        uniq, inv = np.unique(flat, return_inverse=True)
        qsim = np.maximum(np.asarray(g.vectors(uniq), np.float64) @ np.asarray(q, np.float64), 0.0)[inv.ravel()]
        ev = np.concatenate([res[1][1:] for res in expansions]).astype(np.float64)
        owner = np.repeat(np.arange(n), lens)
        mass = np.bincount(owner, weights=ev, minlength=n)
        units = np.minimum(mass, 1.0)
        if mass_cap > 1.0:
            causal = _causal_flags(np.concatenate([res[3][1:] for res in expansions]),
                                   np.concatenate([res[4][1:] for res in expansions]))
            causal_mass = np.bincount(owner, weights=np.where(causal, ev, 0.0), minlength=n)
            units += np.clip(causal_mass - 1.0, 0.0, mass_cap - 1.0)
        weighted = np.bincount(owner, weights=ev * qsim, minlength=n)
        return np.where(mass > 0, weighted / np.maximum(mass, 1e-300) * units, 0.0)

    def _chain(self, g, q, rows, sims, lex, filters: Filters, direction: int, budget: int, fill: bool,
               dates: Sequence[tuple[int, int]] = ()):
        p = self.params
        if len(rows) == 0:
            return [], None
        t_lo, t_hi = filters.time_bounds()
        slack = int(p.window_slack_days * DAY)
        t_lo = max(t_lo - slack, np.iinfo(np.int64).min // 2) if filters.time_from is not None else t_lo
        exp_hi = np.iinfo(np.int64).max if filters.as_of is None else filters.as_of
        v32 = np.asarray(g.vectors(rows), np.float32)
        vecs = v32.astype(np.float64)
        mean = vecs.mean(axis=0) if len(rows) >= 8 else None
        # a second search only when the first may have missed many rows: it returned all it was
        # asked, out of several times as many allowed rows (or an unknown number)
        if mean is not None and p.specific_seeds > 0 and len(rows) >= p.seed_k and self._many_allowed(g, filters):
            rows, sims, lex, vecs = self._specific_seeds(g, q, mean, rows, sims, lex, vecs, filters)
            v32 = vecs.astype(np.float32)
        times = np.asarray(g.times(rows), np.int64)
        specific = self._specific_similarity(vecs, q, mean)
        recency = self._recency(times, filters, direction)
        named = self._named_dates(times, dates, p.date_scale_days)
        # possible chain heads: the hits that look most like the asked situation, less a penalty
        # growing with how close a later hit is (an older version of it). The penalty only
        # lowers a score, so it is computed for a pool of twice the candidates, not all hits.
        base = specific + p.recency * recency + p.lexical * lex + p.date_weight * named
        pool = np.lexsort((np.arange(len(rows)), -base))[:2 * p.candidates]
        later_cos = self._later_cos(v32, times, pool, p.threads)
        prior = base[pool] - p.older_version_penalty * np.maximum(later_cos - p.older_version_cos, 0.0)
        top = np.lexsort((pool, -prior))[:p.candidates]
        chosen = pool[top]
        expansions = g.expand(rows[chosen], np.ones(len(chosen), np.float32), direction, t_lo, exp_hi, filters.as_of)
        relevance = self._chain_relevance(g, q, expansions, p.relevance_mass)
        cands = [(float(pr + p.relevance * rel), i, res)
                 for i, pr, rel, res in zip(chosen.tolist(), prior[top].tolist(), relevance.tolist(), expansions)]
        cands.sort(key=lambda c: (-c[0], c[1]))
        confidence = self._confidence(cands[0][2], p.chain_evidence, self._context_reached(g, cands[0][2]))
        free = None
        if p.kind_weight > 0 and mean is not None:
            head = cands[0][1]
            cands, free = self._asked_kind(g, rows, specific, cands, confidence)
            if cands[0][1] != head:
                confidence = self._confidence(cands[0][2], p.chain_evidence, self._context_reached(g, cands[0][2]))
        temperature = p.pool_temperature + (p.wide_temperature - p.pool_temperature) * (1.0 - confidence)
        # evidence per event, pooled over candidates: each candidate's chain counts with a
        # softmax weight of its score, so a close runner-up's chain still gets budget and
        # events several candidates reach are reinforced
        best = cands[0][0]
        weights = [math.exp((c[0] - best) / temperature) if temperature > 0 else float(rank == 0)
                   for rank, c in enumerate(cands)]
        if free is not None and temperature > 0:
            weights = self._kind_history(weights, cands, free, times, direction, temperature)
        # below full confidence, candidates and direct hits alike count towards their support in
        # time: a look-alike from another year is likelier another story than the best one's
        in_time = np.ones(len(rows))
        if p.time_coherence_days > 0 and confidence < 1.0:
            in_time = confidence + (1.0 - confidence) * self._time_coherence(
                times, times[[c[1] for c in cands]], weights, p.time_coherence_days * DAY)
            weights = [w * float(in_time[c[1]]) for w, c in zip(weights, cands)]
        if p.inherit:
            weights = self._inherit(rows, cands, weights, p.inherit_min_path * confidence)
        # the best chain is always evidence: its weight is 1 only up to rounding once scaled by
        # its support in time, and a cut of 1 must leave it, not an empty answer
        keep = [j for j, w in enumerate(weights) if j == 0 or w >= p.pool_min_weight]
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
        # below full confidence the order, not the reported evidence, also follows the question
        order = self._focus(g, q, uniq, value, confidence, mean, dates) if p.question_focus > 0 else value
        best_first = np.lexsort((uniq, -self._tie_break(g, q, uniq, order, mean), -order))
        ranked = [(int(uniq[x]), float(value[x]), (par[x], vk[x], vid[x], rank[x])) for x in best_first.tolist()]
        if p.team_k > 0 and mean is not None and confidence > 0:
            ranked = self._add_team(g, mean, cands[0][2], ranked, filters, direction, confidence)
        # the evidence ends with the chains, unless they explain little of the question: direct
        # hits (fused relevance order) then take the unexplained share of the budget left (all of
        # it with `fill`)
        share = 1.0 if fill else 1.0 - confidence
        hits = []
        if share > 0:
            # the candidates' pooling weight exp((base - best) / temperature) times the same support
            fused = base + temperature * np.log(np.maximum(in_time, 1e-12))
            by_fused = np.lexsort((np.arange(len(rows)), -fused))
            hits = [(int(rows[x]), float(fused[x]), "direct hit") for x in by_fused.tolist()]
        first = p.hits_first * (1.0 - confidence)
        return pack(g, ranked, budget, hits, share, first), None

    def _add_team(self, g, mean, best, ranked, filters: Filters, direction: int, confidence: float):
        """The best chain's people's other events that are most like the chain, added as weak
        evidence (`team_weight` times the confidence, below every stronger event): a story's
        steps are often worked by the same few people with no written link and no rare name in
        common. Like the chain means its evidence-weighted centroid (its first `team_members`
        events) relative to the hits' `mean`; a hit must be more like it than the mean is, not a
        near-copy of a chain event (`older_version_cos`: an older version), and on the asked
        side of the head. One search per person (the query's filters and the view, plus that
        person; all in one round on a cluster), the chain's most frequent people, at most
        `team_people`."""
        p = self.params
        members = np.asarray(best[0][:p.team_members], np.int64)
        w = np.asarray(best[1][:p.team_members], np.float64)
        mv = np.asarray(g.vectors(members), np.float64)
        c = (w @ mv) / w.sum() - mean
        norm = float(np.linalg.norm(c))
        if norm <= 1e-9:
            return ranked
        c /= norm
        prefixes, weight = tuple(p.team_prefixes), {}
        for e, we in zip(g.events(members.tolist(), w.tolist(), filters.as_of), w.tolist()):
            for name in (e.entities if e is not None else ()):
                if name.startswith(prefixes):
                    weight[name] = weight.get(name, 0.0) + we
        people = sorted(weight, key=lambda nm: (-weight[nm], nm))[:p.team_people]
        if not people:
            return ranked
        found: set[int] = set()
        for rows_p, _ in g.seeds_per_entity(c.astype(np.float32), 4 * p.team_k, filters, people):
            found.update(np.asarray(rows_p).tolist())
        rows = np.array(sorted(found - set(np.asarray(best[0]).tolist())), np.int64)
        if not len(rows):
            return ranked
        t_head = int(g.times([int(members[0])])[0])
        t = np.asarray(g.times(rows), np.int64)
        rv = np.asarray(g.vectors(rows), np.float64)
        like = rv @ c - float(mean @ c)
        near_copy = (rv @ mv.T > p.older_version_cos).any(axis=1)
        side = (t < t_head if direction == DIRECTIONS["back"] else
                t > t_head if direction == DIRECTIONS["forward"] else t != t_head)
        ok = np.flatnonzero(~near_copy & side & (like > 0))
        pick = rows[ok[np.lexsort((rows[ok], -like[ok]))][:p.team_k]].tolist()
        v = p.team_weight * confidence
        value = {r: val for r, val, _ in ranked}
        add = [(r, v, "same people, like the chain") for r in pick if value.get(r, 0.0) < v]
        if not add:
            return ranked
        added = {r for r, _, _ in add}
        rest = [x for x in ranked if x[0] not in added]
        at = next((j for j, x in enumerate(rest) if x[1] < v), len(rest))
        return rest[:at] + add + rest[at:]

    def _context_reached(self, g, expansion) -> np.ndarray:
        """Which events an expansion reached (its head excluded) through a shared context entity
        (`AnswerParams.context_prefixes`: a session, a thread). Names are looked up once per
        entity, through the graph (a coordinator asks the owning shards, and caches them)."""
        vk, vid, par = expansion[3][1:], expansion[4][1:], expansion[2][1:]
        out = np.zeros(len(vk), bool)
        prefixes = tuple(self.params.context_prefixes)
        ent = np.flatnonzero(vk == 2)
        if not prefixes or not len(ent):
            return out
        # no lookup when what the links alone reach already makes the confidence whole
        links_only = _causal(expansion) & (vk != 2)
        unit = self.params.chain_evidence
        if unit <= 0 or float(np.asarray(expansion[1][1:], np.float64)[links_only].sum()) >= unit:
            return out
        uniq, first = np.unique(vid[ent], return_index=True)
        names = g.entity_names(list(zip(par[ent][first].tolist(), uniq.tolist())))
        context = uniq[[str(nm).startswith(prefixes) for nm in names]]
        out[ent] = np.isin(vid[ent], context)
        return out

    @staticmethod
    def _confidence(expansion, unit: float, context: Optional[np.ndarray] = None) -> float:
        """How much causal structure a chain has, in [0, 1]: the path scores of the events its
        expansion reaches (the head excluded) through anything but a reply or same-actor link or
        a shared context entity (`context`, per reached event), over `unit`. Those say what came
        next in a conversation or a sitting, or where it was said, not why."""
        if unit <= 0:
            return 1.0
        scores = np.asarray(expansion[1][1:], np.float64)
        causal = _causal(expansion)
        if context is not None:
            causal &= ~context
        return float(min(1.0, float(scores[causal].sum()) / unit))

    @staticmethod
    def _time_coherence(at: np.ndarray, times: np.ndarray, weights, scale_s: float) -> np.ndarray:
        """Per time in `at`, the pooled weight of the candidates (`times`, `weights`, the best
        first) close to it (kernel 1 / (1 + dt / `scale_s`)) relative to the best candidate's own,
        at most 1. Without causal links to tell a story's events apart, events that agree in time
        with the best candidate are likelier one piece of work than a lone look-alike from another
        year; the best candidate, and any event as well supported, keep their weight."""
        t = np.asarray(times, np.float64)
        w = np.asarray(weights, np.float64)
        kernel = 1.0 / (1.0 + np.abs(np.asarray(at, np.float64)[:, None] - t[None, :]) / float(scale_s))
        best = float((1.0 / (1.0 + np.abs(t[0] - t) / float(scale_s))) @ w)
        return np.minimum(kernel @ w / best, 1.0)

    @staticmethod
    def _inherit(rows, cands, weights, min_path=0.0) -> list[float]:
        """A candidate whose chain reaches another candidate (in the asked direction) explains it:
        it weighs at least that candidate's weight times the path score between them, if that
        path scores at least `min_path`. "What led to X" then also gets the events of X's story
        that lie beyond the best-matching one."""
        cand_rows = np.array([int(rows[i]) for _, i, _ in cands], np.int64)
        sorter = np.argsort(cand_rows, kind="stable")
        w_in = np.asarray(weights, np.float64)
        out = w_in.copy()
        reached = [res[0][1:] for _, _, res in cands]
        if not cands or not sum(len(r) for r in reached):
            return out.tolist()
        flat = np.concatenate(reached)
        sc = np.concatenate([res[1][1:] for _, _, res in cands]).astype(np.float64)
        owner = np.repeat(np.arange(len(cands)), [len(r) for r in reached])
        pos = np.minimum(np.searchsorted(cand_rows, flat, sorter=sorter), len(cand_rows) - 1)
        hit = (cand_rows[sorter[pos]] == flat) & (sc >= min_path)
        np.maximum.at(out, owner[hit], w_in[sorter[pos[hit]]] * sc[hit])
        return out.tolist()

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
