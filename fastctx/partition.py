"""Partitioned builds: one corpus -> N independently servable shard directories.

`build_partitioned(corpus, index, shards=N)` assigns every event to a shard by a hash of a key
(default the event id: ``blake2b-64(id) % N``; or ``source``, ``kind``, ``attr:NAME``), writes
each shard with the ordinary segment writer (`create_shard` + `append_segment`), and adds to
each shard directory one sidecar file, ``PARTITION.npz`` (plus ``PARTITION.json``), holding what
a shard cannot know by itself because it is a whole-corpus fact:

* ``grow``: the *global row* of each local row: the row the event would have in a one-shard
  build of the same corpus (events sorted by (time, input order)). Local rows are increasing in
  global rows. Every tie-break of the engine that uses a row (heap order, in-link order,
  postings order, seed merge, group order) uses the global row, so N shards give the answers
  of one shard exactly;
* ``gent`` / ``ent_df`` / ``ent_hold_*``: the global id of each local entity (the rank of its
  name among all entity names, as in a one-shard build), its global document frequency (rarity
  weights and the hub test need it) and which shards mention it;
* ``out_*`` / ``in_*``: every explicit link of the local rows, in and out, *including links to
  and from other shards*, with the other end's global row, time and shard, in one-shard CSR
  order (out-links by target id key, in-links by source row). The segments keep only links
  whose two ends are local (a segment cannot name a row it does not hold);
* ``sup_*`` / ``rev_*``: the supersession overlay computed over the whole corpus (an event's
  superseder may live on another shard) and its reverse (who each row superseded).

A shard directory plus the index marker is all a shard server needs: copy ``fastctx.json`` and
``shard-K/`` to a node and serve it.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Union

import numpy as np

from .columns import keys64
from .corpus import LINK_TYPES, EventBatch
from .derive import corpus_params, with_derived, with_derived_links
from .errors import CorruptIndexError, InvalidQueryError
from .params import BuildParams
from .supersession import supersession_overlay

SIDECAR = "PARTITION.npz"
SIDECAR_META = "PARTITION.json"
SIDECAR_VERSION = 1
MAX_SHARDS = 4096


def shard_of(batch: EventBatch, n_shards: int, key: str = "id") -> np.ndarray:
    """Shard number of each event: blake2b-64 of the key's string value, modulo n_shards."""
    if key == "id":
        values = batch.ids
    elif key == "source":
        values = batch.sources
    elif key == "kind":
        values = batch.kinds
    elif key.startswith("attr:") and len(key) > 5:
        name = key[5:]
        values = [str((a or {}).get(name, i)) for a, i in zip(batch.attrs, batch.ids)]
    else:
        raise InvalidQueryError(f"shard key must be 'id', 'source', 'kind' or 'attr:NAME', got {key!r}")
    return (keys64(list(values)) % np.uint64(n_shards)).astype(np.int64)


def local_parts(batch: EventBatch, params: BuildParams) -> dict:
    """The per-event inputs of `global_graph`, computed in process: hash keys of the ids and link
    targets, each event's entity list with the derived entities (`ent_ptr_ev`), the sorted entity
    names, each mention's entity id and each entity's mention count. fastctx/ray_graph.py computes
    the same arrays as partial aggregations over blocks of events and merges them."""
    derived = with_derived(batch, params)
    names = np.asarray(derived.entity_names, dtype=object)
    if len(names):
        uniq, inverse = np.unique(names, return_inverse=True)
    else:
        uniq, inverse = np.array([], dtype=object), np.zeros(0, np.int64)
    inverse = inverse.astype(np.int64).ravel()
    return dict(id_keys=keys64(batch.ids), to_keys=keys64(batch.link_to), ent_ptr_ev=derived.entity_ptr,
                uniq=uniq, inverse=inverse, ent_count=np.bincount(inverse, minlength=len(uniq)).astype(np.int64))


