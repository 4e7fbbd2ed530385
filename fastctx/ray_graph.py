"""The per-event part of the whole-corpus pass as partial aggregations over blocks, on Ray.

`global_graph` (fastctx/partition.py) needs, besides the time, link and kind columns, a few
per-event inputs whose cost is a Python loop over events: the derived entities of every event
(text terms and words), the 64-bit keys of the ids and link targets, and the entity vocabulary
(sorted names, each mention's entity id, each entity's mention count). `ray_parts` computes them
block by block in Ray tasks, each task returning a partial result for its contiguous block of
events (its sorted local vocabulary with counts, its mentions as local ids, its keys), and merges
the partials on the driver with vectorized numpy only:

* vocabulary: the sorted union of the blocks' sorted names (entity-vocabulary sized);
* entity ids: each block's local ids mapped through `searchsorted` of its names in the union;
* frequencies: the blocks' counts summed per global id;
* keys and per-event entity counts: concatenated in block order.

The merge is exact, so `global_graph(batch, params, parts=ray_parts(...))` returns the arrays of
`global_graph(batch, params)`, and the shard files are the same bytes.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .params import BuildParams


def _block_partial(texts: list, attrs: list, names: list, ptr: np.ndarray, ids: list, link_to: list,
                   terms_on: bool, words_on: bool) -> dict:
    """One block's partial result (runs in a Ray task): the same derivation as `with_derived`,
    event by event, then the block's own vocabulary and keys."""
    from .columns import keys64
    from .derive import event_acl, event_derived
    n = len(ids)
    out: list = []
    dptr = np.zeros(n + 1, np.int64)
    for i in range(n):
        own = names[int(ptr[i]):int(ptr[i + 1])]
        out.extend(own)
        out.extend(event_derived(texts[i], own, event_acl(attrs[i]), terms_on, words_on))
        dptr[i + 1] = len(out)
    arr = np.asarray(out, dtype=object)
    if len(arr):
        uniq, inv, cnt = np.unique(arr, return_inverse=True, return_counts=True)
    else:
        uniq, inv, cnt = np.array([], dtype=object), np.zeros(0, np.int64), np.zeros(0, np.int64)
    return dict(uniq=uniq, inv=inv.astype(np.int64).ravel(), count=cnt.astype(np.int64),
                per_event=np.diff(dptr), id_keys=keys64(ids), to_keys=keys64(link_to))


def merge_partials(parts: list) -> dict:
    """The `local_parts` dict of the whole corpus from the blocks' partials, in block order."""
    if parts:
        uniq = np.unique(np.concatenate([p["uniq"] for p in parts]))
    else:
        uniq = np.array([], dtype=object)
    count = np.zeros(len(uniq), np.int64)
    inverse = []
    for p in parts:
        gid = np.searchsorted(uniq, p["uniq"]).astype(np.int64) if len(p["uniq"]) else np.zeros(0, np.int64)
        np.add.at(count, gid, p["count"])
        inverse.append(gid[p["inv"]])
    per_event = np.concatenate([p["per_event"] for p in parts]) if parts else np.zeros(0, np.int64)
    ent_ptr_ev = np.zeros(len(per_event) + 1, np.int64)
    np.cumsum(per_event, out=ent_ptr_ev[1:])
    cat = (lambda k: np.concatenate([p[k] for p in parts]) if parts else np.zeros(0, np.uint64))
    return dict(id_keys=cat("id_keys"), to_keys=cat("to_keys"), ent_ptr_ev=ent_ptr_ev, uniq=uniq,
                inverse=np.concatenate(inverse) if inverse else np.zeros(0, np.int64), ent_count=count)


def block_bounds(n: int, blocks: int) -> np.ndarray:
    """`blocks` + 1 boundaries of contiguous, nearly equal blocks of n rows."""
    blocks = max(1, min(blocks, max(n, 1)))
    return np.linspace(0, n, blocks + 1).round().astype(np.int64)


def ray_parts(batch, params: BuildParams, *, blocks: Optional[int] = None) -> dict:
    """`local_parts(batch, params)`, computed as one Ray task per block of events (default: two
    blocks per CPU of the cluster) and merged on the driver (see the module doc)."""
    import ray
    if blocks is None:
        blocks = 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))
    n, m = len(batch), len(batch.link_to)
    ev = block_bounds(n, blocks)
    lk = np.linspace(0, m, len(ev)).round().astype(np.int64)   # link chunks, one per task
    terms_on, words_on = getattr(params, "text_terms", True), getattr(params, "text_words", True)
    task = ray.remote(num_cpus=1)(_block_partial)
    eptr = batch.entity_ptr
    refs = []
    for b in range(len(ev) - 1):
        lo, hi = int(ev[b]), int(ev[b + 1])
        refs.append(task.remote(batch.texts[lo:hi], batch.attrs[lo:hi],
                                batch.entity_names[int(eptr[lo]):int(eptr[hi])], eptr[lo:hi + 1] - eptr[lo],
                                batch.ids[lo:hi], batch.link_to[int(lk[b]):int(lk[b + 1])], terms_on, words_on))
    return merge_partials(ray.get(refs))
