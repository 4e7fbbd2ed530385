"""Computes and writes immutable segments from a validated `EventBatch`.

A segment is sorted by event time, so any time window is a contiguous row range. Rows are
addressed globally inside a shard as `row_base + local_row`; entity ids are global inside a
shard too (each segment appends the entities it saw first).

Links are stored as the 64-bit *id key* of their target (not as a row), so they stay valid when
compaction re-sorts rows; `Shard.graph` resolves them to the live row of that id when a shard is
opened. A link whose target is not a live event when the segment is computed is *dropped* and
reported (real exports reference events outside the export), never stored dangling.

Building is two steps, so an in-memory segment (the memtable of events still in the write-ahead
log) and an on-disk one come from the same code: `compute_segment` returns `SegmentArrays`
(every column, bitmaps, payloads; no HNSW), `save_segment` writes them and builds the HNSW.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import hnswlib
import msgpack
import numpy as np
from pyroaring import BitMap

from .codes import worth_writing, write_codes
from .columns import csr_from_pairs, keys64, write_strings
from .compaction import DEFAULT_SEGMENT_ROWS  # noqa: F401 - re-exported
from .corpus import DERIVED_LINK_TYPES, LINK_CODE, LINK_TYPES, EventBatch
from .derive import entity_flags, with_derived
from .errors import CorpusError
from .format import file_entries
from .params import BuildParams

Progress = Optional[Callable[[str, int, int], None]]  # (stage, done, total)
_DERIVED_CODES = frozenset(LINK_CODE[t] for t in DERIVED_LINK_TYPES)


@dataclass
class ShardContext:
    """What a new segment needs to know about the shard it joins. `lookup_ids` answers, per id
    key, a global row of the *live* event with that id (-1 if none): links resolve through it."""
    row_base: int = 0
    entity_base: int = 0
    sources: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    lookup_ids: Callable[[np.ndarray], np.ndarray] = lambda keys: np.full(len(keys), -1, np.int64)
    lookup_entities: Callable[[np.ndarray], np.ndarray] = lambda keys: np.full(len(keys), -1, np.int64)


@dataclass
class BuildReport:
    n_events: int = 0
    n_links: int = 0
    dangling_links: int = 0
    dangling_examples: list[tuple[str, str]] = field(default_factory=list)  # (from id, to id)
    new_entities: int = 0
    skipped: int = 0          # Index.add(on_existing="upsert"): identical events already present
    updated: int = 0          # ... and events that replaced an older version of their id
    actor_excess: Optional[float] = None   # a build's derive.actor_excess (None: not measured)


@dataclass
class SegmentArrays:
    """Everything a segment holds except its HNSW graph, in memory."""
    n: int
    cols: dict                  # file name -> array (the .npy columns)
    ids: list                   # external ids, row order
    entity_names: list          # names of the entities this segment introduces
    bitmaps: dict               # {"source"|"kind"|"entity": {code: serialized roaring}}
    payload: bytes
    n_new_entities: int
    time_min: int
    time_max: int
    sources: list               # the shard dictionaries after this segment
    kinds: list
    report: BuildReport


def _codes(values: list[str], dictionary: list[str]) -> np.ndarray:
    """Map strings to codes in `dictionary`, appending unseen ones (dictionary is mutated)."""
    index = {v: i for i, v in enumerate(dictionary)}
    out = np.empty(len(values), dtype=np.uint16)
    for i, v in enumerate(values):
        code = index.get(v)
        if code is None:
            if len(dictionary) >= np.iinfo(np.uint16).max:
                raise CorpusError(f"more than {np.iinfo(np.uint16).max} distinct values", field="source/kind")
            code = index[v] = len(dictionary)
            dictionary.append(v)
        out[i] = code
    return out


def _bitmap_groups(codes: np.ndarray) -> dict[int, bytes]:
    """{code: serialized roaring bitmap of the rows having it}."""
    out = {}
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    bounds = np.flatnonzero(np.diff(sorted_codes)) + 1
    for chunk in np.split(order, bounds):
        if len(chunk):
            out[int(codes[chunk[0]])] = BitMap(chunk.astype(np.uint32)).serialize()
    return out


def event_record(batch: EventBatch, i: int) -> dict:
    """Row i of a batch as an orgmem event mapping (what `EventBatch.from_records` accepts)."""
    links = [{"to": t, "type": LINK_TYPES[ty]} for t, ty in zip(
        batch.link_to[int(np.searchsorted(batch.link_src, i, "left")):int(np.searchsorted(batch.link_src, i, "right"))],
        batch.link_type[int(np.searchsorted(batch.link_src, i, "left")):int(np.searchsorted(batch.link_src, i, "right"))].tolist())]
    d = dict(batch.attrs[i]) if batch.attrs[i] else {}
    d.update({"id": batch.ids[i], "time": int(batch.times[i]), "source": batch.sources[i], "kind": batch.kinds[i],
              "tokens": int(batch.tokens[i]), "entities": list(batch.entities(i)), "links": links})
    if batch.texts[i] is not None:
        d["text"] = batch.texts[i]
    return d


def content_hashes(batch: EventBatch) -> np.ndarray:
    """blake2b-64 of each event's full content (record and vector): equal hash = same event."""
    out = np.empty(len(batch), np.uint64)
    lo = np.searchsorted(batch.link_src, np.arange(len(batch)), "left")
    hi = np.searchsorted(batch.link_src, np.arange(len(batch)), "right")
    for i in range(len(batch)):
        links = [[batch.link_to[j], int(batch.link_type[j])] for j in range(int(lo[i]), int(hi[i]))
                 if int(batch.link_type[j]) not in _DERIVED_CODES]   # derived links are not content
        rec = [batch.ids[i], int(batch.times[i]), batch.sources[i], batch.kinds[i], int(batch.tokens[i]),
               list(batch.entities(i)), links, batch.texts[i],
               json.dumps(batch.attrs[i], sort_keys=True, default=str) if batch.attrs[i] else ""]
        h = hashlib.blake2b(msgpack.packb(rec), digest_size=8)
        h.update(np.ascontiguousarray(batch.vectors[i], dtype=np.float32).tobytes())
        out[i] = int.from_bytes(h.digest(), "little")
    return out


