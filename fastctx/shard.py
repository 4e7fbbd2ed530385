"""One shard: a manifest naming immutable segments, a deletion overlay, and the memtable of
events still in the write-ahead log; plus shard-wide views built from them.

A `Shard` object is a *pinned version*: it opens every file its manifest names (memory maps and
open handles) and reads the log when it is constructed, so a writer committing a newer manifest
and removing files afterwards never changes what it sees (on POSIX an unlinked, still-open file
stays readable). If files vanish between reading the manifest and opening them, the open is
retried on the newer manifest.

Rows and entity ids are global inside a shard: disk segments in manifest order, then the
memtable. Links are stored as id keys and resolved here to the live row of that id; a deleted
(or replaced) event is hidden by `deleted_mask`, has no edges in `graph` and no place in
`supersession`.
"""
from __future__ import annotations

import copy
import logging
import os
import shutil
import time as _time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from pyroaring import BitMap

from . import wal as walmod
from .build import BuildReport, Progress, ShardContext, compute_segment, content_hashes, save_segment
from .columns import KeyLookup, keys64
from .corpus import EventBatch
from .derive import FLAG_ACTOR, with_links
from .errors import NPY_LOAD_ERRORS, CorpusError, CorruptIndexError
from .format import crc32_file, fsync_dir, read_manifest, write_manifest, write_new_dir
from .params import BuildParams
from .supersession import supersession_overlay
from .segment import MemSegment, Segment, SegmentBase
from .shardgraph import (PREFIX as GRAPH_PREFIX, GraphFile, fresh_name, matches, open_graph, state_key,
                         write_graph_dir)

EMPTY_OVERLAY = (np.zeros(0, np.uint64), np.zeros(0, np.uint64))


@dataclass
class Graph:
    """The event graph over a shard's global rows (see kernels/expand.py for the contract)."""
    times: np.ndarray
    out_ptr: np.ndarray
    out_dst: np.ndarray
    out_type: np.ndarray
    in_ptr: np.ndarray
    in_src: np.ndarray
    in_type: np.ndarray
    ev_ptr: np.ndarray
    ev_ent: np.ndarray
    ent_ptr: np.ndarray
    ent_rows: np.ndarray

    @property
    def n(self) -> int:
        return len(self.times)

    @property
    def entity_df(self) -> np.ndarray:
        return np.diff(self.ent_ptr)


def _concat_csr(ptrs: Sequence[np.ndarray], cols: Sequence[Sequence[np.ndarray]], n_cols: int):
    if len(ptrs) == 1:
        return (ptrs[0], *cols[0])
    ptr = [np.zeros(1, np.int64)]
    base = 0
    for p in ptrs:
        ptr.append(np.asarray(p[1:]) + base)
        base += int(p[-1])
    if not ptrs:
        return (np.zeros(1, np.int64), *([np.zeros(0, np.int64)] * n_cols))
    return (np.concatenate(ptr), *(np.concatenate(c) for c in zip(*cols)))


# ------------------------------------------------------------------------------------ overlay
def overlay_arrays(overlay: dict) -> tuple[np.ndarray, np.ndarray]:
    if not overlay:
        return EMPTY_OVERLAY
    keys = np.fromiter(overlay.keys(), np.uint64, len(overlay))
    seqs = np.fromiter(overlay.values(), np.uint64, len(overlay))
    order = np.argsort(keys)
    return keys[order], seqs[order]


