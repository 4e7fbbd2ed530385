"""Graph expansion from vector-search seeds: causal-chain retrieval kernels.

Array contracts (global row space of ``n`` events, rows ``0..n-1``)
--------------------------------------------------------------------
``times``        int64[n]    event time, unix seconds
``allowed``      uint8[n]    1 = may be walked through and returned; 0 = never
                             touched (not entered, not returned, not a parent)
``out_ptr``      int64[n+1]  CSR by source row of explicit links u -> earlier
``out_dst``      int64[m]    target row
``out_type``     int8[m]     link type, index into ``link_weight``
``in_ptr``       int64[n+1]  the same links reversed: CSR by target row
``in_src``       int64[m]    source row
``in_type``      int8[m]
``link_weight``  float32[T]  weight per link type; <= 0 (or a type outside
                             ``0..T-1``) => links of that type are not followed
``ev_ptr``       int64[n+1]  CSR event -> entity ids it mentions
``ev_ent``       int64[q]
``ent_ptr``      int64[E+1]  CSR entity -> events mentioning it ("postings"),
``ent_rows``     int64[q]    each list sorted by ``(times[row], row)`` ascending
``ent_weight``   float32[E]  rarity weight in [0, 1]; <= 0 => not followed

Scalars: ``direction`` is a bit set, 1 = back (causes: out-links, earlier
events), 2 = forward (consequences: in-links, later events), 3 = both, 0 = no
expansion.  ``time_lo``/``time_hi`` (inclusive) bound every touched event.

Neighbour enumeration (shared by both kernels; the order is part of the
contract because ties are resolved "first found wins")
--------------------------------------------------------------------------
For a node ``u`` the candidate edges are enumerated as

1. out-links of ``u`` in CSR order (if direction has bit 1), then in-links of
   ``u`` in CSR order (if direction has bit 2).  An edge yields ``v`` if the
   type weight is > 0, ``v != u``, ``allowed[v]``, ``v`` is inside the time
   window, and - for direction 1 - ``times[v] <= times[u]``, for direction 2 -
   ``times[v] >= times[u]`` (3: no time check).  Weight = ``link_weight[type]``.
2. for each entity ``e`` of ``u`` in ``ev_ent`` order with ``ent_weight[e] > 0``
   (and ``max_per_entity > 0``): ``u``'s position in the postings is found by
   binary search on ``(times, row)``, then the postings are walked outwards,
   nearest in time first:

   * back: downwards from the last entry with ``time <= times[u]``;
   * forward: upwards from the first entry with ``time >= times[u]``
     (so equal-time rows are reachable in both single directions, matching
     the link time check);
   * both: split at ``u``'s own ``(time, row)`` position, merge the two sides
     by ``|dt|``; on equal ``|dt|`` the earlier (lower) side goes first.

   A side closes when its next entry lies outside ``[time_lo, time_hi]`` or,
   for a hub (postings longer than ``hub_postings``), when its ``|dt|``
   exceeds ``hub_window_s`` - so an entity mentioned by millions of events
   is only scanned in a time neighbourhood of ``u``.  Closing only peeks and
   costs nothing.  Every entry actually taken costs one edge visit.  A taken
   entry is *eligible* if it is not ``u`` and is allowed; only eligible
   entries count towards ``max_per_entity`` (so the cap means "the k nearest
   eligible co-mentions", independent of how many rows a filter removed).
   Already-finalized rows are eligible and count (they are real neighbours,
   they just cannot improve).  An entity listed twice for ``u`` is walked
   twice; ``max_per_entity <= 0`` disables entity edges.  Weight =
   ``ent_weight[e] * decay``, ``decay = 1 / (1 + |dt| / time_scale_s)``
   (1 when ``time_scale_s <= 0``).

Budget: each link entry read (whatever its type, target or time) and each
postings entry taken (``u`` itself and disallowed rows included) costs 1 edge
visit; the binary search, side-closing peeks and entity ids are free.  When the next
visit would exceed ``max_edge_visits`` enumeration stops, the edges already
examined are still relaxed/pushed, the budget flag is set, and no node is
expanded afterwards.  Already-queued nodes are still popped (best-first) or
absorbed (PPR), so the result is what was found within the budget.

Weights are expected in [0, 1] and seed scores >= 0; then best-first returns
the maximum-product score over paths (a seed, too, reports a better path from
another seed if one exists).  Other values stay deterministic but
lose that guarantee.  All arithmetic is ``+ - * /`` in float64 so a Python
reference reproduces it bit for bit.
"""

from typing import NamedTuple, Optional

import numpy as np

from ._jit import INT64_MAX, INT64_MIN, njit

DIR_BACK = 1
DIR_FORWARD = 2
DIR_BOTH = 3

VIA_SEED = 0
VIA_LINK = 1
VIA_ENTITY = 2

# Node state lives in a small open-addressing hash map (row -> slot) plus
# slot-indexed tables, sized to what the query can touch (seeds + edge
# budget), so a call costs O(work), never O(n).  Measured at n = 1e6: a dense
# float64[n] best-score array needs a 0.5-1.5 ms fill per call, as much as a
# whole 20k-edge expansion (~2 ms) and 5-10x a 100-result one; a
# caller-provided scratch array avoids the fill but must be one per thread
# (nogil callers) and restored on every exit path.  The hash map keeps the
# kernel a pure function of its inputs.
_MIN_SLOTS = 256
_MAX_INITIAL_SLOTS = 1 << 8  # most expansions touch few nodes: start small, double when needed (measured)
_EMPTY = -1