def compute_segment(batch: EventBatch, ctx: ShardContext, params: BuildParams, seq: np.ndarray,
                    chash: Optional[np.ndarray] = None, progress: Progress = None,
                    intro: Optional[tuple[np.ndarray, np.ndarray, list]] = None) -> SegmentArrays:
    """Every column of a segment holding `batch` (row i has write sequence number `seq[i]`).
    `intro` (compaction only): the (keys, flags, names) of the entities the merged segments
    introduced, kept as they were so global entity ids do not move."""
    n = len(batch)
    if n == 0 and intro is None:
        raise CorpusError("no events to add", field="events")
    report = BuildReport(n_events=n)
    say = progress or (lambda stage, done, total: None)
    order = np.lexsort((np.arange(n), batch.times))  # by time, ties keep input order
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    cols: dict = {}

    ids_sorted = [batch.ids[i] for i in order]
    id_keys = keys64(ids_sorted)
    if n and len(np.unique(id_keys)) != n:
        raise CorpusError("two different ids hash to the same 64-bit key; rename one", field="id")
    cols["id_keys.npy"] = id_keys
    cols["seq.npy"] = np.asarray(seq, dtype=np.uint64)[order]
    cols["chash.npy"] = (content_hashes(batch) if chash is None else np.asarray(chash, np.uint64))[order]

    cols["time.npy"] = batch.times[order].astype(np.int64)
    cols["tokens.npy"] = batch.tokens[order].astype(np.int32)
    sources, kinds = list(ctx.sources), list(ctx.kinds)
    source_codes = _codes(batch.sources, sources)[order]
    kind_codes = _codes(batch.kinds, kinds)[order]
    cols["source.npy"] = source_codes
    cols["kind.npy"] = kind_codes
    say("columns", n, n)

    # -- entities (the user's and the derived ones): global ids, event->entity CSR and
    # entity->event postings (time-sorted)
    full = with_derived(batch, params)
    counts = np.diff(full.entity_ptr)
    ent_src = np.repeat(np.arange(n, dtype=np.int64), counts)
    names, inverse = np.unique(np.asarray(full.entity_names, dtype=object), return_inverse=True) \
        if full.entity_names else (np.array([], dtype=object), np.array([], dtype=np.int64))
    name_keys = keys64(list(names))
    if len(np.unique(name_keys)) != len(names):
        raise CorpusError("two different entities hash to the same 64-bit key", field="entities")
    gid = ctx.lookup_entities(name_keys)
    new = gid < 0
    if intro is not None:
        if new.any():
            raise CorpusError("compaction: an entity is not known to the shard", field="entities")
        ent_keys, ent_flags, ent_names = intro
    else:
        gid[new] = ctx.entity_base + np.arange(int(new.sum()))
        ent_keys = name_keys[new]
        ent_flags = entity_flags(names[new], params.slot_prefixes, params.actor_prefixes)
        ent_names = list(names[new])
    report.new_entities = len(ent_keys)
    cols["ent_keys.npy"] = np.asarray(ent_keys, np.uint64)
    cols["ent_flags.npy"] = np.asarray(ent_flags, np.uint8)  # derive.FLAG_* bits
    ev_rows = rank[ent_src]
    ev_ent = gid[inverse.astype(np.int64).ravel()] if len(inverse) else np.zeros(0, np.int64)
    ev_ptr, ev_ent_sorted = csr_from_pairs(ev_rows, n, ev_ent)
    cols["ev_ptr.npy"] = ev_ptr
    cols["ev_ent.npy"] = ev_ent_sorted.astype(np.int64)
    by_entity = np.lexsort((ev_rows, ev_ent))  # entity, then row (= time order)
    post_ent_all, post_rows = ev_ent[by_entity], ev_rows[by_entity]
    post_ent, first = np.unique(post_ent_all, return_index=True)
    post_ptr = np.append(first, len(post_ent_all)).astype(np.int64)
    cols["post_ent.npy"] = post_ent.astype(np.int64)
    cols["post_ptr.npy"] = post_ptr
    cols["post_rows.npy"] = post_rows.astype(np.int64)
    say("entities", n, n)

    # -- links: keep those whose target is a live event (this batch or the shard), as id keys
    batch_keys = set(id_keys.tolist())
    to_keys = keys64(batch.link_to)
    ok = np.fromiter((k in batch_keys for k in to_keys.tolist()), dtype=bool, count=len(to_keys))
    if (~ok).any():
        ok[~ok] = ctx.lookup_ids(to_keys[~ok]) >= 0
    report.n_links = int(ok.sum())
    report.dangling_links = int((~ok).sum())
    for j in np.flatnonzero(~ok)[:5]:
        report.dangling_examples.append((batch.ids[int(batch.link_src[j])], batch.link_to[int(j)]))
    src_rows = rank[batch.link_src[ok]]
    dst = to_keys[ok]
    link_order = np.lexsort((dst, src_rows))
    link_ptr, = csr_from_pairs(src_rows, n)
    cols["link_ptr.npy"] = link_ptr
    cols["link_dst.npy"] = dst[link_order].astype(np.uint64)
    cols["link_type.npy"] = batch.link_type[ok][link_order].astype(np.int8)
    say("links", n, n)

    # -- roaring bitmaps for the filters that are not row ranges
    df = np.diff(post_ptr)
    frequent = {int(post_ent[i]): BitMap(post_rows[post_ptr[i]:post_ptr[i + 1]].astype(np.uint32)).serialize()
                for i in np.flatnonzero(df >= params.bitmap_min_postings)}
    bitmaps = {"source": _bitmap_groups(source_codes), "kind": _bitmap_groups(kind_codes), "entity": frequent}

    # -- payloads: the original record, minus what columns already hold
    link_groups: list[list] = [[] for _ in range(n)]
    for s, t, ty in zip(batch.link_src.tolist(), batch.link_to, batch.link_type.tolist()):
        link_groups[s].append([t, LINK_TYPES[ty]])
    blobs = []
    for i in order.tolist():
        ents = batch.entity_names[batch.entity_ptr[i]:batch.entity_ptr[i + 1]]
        blobs.append(msgpack.packb({"text": batch.texts[i], "entities": ents,
                                    "links": link_groups[i], "attrs": batch.attrs[i]}))
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum([len(b) for b in blobs], out=offsets[1:])
    cols["payload_off.npy"] = offsets
    payload = b"".join(blobs)
    del blobs
    say("payloads", n, n)
    cols["vectors.npy"] = np.ascontiguousarray(batch.vectors[order], dtype=np.float32)
    times_sorted = cols["time.npy"]
    return SegmentArrays(n=n, cols=cols, ids=ids_sorted, entity_names=ent_names, bitmaps=bitmaps, payload=payload,
                         n_new_entities=len(ent_keys), time_min=int(times_sorted[0]) if n else 0,
                         time_max=int(times_sorted[-1]) if n else -1, sources=sources, kinds=kinds, report=report)


