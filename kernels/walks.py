"""A shard's part of entity walks, for the sharded expansion (see fastctx/shards/service.py).

In the sharded layout an entity's postings are spread over the shards holding its events. For
each walk (node u at time t_u, entity e), a shard lists its own postings of e outwards from t_u,
each side nearest first, as the single-shard kernel would visit them; the coordinator merges
the shards' parts by (time, global row) and replays the kernel's walk. Each side stops at the
time window, the hub window, or after ``max_per_entity`` eligible entries (an entry is eligible
when it is not u itself and not after ``as_of``); ineligible entries are listed too, flagged,
because they still count as examined edges.

Postings of local entity ``le`` are ``[ent_ptr[le], ent_ptr[le + 1])`` of ``post_t`` (times,
ascending) and ``post_g`` (global rows, ascending within equal times).
"""
from __future__ import annotations

import numpy as np

from ._jit import INT64_MAX, njit
from .expand import link_time_ok


@njit
def _first_at_least(a, lo, hi, x):
    """First index in [lo, hi) with a[i] >= x (hi if none)."""
    while lo < hi:
        mid = (lo + hi) >> 1
        if a[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit
def _first_above(a, lo, hi, x):
    """First index in [lo, hi) with a[i] > x (hi if none)."""
    while lo < hi:
        mid = (lo + hi) >> 1
        if a[mid] <= x:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit
def walk_parts(walk_u, walk_t, walk_le, ent_ptr, post_t, post_g, ent_df, direction, max_per_entity,
               t_lo, t_hi, as_of, hub_window_s, hub_postings, post_ok):
    """Per walk w: entries ``[ptr[w], ptr[w + 1])`` of (rows, times, eligible, side), side 0 the
    earlier side (walking down), 1 the later one (walking up). ``walk_le[w] < 0``: the shard
    does not hold the entity (no entries). Pass ``as_of = INT64_MAX`` for none. ``post_ok`` (uint8
    per posting, or empty for all): 0 marks a posting the asker may not see (never eligible)."""
    n = walk_u.shape[0]
    all_ok = post_ok.shape[0] == 0
    ptr = np.zeros(n + 1, dtype=np.int64)
    cap = 16 + 4 * n
    rows = np.empty(cap, dtype=np.int64)
    times = np.empty(cap, dtype=np.int64)
    elig = np.empty(cap, dtype=np.bool_)
    side = np.empty(cap, dtype=np.int8)
    m = 0
    for w in range(n):
        le, u, t_u = walk_le[w], walk_u[w], walk_t[w]
        if le >= 0 and max_per_entity > 0:
            a, b = ent_ptr[le], ent_ptr[le + 1]
            lim = hub_window_s if ent_df[le] > hub_postings else INT64_MAX
            if direction == 1:
                lo, hi = _first_above(post_t, a, b, t_u) - 1, b
            elif direction == 2:
                lo, hi = a - 1, _first_at_least(post_t, a, b, t_u)
            else:
                x = _first_at_least(post_t, a, b, t_u)
                y = _first_above(post_t, a, b, t_u)
                p = _first_at_least(post_g, x, y, u)
                lo, hi = p - 1, p
            for s in range(2):
                i = lo if s == 0 else hi
                step = -1 if s == 0 else 1
                taken = 0
                while a <= i < b and taken < max_per_entity:
                    tx = post_t[i]
                    d = tx - t_u if tx >= t_u else t_u - tx
                    if tx < t_lo or tx > t_hi or d > lim:
                        break
                    v = post_g[i]
                    ok = v != u and tx <= as_of and (all_ok or post_ok[i] != 0)
                    if ok:
                        taken += 1
                    if m == cap:
                        cap *= 2
                        rows = _grown(rows, cap, m)
                        times = _grown(times, cap, m)
                        elig = _grown(elig, cap, m)
                        side = _grown(side, cap, m)
                    rows[m], times[m], elig[m], side[m] = v, tx, ok, s
                    m += 1
                    i += step
        ptr[w + 1] = m
    return ptr, rows[:m].copy(), times[:m].copy(), elig[:m].copy(), side[:m].copy()


@njit
def _grown(a, cap, m):
    b = np.empty(cap, dtype=a.dtype)
    b[:m] = a[:m]
    return b


@njit
def row_links(loc, grow, times, out_ptr, out_dst, out_type, out_time, out_shard, in_ptr, in_src, in_type,
              in_time, in_shard, link_weight, direction, t_lo, t_hi, as_of):
    """The owner shard's half of a row's link enumeration (kernels/expand.py `_scan_links`): per
    local row in ``loc``, its out-links (direction bit 1) then in-links (bit 2) in CSR order, the
    ones a walk may take (type weight > 0, not the row itself, target time not after ``as_of``
    and passing `link_time_ok`) with their 1-based visit positions, and ``total`` links
    examined. The link arrays are the partition sidecar's (cross-shard links included, with the
    other end's global row, time and shard). Returns (ptr, v, type, pos, time, shard, total)."""
    n = loc.shape[0]
    ptr = np.zeros(n + 1, dtype=np.int64)
    bound = 0
    for j in range(n):
        r = loc[j]
        if direction & 1:
            bound += out_ptr[r + 1] - out_ptr[r]
        if direction & 2:
            bound += in_ptr[r + 1] - in_ptr[r]
    vs = np.empty(bound, dtype=np.int64)
    ty = np.empty(bound, dtype=np.int8)
    ps = np.empty(bound, dtype=np.int64)
    tm = np.empty(bound, dtype=np.int64)
    sh = np.empty(bound, dtype=np.int32)
    total = np.zeros(n, dtype=np.int64)
    n_types = link_weight.shape[0]
    m = 0
    for j in range(n):
        r = loc[j]
        u, t_u = grow[r], times[r]
        pos = 0
        for side in range(2):
            if side == 0:
                if not direction & 1:
                    continue
                a, b = out_ptr[r], out_ptr[r + 1]
            else:
                if not direction & 2:
                    continue
                a, b = in_ptr[r], in_ptr[r + 1]
            for x in range(a, b):
                pos += 1
                t = np.int64(out_type[x] if side == 0 else in_type[x])
                if t < 0 or t >= n_types or not link_weight[t] > 0.0:
                    continue
                v = out_dst[x] if side == 0 else in_src[x]
                tv = out_time[x] if side == 0 else in_time[x]
                if v == u or tv > as_of or not link_time_ok(tv, t_u, t_lo, t_hi, direction):
                    continue
                vs[m], ty[m], ps[m], tm[m] = v, t, pos, tv
                sh[m] = out_shard[x] if side == 0 else in_shard[x]
                m += 1
        total[j] = pos
        ptr[j + 1] = m
    return ptr, vs[:m].copy(), ty[:m].copy(), ps[:m].copy(), tm[:m].copy(), sh[:m].copy(), total


@njit
def walkable_entities(loc, ev_ptr, ev_ent, ent_w, hold_ptr, hold, gent):
    """The entities an expansion walks from local rows ``loc``: each row's entities (``ev_ent``
    slice ``[ev_ptr[r], ev_ptr[r + 1])``, mention order) of weight ``ent_w > 0``, rows in ``loc``
    order. Returns (local entity ids, row index in ``loc`` of each, ptr [len(loc) + 1] into
    them, global id and weight of each, and their holder shards as CSR: hold_ptr, hold)."""
    cap = 0
    for i in range(loc.shape[0]):
        cap += ev_ptr[loc[i] + 1] - ev_ptr[loc[i]]
    le = np.empty(cap, np.int64)
    of = np.empty(cap, np.int64)
    ptr = np.zeros(loc.shape[0] + 1, np.int64)
    m = 0
    for i in range(loc.shape[0]):
        for j in range(ev_ptr[loc[i]], ev_ptr[loc[i] + 1]):
            if ent_w[ev_ent[j]] > 0.0:
                le[m] = ev_ent[j]
                of[m] = i
                m += 1
        ptr[i + 1] = m
    le, of = le[:m].copy(), of[:m].copy()
    h_ptr = np.zeros(m + 1, np.int64)
    for k in range(m):
        h_ptr[k + 1] = h_ptr[k] + hold_ptr[le[k] + 1] - hold_ptr[le[k]]
    h_out = np.empty(h_ptr[m], np.int32)
    for k in range(m):
        h_out[h_ptr[k]:h_ptr[k + 1]] = hold[hold_ptr[le[k]]:hold_ptr[le[k] + 1]]
    return le, of, ptr, gent[le], ent_w[le].astype(np.float32), h_ptr, h_out