# --------------------------------------------------------------------------
# growable storage
#
# Hot loops never return arrays: in Numba every array passing through a
# function boundary costs NRT reference-count traffic (atomic inc/dec), which
# made the first version 3-4x slower per edge.  Callers reserve room once per
# expanded node, then the per-edge helpers write in place and return scalars.
# --------------------------------------------------------------------------


@njit
def _grow(a, size, need):
    """Copy of ``a[:size]`` with capacity >= need (at least doubled)."""
    b = np.empty(max(2 * a.shape[0], need, 16), dtype=a.dtype)
    b[:size] = a[:size]
    return b


@njit
def _grow_table(a, size, need):
    b = np.empty((max(2 * a.shape[0], need, 16), a.shape[1]), dtype=a.dtype)
    b[:size] = a[:size]
    return b


@njit
def _initial_capacity(n_seeds, max_edge_visits):
    """Touched nodes <= seeds + edges examined: size for that up front (no
    rehash/copy churn), capped so a huge budget does not allocate O(budget)."""
    return max(_MIN_SLOTS, min(n_seeds + max(max_edge_visits, 0),
                               _MAX_INITIAL_SLOTS))


@njit
def _new_buf(cap):
    """Neighbour buffer: (row, weight float64, via_kind, via_id)."""
    return (
        np.empty(cap, dtype=np.int64),
        np.empty(cap, dtype=np.float64),
        np.empty(cap, dtype=np.int8),
        np.empty(cap, dtype=np.int64),
    )


# --------------------------------------------------------------------------
# hash map row -> slot (linear probing, power-of-two table, load <= 1/2)
# --------------------------------------------------------------------------


@njit
def _hash_pos(keys, row):
    """Index in ``keys`` holding ``row`` or the empty cell where it belongs."""
    mask = keys.shape[0] - 1
    h = row ^ (row >> 17)
    h = h * 0x5BD1E9955BD1E995  # odd multiplier; int64 multiply wraps
    h = h ^ (h >> 31)
    i = h & mask
    while keys[i] != _EMPTY and keys[i] != row:
        i = (i + 1) & mask
    return i


@njit
def _find(keys, vals, row):
    """Slot of ``row`` or -1."""
    i = _hash_pos(keys, row)
    if keys[i] == row:
        return vals[i]
    return -1


@njit
def _rehash(keys, vals, cap):
    new_k = np.full(cap, _EMPTY, dtype=np.int64)
    new_v = np.empty(cap, dtype=np.int64)
    for j in range(keys.shape[0]):
        if keys[j] != _EMPTY:
            p = _hash_pos(new_k, keys[j])
            new_k[p] = keys[j]
            new_v[p] = vals[j]
    return new_k, new_v


# Node table: one row of int64 columns per touched event (row-major, so a
# node's fields share a cache line) plus a float64 table; slots are handed
# out in discovery order.
_ROW = 0
_PARENT = 1
_KIND = 2
_VIA = 3
_HOPS = 4
_FLAG = 5  # best-first: finalized; PPR: queued
_PSLOT = 6  # PPR: parent's slot (parents always have smaller slots)
_N_ICOLS = 7


@njit
def _new_nodes(n_fcols, cap):
    """Empty hash map (keys, vals) + node tables (ni int64, nf float64)."""
    cap = max(cap, 16)
    h_cap = 16
    while h_cap < 2 * cap:
        h_cap *= 2
    keys = np.full(h_cap, _EMPTY, dtype=np.int64)
    vals = np.empty(h_cap, dtype=np.int64)
    ni = np.empty((cap, _N_ICOLS), dtype=np.int64)
    nf = np.empty((cap, n_fcols), dtype=np.float64)
    return keys, vals, ni, nf


@njit
def _reserve_nodes(keys, vals, ni, nf, n_nodes, extra):
    """Room for ``extra`` more nodes without growing or passing load 1/2."""
    need = n_nodes + extra
    if need > ni.shape[0]:
        ni = _grow_table(ni, n_nodes, need)
        nf = _grow_table(nf, n_nodes, need)
    if 2 * need > keys.shape[0]:
        cap = keys.shape[0]
        while 2 * need > cap:
            cap *= 2
        keys, vals = _rehash(keys, vals, cap)
    return keys, vals, ni, nf


@njit
def _add_node(keys, vals, ni, nf, slot, row, f_init):
    """Blank node for ``row`` in ``slot`` (room must be reserved)."""
    keys_pos = _hash_pos(keys, row)
    keys[keys_pos] = row
    vals[keys_pos] = slot
    ni[slot, _ROW] = row
    ni[slot, _PARENT] = -1
    ni[slot, _KIND] = -1
    ni[slot, _VIA] = -1
    ni[slot, _HOPS] = 0
    ni[slot, _FLAG] = 0
    ni[slot, _PSLOT] = -1
    for c in range(nf.shape[1]):
        nf[slot, c] = f_init


# --------------------------------------------------------------------------
# max-heap on (score desc, row asc) over parallel arrays
# --------------------------------------------------------------------------


@njit
def _before(s1, r1, s2, r2):
    return s1 > s2 or (s1 == s2 and r1 < r2)


