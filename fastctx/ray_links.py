"""The derived links of a whole-corpus build (`derive.with_derived_links`) as Ray tasks over
blocks of events, with the same link arrays as the in-process pass.

Every rule is per event. Events are taken in the order the driver uses (time, then input row),
cut into blocks, and each task derives the links of its own rows only, by calling derive.py's
own functions on its rows plus what they need to look at:

* `similar` (`similarity_links`): a task gets its block's vectors plus the earlier rows that
  the function's own candidate window reaches (`similar_window_days`, capped at
  `similar_max_candidates` rows), and keeps the links of its own rows. Blocks are cut at
  multiples of the function's internal block (512 rows) and the halo starts on one too, so
  every matrix product has the in-process shapes and gives the same floats;
* `same_actor` (`actor_links`): a task gets its block's actor mentions plus those of the earlier
  events within `actor_window_days`;
* `co_mention`: the rarity weights need two corpus-wide counts (events, holders of each file),
  so the files' mentions are first gathered by tasks over blocks of rows and counted (a sum of
  per-block counts), and the holder index, in time order, goes to the object store once; then
  each task ranks the earlier holders of its own events with `comention_rank` (the rule itself)
  against the holder index `comention_holders` builds from the global counts;
* `title_reverts` (`title_revert_links`) looks arbitrarily far back: tasks find the `Revert "T"`
  events, then every event titled one of those T; the rule runs on the driver over those only,
  and its links join the batch before the rules below (re-lands follow them);
* `relands` (`reland_links`) looks arbitrarily far ahead, not back: tasks find the reverted
  events' rows, then every event whose title (`title_key`, the per-event cost) repeats a
  reverted title; `reland_links` then runs on the driver over those few events only.

Every mapping from a task's rows to global rows is increasing, so ties (by row) break as in
process, and each source row's links come in the same order; `with_links` then places them as
`with_derived_links` does. `ray_derived_links(batch, params) == with_derived_links(batch,
params)`, column for column (tests/test_ray_links.py).
"""
from __future__ import annotations

import inspect
from typing import Optional

import numpy as np

from . import derive
from .corpus import REVERT_CODES
from .params import BuildParams
from .ray_graph import block_bounds

SIM_BLOCK = inspect.signature(derive.similarity_links).parameters["block"].default
_EMPTY = (np.zeros(0, np.int64), np.zeros(0, np.int64))


class _Inline:
    """Runs the tasks in this process (same functions, no cluster): `executor="inline"`."""

    def task(self, fn):
        return fn

    def put(self, x):
        return x

    def get(self, refs):
        return refs


class _Ray:
    def __init__(self):
        import ray
        self.ray = ray

    def task(self, fn):
        remote = self.ray.remote(num_cpus=1)(fn)
        return remote.remote

    def put(self, x):
        return self.ray.put(x)

    def get(self, refs):
        return self.ray.get(refs)


def _mini_batch(times: np.ndarray, ptr: np.ndarray, names: list, texts: Optional[list] = None,
                ids: Optional[list] = None, links=None):
    """An EventBatch of just the columns a rule reads (the others empty placeholders)."""
    from .corpus import EventBatch
    n = len(times)
    src, to, ty = links if links is not None else (np.zeros(0, np.int64), [], np.zeros(0, np.int8))
    return EventBatch(ids=ids if ids is not None else [""] * n, times=np.asarray(times, np.int64),
                      tokens=np.zeros(n, np.int32), sources=[""] * n, kinds=[""] * n,
                      entity_ptr=np.asarray(ptr, np.int64), entity_names=names, link_src=src, link_to=to,
                      link_type=ty, texts=texts if texts is not None else [None] * n, attrs=[None] * n,
                      vectors=np.zeros((n, 0), np.float32))


# ---- tasks (each runs in a Ray worker) --------------------------------------------------------

def _scan_task(names: list, ptr: np.ndarray, row0: int, prefixes: tuple, ids: list, want_ids: frozenset) -> dict:
    """A block of rows: its mentions of prefixed entities (`rows_by_entity`), as (local id, global
    row), local ids in first-seen order; and the rows of the wanted ids (reverted events)."""
    n = len(ptr) - 1
    by = derive.rows_by_entity(_mini_batch(np.zeros(n, np.int64), ptr, names), prefixes)
    cnt = np.fromiter((len(rows) for rows in by.values()), np.int64, len(by))
    found = {eid: row0 + i for i, eid in enumerate(ids) if eid in want_ids} if want_ids else {}
    return dict(names=np.array(list(by), dtype=object), ent=np.repeat(np.arange(len(by), dtype=np.int64), cnt),
                row=row0 + np.fromiter((r for rows in by.values() for r in rows), np.int64, int(cnt.sum())),
                found=found)