def deleted_rows(id_keys: np.ndarray, seq: np.ndarray, overlay: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """bool per row: the overlay says this version is deleted (its seq <= the overlay's seq)."""
    okeys, oseqs = overlay
    if len(okeys) == 0 or len(id_keys) == 0:
        return np.zeros(len(id_keys), bool)
    id_keys = np.asarray(id_keys)
    pos = np.minimum(np.searchsorted(okeys, id_keys), len(okeys) - 1)
    return (okeys[pos] == id_keys) & (np.asarray(seq) <= oseqs[pos])


def read_overlay(shard_dir: Path, entry: Optional[dict], verify: bool = True) -> dict:
    if not entry:
        return {}
    path = shard_dir / entry["name"]
    if not path.is_file():
        raise CorruptIndexError(f"{path}: file is missing (named by the manifest)")
    if path.stat().st_size != entry["size"] or crc32_file(path) != entry["crc32"]:
        raise CorruptIndexError(f"{path}: size or checksum mismatch; the deletion overlay is corrupted")
    try:
        arr = np.load(path, allow_pickle=False)
    except NPY_LOAD_ERRORS as e:
        raise CorruptIndexError(f"{path}: unreadable .npy file ({e})") from None
    if arr.dtype != np.uint64 or arr.ndim != 2 or arr.shape[1] != 2:
        raise CorruptIndexError(f"{path}: expected uint64 [m, 2], got {arr.dtype} {arr.shape}")
    return dict(zip(arr[:, 0].tolist(), arr[:, 1].tolist()))


def write_overlay(shard_dir: Path, name: str, overlay: dict) -> Optional[dict]:
    if not overlay:
        return None
    keys, seqs = overlay_arrays(overlay)
    path = shard_dir / name
    tmp = shard_dir / (name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, np.stack([keys, seqs], axis=1))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return {"name": name, "size": path.stat().st_size, "crc32": crc32_file(path), "n": len(keys)}


# ------------------------------------------------------------------------------------ memtable
def concat_batches(batches: Sequence[EventBatch]) -> EventBatch:
    if len(batches) == 1:
        return batches[0]
    ptrs, lsrc, base_r, base_e = [np.zeros(1, np.int64)], [], 0, 0
    for b in batches:
        ptrs.append(b.entity_ptr[1:] + base_e)
        lsrc.append(b.link_src + base_r)
        base_r += len(b)
        base_e += int(b.entity_ptr[-1])
    cat = lambda name: [x for b in batches for x in getattr(b, name)]  # noqa: E731
    return EventBatch(ids=cat("ids"), times=np.concatenate([b.times for b in batches]),
                      tokens=np.concatenate([b.tokens for b in batches]), sources=cat("sources"), kinds=cat("kinds"),
                      entity_ptr=np.concatenate(ptrs), entity_names=cat("entity_names"),
                      link_src=np.concatenate(lsrc).astype(np.int64), link_to=cat("link_to"),
                      link_type=np.concatenate([b.link_type for b in batches]).astype(np.int8),
                      texts=cat("texts"), attrs=cat("attrs"),
                      vectors=np.ascontiguousarray(np.concatenate([b.vectors for b in batches]), np.float32))


class MemLog:
    """What the write-ahead log holds beyond the manifest: added batches (the latest version of
    each id is live), and deletion-overlay entries for events in disk segments."""

    def __init__(self):
        self.batches: list[tuple[EventBatch, np.ndarray, np.ndarray]] = []  # (batch, seq, chash)
        self.live: dict[int, tuple[int, int, int]] = {}    # id key -> (seq, batch no, row)
        self.overlay_add: dict[int, int] = {}               # id key -> seq (disk rows <= seq are deleted)
        self.n_added = 0

    def apply_add(self, batch: EventBatch, seq0: int, in_disk, chash: Optional[np.ndarray] = None) -> None:
        """`in_disk(keys)` -> bool per key: an event with that id exists in a disk segment."""
        n = len(batch)
        keys = keys64(batch.ids)
        seq = np.arange(seq0, seq0 + n, dtype=np.uint64)
        b = len(self.batches)
        self.batches.append((batch, seq, content_hashes(batch) if chash is None else chash))
        disk = in_disk(keys)
        for i, (k, s, d) in enumerate(zip(keys.tolist(), seq.tolist(), disk.tolist())):
            self.live[k] = (s, b, i)
            if d:
                self.overlay_add[k] = max(self.overlay_add.get(k, 0), s - 1)
        self.n_added += n

    def apply_delete(self, keys: np.ndarray, seq: int, in_disk) -> int:
        """Delete the ids `keys` at `seq`; returns how many live events that removed."""
        # the entry is kept even when no disk row has the id (any more): a stored link may still
        # name it, and must be recognised as pointing at a deleted event (compaction prunes it)
        removed = 0
        for k in np.asarray(keys, np.uint64).tolist():
            if self.live.pop(k, None) is not None:
                removed += 1
            self.overlay_add[k] = max(self.overlay_add.get(k, 0), seq)
        return removed

    @property
    def n_live(self) -> int:
        return len(self.live)

    def live_batch(self) -> Optional[tuple[EventBatch, np.ndarray, np.ndarray]]:
        """(batch of the live events in log order, their seqs, their content hashes)."""
        if not self.live:
            return None
        by_batch: dict[int, list[int]] = {}
        for s, b, i in sorted(self.live.values()):
            by_batch.setdefault(b, []).append(i)
        parts, seqs, hashes = [], [], []
        for b, rows in sorted(by_batch.items()):
            batch, seq, ch = self.batches[b]
            rows_a = np.asarray(rows, np.int64)
            parts.append(batch if len(rows) == len(batch) else batch.select(rows_a))
            seqs.append(seq[rows_a])
            hashes.append(ch[rows_a])
        return concat_batches(parts), np.concatenate(seqs), np.concatenate(hashes)


def replay_log(shard_dir: Path, manifest: dict, segments: Sequence[Segment], *, repair: bool = False,
               graph_file: Optional[GraphFile] = None) -> tuple[MemLog, int, list[str]]:
    """Replay the manifest's log files into a `MemLog`. Returns (log, next seq, notes). A torn
    tail is ignored (and, with `repair`, truncated); damage in the middle raises."""
    log = MemLog()
    in_disk = disk_key_test(segments, graph_file)
    next_seq = int(manifest.get("flushed_seq", 0))
    notes = []
    for name in manifest.get("wal", []):
        path = shard_dir / name
        if not path.exists():
            raise CorruptIndexError(f"{path}: write-ahead log named by the manifest is missing")
        sc = walmod.scan(path)
        if sc.torn:
            notes.append(f"{path}: torn tail at byte {sc.good_bytes} of {sc.size}"
                         + (" (a whole last record failing its checksum)" if sc.complete_tail else "")
                         + (" (truncated)" if repair else " (ignored)"))
            if repair:
                # a crash mid-write leaves this (never acknowledged); a log cut by anything else
                # loses acknowledged writes, so dropping bytes is never silent
                logging.getLogger("fastctx.wal").warning("%s: %d bytes dropped", notes[-1], sc.size - sc.good_bytes)
                walmod.truncate(path, sc.good_bytes)
        for rec in sc.records:
            try:
                seq = int(rec["seq"])
                if rec["t"] == "add":
                    n = len(rec["recs"])
                    if seq + n <= int(manifest.get("flushed_seq", 0)):
                        continue
                    vec = np.frombuffer(rec["vec"], np.float32).reshape(n, int(rec["dim"]))
                    batch = EventBatch.from_records(rec["recs"], vec, origin=str(path))
                    if "derived" in rec:
                        batch = with_links(batch, *_derived_links(rec["derived"], n))
                    log.apply_add(batch, seq, in_disk)
                    next_seq = max(next_seq, seq + n)
                elif rec["t"] == "del":
                    if seq < int(manifest.get("flushed_seq", 0)):
                        continue
                    log.apply_delete(keys64(list(rec["ids"])), seq, in_disk)
                    next_seq = max(next_seq, seq + 1)
                else:
                    raise ValueError(f"unknown record type {rec['t']!r}")
            except CorruptIndexError:
                raise
            except Exception as e:
                raise CorruptIndexError(f"{path}: a log record cannot be replayed ({type(e).__name__}: {e})") from None
    return log, next_seq, notes


def _derived_links(derived, n: int) -> tuple[list, list, list]:
    """The derived links an `add` record carries beside its events (derive_add.py), checked."""
    from .corpus import DERIVED_LINK_TYPES, LINK_CODE
    src, to, types = derived
    codes = {LINK_CODE[t] for t in DERIVED_LINK_TYPES}
    if not (len(src) == len(to) == len(types)) or any(
            type(s) is not int or not 0 <= s < n for s in src) or any(
            type(t) is not str or not t for t in to) or any(c not in codes for c in types):
        raise ValueError("malformed derived links")
    return list(src), list(to), list(types)


def disk_key_test(segments: Sequence[SegmentBase], graph_file: Optional[GraphFile] = None):
    """`in_disk(keys)`: bool per key, some disk row (deleted or not) has that id. Through the
    graph file's sorted id keys when there is one (no per-segment lookup to sort)."""
    if graph_file is not None:
        return lambda keys: _in_disk(graph_file, keys)

    def in_disk(keys: np.ndarray) -> np.ndarray:
        out = np.zeros(len(keys), bool)
        for seg in segments:
            out |= seg.id_lookup.get(keys) >= 0
        return out
    return in_disk


def _key_ranges(graph_file: GraphFile, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[lo, hi) of each id key in the graph file's sorted disk id keys (an id has one row per
    segment at most; several when an updated version was flushed beside the old one)."""
    sorted_keys = graph_file["id_keys"]
    keys = np.asarray(keys, np.uint64)
    return np.searchsorted(sorted_keys, keys, "left"), np.searchsorted(sorted_keys, keys, "right")


def _in_disk(graph_file: GraphFile, keys: np.ndarray) -> np.ndarray:
    lo, hi = _key_ranges(graph_file, keys)
    return hi > lo


# ------------------------------------------------------------------------------------ opening
def open_segments(shard_dir: Path, manifest: dict, *, verify: bool = False, cache: Optional[dict] = None
                  ) -> list[Segment]:
    out, base = [], 0
    for e in manifest["segments"]:
        seg = cache.get(e["name"]) if cache is not None else None
        if seg is None:
            seg = Segment(shard_dir / e["name"], e, manifest["dim"], verify=verify, row_base=base)
            if cache is not None:
                cache[e["name"]] = seg
        elif seg.row_base != base:
            seg = copy.copy(seg)
            seg.row_base = base
            seg.__dict__.pop("id_lookup", None)
        out.append(seg)
        base += seg.n
    if cache is not None:  # forget segments this version no longer names (memory under churn)
        for name in set(cache) - {e["name"] for e in manifest["segments"]}:
            del cache[name]
    return out


def _lookup_entities(segments, keys: np.ndarray) -> np.ndarray:
    """Global entity ids of 64-bit name keys across `segments`, -1 where unknown."""
    out = np.full(len(keys), -1, np.int64)
    for seg in segments:
        hit = seg.entity_lookup.get(keys)
        out = np.where(hit >= 0, hit, out)
    return out


# `ShardParts.graph_file` of parts made without opening the graph file: opened from the manifest
UNREAD = object()


@dataclass
class ShardParts:
    """What a pinned version of a shard is opened from (`load_parts`): the manifest, its open
    segments and deletion overlay, the replayed write-ahead log (its `MemLog`, the next sequence
    number, notes on what the replay repaired) and the shard graph file; a writer updates them
    as it logs, flushes and compacts."""
    manifest: dict
    segments: list
    overlay: dict
    log: "MemLog"
    next_seq: int = 0
    notes: list = field(default_factory=list)
    graph_file: Any = UNREAD      # a GraphFile, None (none is fresh) or UNREAD

    @property
    def graph_file_read(self) -> Optional["GraphFile"]:
        """The graph file these parts opened (None: none, or not read)."""
        return None if self.graph_file is UNREAD else self.graph_file


class Shard:
    """A pinned version of one shard (see the module doc)."""

    def __init__(self, shard_dir: Path, *, verify: bool = False, parts: Optional[ShardParts] = None,
                 params: BuildParams = BuildParams()):
        self.dir = Path(shard_dir)
        if parts is None:
            parts = load_parts(self.dir, verify=verify)
        self.manifest: dict = parts.manifest
        self.dim: int = self.manifest["dim"]
        disk: list[Segment] = parts.segments
        if sum(s.n for s in disk) != self.manifest["n_rows"]:
            raise CorruptIndexError(f"{self.dir / 'MANIFEST.json'}: n_rows does not match its segments")
        self.disk_segments = disk
        # the persisted graph of the disk segments, when the manifest names a fresh one (mapped when
        # the version was pinned; a writer's own parts may lack it: the writer holds the lock)
        gf = parts.graph_file
        self.graph_file: Optional[GraphFile] = (gf if gf is not UNREAD and matches(gf, self.manifest)
                                                else open_graph(self.dir, self.manifest, verify=verify))
        self.log: MemLog = parts.log
        self.wal_notes: list[str] = parts.notes
        self.disk_overlay: dict = parts.overlay      # the manifest's deletion file alone
        overlay = dict(parts.overlay)
        for k, s in self.log.overlay_add.items():
            overlay[k] = max(overlay.get(k, 0), s)
        self.overlay = overlay
        self._overlay_arrays = overlay_arrays(overlay)
        self.sources: list[str] = list(self.manifest["sources"])
        self.kinds: list[str] = list(self.manifest["kinds"])
        for s in disk:   # codes index the manifest's dictionaries: a shortened list would crash reads
            if s.n and (int(s.source.max()) >= len(self.sources) or int(s.kind.max()) >= len(self.kinds)):
                raise CorruptIndexError(f"{self.dir / 'MANIFEST.json'}: segment {s.name} uses a source or "
                                        "kind code the manifest does not list")
        self.n_entities: int = self.manifest["n_entities"]
        self.segments: list[SegmentBase] = list(disk)
        self.memtable: Optional[MemSegment] = None
        live = self.log.live_batch()
        if live is not None:
            batch, seq, chash = live
            ctx = self.context()
            arrays = compute_segment(batch, ctx, params, seq, chash)
            self.memtable = MemSegment(arrays, ctx.row_base, ctx.entity_base)
            self.sources, self.kinds = arrays.sources, arrays.kinds
            self.n_entities += arrays.n_new_entities
            self.segments.append(self.memtable)
        self._n = sum(s.n for s in self.segments)

    def context(self) -> ShardContext:
        """Where a segment built now over the disk segments joins (the memtable's place)."""
        return ShardContext(row_base=self.manifest["n_rows"], entity_base=self.manifest["n_entities"],
                            sources=list(self.manifest["sources"]), kinds=list(self.manifest["kinds"]),
                            lookup_ids=self.disk_live_ids, lookup_entities=self.lookup_entities_disk)

    @property
    def n(self) -> int:
        """Rows in the global row space (deleted rows still take a place until compaction)."""
        return self._n

    @property
    def version(self) -> int:
        return self.manifest["version"]

    # -- deletions -----------------------------------------------------------------------------
    @cached_property
    def deleted_mask(self) -> np.ndarray:
        """uint8 per global row: 1 = deleted or replaced by a newer version (never answer it)."""
        out = np.zeros(self.n, np.uint8)
        out[:len(self._disk_deleted)] = self._disk_deleted
        return out

    @cached_property
    def _disk_deleted(self) -> np.ndarray:
        """`deleted_mask` of the disk rows (known before the memtable is computed)."""
        out = np.zeros(self.manifest["n_rows"], np.uint8)
        for seg in self.disk_segments:
            out[seg.row_base:seg.row_base + seg.n] = deleted_rows(seg.id_keys, seg.seq, self._overlay_arrays)
        return out

    @cached_property
    def n_deleted(self) -> int:
        return int(self.deleted_mask.sum())

    def deleted_local(self, seg: SegmentBase) -> Optional[BitMap]:
        """Deleted local rows of one segment as a bitmap (None when there are none)."""
        if self.n_deleted == 0 or seg is self.memtable:
            return None
        rows = np.flatnonzero(self.deleted_mask[seg.row_base:seg.row_base + seg.n])
        return BitMap(rows.astype(np.uint32)) if len(rows) else None

    @property
    def n_live(self) -> int:
        return self.n - self.n_deleted

    # -- lookups across segments ---------------------------------------------------------------
    def disk_live_ids(self, keys: np.ndarray) -> np.ndarray:
        """Global row of the live version of each id key among disk segments (-1 if none)."""
        out = np.full(len(keys), -1, np.int64)
        if self.graph_file is not None:
            lo, hi = _key_ranges(self.graph_file, keys)
            rows, dead = self.graph_file["id_rows"], self._disk_deleted
            one = np.flatnonzero(hi - lo == 1)
            r = rows[lo[one]]
            out[one] = np.where(dead[r] == 0, r, -1)
            for i in np.flatnonzero(hi - lo > 1).tolist():   # several versions stored: the live one
                live = [r for r in rows[lo[i]:hi[i]].tolist() if not dead[r]]
                out[i] = live[0] if live else -1
            return out
        for seg in self.disk_segments:
            hit = seg.id_lookup.get(keys)
            ok = hit >= 0
            if ok.any():
                rows = hit[ok] - seg.row_base
                dead = deleted_rows(np.asarray(keys, np.uint64)[ok], seg.seq[rows], self._overlay_arrays)
                idx = np.flatnonzero(ok)[~dead]
                out[idx] = hit[idx]
        return out

    def lookup_ids(self, keys: np.ndarray) -> np.ndarray:
        """Global row of the live version of each id key (-1 if none)."""
        keys = np.asarray(keys, np.uint64)
        out = self.disk_live_ids(keys)
        if self.memtable is not None:
            hit = self.memtable.id_lookup.get(keys)
            out = np.where(hit >= 0, hit, out)
        return out

    def lookup_entities_disk(self, keys: np.ndarray) -> np.ndarray:
        return _lookup_entities(self.disk_segments, keys)

    def lookup_entities(self, keys: np.ndarray) -> np.ndarray:
        return _lookup_entities(self.segments, keys)

    def entity_ids(self, names: Sequence[str]) -> list[int]:
        """Global ids of the known entity names (unknown names are left out)."""
        return [int(g) for g in self.lookup_entities(keys64(list(names))) if g >= 0]

    def codes(self, names: Sequence[str], dictionary: Sequence[str]) -> list[int]:
        """Codes of the known names (unknown ones match nothing). Dictionary lookups are cached
        per shard version: a filter may list hundreds of kinds."""
        cache = self.__dict__.setdefault("_code_maps", {})
        index = cache.get(id(dictionary))
        if index is None:
            index = cache[id(dictionary)] = {v: i for i, v in enumerate(dictionary)}
        return [index[v] for v in names if v in index]

    def locate(self, row: int) -> tuple[SegmentBase, int]:
        """Segment and local row of a global row."""
        for seg in self.segments:
            if row < seg.row_base + seg.n:
                return seg, row - seg.row_base
        raise IndexError(f"row {row} out of range (shard has {self.n})")

    def vectors(self, rows) -> np.ndarray:
        """float32 [len(rows), dim]: the vectors of global rows, one gather per segment (a
        memtable or a multi-segment build), not a segment lookup per row."""
        rows = np.asarray(rows, np.int64)
        segs = self.segments
        if len(segs) == 1:
            return np.asarray(segs[0].vectors[rows], np.float32)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.n):
            raise IndexError(f"rows out of range (shard has {self.n})")
        out = np.empty((len(rows), self.dim), np.float32)
        for seg in segs:
            sel = np.flatnonzero((rows >= seg.row_base) & (rows < seg.row_base + seg.n))
            if len(sel):
                out[sel] = seg.vectors[rows[sel] - seg.row_base]
        return out

    def entity_name(self, entity_id: int) -> str:
        for seg in self.segments:
            if entity_id < seg.entity_base + len(seg.ent_keys):
                if entity_id >= seg.entity_base:
                    return seg.entity_names[entity_id - seg.entity_base]
        raise IndexError(f"entity {entity_id} out of range")

    # -- shard-wide arrays ---------------------------------------------------------------------
    def _cat(self, attr: str, dtype) -> np.ndarray:
        segs = self.segments
        if not segs:
            return np.zeros(0, dtype)
        return getattr(segs[0], attr) if len(segs) == 1 else np.concatenate([getattr(s, attr) for s in segs])

    @cached_property
    def times(self) -> np.ndarray:
        return self._cat("times", np.int64)

    @cached_property
    def tokens(self) -> np.ndarray:
        return self._cat("tokens", np.int32)

    @cached_property
    def kind_codes(self) -> np.ndarray:
        return self._cat("kind", np.uint16)

    @cached_property
    def live_lookup(self) -> KeyLookup:
        keys = self._cat("id_keys", np.uint64)
        rows = np.arange(self.n, dtype=np.int64)
        live = self.deleted_mask == 0
        return KeyLookup(np.asarray(keys)[live], rows[live])

    @cached_property
    def graph(self) -> Graph:
        """The shard's event graph: mapped from the graph file when there is a fresh one (with
        the log's changes merged on, graphdelta.py), else derived from the segments."""
        gf = self.graph_file
        if gf is None:
            return self._derived_graph()
        base = Graph(self.times, gf["out_ptr"], gf["out_dst"], gf["out_type"], gf["in_ptr"],
                     gf["in_src"], gf["in_type"], gf["ev_ptr"], gf["ev_ent"], gf["ent_ptr"], gf["ent_rows"])
        if self.memtable is None and not self.log.overlay_add:
            return base
        from .graphdelta import merge_log
        return merge_log(base, self)

    def _derived_graph(self) -> Graph:
        """The graph derived from the segments (no graph file, or one the log's changes outdate)."""
        segs, n = self.segments, self.n
        link_ptr, link_keys, link_type = _concat_csr([s.link_ptr for s in segs],
                                                     [(s.link_dst, s.link_type) for s in segs], 2)
        link_keys = np.asarray(link_keys, np.uint64)
        ev_ptr, ev_ent = _concat_csr([s.ev_ptr for s in segs], [(s.ev_ent,) for s in segs], 1)
        dst = self.live_lookup.get(link_keys)
        missing = dst < 0
        if missing.any():  # the target was deleted (the overlay knows it) or the file is damaged
            _check_deleted_targets(self, link_keys[missing])
        src = np.repeat(np.arange(n, dtype=np.int64), np.diff(link_ptr))
        keep = ~missing
        if self.n_deleted:
            keep &= self.deleted_mask[src] == 0
        if keep.all():
            out_ptr, out_dst, out_type = np.asarray(link_ptr, np.int64), dst, np.asarray(link_type, np.int8)
        else:
            src, out_dst, out_type = src[keep], dst[keep], np.asarray(link_type)[keep].astype(np.int8)
            out_ptr = np.zeros(n + 1, np.int64)
            np.cumsum(np.bincount(src, minlength=n), out=out_ptr[1:])
        out_dst = np.ascontiguousarray(out_dst, np.int64)
        # reverse links: group sources by destination (sources ascending inside each group)
        src = np.repeat(np.arange(n, dtype=np.int64), np.diff(out_ptr))
        order = np.argsort(out_dst, kind="stable")   # src is ascending: ties stay in source order
        in_ptr = np.zeros(n + 1, np.int64)
        np.cumsum(np.bincount(out_dst, minlength=n), out=in_ptr[1:])
        if len(segs) == 1 and len(segs[0].post_ent) == self.n_entities and not self.n_deleted:
            ent_ptr, ent_rows = segs[0].post_ptr, segs[0].post_rows  # every entity is local
        else:
            ent_ptr, ent_rows = self._merged_postings()
        return Graph(self.times, out_ptr, out_dst, out_type, in_ptr, src[order],
                     np.ascontiguousarray(out_type[order], np.int8), np.asarray(ev_ptr, np.int64),
                     np.asarray(ev_ent, np.int64), ent_ptr, ent_rows)

    def check_graph_file(self) -> Optional[str]:
        """For `verify`: the graph file's arrays against a fresh derivation from the segments
        (every checksum was checked when the shard was opened to verify). None when they agree
        or there is no fresh graph file."""
        gf = self.graph_file
        if gf is None:
            return None
        disk = Shard(self.dir, parts=ShardParts(self.manifest, self.disk_segments, self.disk_overlay, MemLog(),
                                                graph_file=None))
        want = graph_arrays(disk)
        for stem, arr in want.items():
            got = gf[stem]
            if got.dtype != arr.dtype or not np.array_equal(got, arr):
                return f"{gf.dir / (stem + '.npy')}: differs from the graph derived from the segments"
        return None

    @cached_property
    def entity_flags(self) -> np.ndarray:
        """derive.FLAG_* bits per entity. An index built before actors were flagged (no
        `actor_prefixes` in its manifest's params) has them flagged here from their names, by
        the default `BuildParams.actor_prefixes`, as a build now would."""
        flags = self._cat("ent_flags", np.uint8)
        if "actor_prefixes" not in (self.manifest.get("params") or {}) and self.segments:
            actor = np.concatenate([_starts_with(s.entity_names, BuildParams().actor_prefixes) for s in self.segments])
            flags = flags | np.where(actor, FLAG_ACTOR, 0).astype(np.uint8)
        return flags

    @cached_property
    def supersession(self) -> tuple[np.ndarray, np.ndarray]:
        """(superseded_by, superseded_at) per global row; -1 where the event is still current.
        Explicit `supersedes`/`reverts` links, and implicit slot supersession: consecutive events of
        a slot kind on the same slot entity. The earliest superseder wins. Deleted rows take no
        part (they have no links and no postings in `graph`). Mapped from the graph file when
        nothing in the log changes it."""
        gf = self.graph_file
        if gf is not None and self.memtable is None and not self.log.overlay_add:
            return gf["sup_by"], gf["sup_at"]
        return self._derived_supersession(self.graph)

    def _derived_supersession(self, g: Graph) -> tuple[np.ndarray, np.ndarray]:
        n = self.n
        params = self.manifest.get("params") or {"slot_kinds": list(BuildParams().slot_kinds)}
        slot_kinds = self.codes(params.get("slot_kinds", []), self.kinds)
        return supersession_overlay(
            np.asarray(self.times), np.repeat(np.arange(n, dtype=np.int64), np.diff(g.out_ptr)), g.out_dst,
            g.out_type, g.ent_ptr, g.ent_rows, np.flatnonzero(self.entity_flags & 1),
            np.isin(self.kind_codes, slot_kinds))

    def _merged_postings(self) -> tuple[np.ndarray, np.ndarray]:
        segs = self.segments
        if not segs:
            return np.zeros(self.n_entities + 1, np.int64), np.zeros(0, np.int64)
        ent = np.concatenate([np.repeat(s.post_ent, np.diff(s.post_ptr)) for s in segs]).astype(np.int64)
        rows = np.concatenate([np.asarray(s.post_rows) + s.row_base for s in segs]).astype(np.int64)
        if self.n_deleted:
            keep = self.deleted_mask[rows] == 0
            ent, rows = ent[keep], rows[keep]
        order = postings_order(ent, rows, np.asarray(self.times))
        ptr = np.zeros(self.n_entities + 1, np.int64)
        np.cumsum(np.bincount(ent, minlength=self.n_entities), out=ptr[1:])
        return ptr, rows[order]


def postings_order(ent: np.ndarray, rows: np.ndarray, times: np.ndarray) -> np.ndarray:
    """The order of postings (entity, row) by entity, then the row's time, then row: the walk's
    order. The input is the segments' postings one after another, each segment's sorted by
    entity then time, so a stable sort by entity (timsort merges those runs in linear time per
    run) is already in time order within each entity whenever the segments do not overlap in
    time, as time-cut builds and compactions make them; else (late arrivals in a later segment)
    the full three-key sort. At 3.4M events the three-key sort alone took 5.7 s."""
    order = np.argsort(ent, kind="stable")
    e, r = ent[order], rows[order]
    t = times[r]
    same = e[1:] == e[:-1]
    if np.any(same & ((t[1:] < t[:-1]) | ((t[1:] == t[:-1]) & (r[1:] < r[:-1])))):
        return np.lexsort((rows, times[rows], ent))
    return order


def _check_deleted_targets(sh: "Shard", keys: np.ndarray) -> None:
    """A stored link whose target has no live row must name a deleted id (else: damage)."""
    known = np.isin(keys, sh._overlay_arrays[0])
    if not known.all():
        raise CorruptIndexError(f"{sh.dir}: a link points outside the shard's rows "
                                f"(target id key {int(keys[~known][0]):#x} is in no segment)")


def graph_arrays(sh: "Shard") -> dict:
    """What the graph file holds for a shard without a memtable (see shardgraph.LAYOUT)."""
    g = sh._derived_graph()
    by, at = sh._derived_supersession(g)
    keys = np.asarray(sh._cat("id_keys", np.uint64))
    order = np.argsort(keys, kind="stable")
    return {"out_ptr": g.out_ptr, "out_dst": g.out_dst, "out_type": g.out_type, "in_ptr": g.in_ptr,
            "in_src": g.in_src, "in_type": g.in_type, "ev_ptr": g.ev_ptr, "ev_ent": g.ev_ent,
            "ent_ptr": g.ent_ptr, "ent_rows": g.ent_rows, "sup_by": by, "sup_at": at,
            "id_keys": keys[order], "id_rows": order.astype(np.int64)}


def attach_graph(shard_dir: Path, manifest: dict, segments: Sequence[Segment],
                 overlay: Optional[dict] = None) -> None:
    """Before a commit of `manifest` (its disk state complete, `segments` opened, `overlay` its
    deletion file's content): write the graph file set of that state and name it in the
    manifest (entry "graph", shardgraph.py). A shard of one segment gets none (its postings are
    mapped directly): any entry is dropped."""
    manifest.pop("graph", None)
    if len(manifest["segments"]) < 2:
        return
    if overlay is None:
        overlay = read_overlay(shard_dir, manifest.get("deletes"))
    sh = Shard(shard_dir, parts=ShardParts(manifest, list(segments), overlay, MemLog(), graph_file=None))
    entry = write_graph_dir(shard_dir, f"{GRAPH_PREFIX}{manifest['version']:06d}", graph_arrays(sh))
    entry.update(key=state_key(manifest), n_rows=manifest["n_rows"], n_entities=manifest["n_entities"])
    manifest["graph"] = entry


def load_parts(shard_dir: Path, *, verify: bool = False, cache: Optional[dict] = None, repair: bool = False,
               attempts: int = 50) -> ShardParts:
    """Read the manifest and open everything it names (segments, overlay, log). Retries when a
    writer replaced the manifest and removed files in between."""
    for attempt in range(attempts):
        manifest = read_manifest(shard_dir)
        try:
            segments = open_segments(shard_dir, manifest, verify=verify, cache=cache)
            overlay = read_overlay(shard_dir, manifest.get("deletes"))
            graph_file = open_graph(shard_dir, manifest, verify=verify)
            log, next_seq, notes = replay_log(shard_dir, manifest, segments, repair=repair, graph_file=graph_file)
            return ShardParts(manifest, segments, overlay, log, next_seq, notes, graph_file)
        except (CorruptIndexError, FileNotFoundError):
            try:
                changed = read_manifest(shard_dir)["version"] != manifest["version"]
            except Exception:
                changed = False
            if not changed or attempt == attempts - 1:
                raise
            _time.sleep(0.001 * (attempt + 1))
    raise AssertionError("unreachable")


# ------------------------------------------------------------------------------------ writing
def new_manifest(dim: int) -> dict:
    return {"version": 0, "dim": int(dim), "segments": [], "sources": [], "kinds": [],
            "n_rows": 0, "n_entities": 0, "next_segment": 1, "wal": [], "next_wal": 1,
            "next_seq": 0, "flushed_seq": 0, "deletes": None}


def write_segment_dir(shard_dir: Path, name: str, arrays, ctx: ShardContext, params: BuildParams,
                      progress: Progress = None) -> dict:
    """Write a segment into a temporary directory, fsync it, rename it to `name`; its entry.
    A leftover directory of that name (from a crash before its manifest commit) is replaced."""
    def fill(tmp: Path) -> dict:
        entry = save_segment(tmp, arrays, ctx, params, progress)
        entry["name"] = name
        for f in os.listdir(tmp):
            with open(tmp / f, "rb") as fh:
                os.fsync(fh.fileno())
        return entry
    return write_new_dir(shard_dir, name, fill)


def _starts_with(names, prefixes) -> np.ndarray:
    """Per name of a segment's entity names (a mapped column, or a list in a memtable), whether
    it starts with one of `prefixes`."""
    if hasattr(names, "startswith"):
        return names.startswith(prefixes)
    prefixes = tuple(prefixes)
    return np.fromiter((str(nm).startswith(prefixes) for nm in names), bool, len(names))


def append_segment(shard_dir: Path, manifest: dict, batch: EventBatch, params: BuildParams,
                   progress: Progress = None, lookup_ids=None, lookup_entities=None) -> BuildReport:
    """Write `batch` as one new segment and commit (used by `build`: an index born whole)."""
    if len(batch) == 0:
        raise CorpusError("no events to add", field="events")
    manifest.setdefault("params", params.manifest_params())
    ctx = ShardContext(row_base=manifest["n_rows"], entity_base=manifest["n_entities"],
                       sources=list(manifest["sources"]), kinds=list(manifest["kinds"]))
    if lookup_ids is not None:
        ctx.lookup_ids, ctx.lookup_entities = lookup_ids, lookup_entities
    seq0 = int(manifest.get("next_seq", 0))
    seq = np.arange(seq0, seq0 + len(batch), dtype=np.uint64)
    arrays = compute_segment(batch, ctx, params, seq, progress=progress)
    name = f"seg-{manifest['next_segment']:06d}"
    entry = write_segment_dir(shard_dir, name, arrays, ctx, params, progress)
    new = {**manifest, "version": manifest["version"] + 1, "segments": manifest["segments"] + [entry],
           "sources": arrays.sources, "kinds": arrays.kinds, "n_rows": manifest["n_rows"] + len(batch),
           "n_entities": manifest["n_entities"] + arrays.n_new_entities,
           "next_segment": manifest["next_segment"] + 1, "next_seq": seq0 + len(batch),
           "flushed_seq": max(int(manifest.get("flushed_seq", 0)), seq0 + len(batch))}
    write_manifest(shard_dir, new)
    manifest.clear()
    manifest.update(new)
    return arrays.report


def create_shard(shard_dir: Path, dim: int) -> None:
    shard_dir.mkdir(parents=True, exist_ok=True)
    write_manifest(shard_dir, new_manifest(dim))


def collect_garbage(shard_dir: Path, manifest: dict) -> list[str]:
    """Remove what `manifest` does not reference: segment directories (and half-written ones),
    log files, overlay files, temporary files. Writer only, right after a commit (or on taking
    the lock). Safe for readers: see the module doc and docs/FORMAT.md."""
    keep = {e["name"] for e in manifest["segments"]} | set(manifest.get("wal", []))
    if manifest.get("deletes"):
        keep.add(manifest["deletes"]["name"])
    keep.add(fresh_name(manifest) or "MANIFEST.json")   # a stale graph file set is garbage
    keep.add("MANIFEST.json")
    removed = []
    for p in shard_dir.iterdir():
        name = p.name
        ours = (name.startswith(("seg-", ".seg-", "wal-", "del-", GRAPH_PREFIX, "." + GRAPH_PREFIX))
                or name.endswith(".tmp"))
        if not ours or name in keep:
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            try:
                p.unlink()
            except FileNotFoundError:
                pass
        removed.append(name)
    if removed:
        fsync_dir(shard_dir)
    return removed


# ------------------------------------------------------------------------------------ compaction
def merge_segments(sh: Shard, segs: Sequence[Segment]):
    """The live rows of adjacent segments `segs` as one batch, with their seqs and content
    hashes, plus the entities the segments introduced (kept in order: global ids stay put)."""
    from .corpus import LINK_CODE
    ids, times, tokens, sources, kinds, ptr, names, lsrc, lto, ltype, texts, attrs, vecs = \
        [], [], [], [], [], [0], [], [], [], [], [], [], []
    seqs, hashes = [], []
    for seg in segs:
        live = np.flatnonzero(sh.deleted_mask[seg.row_base:seg.row_base + seg.n] == 0)
        for r in live.tolist():
            p = seg.payload(r)
            k = len(ids)
            ids.append(seg.ids[r])
            sources.append(sh.sources[int(seg.source[r])])
            kinds.append(sh.kinds[int(seg.kind[r])])
            ents = list(p.get("entities") or [])
            names.extend(ents)
            ptr.append(len(names))
            for to, ty in p.get("links") or []:
                lsrc.append(k)
                lto.append(to)
                ltype.append(LINK_CODE[ty])
            texts.append(p.get("text"))
            attrs.append(p.get("attrs") or {})
        times.append(np.asarray(seg.times[live]))
        tokens.append(np.asarray(seg.tokens[live]))
        vecs.append(np.asarray(seg.vectors[live]))
        seqs.append(np.asarray(seg.seq[live]))
        hashes.append(np.asarray(seg.chash[live]))
    dim = sh.dim
    batch = EventBatch(ids=ids, times=np.concatenate(times).astype(np.int64), tokens=np.concatenate(tokens).astype(np.int32),
                       sources=sources, kinds=kinds, entity_ptr=np.asarray(ptr, np.int64), entity_names=names,
                       link_src=np.asarray(lsrc, np.int64), link_to=lto, link_type=np.asarray(ltype, np.int8),
                       texts=texts, attrs=attrs,
                       vectors=np.ascontiguousarray(np.concatenate(vecs).reshape(-1, dim), np.float32))
    intro = (np.concatenate([np.asarray(s.ent_keys) for s in segs]).astype(np.uint64),
             np.concatenate([np.asarray(s.ent_flags) for s in segs]).astype(np.uint8),
             [s.entity_names[i] for s in segs for i in range(len(s.ent_keys))])
    return batch, np.concatenate(seqs).astype(np.uint64), np.concatenate(hashes).astype(np.uint64), intro


def prune_overlay(overlay: dict, segments: Sequence[Segment], sh: Shard) -> dict:
    """Overlay entries still needed once `segments` are the shard's disk segments: an entry is
    kept while a stored row it hides remains, or while a stored link names that id and no live
    version of it exists (the link must then be recognised as pointing at a deleted event)."""
    if not overlay:
        return {}
    okeys, oseqs = overlay_arrays(overlay)
    needed = np.zeros(len(okeys), bool)
    no_live = sh.lookup_ids(okeys) < 0
    for seg in segments:
        keys = np.asarray(seg.id_keys)
        pos = np.minimum(np.searchsorted(okeys, keys), len(okeys) - 1)
        hit = (okeys[pos] == keys) & (np.asarray(seg.seq) <= oseqs[pos])
        needed[pos[hit]] = True
        if len(seg.link_dst):
            needed |= np.isin(okeys, np.asarray(seg.link_dst)) & no_live
    return {int(k): int(s) for k, s in zip(okeys[needed].tolist(), oseqs[needed].tolist())}