def global_graph(batch: EventBatch, params: BuildParams, parts: Optional[dict] = None) -> dict:
    """The one-shard graph of the whole corpus in global rows (same arithmetic as a one-shard
    `build` + `Shard.graph` + `Shard.supersession`). `parts`: `local_parts` computed elsewhere
    (by blocks, on Ray); the result is the same arrays."""
    if parts is None:
        parts = local_parts(batch, params)
    n = len(batch)
    order = np.lexsort((np.arange(n), batch.times))
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    times = batch.times[order].astype(np.int64)
    id_keys = parts["id_keys"]
    key_sorted = np.argsort(id_keys)
    # -- links (targets outside the corpus are dropped, as a one-shard build drops them)
    to_keys = parts["to_keys"]
    pos = np.searchsorted(id_keys[key_sorted], to_keys)
    pos = np.minimum(pos, max(n - 1, 0))
    ok = id_keys[key_sorted][pos] == to_keys if n else np.zeros(len(to_keys), bool)
    src = rank[batch.link_src[ok]]
    dkey = to_keys[ok]
    dst = rank[key_sorted[pos[ok]]]
    typ = batch.link_type[ok].astype(np.int8)
    lo = np.lexsort((dkey, src))
    src, dst, typ = src[lo], dst[lo], typ[lo]
    out_ptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(src, minlength=n), out=out_ptr[1:])
    io = np.lexsort((src, dst))
    in_ptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(dst, minlength=n), out=in_ptr[1:])
    # -- entities: global id = rank of the name among all names
    uniq = parts["uniq"]
    ev_src = rank[np.repeat(np.arange(n, dtype=np.int64), np.diff(parts["ent_ptr_ev"]))]
    ev_ent = parts["inverse"]
    eo = np.argsort(ev_src, kind="stable")
    ev_ptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(ev_src, minlength=n), out=ev_ptr[1:])
    ev_ent_sorted = ev_ent[eo]
    by_ent = np.lexsort((ev_src, ev_ent))
    post_rows = ev_src[by_ent]
    n_ent = len(uniq)
    ent_ptr = np.zeros(n_ent + 1, np.int64)
    np.cumsum(parts["ent_count"], out=ent_ptr[1:])   # mentions per entity (the global df)
    slot = np.array([str(s).startswith(tuple(params.slot_prefixes)) for s in uniq], bool)
    # -- supersession (Shard.supersession over the whole corpus)
    kinds_sorted = np.asarray(batch.kinds, dtype=object)[order]
    sup_by, sup_at = supersession_overlay(times, src, dst, typ, ent_ptr, post_rows, np.flatnonzero(slot),
                                          np.isin(kinds_sorted, list(params.slot_kinds)))
    return dict(n=n, order=order, rank=rank, times=times, out_ptr=out_ptr, out_dst=dst, out_type=typ,
                in_ptr=in_ptr, in_src=src[io], in_type=typ[io], ev_ptr=ev_ptr, ev_ent=ev_ent_sorted,
                ent_names=uniq, ent_ptr=ent_ptr, ent_rows=post_rows, sup_by=sup_by, sup_at=sup_at,
                n_links=int(ok.sum()), dangling=int((~ok).sum()))


def _gather_csr(ptr: np.ndarray, rows: np.ndarray, *cols: np.ndarray):
    """CSR restricted to `rows` (in that order): (new ptr, gathered columns)."""
    lo, cnt = ptr[rows], ptr[rows + 1] - ptr[rows]
    new_ptr = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(cnt, out=new_ptr[1:])
    idx = np.repeat(lo - new_ptr[:-1], cnt) + np.arange(int(new_ptr[-1]), dtype=np.int64)
    return (new_ptr, *(c[idx] for c in cols))


