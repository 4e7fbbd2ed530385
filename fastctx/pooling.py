"""How the chains of a chain question's candidate heads become one ranked list of evidence.

Each candidate's chain counts with a pooling weight: a softmax of its score (`softmax_weights`),
kept for a chain that reaches the head whoever worked it (`same_story`), kept for the head's own
history of another kind (`kind_history`), scaled by its support in time
below full confidence (`time_coherence`), and raised to what a candidate whose chain reaches it
passes on (`inherit`). `pooled_evidence` sums the weighted path scores per event and keeps the
first largest contribution as its why-path; `same_people` keeps the weak ones only where their
people recur; `focus` orders them, by the question too below full confidence, and `tie_break`
among equal ones; `add_team` adds the best chain's people's other events as weak evidence.

Reads the event graph only through `graph.GraphAccess` (one process and a coordinator alike).
"""
from __future__ import annotations

import math

import numpy as np

from .filters import Filters
from .heads import BACK, FORWARD, named_dates, question_similarity


def softmax_weights(cands, temperature: float) -> list[float]:
    """Each candidate's pooling weight exp((score - best) / temperature): a close runner-up's
    chain still gets budget, and events several candidates reach are reinforced. The winner
    alone at temperature 0."""
    best = cands[0][0]
    return [math.exp((c[0] - best) / temperature) if temperature > 0 else float(rank == 0)
            for rank, c in enumerate(cands)]


def same_story(weights, cands, rows, people, temperature: float) -> list[float]:
    """Who worked a chain tells stories apart (heads.actor_coherence), not the steps of one: a
    candidate whose chain reaches the head is the head's own story, and keeps at least the
    pooling weight its score without that term (`people`, by hit) gives it against the head's
    (at most 1). A later step by other people (the incident after a discussion) stays pooled."""
    head = cands[0][1]
    head_row, best = int(rows[head]), cands[0][0] - people.get(head, 0.0)
    out = list(weights)
    for j, (s, i, res) in enumerate(cands[1:], 1):
        if np.any(np.asarray(res[0][1:]) == head_row):
            out[j] = max(out[j], min(1.0, math.exp((s - people.get(i, 0.0) - best) / temperature)))
    return out


def kind_history(weights, cands, free, times, direction: int, temperature: float, keep: float) -> list[float]:
    """The asked kind picks the head, not what led to it: a candidate on the asked side of the
    head (earlier for "what led here", later for "what followed", either for both), which
    may be the head's own history of another kind, keeps at least `keep` of the pooling weight
    its kind-free score (`free`, by hit) gives it against the head's."""
    head = cands[0][1]
    t_head, f_head = times[head], free[head]
    out = []
    for (_, i, _), w in zip(cands, weights):
        side = (times[i] < t_head if direction == BACK else
                times[i] > t_head if direction == FORWARD else i != head)
        out.append(max(w, keep * min(1.0, math.exp((free[i] - f_head) / temperature))) if side else w)
    return out


def time_coherence(at: np.ndarray, times: np.ndarray, weights, scale_s: float) -> np.ndarray:
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


def inherit(rows, cands, weights, min_path: float = 0.0) -> list[float]:
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


def pooled_evidence(cands, weights, min_weight: float):
    """The evidence per event, pooled over the candidates weighing at least `min_weight` (the
    best always: its weight is 1 only up to rounding once scaled by its support in time, and a
    cut of 1 must leave it, not an empty answer). Returns the events (sorted rows), their summed
    weighted path scores, and per event its first largest contribution as a deferred why-path:
    (parent, via kind, via id, candidate rank)."""
    keep = [j for j, w in enumerate(weights) if j == 0 or w >= min_weight]
    parts = [cands[j][2] for j in keep]
    r_all = np.concatenate([res[0] for res in parts]).astype(np.int64)
    contrib = np.concatenate([weights[j] * cands[j][2][1].astype(np.float64) for j in keep])
    uniq, inv = np.unique(r_all, return_inverse=True)
    inv = inv.ravel()
    value = np.bincount(inv, weights=contrib)   # summed in (rank, position) order
    first = np.lexsort((np.arange(len(r_all)), -contrib, inv))
    first = first[np.r_[True, np.diff(inv[first]) != 0]] if len(first) else first
    par = np.concatenate([res[2] for res in parts])[first].tolist()
    vk = np.concatenate([res[3] for res in parts])[first].tolist()
    vid = np.concatenate([res[4] for res in parts])[first].tolist()
    rank = np.repeat(np.asarray(keep), [len(res[0]) for res in parts])[first].tolist()
    return uniq, value, list(zip(par, vk, vid, rank))


def same_people(g, rows, value, floor: float) -> np.ndarray:
    """Which pooled events to keep: those with at least `floor` times the best evidence, and
    weaker ones only where an actor they name (a person, user, author or speaker) is named by
    another pooled event too. A story's weak steps are still the work of people seen elsewhere
    in its evidence; a weak event by nobody else there is mostly a runner-up's look-alike
    neighbourhood. Where no pooled event names an actor (an index without people), nothing
    is dropped."""
    keep = value >= floor * float(value.max()) if len(value) else np.ones(0, bool)
    if keep.all():
        return keep
    ptr, ids, _ = g.actors(rows)
    ptr, ids = np.asarray(ptr, np.int64), np.asarray(ids, np.int64)
    if not len(ids):
        return np.ones(len(value), bool)
    owner = np.repeat(np.arange(len(rows)), ptr[1:] - ptr[:-1])
    _, inv, counts = np.unique(ids, return_inverse=True, return_counts=True)
    keep[owner[counts[inv.ravel()] > 1]] = True
    return keep


def focus(g, q, rows, value, confidence: float, mean, dates, params) -> np.ndarray:
    """The order of pooled chain events: their evidence `value`, scaled when the best chain is
    short of full confidence by exp(question_focus * (1 - confidence) * aboutness),
    aboutness being an event's query-specific similarity plus its closeness to a date the
    question names. Where replies, a shared session or look-alike heads are all the chains
    have, what the question asks about decides among their events; a chain of causal evidence
    keeps its own order."""
    if confidence >= 1.0:
        return value
    about = question_similarity(g, q, rows, mean)
    if dates:
        about = about + params.date_weight * named_dates(np.asarray(g.times(rows), np.int64), dates,
                                                         params.date_scale_days)
    return value * np.exp(params.question_focus * (1.0 - confidence) * about)


def tie_break(g, q, rows, order, mean) -> np.ndarray:
    """Among events of equal evidence (one link type, one hop from one head), what the
    question asks about comes first: their query-specific similarity; 0 for the others."""
    out = np.zeros(len(rows))
    _, inv, counts = np.unique(order, return_inverse=True, return_counts=True)
    tied = np.flatnonzero(counts[inv.ravel()] > 1)
    if len(tied):
        out[tied] = question_similarity(g, q, rows[tied], mean)
    return out


def add_team(g, params, mean, best, ranked, filters: Filters, direction: int, confidence: float):
    """The best chain's people's other events that are most like the chain, added as weak
    evidence (`team_weight` times the confidence, below every stronger event): a story's
    steps are often worked by the same few people with no written link and no rare name in
    common. Like the chain means its evidence-weighted centroid (its first `team_members`
    events) relative to the hits' `mean`; a hit must be more like it than the mean is, not a
    near-copy of a chain event (`older_version_cos`: an older version), and on the asked
    side of the head. One search per person (the query's filters and the view, plus that
    person; all in one round on a cluster), the chain's most frequent people, at most
    `team_people`."""
    p = params
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
    side = (t < t_head if direction == BACK else t > t_head if direction == FORWARD else t != t_head)
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