@njit
def _reserve_heap(hs, hr, size, extra):
    if size + extra > hs.shape[0]:
        hs = _grow(hs, size, size + extra)
        hr = _grow(hr, size, size + extra)
    return hs, hr


@njit
def _heap_push(hs, hr, size, score, row):
    """Sift-up insert (room must be reserved); returns the new size."""
    i = size
    while i > 0:
        parent = (i - 1) >> 1
        if not _before(score, row, hs[parent], hr[parent]):
            break
        hs[i] = hs[parent]
        hr[i] = hr[parent]
        i = parent
    hs[i] = score
    hr[i] = row
    return size + 1


@njit
def _heap_pop(hs, hr, size):
    """Remove the top; returns (score, row, new size)."""
    top_s, top_r = hs[0], hr[0]
    size -= 1
    s, r = hs[size], hr[size]
    i = 0
    while True:
        c = 2 * i + 1
        if c >= size:
            break
        if c + 1 < size and _before(hs[c + 1], hr[c + 1], hs[c], hr[c]):
            c += 1
        if not _before(hs[c], hr[c], s, r):
            break
        hs[i] = hs[c]
        hr[i] = hr[c]
        i = c
    if size > 0:
        hs[i] = s
        hr[i] = r
    return top_s, top_r, size


# --------------------------------------------------------------------------
# neighbour enumeration (see module docstring for the exact contract)
# --------------------------------------------------------------------------


@njit
def _lower_bound(ent_rows, times, a, b, t, r):
    """First index in [a, b) whose key (times[row], row) >= (t, r)."""
    while a < b:
        mid = (a + b) >> 1
        x = ent_rows[mid]
        tx = times[x]
        if tx < t or (tx == t and x < r):
            a = mid + 1
        else:
            b = mid
    return a


@njit
def _gap(ent_rows, times, i, a, b, t_u, time_lo, time_hi, lim):
    """|dt| between u and postings entry i, or -1 if i is out of [a, b), its
    time is outside [time_lo, time_hi], or |dt| > lim (hub window)."""
    if i < a or i >= b:
        return -1
    t_x = times[ent_rows[i]]
    if t_x < time_lo or t_x > time_hi:
        return -1
    d = t_x - t_u if t_x >= t_u else t_u - t_x
    return d if d <= lim else -1


@njit
def link_time_ok(tv, t_u, time_lo, time_hi, direction):
    """A link target's time passes: inside the window, and not later (back) / earlier
    (forward) than the source. Shared with the shard-side link scan (kernels/walks.py)."""
    if tv < time_lo or tv > time_hi:
        return False
    if direction == DIR_BACK and tv > t_u:
        return False
    if direction == DIR_FORWARD and tv < t_u:
        return False
    return True


@njit
def nearer_is_lower(d_lo, d_hi):
    """An entity walk takes the earlier side's next entry (|dt| d_lo, -1 when that side is
    closed) before the later side's (d_hi): nearest first, ties to the earlier side. Shared with
    the coordinator's walk merge (kernels/frontier.py)."""
    return d_lo >= 0 and (d_hi < 0 or d_lo <= d_hi)


@njit
def entity_decay(w_e, dt, time_scale_s):
    """Weight of an entity edge |dt| seconds apart: ``w_e / (1 + |dt| / scale)`` as
    ``w_e * (1 / (1 + dt / scale))`` in float64 (1 when scale <= 0)."""
    decay = 1.0
    if time_scale_s > 0.0:
        decay = 1.0 / (1.0 + np.float64(dt) / time_scale_s)
    return w_e * decay


@njit
def _scan_links(u, ptr, nbr, typ, link_weight, times, allowed, time_lo,
                time_hi, direction, bv, bw, bk, bi, count, examined, budget):
    """Append eligible link neighbours; returns (count, examined, hit)."""
    t_u = times[u]
    n_types = link_weight.shape[0]
    for k in range(ptr[u], ptr[u + 1]):
        if examined >= budget:
            return count, examined, True
        examined += 1
        t = np.int64(typ[k])
        if t < 0 or t >= n_types:
            continue
        w = np.float64(link_weight[t])
        if not w > 0.0:
            continue
        v = nbr[k]
        if v == u or allowed[v] == 0:
            continue
        if not link_time_ok(times[v], t_u, time_lo, time_hi, direction):
            continue
        bv[count] = v
        bw[count] = w
        bk[count] = VIA_LINK
        bi[count] = t
        count += 1
    return count, examined, False