def sidecar_arrays(g: dict, shard_no: np.ndarray, k: int, n_shards: int) -> dict:
    """The PARTITION.npz arrays of shard k (see the module doc)."""
    grow = np.flatnonzero(shard_no == k).astype(np.int64)  # shard_no is indexed by global row
    times = g["times"]
    out_ptr, out_dst, out_type = _gather_csr(g["out_ptr"], grow, g["out_dst"], g["out_type"])
    in_ptr, in_src, in_type = _gather_csr(g["in_ptr"], grow, g["in_src"], g["in_type"])
    sup_by = g["sup_by"][grow]
    # reverse overlay: rows each local row superseded (ascending global row)
    olds = np.flatnonzero(g["sup_by"] >= 0)
    by = g["sup_by"][olds]
    ro = np.lexsort((olds, by))
    olds, by = olds[ro], by[ro]
    rev_ptr = np.zeros(len(grow) + 1, np.int64)
    lo = np.searchsorted(by, grow, "left")
    hi = np.searchsorted(by, grow, "right")
    np.cumsum(hi - lo, out=rev_ptr[1:])
    rev_idx = np.concatenate([np.arange(a, b) for a, b in zip(lo.tolist(), hi.tolist())]) \
        if len(grow) else np.zeros(0, np.int64)
    rev_rows = olds[rev_idx.astype(np.int64)] if len(rev_idx) else np.zeros(0, np.int64)
    # entities: local id (rank among the shard's own names) -> global id; global ids are ranks of
    # the sorted names too, so the shard's own ids, ascending, are its local order
    gent = np.unique(_gather_csr(g["ev_ptr"], grow, g["ev_ent"])[1]).astype(np.int64)
    ent_df = np.diff(g["ent_ptr"])[gent] if len(gent) else np.zeros(0, np.int64)
    holders = [np.unique(shard_no[g["ent_rows"][g["ent_ptr"][e]:g["ent_ptr"][e + 1]]]) for e in gent.tolist()]
    hold_ptr = np.zeros(len(gent) + 1, np.int64)
    np.cumsum([len(h) for h in holders], out=hold_ptr[1:])
    hold = np.concatenate(holders).astype(np.int32) if holders else np.zeros(0, np.int32)
    return dict(
        grow=grow, gent=gent, ent_df=ent_df.astype(np.int64), hold_ptr=hold_ptr, hold=hold,
        out_ptr=out_ptr, out_dst=out_dst, out_type=out_type.astype(np.int8), out_time=times[out_dst],
        out_shard=shard_no[out_dst].astype(np.int32),
        in_ptr=in_ptr, in_src=in_src, in_type=in_type.astype(np.int8), in_time=times[in_src],
        in_shard=shard_no[in_src].astype(np.int32),
        sup_by=sup_by, sup_at=g["sup_at"][grow], sup_shard=np.where(sup_by >= 0, shard_no[np.maximum(sup_by, 0)], -1
                                                                     ).astype(np.int32),
        rev_ptr=rev_ptr, rev_rows=rev_rows, rev_time=times[rev_rows], rev_shard=shard_no[rev_rows].astype(np.int32),
    )


def write_sidecar(shard_dir: Path, arrays: dict, meta: dict) -> None:
    """Write PARTITION.npz then PARTITION.json, each atomically (temp file, fsync, rename, fsync
    of the directory). The JSON records the npz's size and CRC-32 and its own checksum, so a
    reader can tell a damaged or mismatched pair from a sound one."""
    from .format import crc32_file, fsync_dir, manifest_checksum, write_json_atomic
    shard_dir = Path(shard_dir)
    tmp = shard_dir / (SIDECAR + ".part")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, shard_dir / SIDECAR)
    fsync_dir(shard_dir)
    body = {"version": SIDECAR_VERSION, **meta,
            "npz": {"size": (shard_dir / SIDECAR).stat().st_size, "crc32": crc32_file(shard_dir / SIDECAR)}}
    body["checksum"] = manifest_checksum(body)
    write_json_atomic(shard_dir / SIDECAR_META, body)


