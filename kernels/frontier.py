"""The sharded coordinator's half of kernels/expand.py: best-first searches over neighbour lists
that arrive in waves.

A coordinator (fastctx/shards/coordinator.py) runs one best-first search per candidate head, all
at once. It does not hold the graph: shards send, per expanded row, its eligible links (with
their visit positions) and their parts of the row's entity walks. `merge_wave` turns one wave of
those replies into each row's neighbour list in the enumeration order of
``kernels.expand._neighbours`` (links, then each entity's walk, both sides merged by |dt| with
ties to the earlier side, ``max_per_entity`` eligible entries), with the same weights and edge
positions, into a *neighbour store*: per row ``nb_ok`` (1 = known), ``[nb_lo, nb_hi)`` of
(``nb_v``, ``nb_w``, ``nb_k``, ``nb_i``, ``nb_pos``) and ``nb_tot`` (edges the full enumeration
examines). `searches_run` advances every search until it finishes or pops a row whose
neighbours are not in the store yet, and returns those rows (plus the best queued rows of each
blocked search as prefetch); the caller fetches them and calls it again. Search state lives in
typed lists between calls, so a wave resumes where it stopped. The relaxation, heap order (score
desc, row asc), budget cut and float64 arithmetic are those of ``expand_best_first``, with the
same node tables and heap helpers, so the results equal the kernel's on a one-shard build.
"""
import numpy as np
from numba.typed import List

from ._jit import njit
from .expand import (_FLAG, _HOPS, _KIND, _ROW, VIA_ENTITY, VIA_LINK, VIA_SEED, _add_node,
                     _concat_groups, _find, _grow, _heap_pop, _heap_push, _new_nodes, _output, _relax,
                     entity_decay, nearer_is_lower)

# per-search scalars (columns of `scal`)
_NN, _HS, _NO, _EX, _BH, _ST, _PEND = 0, 1, 2, 3, 4, 5, 6
_RUNNING, _BLOCKED, _DONE = 0, 1, 2


@njit
def merge_wave(rows, l_ptr, l_v, l_type, l_pos, l_time, l_shard, l_total, link_weight,
               e_ptr, e_gid, e_w, e_wid, wp, p_rows, p_time, p_elig, p_side, p_shard,
               max_per_entity, time_scale_s, own, tim,
               nb_ok, nb_lo, nb_hi, nb_tot, nb_v, nb_w, nb_k, nb_i, nb_pos, fill):
    """Append the neighbour lists of ``rows`` (one wave) to the store from ``fill``; returns the
    new fill. Row j's links are ``[l_ptr[j], l_ptr[j + 1])`` (already checked by the owner shard,
    with their visit positions; ``l_total[j]`` links examined), its entities
    ``[e_ptr[j], e_ptr[j + 1])`` with weights ``e_w`` and walk ids ``e_wid``. Walk w's entries
    from every holder shard are ``[wp[w], wp[w + 1])`` of ``p_*``: side 0 (earlier) first, then
    side 1, each nearest first. Learns every neighbour's shard (``own``, shard + 1) and time."""
    for j in range(rows.shape[0]):
        u = rows[j]
        t_u = tim[u]
        nb_lo[u] = fill
        for x in range(l_ptr[j], l_ptr[j + 1]):
            v = l_v[x]
            t = np.int64(l_type[x])
            own[v] = l_shard[x] + 1
            tim[v] = l_time[x]
            nb_v[fill] = v
            nb_w[fill] = link_weight[t]
            nb_k[fill] = VIA_LINK
            nb_i[fill] = t
            nb_pos[fill] = l_pos[x]
            fill += 1
        pos = l_total[j]
        for x in range(e_ptr[j], e_ptr[j + 1]):
            w_e = e_w[x]
            if not w_e > 0.0 or max_per_entity <= 0:
                continue
            w = e_wid[x]
            a, b = wp[w], wp[w + 1]
            m = a
            while m < b and p_side[m] == 0:
                m += 1
            lo, hi, taken = a, m, 0
            while taken < max_per_entity and (lo < m or hi < b):
                pos += 1
                d_lo = -1
                if lo < m:
                    d_lo = t_u - p_time[lo] if p_time[lo] <= t_u else p_time[lo] - t_u
                d_hi = -1
                if hi < b:
                    d_hi = p_time[hi] - t_u if p_time[hi] >= t_u else t_u - p_time[hi]
                if nearer_is_lower(d_lo, d_hi):
                    y, dt = lo, d_lo
                    lo += 1
                else:
                    y, dt = hi, d_hi
                    hi += 1
                if not p_elig[y]:
                    continue
                taken += 1
                r = p_rows[y]
                own[r] = p_shard[y] + 1
                tim[r] = p_time[y]
                nb_v[fill] = r
                nb_w[fill] = entity_decay(w_e, dt, time_scale_s)
                nb_k[fill] = VIA_ENTITY
                nb_i[fill] = e_gid[x]
                nb_pos[fill] = pos
                fill += 1
        nb_hi[u] = fill
        nb_tot[u] = pos
        nb_ok[u] = 1
    return fill