@njit
def _scan_entity(u, e, direction, times, allowed, ent_ptr, ent_rows, w_e,
                 time_lo, time_hi, hub_postings, hub_window_s, max_per_entity,
                 time_scale_s, bv, bw, bk, bi, count, examined, budget):
    """Walk e's postings outwards from u; returns (count, examined, hit)."""
    a = ent_ptr[e]
    b = ent_ptr[e + 1]
    t_u = times[u]
    is_hub = (b - a) > hub_postings
    # lo walks down (next index lo, closed when < a); hi walks up (closed at b)
    if direction == DIR_BACK:
        lo = _lower_bound(ent_rows, times, a, b, t_u, INT64_MAX) - 1
        hi = b
    elif direction == DIR_FORWARD:
        lo = a - 1
        hi = _lower_bound(ent_rows, times, a, b, t_u, INT64_MIN)
    else:
        p = _lower_bound(ent_rows, times, a, b, t_u, u)
        lo = p - 1
        hi = p
    # |dt| of each side's next entry, -1 once that side is closed; a side
    # is re-peeked only after it advances (each peek is two dependent loads)
    lim = hub_window_s if is_hub else INT64_MAX
    d_lo = _gap(ent_rows, times, lo, a, b, t_u, time_lo, time_hi, lim)
    d_hi = _gap(ent_rows, times, hi, a, b, t_u, time_lo, time_hi, lim)
    taken = 0
    while taken < max_per_entity and (d_lo >= 0 or d_hi >= 0):
        if examined >= budget:
            return count, examined, True
        examined += 1
        if nearer_is_lower(d_lo, d_hi):
            v = ent_rows[lo]
            dt = d_lo
            lo -= 1
            d_lo = _gap(ent_rows, times, lo, a, b, t_u, time_lo, time_hi, lim)
        else:
            v = ent_rows[hi]
            dt = d_hi
            hi += 1
            d_hi = _gap(ent_rows, times, hi, a, b, t_u, time_lo, time_hi, lim)
        if v == u or allowed[v] == 0:
            continue
        taken += 1
        bv[count] = v
        bw[count] = entity_decay(w_e, dt, time_scale_s)
        bk[count] = VIA_ENTITY
        bi[count] = e
        count += 1
    return count, examined, False


@njit
def _neighbours(u, direction, times, allowed, out_ptr, out_dst, out_type,
                in_ptr, in_src, in_type, link_weight, ev_ptr, ev_ent, ent_ptr,
                ent_rows, ent_weight, time_lo, time_hi, hub_postings,
                hub_window_s, max_per_entity, time_scale_s, bv, bw, bk, bi,
                budget):
    """Write u's eligible neighbours, in contract order, into (bv, bw, bk, bi).

    The buffers must hold ``_neighbour_bound(...)`` entries.  Returns
    (count, examined, hit) where ``hit`` says the budget cut enumeration.
    """
    count = 0
    examined = 0
    if direction & DIR_BACK:
        count, examined, hit = _scan_links(
            u, out_ptr, out_dst, out_type, link_weight, times, allowed,
            time_lo, time_hi, direction, bv, bw, bk, bi, count, examined,
            budget)
        if hit:
            return count, examined, True
    if direction & DIR_FORWARD:
        count, examined, hit = _scan_links(
            u, in_ptr, in_src, in_type, link_weight, times, allowed,
            time_lo, time_hi, direction, bv, bw, bk, bi, count, examined,
            budget)
        if hit:
            return count, examined, True
    if direction & DIR_BOTH and max_per_entity > 0:
        for k in range(ev_ptr[u], ev_ptr[u + 1]):
            e = ev_ent[k]
            w_e = np.float64(ent_weight[e])
            if not w_e > 0.0:
                continue
            count, examined, hit = _scan_entity(
                u, e, direction, times, allowed, ent_ptr, ent_rows, w_e,
                time_lo, time_hi, hub_postings, hub_window_s, max_per_entity,
                time_scale_s, bv, bw, bk, bi, count, examined, budget)
            if hit:
                return count, examined, True
    return count, examined, False


@njit
def _neighbour_bound(u, direction, out_ptr, in_ptr, ev_ptr, ev_ent, ent_ptr,
                     ent_weight, max_per_entity, budget):
    """Upper bound on the neighbours ``_neighbours`` can yield for ``u``."""
    bound = 0
    if direction & DIR_BACK:
        bound += out_ptr[u + 1] - out_ptr[u]
    if direction & DIR_FORWARD:
        bound += in_ptr[u + 1] - in_ptr[u]
    if direction & DIR_BOTH and max_per_entity > 0:
        for k in range(ev_ptr[u], ev_ptr[u + 1]):
            e = ev_ent[k]
            if ent_weight[e] > 0:
                bound += min(max_per_entity, ent_ptr[e + 1] - ent_ptr[e])
    return min(bound, max(budget, 0))


@njit
def _neighbours_into(u, direction, times, allowed, out_ptr, out_dst, out_type,
                     in_ptr, in_src, in_type, link_weight, ev_ptr, ev_ent, ent_ptr,
                     ent_rows, ent_weight, time_lo, time_hi, hub_postings,
                     hub_window_s, max_per_entity, time_scale_s, bv, bw, bk, bi,
                     budget):
    """`_neighbours` after growing the candidate buffers to the bound it can reach; returns the
    (possibly new) buffers with (count, edges examined, budget hit). Shared by both kernels."""
    need = _neighbour_bound(u, direction, out_ptr, in_ptr, ev_ptr, ev_ent,
                            ent_ptr, ent_weight, max_per_entity, budget)
    if need > bv.shape[0]:
        bv, bw, bk, bi = _new_buf(max(need, 2 * bv.shape[0]))
    count, ex, budget_hit = _neighbours(
        u, direction, times, allowed, out_ptr, out_dst, out_type, in_ptr,
        in_src, in_type, link_weight, ev_ptr, ev_ent, ent_ptr, ent_rows,
        ent_weight, time_lo, time_hi, hub_postings, hub_window_s,
        max_per_entity, time_scale_s, bv, bw, bk, bi, budget)
    return bv, bw, bk, bi, count, ex, budget_hit


@njit
def _seed_ok(r, n, times, allowed, time_lo, time_hi):
    return 0 <= r < n and allowed[r] != 0 and time_lo <= times[r] <= time_hi