def _revert_titles_task(texts: list, row0: int) -> list:
    """(row, reverted title) of a block's `Revert "T"` events (`reverted_title`)."""
    return [(row0 + i, k) for i, k in enumerate(derive.reverted_title(t) if t else None for t in texts) if k]


def _titles_task(texts: list, row0: int, wanted: frozenset) -> np.ndarray:
    """Rows of a block whose title (`title_key`) is one of the `wanted` titles."""
    return np.asarray([row0 + i for i, t in enumerate(texts) if t and derive.title_key(t) in wanted], np.int64)


def _similar_task(times: np.ndarray, vectors: np.ndarray, own_from: int, k: int, window_s: int, z: float,
                  max_candidates: int):
    """`similarity_links` over a block and its halo (rows in time order); links of rows >= own_from."""
    src, dst = derive.similarity_links(times, vectors, k, window_s, z, max_candidates)
    keep = src >= own_from
    return src[keep], dst[keep]


def _actor_task(times: np.ndarray, ptr: np.ndarray, names: list, own: np.ndarray, k: int, window_s: int,
                prefixes: tuple):
    """`actor_links` over a block's actor mentions and its halo's (rows in input order); the
    links of the `own` rows."""
    src, dst = derive.actor_links(_mini_batch(times, ptr, names), k, window_s, prefixes)
    keep = own[src]
    return src[keep], dst[keep]


# ---- the driver --------------------------------------------------------------------------------