@njit
def searches_start(seeds, seed_scores, seed_ok, min_score, max_results):
    """One search per seed (``seed_ok[i] == 0``: the seed is dropped, the search is empty);
    returns the state `searches_run` and `searches_results` take."""
    n = seeds.shape[0]
    keys_l = List()
    vals_l = List()
    ni_l = List()
    nf_l = List()
    hs_l = List()
    hr_l = List()
    ord_l = List()
    scal = np.zeros((n, 8), dtype=np.int64)
    pend = np.zeros(n, dtype=np.float64)
    for i in range(n):
        keys, vals, ni, nf = _new_nodes(1, 64)
        hs = np.empty(64, dtype=np.float64)
        hr = np.empty(64, dtype=np.int64)
        sc = np.float64(seed_scores[i])
        n_nodes, h = 0, 0
        if seed_ok[i] != 0 and sc >= min_score and max_results > 0:
            _add_node(keys, vals, ni, nf, 0, seeds[i], -np.inf)
            ni[0, _KIND] = VIA_SEED
            n_nodes = 1
            if sc > nf[0, 0]:
                nf[0, 0] = sc
                h = _heap_push(hs, hr, 0, sc, seeds[i])
        scal[i, _NN], scal[i, _HS], scal[i, _PEND] = n_nodes, h, -1
        keys_l.append(keys)
        vals_l.append(vals)
        ni_l.append(ni)
        nf_l.append(nf)
        hs_l.append(hs)
        hr_l.append(hr)
        ord_l.append(np.empty(16, dtype=np.int64))
    return keys_l, vals_l, ni_l, nf_l, hs_l, hr_l, ord_l, scal, pend


