"""Which seed hit is the situation a chain question is about, and how much story is behind it.

The signals a possible chain head is scored by (answer.py puts them together):

* `specific_similarity`: cosine to the query after removing what the hits share (their mean), so
  the words every hit has (the service, the topic) stop counting;
* `recency`: its place in the query's time window ("what led here" anchors at the latest
  matching situation), and `named_dates`: its closeness to a date the question names;
* `later_cos`: its highest cosine to a later hit, the mark of an older version of the same thing;
* `kind_affinity`: how far its kind lies below the kind the question is most about;
* `chain_relevance`: how much the events its expansion reaches are about the query,
  `actor_coherence`: how much of that chain its own people worked, and
  `confidence`: how much causal structure that chain has (replies, same-actor links and shared
  sessions say what came next or where it was said, not why).

Every function reads the event graph only through `graph.GraphAccess`, so a coordinator scores
heads exactly as one process does.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .corpus import LINK_TYPES
from .csr import ranges
from .filters import Filters
from .graph import DAY
from .parallel import cuts, run_parts

BACK, FORWARD, BOTH = 1, 2, 3      # the expansion kernel's direction codes
DIRECTIONS = {"back": BACK, "forward": FORWARD, "both": BOTH}
LATER_COS_MIN_PART = 32   # pool rows per part of the older-version test (each scans the later hits)

# links that say what came next in a conversation or a person's sitting, or what else touched
# the same files, not why
_NOT_CAUSAL = np.zeros(len(LINK_TYPES), bool)
_NOT_CAUSAL[[LINK_TYPES.index(t) for t in ("reply", "same_actor", "co_mention")]] = True


def causal(expansion) -> np.ndarray:
    """Which events an expansion reached (its head excluded) through anything but those links."""
    return causal_flags(expansion[3][1:], expansion[4][1:])


def causal_flags(via_kind: np.ndarray, via_id: np.ndarray) -> np.ndarray:
    """Per reached event (how it was reached: `via_kind`, `via_id`), whether that was causal."""
    out = np.ones(len(via_kind), bool)
    link = np.flatnonzero(via_kind == 1)      # reached by a link: via_id is its type code
    out[link] = ~_NOT_CAUSAL[via_id[link]]
    return out


def recency(times: np.ndarray, filters: Filters, direction: int) -> np.ndarray:
    """Place of each hit inside the asked time window: a question scoped to a window is about
    the situation at its end, so "what led here" is anchored at the latest matching event
    (back), "what followed" at the earliest (forward). No window, no such prior."""
    t = times.astype(np.float64)
    if (filters.time_from is None and filters.time_to is None) or direction == BOTH:
        return np.zeros_like(t)
    w_lo = float(filters.time_from) if filters.time_from is not None else t.min()
    w_hi = float(filters.time_to) if filters.time_to is not None else t.max()
    place = np.clip((t - w_lo) / max(w_hi - w_lo, 1.0), 0.0, 1.0)
    return 1.0 - place if direction == FORWARD else place


def named_dates(times: np.ndarray, dates: Sequence[tuple[int, int]], scale_days: float) -> np.ndarray:
    """How close each hit is to a date the question names: 1 inside a named interval, falling
    as 1 / (1 + days away / scale) outside it; 0 for every hit when no date is named."""
    if not dates or len(times) == 0:
        return np.zeros(len(times))
    t = times.astype(np.float64)
    away = np.min([np.maximum(np.maximum(lo - t, t - hi), 0.0) for lo, hi in dates], axis=0)
    return 1.0 / (1.0 + away / (scale_days * DAY))


def specific_similarity(vecs: np.ndarray, q: np.ndarray, mean: Optional[np.ndarray] = None) -> np.ndarray:
    """Cosine of each hit to the query after removing what the hits share (`mean`, by default
    their mean): the words every hit has (the service, the topic) stop counting, and what is
    specific to the query's situation decides. Plain similarity when there are too few hits.
    The products run in the vectors' own precision (no float64 copy of single-precision hits);
    the result is float64."""
    q = np.asarray(q, np.float64)
    dt = vecs.dtype if vecs.dtype in (np.float32, np.float64) else np.float64
    vecs = np.asarray(vecs, dt)
    if len(vecs) < 8:
        return (vecs @ q.astype(dt)).astype(np.float64)
    if mean is None:
        mean = vecs.mean(axis=0, dtype=np.float64)
    # (v - m).(q - m) and |v - m| expanded, so no centred copy of the hits is made
    qc = q - mean
    v_qc = (vecs @ qc.astype(dt)).astype(np.float64)
    v_m = (vecs @ mean.astype(dt)).astype(np.float64)
    v_v = np.einsum("ij,ij->i", vecs, vecs).astype(np.float64)
    sq = np.maximum(v_v - 2.0 * v_m + float(mean @ mean), 0.0)
    return (v_qc - float(mean @ qc)) / np.maximum(np.sqrt(sq) * np.linalg.norm(qc), 1e-12)


def question_similarity(g, q: np.ndarray, rows: np.ndarray, mean: Optional[np.ndarray]) -> np.ndarray:
    """Query-specific similarity of any rows (reached events too) relative to the hits' `mean`;
    plain similarity where there were too few hits to have one."""
    vecs = np.asarray(g.vectors(rows), np.float32)
    if mean is None:
        return (vecs @ np.asarray(q, np.float32)).astype(np.float64)
    return specific_similarity(vecs, q, mean)


def kind_affinity(specific: np.ndarray, kinds: np.ndarray, prior_hits: int) -> np.ndarray:
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


def later_cos(vecs: np.ndarray, times: np.ndarray, pool: np.ndarray, threads: int = 1) -> np.ndarray:
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


def chain_relevance(g, q: np.ndarray, expansions, mass_cap: float = 1.0) -> np.ndarray:
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
    qsim = (np.asarray(g.vectors(uniq), np.float32) @ np.asarray(q, np.float32)).astype(np.float64)
    qsim = np.maximum(qsim, 0.0)[inv.ravel()]
    ev = np.concatenate([res[1][1:] for res in expansions]).astype(np.float64)
    owner = np.repeat(np.arange(n), lens)
    mass = np.bincount(owner, weights=ev, minlength=n)
    units = np.minimum(mass, 1.0)
    if mass_cap > 1.0:
        is_causal = causal_flags(np.concatenate([res[3][1:] for res in expansions]),
                                 np.concatenate([res[4][1:] for res in expansions]))
        causal_mass = np.bincount(owner, weights=np.where(is_causal, ev, 0.0), minlength=n)
        units += np.clip(causal_mass - 1.0, 0.0, mass_cap - 1.0)
    weighted = np.bincount(owner, weights=ev * qsim, minlength=n)
    return np.where(mass > 0, weighted / np.maximum(mass, 1e-300) * units, 0.0)


def actor_coherence(g, expansions) -> np.ndarray:
    """Per candidate, how much of its chain its own people worked: the path scores of the events
    its expansion reaches (the candidate excluded) that share an actor (derive.FLAG_ACTOR: a
    person, user, author or speaker) with the candidate, each times how rarely that actor
    appears (1 - the share of all events that mention it; the rarest actor shared counts), up
    to one unit. A story's steps are mostly worked by the same few people; a look-alike by
    someone else reaches events of other people; sharing an actor on half of all events (a
    history's main author, a bot) is weak evidence. Actors are read once per row, through the
    graph (`GraphAccess.actors`)."""
    n = len(expansions)
    out = np.zeros(n)
    lens = [max(len(res[0]) - 1, 0) for res in expansions]
    if not n or not sum(lens):
        return out
    heads = np.array([int(res[0][0]) for res in expansions], np.int64)
    reached = np.concatenate([res[0][1:] for res in expansions]).astype(np.int64)
    scores = np.concatenate([res[1][1:] for res in expansions]).astype(np.float64)
    owner = np.repeat(np.arange(n), lens)
    uniq, inv = np.unique(np.concatenate([heads, reached]), return_inverse=True)
    inv = inv.ravel()
    ptr, ids, share = g.actors(uniq)
    ptr, ids, share = np.asarray(ptr, np.int64), np.asarray(ids, np.int64), np.asarray(share, np.float64)
    if not len(ids):
        return out
    # (candidate, actor) keys of each candidate's own actors, and of each reached event's
    h_cnt = ptr[inv[:n] + 1] - ptr[inv[:n]]
    r_cnt = ptr[inv[n:] + 1] - ptr[inv[n:]]
    base = int(ids.max()) + 1
    own = np.repeat(np.arange(n), h_cnt) * base + ids[ranges(ptr[inv[:n]], h_cnt)]
    entry = np.repeat(np.arange(len(reached)), r_cnt)
    at = ranges(ptr[inv[n:]], r_cnt)
    hit = np.isin(owner[entry] * base + ids[at], own)
    rarity = np.zeros(len(reached))
    np.maximum.at(rarity, entry[hit], 1.0 - np.clip(share[at[hit]], 0.0, 1.0))
    return np.minimum(np.bincount(owner, weights=rarity * scores, minlength=n), 1.0)


def context_reached(g, expansion, prefixes: tuple, unit: float) -> np.ndarray:
    """Which events an expansion reached (its head excluded) through a shared context entity
    (names starting with `prefixes`: a session, a thread). Names are looked up once per entity,
    through the graph (a coordinator asks the owning shards, and caches them); not at all when
    what the links alone reach already makes the confidence whole (`unit`)."""
    vk, vid, par = expansion[3][1:], expansion[4][1:], expansion[2][1:]
    out = np.zeros(len(vk), bool)
    ent = np.flatnonzero(vk == 2)
    if not prefixes or not len(ent):
        return out
    links_only = causal(expansion) & (vk != 2)
    if unit <= 0 or float(np.asarray(expansion[1][1:], np.float64)[links_only].sum()) >= unit:
        return out
    uniq, first = np.unique(vid[ent], return_index=True)
    names = g.entity_names(list(zip(par[ent][first].tolist(), uniq.tolist())))
    context = uniq[[str(nm).startswith(prefixes) for nm in names]]
    out[ent] = np.isin(vid[ent], context)
    return out


def widen_thin(g, seeds: np.ndarray, expansions: list, direction: int, t_lo: int, t_hi: int,
               as_of: Optional[int], below: float) -> list:
    """`expansions` (one per row of `seeds`, walked in one `direction`), those that gathered
    less than `below` evidence (the path scores of what they reached) walked again both ways in
    time within [t_lo, t_hi]: a chain's events lie before its head, but the relations between
    them need not run backwards hop by hop (the first design note shares a name with a later
    patch that the head never names). What the second walk reaches past its seed (later, for a
    back question) is left out of the chain; it may have carried the walk. One more expansion
    call for all thin seeds together, so a coordinator widens as one process does."""
    if below <= 0 or direction == BOTH:
        return expansions
    thin = [j for j, ex in enumerate(expansions) if float(np.asarray(ex[1][1:], np.float64).sum()) < below]
    if not thin:
        return expansions
    seeds = np.asarray(seeds, np.int64)[thin]
    wide = g.expand(seeds, np.ones(len(thin), np.float32), BOTH, t_lo, t_hi, as_of)
    lens = [len(ex[0]) for ex in wide]
    if not sum(lens):
        return expansions
    # the seeds' and every reached row's times in one read
    t = np.asarray(g.times(np.concatenate([seeds] + [np.asarray(ex[0], np.int64) for ex in wide])), np.int64)
    out = list(expansions)
    at = len(seeds)
    for j, t_seed, ex, n in zip(thin, t[:len(seeds)].tolist(), wide, lens):
        if n:       # nothing came back (a shard down): the first walk stands
            tj = t[at:at + n]
            keep = (tj <= t_seed) if direction == BACK else (tj >= t_seed)
            out[j] = tuple(np.asarray(a)[keep] for a in ex)
        at += n
    return out


def confidence(expansion, unit: float, context: Optional[np.ndarray] = None) -> float:
    """How much causal structure a chain has, in [0, 1]: the path scores of the events its
    expansion reaches (the head excluded) through anything but a reply or same-actor link or
    a shared context entity (`context`, per reached event), over `unit`. Those say what came
    next in a conversation or a sitting, or where it was said, not why."""
    if unit <= 0:
        return 1.0
    scores = np.asarray(expansion[1][1:], np.float64)
    is_causal = causal(expansion)
    if context is not None:
        is_causal &= ~context
    return float(min(1.0, float(scores[is_causal].sum()) / unit))