def read_sidecar(shard_dir: Path) -> tuple[dict, dict]:
    """(arrays, meta) of a partitioned shard; CorruptIndexError naming the file if absent,
    damaged or inconsistent (the checksums recorded by `write_sidecar` are checked)."""
    from .format import check_regular, crc32_file, manifest_checksum
    shard_dir = Path(shard_dir)
    jpath, npath = shard_dir / SIDECAR_META, shard_dir / SIDECAR
    for p in (jpath, npath):
        check_regular(p, "partition file")
    try:
        meta = json.loads(jpath.read_bytes())
    except (OSError, ValueError, RecursionError) as e:
        raise CorruptIndexError(f"{jpath}: not a partitioned shard (no readable {SIDECAR_META}: "
                                f"{type(e).__name__})") from None
    if not isinstance(meta, dict) or meta.get("version") != SIDECAR_VERSION:
        raise CorruptIndexError(f"{jpath}: unsupported version "
                                f"{meta.get('version') if isinstance(meta, dict) else meta!r}")
    if "checksum" in meta and meta["checksum"] != manifest_checksum(meta):
        raise CorruptIndexError(f"{jpath}: checksum mismatch (edited or damaged)")
    rec = meta.get("npz")
    try:
        if rec is not None:
            size = npath.stat().st_size
            if size != rec.get("size") or crc32_file(npath) != rec.get("crc32"):
                raise CorruptIndexError(f"{npath}: size or checksum differs from {SIDECAR_META} (damaged)")
        with np.load(npath, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except CorruptIndexError:
        raise
    except Exception as e:   # zipfile/npy damage surfaces as many exception types
        raise CorruptIndexError(f"{npath}: not a readable partition sidecar ({type(e).__name__}: "
                                f"{str(e)[:200]})") from None
    missing = {"grow", "gent", "ent_df", "out_ptr", "in_ptr", "sup_by", "rev_ptr"} - set(arrays)
    if missing:
        raise CorruptIndexError(f"{npath}: arrays missing: {sorted(missing)}")
    return arrays, meta


def check_sidecar(arrays: dict, meta: dict, n_local: int, where, n_entities_local: Optional[int] = None) -> None:
    """CorruptIndexError naming `where` unless a shard's sidecar arrays fit together: one-dimensional
    integer arrays, one entry per local row where there should be (`grow`, `sup_*`; one per local
    entity in `gent` when `n_entities_local` is given), CSR pointers rising from 0 to their
    columns' length, columns of one length, and every global row, entity id, shard number and link
    type inside the corpus the meta describes. A damaged file or a bad install is refused here,
    before any kernel (which does not bounds-check) indexes with these numbers."""
    def bad(what: str):
        raise CorruptIndexError(f"{where}: partition sidecar {what}")
    try:
        n_global, n_shards = int(meta["n_global"]), int(meta["n_shards"])
        n_ent = int(meta.get("n_entities_global", 0))
    except (KeyError, TypeError, ValueError):
        bad("meta lacks n_global / n_shards")
    a = {}
    for k, v in arrays.items():
        v = np.asarray(v)
        if v.ndim != 1 or v.dtype.kind not in "iu":
            bad(f"array {k!r} is not a 1-D integer array ({v.dtype} {list(v.shape)})")
        a[k] = v.astype(np.int64, copy=False)

    def within(k: str, lo: int, hi: int) -> None:
        v = a.get(k)
        if v is not None and len(v) and (int(v.min()) < lo or int(v.max()) >= hi):
            bad(f"array {k!r} holds values outside [{lo}, {hi})")

    def csr(ptr: str, n: int, cols: tuple) -> None:
        p = a.get(ptr)
        if p is None:
            return
        m = len(a[cols[0]]) if cols[0] in a else None
        if len(p) != n + 1 or p[0] != 0 or (np.diff(p) < 0).any() or (m is not None and p[-1] != m):
            bad(f"array {ptr!r} is not a pointer array over {n} rows and {m} entries")
        for c in cols:
            if c in a and len(a[c]) != m:
                bad(f"array {c!r} has {len(a[c])} entries, {cols[0]!r} {m}")
    for k in ("grow", "sup_by", "sup_at", "sup_shard"):
        if k in a and len(a[k]) != n_local:
            bad(f"array {k!r} has {len(a[k])} entries for {n_local} rows")
    if n_entities_local is not None and len(a.get("gent", ())) != n_entities_local:
        bad(f"array 'gent' has {len(a.get('gent', ()))} entries for {n_entities_local} entities")
    if "gent" in a and (np.diff(a["gent"]) <= 0).any():
        bad("array 'gent' is not ascending")
    csr("hold_ptr", len(a.get("gent", ())), ("hold",))
    csr("out_ptr", n_local, ("out_dst", "out_type", "out_time", "out_shard"))
    csr("in_ptr", n_local, ("in_src", "in_type", "in_time", "in_shard"))
    csr("rev_ptr", n_local, ("rev_rows", "rev_time", "rev_shard"))
    if "ent_df" in a and len(a["ent_df"]) != len(a.get("gent", ())):
        bad("arrays 'ent_df' and 'gent' differ in length")
    for k in ("grow", "out_dst", "in_src", "rev_rows"):
        within(k, 0, n_global)
    within("sup_by", -1, n_global)
    if n_ent:
        within("gent", 0, n_ent)
    for k in ("hold", "out_shard", "in_shard", "rev_shard"):
        within(k, 0, n_shards)
    within("sup_shard", -1, n_shards)
    for k in ("out_type", "in_type"):
        within(k, 0, len(LINK_TYPES))


def write_partition_shard(shard_dir: Path, batch: EventBatch, g: dict, shard_no: np.ndarray, k: int,
                          shards: int, key: str, params: BuildParams, encoder_spec, progress=None) -> None:
    """Write shard k of a partitioned build (segment, HNSW, sidecar) into `shard_dir`, from the
    whole-corpus graph `g` and the shard of each global row. Shards are independent of each
    other, so any scheduler may run this once per shard (fastctx/ray_build.py does)."""
    sub = batch.select(g["order"][shard_no == k])      # input rows of shard k, in global-row order
    write_shard_files(shard_dir, sub, sidecar_arrays(g, shard_no, k, shards), k, shards, key, params,
                      encoder_spec, g["n"], len(g["ent_names"]),
                      (lambda s, d, t: progress(f"{s}[{k}]", d, t)) if progress else None)


def write_shard_files(shard_dir: Path, sub: EventBatch, arrays: dict, k: int, shards: int, key: str,
                      params: BuildParams, encoder_spec, n_global: int, n_entities: int, progress=None) -> None:
    """The files of shard k: its events `sub` (in global-row order) as one segment with its HNSW
    graph, and its sidecar `arrays` with the partition's metadata."""
    from .shard import append_segment, create_shard, read_manifest
    create_shard(shard_dir, sub.dim)
    if len(sub):
        append_segment(shard_dir, read_manifest(shard_dir), sub, params, progress)
    write_sidecar(shard_dir, arrays, {"shard": k, "n_shards": shards, "key": key, "n_global": n_global,
                                      "n_entities_global": n_entities, "dim": sub.dim,
                                      "slot_kinds": list(params.slot_kinds), "encoder": encoder_spec})


def build_partitioned(corpus_dir: Union[str, Path], index_dir: Union[str, Path], *, shards: int,
                      key: str = "id", overwrite: bool = False, params: BuildParams = BuildParams(),
                      progress=None):
    """Build `shards` shard directories from one corpus (atomically, like `build`). Returns
    (Index, BuildReport); the report counts links over the whole corpus (a cross-shard link is
    not dangling)."""
    from .build import BuildReport
    from .format import publish_dir, write_marker
    from .index import LOCK_FILE, Index, read_for_build
    if isinstance(shards, bool) or not isinstance(shards, int) or not 1 <= shards <= MAX_SHARDS:
        raise InvalidQueryError(f"shards must be an integer in [1, {MAX_SHARDS}], got {shards!r}")
    index_dir = Path(index_dir)   # the corpus may be any source of fastctx/sources.py
    batch, encoder_spec = read_for_build(corpus_dir, index_dir, overwrite, progress)
    params, actor_excess = corpus_params(batch, params)
    batch = with_derived_links(batch, params)
    g = global_graph(batch, params)
    shard_in = shard_of(batch, shards, key)          # by input row
    shard_no = shard_in[g["order"]]                  # by global row
    names = [f"shard-{k:03d}" for k in range(shards)]
    index_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{index_dir.name}.build.", dir=index_dir.parent))
    # totals over the whole corpus: an entity held by several shards counts once, a cross-shard
    # link once (per-shard sums would count the first several times and drop the second)
    report = BuildReport(n_events=len(batch), n_links=g["n_links"], dangling_links=g["dangling"],
                         new_entities=len(g["ent_names"]), actor_excess=actor_excess)
    try:
        (tmp / LOCK_FILE).touch()
        write_marker(tmp, names, partition={"key": key, "shards": shards, "hash": "blake2b-64 mod N"},
                     **({"encoder": encoder_spec} if encoder_spec else {}))
        for k, name in enumerate(names):
            write_partition_shard(tmp / name, batch, g, shard_no, k, shards, key, params, encoder_spec, progress)
        publish_dir(tmp, index_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Index(index_dir), report