@njit
def _output(ni, order, n_out, score_of):
    """Gather result arrays for the slots in ``order[:n_out]``."""
    rows = np.empty(n_out, dtype=np.int64)
    scores = np.empty(n_out, dtype=np.float32)
    parent = np.empty(n_out, dtype=np.int64)
    via_kind = np.empty(n_out, dtype=np.int8)
    via_id = np.empty(n_out, dtype=np.int64)
    hops = np.empty(n_out, dtype=np.int32)
    for i in range(n_out):
        s = order[i]
        rows[i] = ni[s, _ROW]
        scores[i] = np.float32(score_of[s])
        parent[i] = ni[s, _PARENT]
        via_kind[i] = ni[s, _KIND]
        via_id[i] = ni[s, _VIA]
        hops[i] = ni[s, _HOPS]
    return rows, scores, parent, via_kind, via_id, hops


@njit
def _relax(keys, vals, ni, nf, hs, hr, n_nodes, h_size, su, u, sc_u,
           nv, nw, nk, nvia, lo, hi, min_score):
    """Offer node `u` (slot `su`, score `sc_u`) 's neighbours nv[lo:hi] (edge weights nw, via
    kind nk, via id nvia) to a best-first search: each one better than its current score (and
    than `min_score`) is updated and pushed. The one relaxation step of every best-first
    expansion (this kernel and the coordinator's frontier.py). Returns the possibly regrown
    node table and heap, their sizes and the number of pushes."""
    count = hi - lo
    if (n_nodes + count > ni.shape[0]
            or 2 * (n_nodes + count) > keys.shape[0]):
        keys, vals, ni, nf = _reserve_nodes(keys, vals, ni, nf, n_nodes,
                                            count)
    if h_size + count > hs.shape[0]:
        hs, hr = _reserve_heap(hs, hr, h_size, count)
    hops_v = ni[su, _HOPS] + 1
    pushes = 0
    for j in range(lo, hi):
        cand = sc_u * nw[j]
        if cand < min_score:
            continue
        v = nv[j]
        sv = _find(keys, vals, v)
        if sv < 0:
            sv = n_nodes
            n_nodes += 1
            _add_node(keys, vals, ni, nf, sv, v, -np.inf)
        if ni[sv, _FLAG] or not cand > nf[sv, 0]:
            continue
        nf[sv, 0] = cand
        ni[sv, _PARENT] = u
        ni[sv, _KIND] = nk[j]
        ni[sv, _VIA] = nvia[j]
        ni[sv, _HOPS] = hops_v
        h_size = _heap_push(hs, hr, h_size, cand, v)
        pushes += 1
    return keys, vals, ni, nf, hs, hr, n_nodes, h_size, pushes


@njit
def _stats(n_out, examined, pushes, budget_hit):
    stats = np.zeros(4, dtype=np.int64)
    stats[0] = n_out
    stats[1] = examined
    stats[2] = pushes
    stats[3] = 1 if budget_hit else 0
    return stats


# --------------------------------------------------------------------------
# best-first max-product expansion
# --------------------------------------------------------------------------


@njit
def expand_best_first(seeds, seed_scores, times, allowed, out_ptr, out_dst,
                      out_type, in_ptr, in_src, in_type, link_weight, ev_ptr,
                      ev_ent, ent_ptr, ent_rows, ent_weight, direction,
                      time_lo, time_hi, max_hops, max_results,
                      max_edge_visits, hub_postings, hub_window_s,
                      max_per_entity, min_score, time_scale_s):
    """Dijkstra-style max-product expansion from scored seeds.

    Returns ``(rows int64[r], scores float32[r], parent int64[r],
    via_kind int8[r], via_id int64[r], hops int32[r], stats int64[4])`` in
    finalization order (score desc, row asc).  ``stats`` = [nodes finalized,
    edges examined, heap pushes (seeds included), 1 if the budget stopped
    expansion].  Seeds have parent -1, via_kind 0, via_id -1, hops 0;
    otherwise via_kind 1 = link (via_id = link type), 2 = entity (entity id).

    Semantics beyond the module contract:
    * seeds outside ``0..n-1``, not allowed, outside the time window, or with
      score < ``min_score`` are dropped; a repeated seed keeps its best score;
    * a candidate below ``min_score`` is never pushed (with weights <= 1 it
      could only be popped after the stop condition anyway);
    * a candidate improves ``v`` only if strictly greater than its best so
      far (first found wins ties); finalized nodes are never updated;
    * nodes with ``hops >= max_hops`` are returned but not expanded;
    * the search stops right after the ``max_results``-th finalization, when
      the heap is empty, or when the best queued score is < ``min_score``.
    """
    n = times.shape[0]
    direction = direction & DIR_BOTH  # other bits are ignored
    min_score = np.float64(min_score)
    time_scale_s = np.float64(time_scale_s)
    cap = _initial_capacity(seeds.shape[0], max_edge_visits)
    keys, vals, ni, nf = _new_nodes(1, cap)  # nf[:, 0] = best score
    n_nodes = 0
    order = np.empty(64, dtype=np.int64)
    n_out = 0
    hs = np.empty(cap, dtype=np.float64)
    hr = np.empty(cap, dtype=np.int64)
    h_size = 0
    bv, bw, bk, bi = _new_buf(64)
    examined = 0
    pushes = 0
    budget_hit = False

    n_seeds = seeds.shape[0] if max_results > 0 else 0
    keys, vals, ni, nf = _reserve_nodes(keys, vals, ni, nf, 0, n_seeds)
    hs, hr = _reserve_heap(hs, hr, 0, n_seeds)
    for i in range(n_seeds):
        r = seeds[i]
        sc = np.float64(seed_scores[i])
        if not _seed_ok(r, n, times, allowed, time_lo, time_hi):
            continue
        if not sc >= min_score:
            continue
        s = _find(keys, vals, r)
        if s < 0:
            s = n_nodes
            n_nodes += 1
            _add_node(keys, vals, ni, nf, s, r, -np.inf)
            ni[s, _KIND] = VIA_SEED
        if sc > nf[s, 0]:
            nf[s, 0] = sc
            h_size = _heap_push(hs, hr, h_size, sc, r)
            pushes += 1

    while h_size > 0 and n_out < max_results:
        if hs[0] < min_score:
            break
        sc_u, u, h_size = _heap_pop(hs, hr, h_size)
        su = _find(keys, vals, u)
        if ni[su, _FLAG]:
            continue  # stale duplicate: finalized earlier at a higher score
        ni[su, _FLAG] = 1
        if n_out == order.shape[0]:
            order = _grow(order, n_out, n_out + 1)
        order[n_out] = su
        n_out += 1
        if n_out >= max_results or budget_hit or ni[su, _HOPS] >= max_hops:
            continue
        budget = max_edge_visits - examined
        bv, bw, bk, bi, count, ex, budget_hit = _neighbours_into(
            u, direction, times, allowed, out_ptr, out_dst, out_type, in_ptr,
            in_src, in_type, link_weight, ev_ptr, ev_ent, ent_ptr, ent_rows,
            ent_weight, time_lo, time_hi, hub_postings, hub_window_s,
            max_per_entity, time_scale_s, bv, bw, bk, bi, budget)
        examined += ex
        keys, vals, ni, nf, hs, hr, n_nodes, h_size, pushed = _relax(
            keys, vals, ni, nf, hs, hr, n_nodes, h_size, su, u, sc_u,
            bv, bw, bk, bi, 0, count, min_score)
        pushes += pushed

    rows, scores, parent, via_kind, via_id, hops = _output(
        ni, order, n_out, nf[:, 0])
    return (rows, scores, parent, via_kind, via_id, hops,
            _stats(n_out, examined, pushes, budget_hit))