@njit
def searches_run(keys_l, vals_l, ni_l, nf_l, hs_l, hr_l, ord_l, scal, pend,
                 nb_ok, nb_lo, nb_hi, nb_tot, nb_v, nb_w, nb_k, nb_i, nb_pos,
                 min_score, max_results, max_hops, max_edge_visits, prefetch):
    """Advance every unfinished search; returns the rows whose neighbours are needed next (each
    blocked search's popped row, then up to ``prefetch`` of its best queued rows not in the
    store), with repeats. Empty: every search is done."""
    need = np.empty(64, dtype=np.int64)
    n_need = 0
    for i in range(scal.shape[0]):
        if scal[i, _ST] == _DONE:
            continue
        keys, vals, ni, nf = keys_l[i], vals_l[i], ni_l[i], nf_l[i]
        hs, hr, order = hs_l[i], hr_l[i], ord_l[i]
        n_nodes, h, n_out = scal[i, _NN], scal[i, _HS], scal[i, _NO]
        examined, budget_hit = scal[i, _EX], scal[i, _BH] != 0
        su = scal[i, _PEND]   # slot of a popped row waiting for its neighbours, or -1
        blocked = False
        while True:
            if su < 0:
                if h == 0 or n_out >= max_results or hs[0] < min_score:
                    break
                sc_u, u, h = _heap_pop(hs, hr, h)
                su = _find(keys, vals, u)
                if ni[su, _FLAG]:
                    su = -1
                    continue  # stale duplicate: finalized earlier at a higher score
                ni[su, _FLAG] = 1
                if n_out == order.shape[0]:
                    order = _grow(order, n_out, n_out + 1)
                order[n_out] = su
                n_out += 1
                if n_out >= max_results or budget_hit or ni[su, _HOPS] >= max_hops:
                    su = -1
                    continue
                pend[i] = sc_u
            u = ni[su, _ROW]
            if nb_ok[u] == 0:
                blocked = True
                break
            sc_u = pend[i]
            total = nb_tot[u]
            budget = max_edge_visits - examined
            examined += min(total, budget)
            if total > budget:
                budget_hit = True
            lo, hi = nb_lo[u], nb_hi[u]
            end = lo                     # neighbours within the edge-visit budget
            while end < hi and nb_pos[end] <= budget:
                end += 1
            keys, vals, ni, nf, hs, hr, n_nodes, h, _ = _relax(
                keys, vals, ni, nf, hs, hr, n_nodes, h, su, u, sc_u, nb_v, nb_w, nb_k, nb_i, lo, end, min_score)
            su = -1
        keys_l[i], vals_l[i], ni_l[i], nf_l[i] = keys, vals, ni, nf
        hs_l[i], hr_l[i], ord_l[i] = hs, hr, order
        scal[i, _NN], scal[i, _HS], scal[i, _NO], scal[i, _EX] = n_nodes, h, n_out, examined
        scal[i, _BH] = 1 if budget_hit else 0
        scal[i, _PEND] = su
        if not blocked:
            scal[i, _ST] = _DONE
            continue
        scal[i, _ST] = _BLOCKED
        need = _push(need, n_need, ni[su, _ROW])
        n_need += 1
        if prefetch > 0:
            picks = _prefetch(keys, vals, ni, nf, hs, hr, h, nb_ok, min_score, max_hops, prefetch)
            for r in picks:
                need = _push(need, n_need, r)
                n_need += 1
    return need[:n_need]


@njit
def _push(a, n, x):
    if n == a.shape[0]:
        a = _grow(a, n, n + 1)
    a[n] = x
    return a


@njit
def _prefetch(keys, vals, ni, nf, hs, hr, h, nb_ok, min_score, max_hops, prefetch):
    """The best ``prefetch`` queued rows of a search (live heap entries, not finalized, to be
    expanded, neighbours not in the store): they are likely popped soon, so the wave fetches
    them too. Which rows are prefetched changes the number of waves, never the results."""
    cs = np.empty(h, dtype=np.float64)
    cr = np.empty(h, dtype=np.int64)
    m = 0
    for j in range(h):
        s, r = hs[j], hr[j]
        if s < min_score or nb_ok[r] != 0:
            continue
        sv = _find(keys, vals, r)
        if ni[sv, _FLAG] or ni[sv, _HOPS] >= max_hops or s != nf[sv, 0]:
            continue
        cs[m], cr[m] = s, r
        m += 1
    if m <= prefetch:
        return cr[:m].copy()
    top = np.argsort(-cs[:m], kind="mergesort")[:prefetch]
    return cr[top]


@njit
def searches_results(ni_l, nf_l, ord_l, scal):
    """(res_ptr, rows, scores float32, parent, via_kind int8, via_id, hops int32): search i's
    results are ``[res_ptr[i], res_ptr[i + 1])``, in finalization order (score desc, row asc)."""
    n = scal.shape[0]
    res_ptr = np.zeros(n + 1, dtype=np.int64)
    parts = []
    for i in range(n):
        nf = nf_l[i]
        out = _output(ni_l[i], ord_l[i], scal[i, _NO], nf[:, 0])
        parts.append(out)
        res_ptr[i + 1] = res_ptr[i] + out[0].shape[0]
    return _concat_groups(parts, res_ptr)
