"""The whole-corpus pass of a partitioned build (`partition.global_graph`) as Ray tasks over
ranges, with the same arrays as the in-process pass.

`global_graph` is four sorts and joins over all events; each is cut so that every task owns a
range and computes its part of the result exactly:

* **global order**: a sample-partitioned sort by (time, input row). The driver picks B - 1
  (time, row) splitters from a small sample; each task sorts a block of input rows and cuts it
  at the splitters; a task per range merges its pieces. A row's rank is its range's offset plus
  its position there. Splitters are (time, row) pairs, so a run of equal times may straddle two
  ranges and still sorts as in process;
* **link resolution**: a join of link target keys against id keys, partitioned by key range
  (the keys are 64-bit hashes, so B equal slices of the key space balance). Each task sorts its
  range's ids and resolves the targets that fall in it; unresolved targets are dangling and
  dropped, as in process;
* **per rank range** (the B ranges of the order): the out-links of the range's rows sorted by
  (source, target key, link number), the in-links by (target, source, link number), the
  events' entity lists in rank order, and supersession: which later event superseded each of
  the range's rows is a minimum over candidates keyed by the old row (the explicit
  `supersedes` / `reverts` / `relands` links into it, and its successor in each slot entity's
  postings; whether a re-land replaces a revert needs only the row's own links), so a task
  that gets every candidate of its rows computes their overlay exactly;
* **entity postings** (each entity's rows in rank order) per entity-id range, ranges balanced by
  mention counts; the same tasks pair each slot entity's consecutive slot-kind rows (the
  implicit supersession candidates) and send each pair to the rank range of its older row;
* **per shard** (`ray_sidecars`, what a Ray build runs): each rank range also cuts its rows'
  links and overlay by shard, each entity range sends every shard the holders of the entities
  it holds, and one task per shard assembles `partition.sidecar_arrays` from those pieces, so
  the whole-corpus graph is never assembled anywhere.

Pieces go from task to task through the object store; the driver holds the refs, the B + 1
range bounds, the order and the ranks (a concatenation and a scatter, no sort). For
`ray_global_graph` it concatenates the tasks' final pieces into the arrays `global_graph`
returns (the CSR pointers are cumulative sums of per-range counts). Ties break as in process at
every step (by input row, then link number), so `ray_global_graph(batch, params, parts) ==
global_graph(batch, params, parts)` array for array, and each shard's sidecar equals
`sidecar_arrays`'s, key order included (tests/test_ray_order.py).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .corpus import REVERT_CODES
from .csr import ranges
from .params import BuildParams
from .ray_graph import block_bounds
from .supersession import _EXPLICIT, earliest_superseder, replaced_reverts

_I64 = np.zeros(0, np.int64)


class _Exec:
    """Runs a task with `k` results: as a Ray task (`ray`), or in this process (`inline`)."""

    def __init__(self, executor: str):
        from .errors import InvalidQueryError
        if executor not in ("ray", "inline"):
            raise InvalidQueryError(f"executor must be 'ray' or 'inline', got {executor!r}")
        self.ray, self._remote = None, {}
        if executor == "ray":
            import ray
            if not ray.is_initialized():   # a task would start a default cluster
                raise InvalidQueryError("ray_global_graph needs a running Ray session (ray.init) "
                                        "or executor='inline'")
            self.ray = ray

    def call(self, fn, k: int, *args) -> list:
        if self.ray is None:
            return list(fn(*args))
        key = (fn, k)
        if key not in self._remote:
            self._remote[key] = self.ray.remote(num_cpus=1, num_returns=k)(fn if k > 1 else _only)
        if k == 1:
            return [self._remote[key].remote(fn, *args)]
        return list(self._remote[key].remote(*args))

    def put(self, x):
        return x if self.ray is None else self.ray.put(x)

    def get(self, refs: list) -> list:
        return list(refs) if self.ray is None else self.ray.get(list(refs))


def _only(fn, *args):
    return fn(*args)[0]


def _split(bucket: np.ndarray, n_buckets: int, *cols: np.ndarray) -> list:
    """`cols` grouped by `bucket` (stable: each group keeps the rows' order): one tuple per bucket."""
    o = np.argsort(bucket, kind="stable")
    cuts = np.zeros(n_buckets + 1, np.int64)
    np.cumsum(np.bincount(bucket, minlength=n_buckets), out=cuts[1:])
    cols = [c[o] for c in cols]
    return [tuple(c[cuts[b]:cuts[b + 1]] for c in cols) for b in range(n_buckets)]


def _cat(pieces: list, i: int, dtype) -> np.ndarray:
    return np.concatenate([p[i] for p in pieces]).astype(dtype, copy=False) if pieces else np.zeros(0, dtype)


# ---- tasks (each runs in a Ray worker) --------------------------------------------------------

def _sort_block(t: np.ndarray, row0: int, split_t: np.ndarray, split_r: np.ndarray) -> list:
    """A block of input rows sorted by (time, row) and cut at the splitters: one piece per range."""
    rows = row0 + np.arange(len(t), dtype=np.int64)
    o = np.argsort(t, kind="stable")            # rows ascend, so this is (time, row) order
    ts, rs = np.asarray(t, np.int64)[o], rows[o]
    cuts = [0]
    for st, sr in zip(split_t.tolist(), split_r.tolist()):   # count of (t, r) < (st, sr)
        a, b = np.searchsorted(ts, st, "left"), np.searchsorted(ts, st, "right")
        cuts.append(int(a + np.searchsorted(rs[a:b], sr, "left")))
    cuts.append(len(ts))
    return [(ts[a:b], rs[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]


def _merge_range(*pieces) -> list:
    """One range of the order: its input rows and times, sorted by (time, row)."""
    t, r = _cat(pieces, 0, np.int64), _cat(pieces, 1, np.int64)
    o = np.lexsort((r, t))
    return [(r[o], t[o])]


def _map_block(rank: np.ndarray, row0: int, id_keys: np.ndarray, kinds: list, slot_kinds: tuple,
               ptr: np.ndarray, ents: np.ndarray, link0: int, to_keys: np.ndarray, link_src: np.ndarray,
               link_type: np.ndarray, key_splits: np.ndarray, rank_bounds: np.ndarray,
               ent_bounds: np.ndarray, full: bool) -> list:
    """A block of input rows (and a chunk of links) sent on: ids and link targets by key range,
    the events' mentions by rank range (when `full`) and by entity range. 4 x B pieces."""
    nb = len(rank_bounds) - 1
    own = np.asarray(rank[row0:row0 + len(id_keys)], np.int64)
    ids = _split(np.searchsorted(key_splits, id_keys, "right"), nb, id_keys, own)
    src = np.asarray(rank[link_src], np.int64) if len(link_src) else _I64
    tgt = _split(np.searchsorted(key_splits, to_keys, "right"), nb, to_keys,
                 link0 + np.arange(len(to_keys), dtype=np.int64), src, np.asarray(link_type, np.int8))
    m_rank = np.repeat(own, np.diff(ptr))
    slot = np.isin(np.asarray(kinds, dtype=object), list(slot_kinds)) if len(kinds) else np.zeros(0, bool)
    m_slot = np.repeat(slot, np.diff(ptr))
    by_rank = _split(np.searchsorted(rank_bounds, m_rank, "right") - 1, nb, m_rank, ents) if full else [None] * nb
    by_ent = _split(np.searchsorted(ent_bounds, ents, "right") - 1, nb, ents, m_rank, m_slot)
    return ids + tgt + by_rank + by_ent


def _join_keys(nb: int, rank_bounds: np.ndarray, *pieces) -> list:
    """One key range: its ids sorted, its link targets resolved against them. The resolved links
    by source rank range and by target rank range (2 x B pieces), then the number resolved."""
    ids, tgt = pieces[:nb], pieces[nb:]
    keys, rows = _cat(ids, 0, np.uint64), _cat(ids, 1, np.int64)
    o = np.argsort(keys)                        # ids are unique, so any sort gives one answer
    keys, rows = keys[o], rows[o]
    tk, idx, src, typ = _cat(tgt, 0, np.uint64), _cat(tgt, 1, np.int64), _cat(tgt, 2, np.int64), _cat(tgt, 3, np.int8)
    if len(keys):
        pos = np.minimum(np.searchsorted(keys, tk), len(keys) - 1)
        ok = keys[pos] == tk
    else:
        pos, ok = np.zeros(len(tk), np.int64), np.zeros(len(tk), bool)
    tk, idx, src, typ, dst = tk[ok], idx[ok], src[ok], typ[ok], rows[pos[ok]]
    out = _split(np.searchsorted(rank_bounds, src, "right") - 1, nb, src, tk, idx, dst, typ)
    into = _split(np.searchsorted(rank_bounds, dst, "right") - 1, nb, dst, src, idx, typ)
    return out + into + [int(ok.sum())]


def _postings(e0: int, names: np.ndarray, slot_prefixes: tuple, rank_bounds: np.ndarray, shard_no,
              n_shards: int, full: bool, *pieces) -> list:
    """One entity range: each entity's rows in rank order (when `full`), then each slot entity's consecutive
    slot-kind rows as (older, newer) pairs by the older row's rank range (1 + B pieces); with
    shards, then for each shard the holders (entity, shard) of the entities it holds (+ S)."""
    nb = len(rank_bounds) - 1
    ent, rank, slot_kind = _cat(pieces, 0, np.int64), _cat(pieces, 1, np.int64), _cat(pieces, 2, bool)
    o = np.lexsort((rank, ent))
    ent, rank, slot_kind = ent[o], rank[o], slot_kind[o]
    is_slot = np.fromiter((str(s).startswith(slot_prefixes) for s in names.tolist()), bool, len(names))
    keep = slot_kind & is_slot[ent - e0] if len(ent) else np.zeros(0, bool)
    se, sr = ent[keep], rank[keep]
    same = se[1:] == se[:-1]
    old, new = sr[:-1][same], sr[1:][same]
    out = [rank if full else None] + _split(np.searchsorted(rank_bounds, old, "right") - 1, nb, old, new)
    if n_shards:
        # (entity, holder shard) pairs, sorted; each holder receives every pair of its entities
        pair = np.unique(ent * n_shards + np.asarray(shard_no[rank], np.int64))
        p_ent, p_sh = pair // n_shards, pair % n_shards
        starts = np.searchsorted(p_ent, p_ent, "left")
        cnt = np.searchsorted(p_ent, p_ent, "right") - starts
        idx = ranges(starts, cnt)
        out += _split(np.repeat(p_sh, cnt), n_shards, p_ent[idx], p_sh[idx])
    return out


def _rank_range(r0: int, r1: int, times: np.ndarray, shard_no, n_shards: int, full: bool, nb: int,
                *pieces) -> list:
    """One rank range [r0, r1): its rows' out-links, in-links, entity lists and supersession (when
    `full`); with shards, then each shard's part of its sidecar from this range (+ S pieces)."""
    size = r1 - r0
    outs, ins, ments, slots = (pieces[i * nb:(i + 1) * nb] for i in range(4))
    src, dkey, idx, dst, typ = (_cat(outs, i, d) for i, d in enumerate((np.int64, np.uint64, np.int64,
                                                                         np.int64, np.int8)))
    o = np.lexsort((idx, dkey, src))
    res = dict(out_cnt=np.bincount(src - r0, minlength=size), out_dst=dst[o], out_type=typ[o])
    reverters = src[np.isin(typ, REVERT_CODES)]     # this range's rows that revert something
    dst, src, idx, typ = (_cat(ins, i, d) for i, d in enumerate((np.int64, np.int64, np.int64, np.int8)))
    o = np.lexsort((idx, src, dst))
    dst, src, typ = dst[o], src[o], typ[o]
    res.update(in_cnt=np.bincount(dst - r0, minlength=size), in_src=src, in_type=typ)
    if full:
        m_rank, m_ent = _cat(ments, 0, np.int64), _cat(ments, 1, np.int64)
        o = np.argsort(m_rank, kind="stable")   # pieces come in input order: an event's own order kept
        res.update(ev_cnt=np.bincount(m_rank - r0, minlength=size), ev_ent=m_ent[o])
    # supersession: the earliest superseder of each of this range's rows (as supersession_overlay)
    ex = np.flatnonzero(np.isin(typ, _EXPLICIT))
    ex = ex[~replaced_reverts(times, src[ex], dst[ex], typ[ex], reverters)]
    by, when = earliest_superseder(times, np.concatenate([dst[ex], _cat(slots, 0, np.int64)]),
                                   np.concatenate([src[ex], _cat(slots, 1, np.int64)]), r0, size)
    res.update(sup_by=by, sup_at=when)
    return [res if full else None] + (_shard_pieces(r0, res, times, shard_no, n_shards) if n_shards else [])


def _shard_pieces(r0: int, res: dict, times: np.ndarray, shard_no, n_shards: int) -> list:
    """Each shard's rows of a rank range with their links and overlay (the `sidecar_arrays`
    columns), and the (newer, older) supersession pairs whose newer row the shard holds."""
    size = len(res["sup_by"])
    own = np.asarray(shard_no[r0:r0 + size], np.int64)
    rows = r0 + np.arange(size, dtype=np.int64)
    out = []
    out_ptr = np.zeros(size + 1, np.int64)
    np.cumsum(res["out_cnt"], out=out_ptr[1:])
    in_ptr = np.zeros(size + 1, np.int64)
    np.cumsum(res["in_cnt"], out=in_ptr[1:])
    sup_by, sup_at = res["sup_by"], res["sup_at"]
    olds = np.flatnonzero(sup_by >= 0)
    by = sup_by[olds]
    by_shard = np.asarray(shard_no[by], np.int64)
    for k in range(n_shards):
        loc = np.flatnonzero(own == k)
        o_idx = ranges(out_ptr[loc], res["out_cnt"][loc])
        i_idx = ranges(in_ptr[loc], res["in_cnt"][loc])
        o_dst, i_src = res["out_dst"][o_idx], res["in_src"][i_idx]
        s_by = sup_by[loc]
        mine = by_shard == k
        r_old = rows[olds[mine]]
        out.append(dict(
            grow=rows[loc], out_cnt=res["out_cnt"][loc], out_dst=o_dst, out_type=res["out_type"][o_idx],
            out_time=np.asarray(times[o_dst], np.int64), out_shard=np.asarray(shard_no[o_dst], np.int32),
            in_cnt=res["in_cnt"][loc], in_src=i_src, in_type=res["in_type"][i_idx],
            in_time=np.asarray(times[i_src], np.int64), in_shard=np.asarray(shard_no[i_src], np.int32),
            sup_by=s_by, sup_at=sup_at[loc],
            sup_shard=np.where(s_by >= 0, np.asarray(shard_no[np.maximum(s_by, 0)], np.int64), -1).astype(np.int32),
            rev_by=by[mine], rev_rows=r_old, rev_time=np.asarray(times[r_old], np.int64),
            rev_shard=np.asarray(shard_no[r_old], np.int32)))
    return out


def _sidecar(n_shards: int, ent_count: np.ndarray, nb: int, *pieces) -> list:
    """One shard's `sidecar_arrays` from the ranges' pieces (in rank order) and the entity
    ranges' holder pieces (in entity order); same keys in the same order, same dtypes."""
    rng, hold = pieces[:nb], pieces[nb:]
    cat = (lambda key, dtype: np.concatenate([p[key] for p in rng]).astype(dtype, copy=False))
    grow = cat("grow", np.int64)

    def ptr(key: str) -> np.ndarray:
        p = np.zeros(len(grow) + 1, np.int64)
        np.cumsum(cat(key, np.int64), out=p[1:])
        return p

    h_ent, h_sh = _cat(hold, 0, np.int64), _cat(hold, 1, np.int64)
    gent, h_cnt = np.unique(h_ent, return_counts=True)
    hold_ptr = np.zeros(len(gent) + 1, np.int64)
    np.cumsum(h_cnt, out=hold_ptr[1:])
    r_by, r_rows = cat("rev_by", np.int64), cat("rev_rows", np.int64)
    o = np.lexsort((r_rows, r_by))
    rev_ptr = np.zeros(len(grow) + 1, np.int64)
    np.cumsum(np.searchsorted(r_by[o], grow, "right") - np.searchsorted(r_by[o], grow, "left"), out=rev_ptr[1:])
    return [dict(
        grow=grow, gent=gent.astype(np.int64), ent_df=np.asarray(ent_count, np.int64)[gent], hold_ptr=hold_ptr,
        hold=h_sh.astype(np.int32),
        out_ptr=ptr("out_cnt"), out_dst=cat("out_dst", np.int64), out_type=cat("out_type", np.int8),
        out_time=cat("out_time", np.int64), out_shard=cat("out_shard", np.int32),
        in_ptr=ptr("in_cnt"), in_src=cat("in_src", np.int64), in_type=cat("in_type", np.int8),
        in_time=cat("in_time", np.int64), in_shard=cat("in_shard", np.int32),
        sup_by=cat("sup_by", np.int64), sup_at=cat("sup_at", np.int64), sup_shard=cat("sup_shard", np.int32),
        rev_ptr=rev_ptr, rev_rows=r_rows[o], rev_time=cat("rev_time", np.int64)[o],
        rev_shard=cat("rev_shard", np.int32)[o])]


# ---- the driver --------------------------------------------------------------------------------

def _splitters(times: np.ndarray, nb: int, per_range: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """nb - 1 (time, row) splitters: quantiles of a sample of evenly spaced input rows."""
    n = len(times)
    rows = np.unique(np.linspace(0, n - 1, min(n, per_range * nb)).round().astype(np.int64))
    t = np.asarray(times[rows], np.int64)
    o = np.lexsort((rows, t))
    pick = (np.arange(1, nb) * len(rows)) // nb
    return t[o][pick], rows[o][pick]


def _run(ex: _Exec, batch, params: BuildParams, parts: dict, blocks: Optional[int], shard_in, n_shards: int,
         full: bool) -> dict:
    """The task graph (see the module doc); returns the order, times, ranks and the refs of the
    tasks' last pieces."""
    n, m = len(batch), len(batch.link_to)
    if blocks is None:
        blocks = 2 * max(1, int(ex.ray.cluster_resources().get("CPU", 1))) if ex.ray else 1
    ev = block_bounds(n, blocks)
    nb = len(ev) - 1
    times_in = np.asarray(batch.times, np.int64)
    # -- global order
    split_t, split_r = _splitters(times_in, nb)
    cut = [ex.call(_sort_block, nb, times_in[lo:hi], lo, split_t, split_r)
           for lo, hi in zip(ev[:-1].tolist(), ev[1:].tolist())]
    ranges = ex.get([ex.call(_merge_range, 1, *[c[r] for c in cut])[0] for r in range(nb)])
    order = np.concatenate([rows for rows, _ in ranges])
    times = np.concatenate([t for _, t in ranges])
    rank_bounds = np.zeros(nb + 1, np.int64)
    np.cumsum([len(rows) for rows, _ in ranges], out=rank_bounds[1:])
    del ranges
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    shard_no = np.asarray(shard_in, np.int64)[order] if n_shards else None   # by rank
    # -- ranges of keys (equal slices of the 64-bit hash space) and of entities (by mentions)
    key_splits = np.array([(j << 64) // nb for j in range(1, nb)], np.uint64)
    uniq, ent_count = parts["uniq"], np.asarray(parts["ent_count"], np.int64)
    cum = np.cumsum(ent_count)
    ent_bounds = np.concatenate([[0], np.searchsorted(cum, np.linspace(0, cum[-1] if len(cum) else 0, nb + 1)[1:-1],
                                                      "right"), [len(uniq)]]).astype(np.int64)
    rank_ref, times_ref, shard_ref = ex.put(rank), ex.put(times), ex.put(shard_no)
    lk = np.linspace(0, m, nb + 1).round().astype(np.int64)
    eptr, inverse = parts["ent_ptr_ev"], parts["inverse"]
    maps = [ex.call(_map_block, 4 * nb, rank_ref, lo, parts["id_keys"][lo:hi], batch.kinds[lo:hi],
                    tuple(params.slot_kinds), eptr[lo:hi + 1] - eptr[lo], inverse[int(eptr[lo]):int(eptr[hi])],
                    int(lk[b]), parts["to_keys"][lk[b]:lk[b + 1]], batch.link_src[lk[b]:lk[b + 1]],
                    batch.link_type[lk[b]:lk[b + 1]], key_splits, rank_bounds, ent_bounds, full)
            for b, (lo, hi) in enumerate(zip(ev[:-1].tolist(), ev[1:].tolist()))]
    piece = (lambda kind, j: [mp[kind * nb + j] for mp in maps])   # kind: 0 ids, 1 targets, 2/3 mentions
    joins = [ex.call(_join_keys, 2 * nb + 1, nb, rank_bounds, *piece(0, j), *piece(1, j)) for j in range(nb)]
    posts = [ex.call(_postings, 1 + nb + n_shards, int(ent_bounds[e]), uniq[ent_bounds[e]:ent_bounds[e + 1]],
                     tuple(params.slot_prefixes), rank_bounds, shard_ref, n_shards, full, *piece(3, e))
             for e in range(nb)]
    outs = [ex.call(_rank_range, 1 + n_shards, int(rank_bounds[r]), int(rank_bounds[r + 1]), times_ref, shard_ref,
                    n_shards, full, nb, *[jn[r] for jn in joins], *[jn[nb + r] for jn in joins],
                    *piece(2, r), *[p[1 + r] for p in posts]) for r in range(nb)]
    n_links = int(sum(ex.get([jn[2 * nb] for jn in joins])))
    return dict(n=n, nb=nb, order=order, rank=rank, times=times, shard_no=shard_no, n_links=n_links,
                dangling=m - n_links, posts=posts, outs=outs)


def _start(batch, params: BuildParams, parts: Optional[dict], executor: str):
    from .partition import local_parts
    ex = _Exec(executor)
    return ex, (local_parts(batch, params) if parts is None else parts)


def ray_global_graph(batch, params: BuildParams, parts: Optional[dict] = None, *, blocks: Optional[int] = None,
                     executor: str = "ray") -> dict:
    """`partition.global_graph(batch, params, parts)` computed by Ray tasks over B ranges (default
    two per CPU of the cluster; see the module doc). `parts`: `local_parts` / `ray_parts`
    (computed in process when absent). `executor="inline"` runs the same tasks in this process."""
    from .partition import global_graph
    ex, parts = _start(batch, params, parts, executor)
    n = len(batch)
    if n == 0:
        return global_graph(batch, params, parts)
    st = _run(ex, batch, params, parts, blocks, None, 0, True)
    res = ex.get([o[0] for o in st["outs"]])
    ent_rows = np.concatenate(ex.get([p[0] for p in st["posts"]])).astype(np.int64, copy=False)
    cat = (lambda k, dtype: np.concatenate([r[k] for r in res]).astype(dtype, copy=False))

    def ptr(k: str) -> np.ndarray:
        p = np.zeros(n + 1, np.int64)
        np.cumsum(cat(k, np.int64), out=p[1:])
        return p

    uniq = parts["uniq"]
    ent_ptr = np.zeros(len(uniq) + 1, np.int64)
    np.cumsum(parts["ent_count"], out=ent_ptr[1:])
    return dict(n=n, order=st["order"], rank=st["rank"], times=st["times"], out_ptr=ptr("out_cnt"),
                out_dst=cat("out_dst", np.int64), out_type=cat("out_type", np.int8), in_ptr=ptr("in_cnt"),
                in_src=cat("in_src", np.int64), in_type=cat("in_type", np.int8), ev_ptr=ptr("ev_cnt"),
                ev_ent=cat("ev_ent", np.int64), ent_names=uniq, ent_ptr=ent_ptr, ent_rows=ent_rows,
                sup_by=cat("sup_by", np.int64), sup_at=cat("sup_at", np.int64), n_links=st["n_links"],
                dangling=st["dangling"])


def ray_sidecars(batch, params: BuildParams, parts: Optional[dict], shard_in: np.ndarray, n_shards: int, *,
                 blocks: Optional[int] = None, executor: str = "ray") -> dict:
    """The whole-corpus pass of a partitioned build without the whole graph on the driver: the
    same tasks, then one task per shard assembling `partition.sidecar_arrays(g, shard_no, k,
    n_shards)` from the ranges' pieces. `shard_in`: each event's shard, by input row. Returns
    n, order, shard_no (by global row), n_links, dangling, n_entities and `sidecars`, one ref
    per shard (the arrays themselves with `executor="inline"`)."""
    ex, parts = _start(batch, params, parts, executor)
    if len(batch) == 0:
        from .partition import global_graph, sidecar_arrays
        g = global_graph(batch, params, parts)
        no = np.zeros(0, np.int64)
        return dict(n=0, order=g["order"], shard_no=no, n_links=0, dangling=g["dangling"],
                    n_entities=len(parts["uniq"]),
                    sidecars=[ex.put(sidecar_arrays(g, no, k, n_shards)) for k in range(n_shards)])
    st = _run(ex, batch, params, parts, blocks, shard_in, n_shards, False)
    nb, count = st["nb"], ex.put(np.asarray(parts["ent_count"], np.int64))
    sidecars = [ex.call(_sidecar, 1, n_shards, count, nb, *[o[1 + k] for o in st["outs"]],
                        *[p[1 + nb + k] for p in st["posts"]])[0] for k in range(n_shards)]
    return dict(n=st["n"], order=st["order"], shard_no=st["shard_no"], n_links=st["n_links"],
                dangling=st["dangling"], n_entities=len(parts["uniq"]), sidecars=sidecars)