# --------------------------------------------------------------------------
# personalized PageRank by forward push
# --------------------------------------------------------------------------

_P = 0  # settled PageRank mass
_R = 1  # residual waiting to be pushed
_C = 2  # largest single contribution received (picks the parent edge)


@njit
def expand_ppr_push(seeds, seed_scores, times, allowed, out_ptr, out_dst,
                    out_type, in_ptr, in_src, in_type, link_weight, ev_ptr,
                    ev_ent, ent_ptr, ent_rows, ent_weight, direction,
                    time_lo, time_hi, max_hops, max_results, max_edge_visits,
                    hub_postings, hub_window_s, max_per_entity, min_score,
                    time_scale_s, alpha, epsilon):
    """Personalized PageRank (Andersen-Chung-Lang forward push).

    Same inputs as :func:`expand_best_first` plus ``alpha`` (teleport
    probability) and ``epsilon`` (push threshold on absolute residual).
    Returns the same tuple; rows are ordered by PageRank score desc, row asc.

    * Teleport vector = kept seed scores (> 0, deduplicated by max, filtered
      like best-first) normalized to sum 1.  Every seed is pushed once even
      if its mass is below ``epsilon``.
    * FIFO queue of nodes whose residual r >= epsilon (and > 0).  A push of u
      moves ``alpha * r`` into p[u] and spreads ``(1 - alpha) * r`` over u's
      eligible neighbours in proportion to edge weight (enumeration exactly
      as best-first).  A node that cannot spread (no eligible neighbours,
      hops >= ``max_hops``, or popped after the budget ran out) keeps only
      its teleport share ``alpha * r`` and the rest leaks: keeping all of it
      would pile mass onto dead ends (the oldest event of a "back" chain
      would outrank the seed), and ``p + alpha * r`` is the standard lower
      bound of a node's true PPR anyway.
    * parent/via = the in-edge that delivered the largest single
      contribution, considering only parents discovered earlier (smaller
      slot), so parent pointers always lead back to a seed without cycles.
      Seeds keep parent -1.  ``hops`` is the length of that parent chain;
      the ``max_hops`` gate uses the chain length at push time.
    * Output: nodes with p > 0 and p >= ``min_score``, top ``max_results``.
    * stats = [rows returned, edges examined, pushes that enumerated
      neighbours, budget flag].  Pushes are bounded by
      ``seeds + 1 / (alpha * epsilon)``; use epsilon > 0.
    """
    n = times.shape[0]
    direction = direction & DIR_BOTH  # other bits are ignored
    alpha = np.float64(alpha)
    epsilon = np.float64(epsilon)
    time_scale_s = np.float64(time_scale_s)
    cap = _initial_capacity(seeds.shape[0], max_edge_visits)
    keys, vals, ni, nf = _new_nodes(3, cap)
    n_nodes = 0
    queue = np.empty(cap, dtype=np.int64)
    q_len = 0
    bv, bw, bk, bi = _new_buf(64)
    examined = 0
    pushes = 0
    budget_hit = False

    n_seeds = seeds.shape[0] if max_results > 0 else 0
    keys, vals, ni, nf = _reserve_nodes(keys, vals, ni, nf, 0, n_seeds)
    queue = _grow(queue, 0, n_seeds)
    for i in range(n_seeds):
        r = seeds[i]
        sc = np.float64(seed_scores[i])
        if not _seed_ok(r, n, times, allowed, time_lo, time_hi):
            continue
        if not sc > 0.0:
            continue
        s = _find(keys, vals, r)
        if s < 0:
            s = n_nodes
            n_nodes += 1
            _add_node(keys, vals, ni, nf, s, r, 0.0)
            ni[s, _KIND] = VIA_SEED
            ni[s, _FLAG] = 1
            queue[q_len] = s
            q_len += 1
        if sc > nf[s, _R]:
            nf[s, _R] = sc
    total = 0.0
    for s in range(n_nodes):
        total += nf[s, _R]
    for s in range(n_nodes):
        nf[s, _R] = nf[s, _R] / total

    head = 0
    while head < q_len:
        s = queue[head]
        head += 1
        ni[s, _FLAG] = 0
        mass = nf[s, _R]
        nf[s, _R] = 0.0
        nf[s, _P] += alpha * mass
        if budget_hit or ni[s, _HOPS] >= max_hops:
            continue
        u = ni[s, _ROW]
        budget = max_edge_visits - examined
        bv, bw, bk, bi, count, ex, budget_hit = _neighbours_into(
            u, direction, times, allowed, out_ptr, out_dst, out_type, in_ptr,
            in_src, in_type, link_weight, ev_ptr, ev_ent, ent_ptr, ent_rows,
            ent_weight, time_lo, time_hi, hub_postings, hub_window_s,
            max_per_entity, time_scale_s, bv, bw, bk, bi, budget)
        examined += ex
        pushes += 1
        w_sum = 0.0
        for j in range(count):
            w_sum += bw[j]
        if count == 0 or not w_sum > 0.0:
            continue
        if (n_nodes + count > ni.shape[0]
                or 2 * (n_nodes + count) > keys.shape[0]):
            keys, vals, ni, nf = _reserve_nodes(keys, vals, ni, nf, n_nodes,
                                                count)
        if q_len + count > queue.shape[0]:
            queue = _grow(queue, q_len, q_len + count)
        spread = (1.0 - alpha) * mass
        hops_v = ni[s, _HOPS] + 1
        for j in range(count):
            contrib = spread * bw[j] / w_sum
            v = bv[j]
            sv = _find(keys, vals, v)
            if sv < 0:
                sv = n_nodes
                n_nodes += 1
                _add_node(keys, vals, ni, nf, sv, v, 0.0)
            nf[sv, _R] += contrib
            if (ni[sv, _KIND] != VIA_SEED and sv > s
                    and contrib > nf[sv, _C]):
                nf[sv, _C] = contrib
                ni[sv, _PARENT] = u
                ni[sv, _PSLOT] = s
                ni[sv, _KIND] = bk[j]
                ni[sv, _VIA] = bi[j]
                ni[sv, _HOPS] = hops_v
            r_v = nf[sv, _R]
            if ni[sv, _FLAG] == 0 and r_v > 0.0 and r_v >= epsilon:
                ni[sv, _FLAG] = 1
                queue[q_len] = sv
                q_len += 1

    # exact hop counts of the final parent chains (parents have lower slots)
    for s in range(n_nodes):
        ps = ni[s, _PSLOT]
        if ps >= 0:
            ni[s, _HOPS] = ni[ps, _HOPS] + 1

    order = _rank_by_score(ni, nf[:n_nodes, _P], max_results,
                           np.float64(min_score))
    rows, scores, parent, via_kind, via_id, hops = _output(
        ni, order, order.shape[0], nf[:, _P])
    return (rows, scores, parent, via_kind, via_id, hops,
            _stats(order.shape[0], examined, pushes, budget_hit))


