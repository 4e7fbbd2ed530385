"""The write-ahead log's changes applied to a mapped shard graph file (shardgraph.py).

The file holds the graph of the disk segments under the manifest's deletion overlay. The log
adds memtable rows after the disk rows, and may delete or replace disk events (its own overlay
entries) or add an id again that the overlay deleted. `merge_log` returns the arrays
`Shard._derived_graph` would give for that state, touching only what the log changes:

- *newly deleted* disk rows (deleted now, live in the file): their out-links and postings go;
- disk rows whose stored links name an affected id (a newly deleted row's id, or a memtable id,
  which may replace a disk version or revive a deleted id): their out-links are resolved again;
- memtable rows: their links, their place in the reverse links, their postings inserted in
  (entity, time, row) order.

Reverse links are rebuilt when disk out-links changed, else the memtable's are inserted. The
cost is a few passes over the link arrays and one copy of each array that grows (0.3 s at 3.4M
events and a 1,000-event memtable, against 8.8 s to derive everything: bench/README.md).
"""
from __future__ import annotations

import numpy as np

from .shard import Graph, _check_deleted_targets, _concat_csr, deleted_rows, overlay_arrays


def merge_log(base: Graph, sh) -> Graph:
    """The graph of shard `sh` (its disk segments, deletion overlay and log) from `base`, the
    graph file's arrays for the disk segments under the manifest's overlay alone."""
    nd, n = int(sh.manifest["n_rows"]), sh.n
    now_dead = sh._disk_deleted
    newly = np.zeros(nd, bool)
    if sh.log.overlay_add:
        file_dead = np.zeros(nd, bool)
        okeys = overlay_arrays(sh.disk_overlay)
        for seg in sh.disk_segments:
            file_dead[seg.row_base:seg.row_base + seg.n] = deleted_rows(seg.id_keys, seg.seq, okeys)
        newly = (now_dead == 1) & ~file_dead
    mt = sh.memtable
    mt_keys = np.asarray(mt.id_keys, np.uint64) if mt is not None else np.zeros(0, np.uint64)

    # disk rows whose out-links change: newly deleted ones, and those naming an affected id
    src_d, dst_d, typ_d = _edges(base.out_ptr, base.out_dst, base.out_type, 0)
    redo = newly.copy()
    dead_keys = (np.concatenate([np.asarray(s.id_keys) for s in sh.disk_segments])[newly] if newly.any()
                 else mt_keys[:0])
    affected = np.union1d(dead_keys, mt_keys)
    revived = bool(sh.disk_overlay) and bool(_member(mt_keys, overlay_arrays(sh.disk_overlay)[0]).any())
    if sh.log.overlay_add or revived:   # else every memtable id is new: no stored link names it
        link_ptr, link_keys, link_type = _disk_links(sh)
        hit = _member(np.asarray(link_keys, np.uint64), affected)
        if hit.any():
            redo[np.repeat(np.arange(nd, dtype=np.int64), np.diff(link_ptr))[hit]] = True
    if redo.any():
        rows = np.flatnonzero(redo & (now_dead == 0))      # newly deleted rows keep no links
        s_src, s_dst, s_typ = _resolve(sh, rows, link_ptr, link_keys, link_type)
        keep = ~redo[src_d]
        src_d, dst_d, typ_d = src_d[keep], dst_d[keep], typ_d[keep]
        at = np.searchsorted(src_d, s_src)                 # those rows have no kept edge left
        src_d, dst_d, typ_d = (np.insert(src_d, at, s_src), np.insert(dst_d, at, s_dst),
                               np.insert(typ_d, at, s_typ))
    # the memtable's own links
    if mt is not None:
        m_rows = np.arange(nd, n, dtype=np.int64)
        m_src, m_dst, m_typ = _resolve_rows(sh, np.repeat(m_rows, np.diff(mt.link_ptr)),
                                            np.asarray(mt.link_dst, np.uint64), np.asarray(mt.link_type))
    else:
        m_src, m_dst, m_typ = (np.zeros(0, np.int64),) * 2 + (np.zeros(0, np.int8),)
    out_src = np.concatenate([src_d, m_src])
    out_dst = np.concatenate([dst_d, m_dst])
    out_type = np.concatenate([typ_d, m_typ]).astype(np.int8)
    out_ptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(out_src, minlength=n), out=out_ptr[1:])

    in_ptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(out_dst, minlength=n), out=in_ptr[1:])
    if redo.any():       # disk out-links changed: rebuild the reverse links (sources ascending)
        order = np.argsort(out_dst, kind="stable")
        in_src, in_type = out_src[order], out_type[order]
    else:                # insert the memtable's links after the disk sources of each destination
        order = np.argsort(m_dst, kind="stable")
        e_dst, e_src, e_typ = m_dst[order], m_src[order], m_typ[order]
        on_disk = e_dst < nd
        pos = base.in_ptr[e_dst[on_disk] + 1]
        in_src = np.concatenate([np.insert(base.in_src, pos, e_src[on_disk]), e_src[~on_disk]])
        in_type = np.concatenate([np.insert(base.in_type, pos, e_typ[on_disk]), e_typ[~on_disk]]).astype(np.int8)

    ev_ptr, ev_ent = base.ev_ptr, base.ev_ent
    if mt is not None:
        ev_ptr = np.concatenate([ev_ptr, ev_ptr[-1] + np.asarray(mt.ev_ptr[1:], np.int64)])
        ev_ent = np.concatenate([ev_ent, np.asarray(mt.ev_ent, np.int64)])
    ent_ptr, ent_rows = _postings(base, sh, bool(newly.any()), nd)
    return Graph(base.times, out_ptr, np.ascontiguousarray(out_dst, np.int64), out_type, in_ptr,
                 np.ascontiguousarray(in_src, np.int64), np.ascontiguousarray(in_type, np.int8),
                 np.asarray(ev_ptr, np.int64), np.asarray(ev_ent, np.int64), ent_ptr, ent_rows)