def _cat(parts) -> tuple[np.ndarray, np.ndarray]:
    parts = [p for p in parts if len(p[0])]
    if not parts:
        return _EMPTY
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _merge_mentions(parts: list) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(sorted names, entity id per mention, row per mention, first-seen rank per name) from the
    scans of consecutive row blocks: a name is first seen in the first block holding it."""
    parts = [p for p in parts if len(p["names"])]
    if not parts:
        return np.array([], dtype=object), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    names = np.unique(np.concatenate([p["names"] for p in parts]))
    gids = [np.searchsorted(names, p["names"]).astype(np.int64) for p in parts]
    offset = np.cumsum([0] + [len(g) for g in gids])
    first = np.empty(len(names), np.int64)
    for b in range(len(gids) - 1, -1, -1):   # earlier blocks last: their ranks win
        first[gids[b]] = offset[b] + np.arange(len(gids[b]))
    return (names, np.concatenate([g[p["ent"]] for g, p in zip(gids, parts)]),
            np.concatenate([p["row"] for p in parts]), first)


def _similar(ex, batch, params, order, t, cuts) -> list:
    """One task per block of `cuts` rounded to SIM_BLOCK; returns the tasks' refs and row maps."""
    n, w, maxc = len(t), int(params.similar_window_days * 86400), params.similar_max_candidates
    bounds = np.unique(np.concatenate([[0, n], (cuts // SIM_BLOCK) * SIM_BLOCK]))
    task, out = ex.task(_similar_task), []
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        # the first internal block's candidates start here; later blocks' start no earlier
        c_lo = max(int(np.searchsorted(t, t[lo] - w, "left")), min(n, lo + SIM_BLOCK) - maxc, 0)
        h = lo - SIM_BLOCK * -(-(lo - c_lo) // SIM_BLOCK) if c_lo < lo else lo
        rows = order[h:hi]
        out.append((task(t[h:hi], np.ascontiguousarray(batch.vectors[rows]), lo - h, params.similar_k, w,
                         params.similar_z, maxc), rows))
    return out


def _actor(ex, params, order, t, cuts, names, ent, row) -> list:
    """One task per block: the block's actor mentions plus those within the window before it, on
    rows kept in input order (`actor_links` breaks ties by row)."""
    is_actor = np.fromiter((nm.startswith(tuple(params.actor_prefixes)) for nm in names.tolist()), bool, len(names))
    keep = is_actor[ent] if len(ent) else np.zeros(0, bool)
    if not keep.any():
        return []
    pos_of = np.empty(len(order), np.int64)
    pos_of[order] = np.arange(len(order))
    a_ent, a_row = ent[keep], row[keep]
    o = np.argsort(pos_of[a_row], kind="stable")      # mentions by time position
    a_ent, a_row = a_ent[o], a_row[o]
    a_pos = pos_of[a_row]
    w = int(params.actor_window_days * 86400)
    times = t[pos_of]                                 # by input row
    task, out = ex.task(_actor_task), []
    for lo, hi in zip(cuts[:-1].tolist(), cuts[1:].tolist()):
        h = int(np.searchsorted(t, t[lo] - w, "left")) if hi > lo else lo
        m0, m1 = np.searchsorted(a_pos, [h, hi], "left")
        if not (a_pos[m0:m1] >= lo).any():
            continue
        by_row = np.argsort(a_row[m0:m1], kind="stable")   # back to input order
        rows, local = np.unique(a_row[m0:m1][by_row], return_inverse=True)
        ptr = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(np.bincount(local.ravel(), minlength=len(rows)), out=ptr[1:])
        out.append((task(times[rows], ptr, names[a_ent[m0:m1][by_row]].tolist(), pos_of[rows] >= lo,
                         params.actor_k, w, tuple(params.actor_prefixes)), rows))
    return out


def _comention(ex, batch, params, n_tasks, names, ent, row, first) -> list:
    """The holder index from the global counts (`comention_holders`, as `comention_links` builds
    it), then one task per chunk of source rows."""
    pre = tuple(params.comention_prefixes)
    is_file = np.fromiter((nm.startswith(pre) for nm in names.tolist()), bool, len(names))
    keep = is_file[ent] if len(ent) else np.zeros(0, bool)
    n = len(batch)
    if n < 2 or not keep.any():
        return []
    f_ent, f_row = ent[keep], row[keep]
    # files numbered in first-seen order (the in-process grouping's dict order), counted globally
    u = np.unique(f_ent)
    rank = np.empty(len(u), np.int64)
    rank[np.argsort(first[u], kind="stable")] = np.arange(len(u))
    fid = rank[np.searchsorted(u, f_ent)]
    t = np.asarray(batch.times, np.int64)
    hold = derive.comention_holders(t, fid, f_row, len(u), n, params.comention_max_share)
    by_row = hold["by_row"]
    hold = ex.put(hold)
    src_rows = np.unique(by_row[:, 1])
    task, out = ex.task(derive.comention_rank), []
    for chunk in np.array_split(src_rows, max(1, min(n_tasks, len(src_rows)))):
        if len(chunk):
            out.append((task(chunk, t[chunk], hold, params.comention_k, int(params.comention_window_days * 86400),
                             int(params.comention_scale_days * 86400), derive.COMENTION_PER_ENTITY), None))
    return out


def _title_reverts(ex, batch, row_cuts) -> tuple[np.ndarray, np.ndarray]:
    """`title_revert_links` over the `Revert "T"` events without a reverts link and the events
    titled one of those T."""
    linked = derive.reverting_rows(batch)
    task = ex.task(_revert_titles_task)
    refs = [task(batch.texts[lo:hi], lo) for lo, hi in zip(row_cuts[:-1].tolist(), row_cuts[1:].tolist())]
    reverts = [(r, k) for part in ex.get(refs) for r, k in part if r not in linked]
    if not reverts:
        return _EMPTY
    task = ex.task(_titles_task)
    wanted = frozenset(k for _, k in reverts)
    refs = [task(batch.texts[lo:hi], lo, wanted) for lo, hi in zip(row_cuts[:-1].tolist(), row_cuts[1:].tolist())]
    rows = np.unique(np.concatenate([np.asarray([r for r, _ in reverts], np.int64)] + list(ex.get(refs))))
    sub = _mini_batch(np.asarray(batch.times, np.int64)[rows], np.zeros(len(rows) + 1, np.int64), [],
                      texts=[batch.texts[r] for r in rows.tolist()], ids=[batch.ids[r] for r in rows.tolist()])
    src, dst = derive.title_revert_links(sub)
    return rows[src], rows[dst]


def _relands(ex, batch, row_cuts, found: dict) -> tuple[np.ndarray, np.ndarray]:
    """`reland_links` over the reverts, the reverted events and the events repeating their titles."""
    at = np.flatnonzero(np.isin(np.asarray(batch.link_type), REVERT_CODES))
    x_rows = sorted(set(found.values()))
    wanted = frozenset(k for k in (derive.title_key(batch.texts[x]) for x in x_rows) if k)
    if not len(at) or not wanted:
        return _EMPTY
    task = ex.task(_titles_task)
    refs = [task(batch.texts[lo:hi], lo, wanted) for lo, hi in zip(row_cuts[:-1].tolist(), row_cuts[1:].tolist())]
    r_rows = np.asarray(batch.link_src, np.int64)[at]
    rows = np.unique(np.concatenate([r_rows, np.asarray(x_rows, np.int64)] + list(ex.get(refs))))
    sub = _mini_batch(np.asarray(batch.times, np.int64)[rows], np.zeros(len(rows) + 1, np.int64), [],
                      texts=[batch.texts[r] for r in rows.tolist()], ids=[batch.ids[r] for r in rows.tolist()],
                      links=(np.searchsorted(rows, r_rows), [batch.link_to[j] for j in at.tolist()],
                             np.asarray(batch.link_type, np.int8)[at]))
    src, dst = derive.reland_links(sub)
    return rows[src], rows[dst]


def ray_derived_links(batch, params: BuildParams, *, blocks: Optional[int] = None, executor: str = "ray"):
    """`derive.with_derived_links(batch, params)`, with the links derived by Ray tasks over
    `blocks` blocks of events (default two per CPU of the cluster; see the module doc).
    `executor="inline"` runs the same tasks in this process."""
    from .corpus import LINK_CODE
    from .errors import InvalidQueryError
    if executor not in ("ray", "inline"):
        raise InvalidQueryError(f"executor must be 'ray' or 'inline', got {executor!r}")
    if len(batch) < 2:
        return batch
    ex = _Inline() if executor == "inline" else _Ray()
    if isinstance(ex, _Ray) and not ex.ray.is_initialized():   # a task would start a default cluster
        raise InvalidQueryError("ray_derived_links needs a running Ray session (ray.init) or executor='inline'")
    if blocks is None:
        blocks = 2 * max(1, int(ex.ray.cluster_resources().get("CPU", 1))) if isinstance(ex, _Ray) else 1
    n = len(batch)
    times = np.asarray(batch.times, np.int64)
    order = np.lexsort((np.arange(n), times))      # the in-process time order: time, then row
    t = times[order]
    cuts = block_bounds(n, blocks)                 # positions in that order; and rows for scans
    # one scan of the rows: prefixed mentions (same_actor, co_mention) and the reverted events
    prefixes = tuple(params.actor_prefixes if params.actor_k > 0 else ()) + \
        tuple(params.comention_prefixes if params.comention_k > 0 else ())
    if params.title_reverts:   # first: the re-lands below follow them (as in process)
        batch = derive.with_link_parts(batch, [(_title_reverts(ex, batch, cuts), LINK_CODE["title_reverts"])])
    rev = np.isin(np.asarray(batch.link_type), REVERT_CODES)
    want_ids = frozenset(batch.link_to[j] for j in np.flatnonzero(rev).tolist()) if params.relands else frozenset()
    scans = []
    if prefixes or want_ids:
        scan, eptr = ex.task(_scan_task), batch.entity_ptr
        scans = [scan(batch.entity_names[int(eptr[lo]):int(eptr[hi])], eptr[lo:hi + 1] - eptr[lo], lo,
                      prefixes, batch.ids[lo:hi] if want_ids else [], want_ids)
                 for lo, hi in zip(cuts[:-1].tolist(), cuts[1:].tolist())]
    sim = _similar(ex, batch, params, order, t, cuts) if params.similar_k > 0 else []   # runs meanwhile
    names, ent, row, first = _merge_mentions([])
    found: dict = {}
    if scans:
        parts = ex.get(scans)
        names, ent, row, first = _merge_mentions(parts)
        for p in parts:
            for eid, r in p["found"].items():
                found[eid] = max(r, found.get(eid, -1))
    act = _actor(ex, params, order, t, cuts, names, ent, row) if params.actor_k > 0 and params.actor_prefixes else []
    com = _comention(ex, batch, params, len(cuts) - 1, names, ent, row, first) \
        if params.comention_k > 0 and params.comention_prefixes else []
    rel = _relands(ex, batch, cuts, found) if params.relands else _EMPTY

    def collect(jobs):
        got = ex.get([ref for ref, _ in jobs])
        return _cat([(m[s], m[d]) if m is not None else (s, d) for (s, d), (_, m) in zip(got, jobs)])

    parts = []
    if params.similar_k > 0:
        parts.append((collect(sim), LINK_CODE["similar"]))
    if params.actor_k > 0:
        parts.append((collect(act), LINK_CODE["same_actor"]))
    if params.relands:
        parts.append((rel, LINK_CODE["relands"]))
    if params.cocite_k > 0:   # over the explicit links only (a few per event): on the driver
        parts.append((derive.cocitation_links(batch, params.cocite_k, params.cocite_types), LINK_CODE["co_cited"]))
    if params.comention_k > 0:
        parts.append((collect(com), LINK_CODE["co_mention"]))
    return derive.with_link_parts(batch, parts)