@njit
def _rank_by_score(ni, p, max_results, min_score):
    """Slots with p > 0 and p >= min_score, by p desc then row asc, top k."""
    keep = np.empty(p.shape[0], dtype=np.int64)
    k = 0
    for s in range(p.shape[0]):
        if p[s] > 0.0 and p[s] >= min_score:
            keep[k] = s
            k += 1
    keep = keep[:k]
    rows = np.empty(k, dtype=np.int64)
    neg = np.empty(k, dtype=np.float64)
    for i in range(k):
        rows[i] = ni[keep[i], _ROW]
        neg[i] = -p[keep[i]]
    by_row = np.argsort(rows)  # rows are unique, so this is deterministic
    by_score = np.argsort(neg[by_row], kind="mergesort")  # stable
    order = keep[by_row[by_score]]
    return order[:max(0, min(max_results, k))]


@njit
def _concat_groups(parts, res_ptr):
    """Concatenate per-group kernel outputs (a list of 7-tuples) behind ``res_ptr``."""
    total = res_ptr[res_ptr.shape[0] - 1]
    rows = np.empty(total, dtype=np.int64)
    scores = np.empty(total, dtype=np.float32)
    parent = np.empty(total, dtype=np.int64)
    via_kind = np.empty(total, dtype=np.int8)
    via_id = np.empty(total, dtype=np.int64)
    hops = np.empty(total, dtype=np.int32)
    for g in range(len(parts)):
        lo, hi = res_ptr[g], res_ptr[g + 1]
        out = parts[g]
        rows[lo:hi] = out[0]
        scores[lo:hi] = out[1]
        parent[lo:hi] = out[2]
        via_kind[lo:hi] = out[3]
        via_id[lo:hi] = out[4]
        hops[lo:hi] = out[5]
    return res_ptr, rows, scores, parent, via_kind, via_id, hops