def _edges(ptr, dst, typ, base: int):
    n = len(ptr) - 1
    return (np.repeat(np.arange(base, base + n, dtype=np.int64), np.diff(ptr)), np.asarray(dst, np.int64),
            np.asarray(typ, np.int8))


def _disk_links(sh):
    segs = sh.disk_segments
    ptr, keys, typ = _concat_csr([s.link_ptr for s in segs], [(s.link_dst, s.link_type) for s in segs], 2)
    return np.asarray(ptr, np.int64), np.asarray(keys, np.uint64), np.asarray(typ, np.int8)


def _member(keys: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """bool per key: in `sorted_set` (a binary search per key: `np.isin` would compare every key
    with every member of a small set)."""
    if len(sorted_set) == 0 or len(keys) == 0:
        return np.zeros(len(keys), bool)
    pos = np.minimum(np.searchsorted(sorted_set, keys), len(sorted_set) - 1)
    return sorted_set[pos] == keys


def _resolve(sh, rows: np.ndarray, link_ptr, link_keys, link_type):
    """Out-links of disk `rows` (ascending), resolved to the live row of each target id now."""
    lo, hi = link_ptr[rows], link_ptr[rows + 1]
    cnt = hi - lo
    idx = np.repeat(lo - np.concatenate([[0], np.cumsum(cnt)[:-1]]), cnt) + np.arange(int(cnt.sum()))
    return _resolve_rows(sh, np.repeat(rows, cnt), link_keys[idx], link_type[idx])


def _resolve_rows(sh, src: np.ndarray, keys: np.ndarray, types: np.ndarray):
    dst = sh.lookup_ids(keys)
    missing = dst < 0
    if missing.any():       # the target was deleted (the overlay knows it) or the file is damaged
        _check_deleted_targets(sh, keys[missing])
    return src[~missing], dst[~missing], np.asarray(types)[~missing].astype(np.int8)


def _bisect(ent_ptr, ent_rows, times, ent, t, r):
    """Per (entity, time): the first position in the entity's postings whose (time, row) is not
    below (t, r), all at once (postings are in (time, row) order within an entity)."""
    lo, hi = ent_ptr[ent].copy(), ent_ptr[ent + 1].copy()
    last = max(len(ent_rows) - 1, 0)
    while True:
        act = lo < hi
        if not act.any():
            return lo
        mid = (lo + hi) // 2
        mr = ent_rows[np.minimum(mid, last)]
        mt = times[mr]
        below = act & ((mt < t) | ((mt == t) & (mr < r)))
        lo, hi = np.where(below, mid + 1, lo), np.where(act & ~below, mid, hi)


def _postings(base: Graph, sh, newly_dead: bool, nd: int):
    """Entity postings: the file's without the newly deleted rows, with the memtable's."""
    times = np.asarray(sh.times)
    ent_ptr, ent_rows = base.ent_ptr, base.ent_rows
    counts = np.diff(ent_ptr)
    if newly_dead:
        gone = np.flatnonzero(sh._disk_deleted[ent_rows])     # the file has no row deleted before
        counts = counts - np.bincount(np.searchsorted(ent_ptr, gone, "right") - 1, minlength=len(counts))
        ent_rows = np.delete(ent_rows, gone)
        ent_ptr = np.zeros(len(counts) + 1, np.int64)
        np.cumsum(counts, out=ent_ptr[1:])
    mt = sh.memtable
    if mt is None:
        return np.asarray(ent_ptr, np.int64), np.asarray(ent_rows, np.int64)
    p_ent = np.repeat(np.asarray(mt.post_ent, np.int64), np.diff(mt.post_ptr))
    p_row = np.asarray(mt.post_rows, np.int64) + nd
    o = np.lexsort((p_row, times[p_row], p_ent))
    p_ent, p_row = p_ent[o], p_row[o]
    old = p_ent < len(counts)
    # after every disk posting at or before the memtable row's time (its row is after them all)
    pos = _bisect(ent_ptr, ent_rows, times, p_ent[old], times[p_row[old]], sh.n)
    new_ptr = np.zeros(sh.n_entities + 1, np.int64)
    cnt = np.bincount(p_ent, minlength=sh.n_entities)
    cnt[:len(counts)] += counts
    np.cumsum(cnt, out=new_ptr[1:])
    return new_ptr, np.concatenate([np.insert(ent_rows, pos, p_row[old]), p_row[~old]])