def save_segment(seg_dir: Path, arrays: SegmentArrays, ctx: ShardContext, params: BuildParams,
                 progress: Progress = None) -> dict:
    """Write `arrays` (and an HNSW graph when large enough) into the new, empty `seg_dir`;
    return the segment's manifest entry."""
    say = progress or (lambda stage, done, total: None)
    n = arrays.n
    files: list[str] = []
    for name, arr in arrays.cols.items():
        np.save(seg_dir / name, np.ascontiguousarray(arr))
        files.append(name)
    files += write_strings(seg_dir, "ids", arrays.ids)
    files += write_strings(seg_dir, "entities", arrays.entity_names)
    (seg_dir / "bitmaps.msgpack").write_bytes(msgpack.packb(arrays.bitmaps))
    (seg_dir / "payload.bin").write_bytes(arrays.payload)
    files += ["bitmaps.msgpack", "payload.bin"]
    hnsw = None
    vectors = arrays.cols["vectors.npy"]
    if worth_writing(n):
        files += write_codes(seg_dir, vectors)
    if n >= params.hnsw_min_rows:
        hnsw = {"space": "ip", "M": params.hnsw_m, "ef_construction": params.hnsw_ef_construction,
                "seed": params.seed}
        index = hnswlib.Index(space="ip", dim=vectors.shape[1])
        index.init_index(max_elements=n, M=params.hnsw_m, ef_construction=params.hnsw_ef_construction,
                         random_seed=params.seed)
        step = 50_000
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            index.add_items(vectors[lo:hi], np.arange(lo, hi), num_threads=params.threads)
            say("hnsw", hi, n)
        index.save_index(str(seg_dir / "hnsw.bin"))
        files.append("hnsw.bin")
    seq = arrays.cols["seq.npy"]
    return {"name": seg_dir.name, "n": n, "row_base": ctx.row_base, "entity_base": ctx.entity_base,
            "n_new_entities": arrays.n_new_entities, "time_min": arrays.time_min, "time_max": arrays.time_max,
            "seq_min": int(seq.min()) if n else -1, "seq_max": int(seq.max()) if n else -1, "hnsw": hnsw,
            "files": file_entries(seg_dir, files)}