@njit
def expand_best_first_batch(seed_ptr, seeds, seed_scores, times, allowed, out_ptr, out_dst,
                            out_type, in_ptr, in_src, in_type, link_weight, ev_ptr,
                            ev_ent, ent_ptr, ent_rows, ent_weight, direction,
                            time_lo, time_hi, max_hops, max_results,
                            max_edge_visits, hub_postings, hub_window_s,
                            max_per_entity, min_score, time_scale_s):
    """Independent ``expand_best_first`` runs, one per seed group, in one call.

    Group g's seeds are ``seeds[seed_ptr[g]:seed_ptr[g + 1]]``. Returns
    ``(res_ptr, rows, scores, parent, via_kind, via_id, hops)``: group g's
    results are ``[res_ptr[g]:res_ptr[g + 1]]`` of each array, exactly what a
    separate ``expand_best_first`` call would return. One dispatch instead of
    one per group: with ~27 array arguments, Numba's argument checks cost
    ~25 us a call, more than a small expansion itself.
    """
    n_groups = seed_ptr.shape[0] - 1
    res_ptr = np.zeros(n_groups + 1, dtype=np.int64)
    parts = []
    for g in range(n_groups):
        lo, hi = seed_ptr[g], seed_ptr[g + 1]
        out = expand_best_first(
            seeds[lo:hi], seed_scores[lo:hi], times, allowed, out_ptr, out_dst, out_type,
            in_ptr, in_src, in_type, link_weight, ev_ptr, ev_ent, ent_ptr, ent_rows,
            ent_weight, direction, time_lo, time_hi, max_hops, max_results,
            max_edge_visits, hub_postings, hub_window_s, max_per_entity, min_score,
            time_scale_s)
        parts.append(out)
        res_ptr[g + 1] = res_ptr[g] + out[0].shape[0]
    return _concat_groups(parts, res_ptr)


@njit
def expand_ppr_push_batch(seed_ptr, seeds, seed_scores, times, allowed, out_ptr, out_dst,
                          out_type, in_ptr, in_src, in_type, link_weight, ev_ptr,
                          ev_ent, ent_ptr, ent_rows, ent_weight, direction,
                          time_lo, time_hi, max_hops, max_results,
                          max_edge_visits, hub_postings, hub_window_s,
                          max_per_entity, min_score, time_scale_s, alpha, epsilon):
    """Independent ``expand_ppr_push`` runs, one per seed group, in one call; the same layout
    as ``expand_best_first_batch`` returns."""
    n_groups = seed_ptr.shape[0] - 1
    res_ptr = np.zeros(n_groups + 1, dtype=np.int64)
    parts = []
    for g in range(n_groups):
        lo, hi = seed_ptr[g], seed_ptr[g + 1]
        out = expand_ppr_push(
            seeds[lo:hi], seed_scores[lo:hi], times, allowed, out_ptr, out_dst, out_type,
            in_ptr, in_src, in_type, link_weight, ev_ptr, ev_ent, ent_ptr, ent_rows,
            ent_weight, direction, time_lo, time_hi, max_hops, max_results,
            max_edge_visits, hub_postings, hub_window_s, max_per_entity, min_score,
            time_scale_s, alpha, epsilon)
        parts.append(out)
        res_ptr[g + 1] = res_ptr[g] + out[0].shape[0]
    return _concat_groups(parts, res_ptr)


# ------------------------------------------------------------------- named inputs (Python side)
class ExpandGraph(NamedTuple):
    """The graph arrays of the module's contract, by name, in the kernels' argument order."""
    times: np.ndarray
    allowed: np.ndarray
    out_ptr: np.ndarray
    out_dst: np.ndarray
    out_type: np.ndarray
    in_ptr: np.ndarray
    in_src: np.ndarray
    in_type: np.ndarray
    link_weight: np.ndarray
    ev_ptr: np.ndarray
    ev_ent: np.ndarray
    ent_ptr: np.ndarray
    ent_rows: np.ndarray
    ent_weight: np.ndarray


class ExpandLimits(NamedTuple):
    """The scalar inputs of the module's contract, by name, in the kernels' argument order."""
    direction: int
    time_lo: int
    time_hi: int
    max_hops: int
    max_results: int
    max_edge_visits: int
    hub_postings: int
    hub_window_s: int
    max_per_entity: int
    min_score: float
    time_scale_s: float


def expand_batch(seed_ptr: np.ndarray, seeds: np.ndarray, seed_scores: np.ndarray, graph: ExpandGraph,
                 limits: ExpandLimits, ppr: Optional[tuple[float, float]] = None) -> tuple:
    """One kernel call for every seed group: best-first, or personalized PageRank push with
    `ppr` = (alpha, epsilon). The named inputs are unpacked into the positional kernels (Numba
    checks each array's type once per call either way)."""
    if ppr is None:
        return expand_best_first_batch(seed_ptr, seeds, seed_scores, *graph, *limits)
    return expand_ppr_push_batch(seed_ptr, seeds, seed_scores, *graph, *limits, *ppr)
