"""`current` / `as_of` answers: the top hits are grouped by their slot entity (e.g.
`decision:...`) or, lacking one, by their explicit supersession chain; the best group (sum of its
two best similarities) is followed along the supersession overlay to the version that is current
now, or at `as_of` (events and supersessions after as_of are invisible). The walk along
supersessions may pass a version the asker cannot see but lands only on visible ones. Reads the
graph through `graph.GraphAccess`, as the chain engine does (answer.py)."""
from __future__ import annotations

from typing import Optional

import numpy as np

from .filters import Filters
from .packing import pack


def answer_current(g, rows, sims, lex, filters: Filters, budget: int, fill: bool, lexical: float):
    """A current / as_of answer (the module doc): (picked, the current row or None)."""
    if len(rows) == 0:
        return [], None
    as_of = filters.as_of
    sims = sims + lexical * lex
    rows = np.asarray(rows, np.int64)
    slots = np.asarray(g.slot_entity(rows.tolist()), np.int64)
    # one group per slot entity, and per latest version for hits without one (key -2 - row)
    key = slots.copy()
    loose = slots < 0
    key[loose] = -2 - np.asarray(latest(g, rows[loose].tolist(), as_of), np.int64)
    uniq, first, inv = np.unique(key, return_index=True, return_inverse=True)
    inv = inv.ravel()
    # a group's score: the sum of its two best similarities; ties to the lowest first row
    by_group = np.lexsort((-sims, inv))
    starts = np.flatnonzero(np.r_[True, np.diff(inv[by_group]) != 0])
    rank = np.arange(len(by_group)) - np.repeat(starts, np.diff(np.r_[starts, len(by_group)]))
    top2 = by_group[rank < 2]
    score = np.bincount(inv[top2], weights=sims[top2], minlength=len(uniq))
    b = int(np.lexsort((rows[first], -score))[0])
    best = ("slot", int(uniq[b])) if uniq[b] >= 0 else ("version", int(-2 - uniq[b]))
    first_row = int(rows[first[b]])
    row_list = rows.tolist()
    current = latest(g, [start_version(g, rows, slots, best, first_row)], as_of)[0]
    # the answer: the current fact, its earlier versions (flagged), and what else mentions
    # its slot among the hits; further look-alikes only with `fill`
    chain = versions(g, current, as_of)
    mine = int(slots[first[b]])
    related = rows[slots == mine].tolist() if mine >= 0 else []
    order = ([(current, 1.0, "current version")] + [(r, 0.5, "earlier version") for r in chain]
             + [(r, 0.5, "mentions the same fact") for r in related])
    if fill:
        order += [(r, 0.25, "vector similarity") for r in row_list]
    return pack(g, order, budget), current

def start_version(g, rows: np.ndarray, slots: np.ndarray, key: tuple, first: int) -> int:
    """Where to follow the winning group to its current version. For a slot group, its best
    hit that is a version of the fact (superseded, or superseding another): a hit that only
    mentions the fact (a discussion) is never its current version. Else the group's best hit."""
    if key[0] != "slot":
        return first
    members = rows[slots == key[1]].tolist()
    by = np.asarray(g.supersession(members)[0]).tolist()
    earlier = g.superseded(members)
    for r, b, e in zip(members, by, earlier):
        if b >= 0 or e:
            return r
    return first

def latest(g, rows: list[int], as_of: Optional[int]) -> list[int]:
    """Follow superseded_by from each row to the version current now (or at as_of); all rows
    advance together, one batched lookup per step."""
    cur = list(rows)
    if not cur:
        return cur
    walk = list(rows)   # may pass through versions the asker cannot see; lands only on visible ones
    # the first step for every row at once: most hits were never superseded
    by, at = (np.asarray(x, np.int64) for x in g.supersession(cur))
    moves = (by >= 0) & (by != np.asarray(cur, np.int64))
    if as_of is not None:
        moves &= at <= as_of
    active = np.flatnonzero(moves).tolist()
    seen = {i: {cur[i], int(by[i])} for i in active}
    for i in active:
        walk[i] = int(by[i])
    while active:
        vis = np.asarray(g.visible([walk[i] for i in active])).tolist()
        for i, v in zip(active, vis):
            if v:
                cur[i] = walk[i]
        by, at = g.supersession([walk[i] for i in active])
        nxt = []
        for i, b, a in zip(active, np.asarray(by).tolist(), np.asarray(at).tolist()):
            if b < 0 or (as_of is not None and a > as_of) or b in seen[i]:
                continue
            seen[i].add(b)
            walk[i] = b
            nxt.append(i)
        active = nxt
    return cur

def versions(g, current: int, as_of: Optional[int]) -> list[int]:
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