def write_segment(seg_dir: Path, batch: EventBatch, ctx: ShardContext, params: BuildParams,
                  progress: Progress = None, seq: Optional[np.ndarray] = None) -> tuple[dict, BuildReport]:
    """Compute and write `batch` as a segment into the (new, empty) `seg_dir`; return its
    manifest entry and report (ctx.sources / ctx.kinds are updated)."""
    if seq is None:
        seq = np.arange(len(batch), dtype=np.uint64)
    arrays = compute_segment(batch, ctx, params, seq, progress=progress)
    entry = save_segment(seg_dir, arrays, ctx, params, progress)
    ctx.sources[:], ctx.kinds[:] = arrays.sources, arrays.kinds
    return entry, arrays.report


# -- time-cut segments ---------------------------------------------------------------------------
# Offline builds and compaction cut their rows by event time into segments of about
# `segment_rows` (default compaction.DEFAULT_SEGMENT_ROWS), so a time window covers whole segments
# (each searched unfiltered, through its own graph) plus at most two partial ones at its edges.


def time_cuts(times: np.ndarray, segment_rows: int) -> list[np.ndarray]:
    """Row indices of `times` (any order) split into groups by time: each group time-sorted (ties
    keep input order), groups in time order, `max(1, n // segment_rows)` of them (so each holds at
    least `segment_rows` rows and compaction never sees a cut piece as small). A cut never falls
    between equal times, so a window's edge cuts whole groups. `segment_rows` 0: one group."""
    n = len(times)
    order = np.lexsort((np.arange(n), np.asarray(times)))
    if segment_rows < 0:
        raise ValueError(f"segment_rows must be >= 0, got {segment_rows}")
    pieces = n // segment_rows if segment_rows else 1
    if pieces <= 1:
        return [order]
    st = np.asarray(times)[order]
    bounds = []
    for b in (np.arange(1, pieces) * n) // pieces:
        b = int(np.searchsorted(st, st[b], "left"))   # move the cut before a run of equal times
        if (not bounds or b > bounds[-1]) and 0 < b < n:
            bounds.append(b)
    return np.split(order, bounds)


