"""Writes one immutable segment from a validated `EventBatch`.

A segment is sorted by event time, so any time window is a contiguous row range. Rows are
addressed globally inside a shard as `row_base + local_row`; entity ids are global inside a
shard too (each segment appends the entities it saw first). Links are resolved to global rows
at build time; a link to an id that is in neither this batch nor the shard is *dropped* and
reported (real exports reference events outside the export), never stored dangling.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import hnswlib
import msgpack
import numpy as np
from pyroaring import BitMap

from .columns import csr_from_pairs, keys64, write_strings
from .corpus import LINK_TYPES, EventBatch
from .errors import CorpusError
from .format import file_entries
from .params import BuildParams

Progress = Optional[Callable[[str, int, int], None]]  # (stage, done, total)


@dataclass
class ShardContext:
    """What a new segment needs to know about the shard it joins."""
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


def _bitmap_groups(codes: np.ndarray, rows_sorted: bool = True) -> dict[int, bytes]:
    """{code: serialized roaring bitmap of the rows having it}."""
    out = {}
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    bounds = np.flatnonzero(np.diff(sorted_codes)) + 1
    for chunk in np.split(order, bounds):
        if len(chunk):
            out[int(codes[chunk[0]])] = BitMap(chunk.astype(np.uint32)).serialize()
    return out


def write_segment(seg_dir: Path, batch: EventBatch, ctx: ShardContext, params: BuildParams,
                  progress: Progress = None) -> tuple[dict, BuildReport]:
    """Write `batch` as a segment into the (new, empty) `seg_dir`; return its manifest entry."""
    n = len(batch)
    if n == 0:
        raise CorpusError("no events to add", field="events")
    report = BuildReport(n_events=n)
    say = progress or (lambda stage, done, total: None)
    order = np.lexsort((np.arange(n), batch.times))  # by time, ties keep input order
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    files: list[str] = []

    def save(name: str, arr: np.ndarray) -> None:
        np.save(seg_dir / name, np.ascontiguousarray(arr))
        files.append(name)

    # -- ids: refuse ids already in the shard (updates are a later, explicit operation)
    ids_sorted = [batch.ids[i] for i in order]
    id_keys = keys64(ids_sorted)
    if len(np.unique(id_keys)) != n:
        raise CorpusError("two different ids hash to the same 64-bit key; rename one", field="id")
    existing = ctx.lookup_ids(id_keys)
    if (existing >= 0).any():
        i = int(np.flatnonzero(existing >= 0)[0])
        raise CorpusError(f"id {ids_sorted[i]!r} is already in the index", field="id")
    save("id_keys.npy", id_keys)
    files += write_strings(seg_dir, "ids", ids_sorted)

    # -- scalar columns
    save("time.npy", batch.times[order].astype(np.int64))
    save("tokens.npy", batch.tokens[order].astype(np.int32))
    sources, kinds = list(ctx.sources), list(ctx.kinds)
    source_codes = _codes(batch.sources, sources)[order]
    kind_codes = _codes(batch.kinds, kinds)[order]
    save("source.npy", source_codes)
    save("kind.npy", kind_codes)
    say("columns", n, n)

    # -- entities: global ids, event->entity CSR and entity->event postings (time-sorted)
    counts = np.diff(batch.entity_ptr)
    ent_src = np.repeat(np.arange(n, dtype=np.int64), counts)
    names, inverse = np.unique(np.asarray(batch.entity_names, dtype=object), return_inverse=True) \
        if batch.entity_names else (np.array([], dtype=object), np.array([], dtype=np.int64))
    name_keys = keys64(list(names))
    if len(np.unique(name_keys)) != len(names):
        raise CorpusError("two different entities hash to the same 64-bit key", field="entities")
    gid = ctx.lookup_entities(name_keys)
    new = gid < 0
    gid[new] = ctx.entity_base + np.arange(int(new.sum()))
    report.new_entities = int(new.sum())
    save("ent_keys.npy", name_keys[new])
    is_slot = np.array([nm.startswith(tuple(params.slot_prefixes)) for nm in names[new]], dtype=np.uint8)
    save("ent_flags.npy", is_slot)  # bit 0: slot entity (implicit supersession)
    files += write_strings(seg_dir, "entities", list(names[new]))
    ev_rows = rank[ent_src]
    ev_ent = gid[inverse.astype(np.int64)] if len(inverse) else np.zeros(0, np.int64)
    ev_ptr, ev_ent_sorted = csr_from_pairs(ev_rows, n, ev_ent)
    save("ev_ptr.npy", ev_ptr)
    save("ev_ent.npy", ev_ent_sorted)
    by_entity = np.lexsort((ev_rows, ev_ent))  # entity, then row (= time order)
    post_ent_all, post_rows = ev_ent[by_entity], ev_rows[by_entity]
    post_ent, first = np.unique(post_ent_all, return_index=True)
    post_ptr = np.append(first, len(post_ent_all)).astype(np.int64)
    save("post_ent.npy", post_ent.astype(np.int64))
    save("post_ptr.npy", post_ptr)
    save("post_rows.npy", post_rows.astype(np.int64))
    say("entities", n, n)

    # -- links: resolve to global rows (this batch first, then the shard); drop dangling
    in_batch = {k: r for k, r in zip(id_keys.tolist(), range(n))}
    to_keys = keys64(batch.link_to)
    dst = np.fromiter((in_batch.get(k, -1) for k in to_keys.tolist()), dtype=np.int64, count=len(to_keys))
    local = dst >= 0
    dst[local] += ctx.row_base
    if (~local).any():
        dst[~local] = ctx.lookup_ids(to_keys[~local])
    ok = dst >= 0
    report.n_links = int(ok.sum())
    report.dangling_links = int((~ok).sum())
    for j in np.flatnonzero(~ok)[:5]:
        report.dangling_examples.append((batch.ids[int(batch.link_src[j])], batch.link_to[int(j)]))
    src_rows = rank[batch.link_src[ok]]
    link_order = np.lexsort((dst[ok], src_rows))
    link_ptr, = csr_from_pairs(src_rows, n)
    save("link_ptr.npy", link_ptr)
    save("link_dst.npy", dst[ok][link_order])
    save("link_type.npy", batch.link_type[ok][link_order].astype(np.int8))
    say("links", n, n)

    # -- roaring bitmaps for the filters that are not row ranges
    df = np.diff(post_ptr)
    frequent = {int(post_ent[i]): BitMap(post_rows[post_ptr[i]:post_ptr[i + 1]].astype(np.uint32)).serialize()
                for i in np.flatnonzero(df >= params.bitmap_min_postings)}
    bitmaps = {"source": _bitmap_groups(source_codes), "kind": _bitmap_groups(kind_codes), "entity": frequent}
    (seg_dir / "bitmaps.msgpack").write_bytes(msgpack.packb(bitmaps))
    files.append("bitmaps.msgpack")

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
    (seg_dir / "payload.bin").write_bytes(b"".join(blobs))
    files.append("payload.bin")
    save("payload_off.npy", offsets)
    del blobs
    say("payloads", n, n)

    # -- vectors and the HNSW graph
    vectors = np.ascontiguousarray(batch.vectors[order], dtype=np.float32)
    save("vectors.npy", vectors)
    hnsw = None
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

    times_sorted = batch.times[order]
    entry = {
        "name": seg_dir.name, "n": n, "row_base": ctx.row_base, "entity_base": ctx.entity_base,
        "n_new_entities": report.new_entities, "time_min": int(times_sorted[0]),
        "time_max": int(times_sorted[-1]), "hnsw": hnsw, "files": file_entries(seg_dir, files),
    }
    ctx.sources[:], ctx.kinds[:] = sources, kinds
    return entry, report