def compute_time_cut(batch: EventBatch, ctx: ShardContext, params: BuildParams, seq: np.ndarray,
                     segment_rows: int, chash: Optional[np.ndarray] = None, progress: Progress = None,
                     intro: Optional[tuple[np.ndarray, np.ndarray, list]] = None) -> list[SegmentArrays]:
    """`compute_segment` for `batch` cut by `time_cuts` into consecutive segments: piece i starts
    at the row and entity ids the pieces before it end at. Links between pieces resolve (every id
    of the batch counts as live); an entity one piece introduces is known to the next. `intro`
    (compaction) goes whole to the first piece, so global entity ids stay where they were."""
    groups = time_cuts(batch.times, segment_rows)
    if len(groups) == 1:
        return [compute_segment(batch, ctx, params, seq, chash, progress, intro)]
    from .columns import KeyLookup
    batch_ids = KeyLookup(keys64(batch.ids), np.zeros(len(batch), np.int64))
    seen_keys: list[np.ndarray] = []
    seen_ids: list[np.ndarray] = []
    out = []
    row_base, entity_base = ctx.row_base, ctx.entity_base
    sources, kinds = list(ctx.sources), list(ctx.kinds)
    chash = content_hashes(batch) if chash is None else np.asarray(chash, np.uint64)
    for i, rows in enumerate(groups):
        earlier = KeyLookup(np.concatenate(seen_keys) if seen_keys else np.zeros(0, np.uint64),
                            np.concatenate(seen_ids) if seen_ids else np.zeros(0, np.int64))

        def ids(keys, _outer=ctx.lookup_ids):
            found = _outer(keys)
            return np.where(batch_ids.get(keys) >= 0, 0, found)

        def ents(keys, _outer=ctx.lookup_entities, _earlier=earlier):
            found = _outer(keys)
            return np.where(found >= 0, found, _earlier.get(keys))

        pctx = ShardContext(row_base=row_base, entity_base=entity_base, sources=sources, kinds=kinds,
                            lookup_ids=ids, lookup_entities=ents)
        piece_intro = None
        if intro is not None:
            piece_intro = intro if i == 0 else (np.zeros(0, np.uint64), np.zeros(0, np.uint8), [])
        arrays = compute_segment(batch.select(rows), pctx, params, np.asarray(seq)[rows], chash[rows], progress,
                                 piece_intro)
        keys = arrays.cols["ent_keys.npy"]
        seen_keys.append(np.asarray(keys, np.uint64))
        seen_ids.append(entity_base + np.arange(len(keys), dtype=np.int64))
        row_base += arrays.n
        entity_base += arrays.n_new_entities
        sources, kinds = arrays.sources, arrays.kinds
        out.append(arrays)
    return out


def piece_context(ctx: ShardContext, pieces: list[SegmentArrays], i: int) -> ShardContext:
    """The context piece i of `compute_time_cut` was computed in (its row and entity bases):
    `save_segment` records them in the manifest entry."""
    return ShardContext(row_base=ctx.row_base + sum(p.n for p in pieces[:i]),
                        entity_base=ctx.entity_base + sum(p.n_new_entities for p in pieces[:i]),
                        sources=pieces[i].sources, kinds=pieces[i].kinds)


def append_time_cut(shard_dir: Path, manifest: dict, batch: EventBatch, params: BuildParams,
                    segment_rows: int, progress: Progress = None) -> BuildReport:
    """Write `batch` (an offline build) as time-cut segments and commit them in one manifest
    version (`shard.append_segment` for one piece). Returns the combined report."""
    from .format import write_manifest
    from .shard import append_segment, attach_graph, open_segments, write_segment_dir
    if len(batch) < 2 * max(segment_rows, 1) or not segment_rows:
        return append_segment(shard_dir, manifest, batch, params, progress)
    manifest.setdefault("params", params.manifest_params())
    ctx = ShardContext(row_base=manifest["n_rows"], entity_base=manifest["n_entities"],
                       sources=list(manifest["sources"]), kinds=list(manifest["kinds"]))
    seq0 = int(manifest.get("next_seq", 0))
    seq = np.arange(seq0, seq0 + len(batch), dtype=np.uint64)
    pieces = compute_time_cut(batch, ctx, params, seq, segment_rows, progress=progress)
    entries = []
    for i, arrays in enumerate(pieces):
        name = f"seg-{manifest['next_segment'] + i:06d}"
        entries.append(write_segment_dir(shard_dir, name, arrays, piece_context(ctx, pieces, i), params, progress))
    report = BuildReport(n_events=len(batch), new_entities=sum(p.n_new_entities for p in pieces))
    for p in pieces:
        report.n_links += p.report.n_links
        report.dangling_links += p.report.dangling_links
        report.dangling_examples += p.report.dangling_examples[:5 - len(report.dangling_examples)]
    last = pieces[-1]
    new = {**manifest, "version": manifest["version"] + 1, "segments": manifest["segments"] + entries,
           "sources": last.sources, "kinds": last.kinds, "n_rows": manifest["n_rows"] + len(batch),
           "n_entities": manifest["n_entities"] + report.new_entities,
           "next_segment": manifest["next_segment"] + len(pieces), "next_seq": seq0 + len(batch),
           "flushed_seq": max(int(manifest.get("flushed_seq", 0)), seq0 + len(batch))}
    # the shard graph of the new segments, mapped by readers instead of derived per process
    attach_graph(shard_dir, new, open_segments(shard_dir, new))
    write_manifest(shard_dir, new)
    manifest.clear()
    manifest.update(new)
    return report
