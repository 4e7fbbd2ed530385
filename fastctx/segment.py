"""Segments: the read-only view of one immutable on-disk segment (memory-mapped columns, bitmaps,
HNSW, payloads), and `MemSegment`, the same interface over in-memory arrays (the memtable of
events still in the write-ahead log; it has no HNSW, so the planner always scans it exactly)."""
from __future__ import annotations

import mmap
import os
import threading
from functools import cached_property
from pathlib import Path

import hnswlib
import msgpack
import numpy as np
from pyroaring import BitMap

from .columns import KeyLookup, StringColumn
from .errors import CorruptIndexError
from .format import check_checksum, verify_files


class SegmentBase:
    name: str
    n: int
    row_base: int
    entity_base: int
    has_hnsw: bool = False
    hnsw = None

    @cached_property
    def id_lookup(self) -> KeyLookup:
        return KeyLookup(np.asarray(self.id_keys), np.arange(self.n, dtype=np.int64) + self.row_base)

    @cached_property
    def entity_lookup(self) -> KeyLookup:
        return KeyLookup(np.asarray(self.ent_keys),
                         np.arange(len(self.ent_keys), dtype=np.int64) + self.entity_base)

    def entity_rows(self, entity_id: int) -> BitMap:
        """Local rows mentioning a global entity id, as a bitmap."""
        stored = self.bitmaps["entity"].get(entity_id)
        if stored is not None:
            return stored
        i = int(np.searchsorted(self.post_ent, entity_id))
        if i >= len(self.post_ent) or self.post_ent[i] != entity_id:
            return BitMap()
        return BitMap(self.post_rows[self.post_ptr[i]:self.post_ptr[i + 1]].astype(np.uint32))

    def _decode_payload(self, data: bytes, row: int, where) -> dict:
        try:
            return msgpack.unpackb(data)
        except Exception as e:
            raise CorruptIndexError(f"{where}: row {row} cannot be decoded ({e})") from None


class Segment(SegmentBase):
    def __init__(self, seg_dir: Path, entry: dict, dim: int, *, verify: bool = False, row_base: int | None = None):
        self.dir, self.entry, self.dim = seg_dir, entry, dim
        self.name: str = entry["name"]
        self.n: int = int(entry["n"])
        self.row_base: int = int(entry["row_base"] if row_base is None else row_base)
        self.entity_base: int = int(entry["entity_base"])
        self.time_min, self.time_max = int(entry["time_min"]), int(entry["time_max"])
        # big files' checksums are deferred (format.verify_files): hnsw.bin's to its first load
        self._unchecked = verify_files(seg_dir, entry["files"], full=verify)

        n = self.n
        self.times = self._load("time.npy", (n,), np.int64)
        self.tokens = self._load("tokens.npy", (n,), np.int32)
        self.source = self._load("source.npy", (n,), np.uint16)
        self.kind = self._load("kind.npy", (n,), np.uint16)
        self.vectors = self._load("vectors.npy", (n, dim), np.float32)
        self.id_keys = self._load("id_keys.npy", (n,), np.uint64)
        self.seq = self._load("seq.npy", (n,), np.uint64)
        self.chash = self._load("chash.npy", (n,), np.uint64)
        self.ev_ptr = self._load("ev_ptr.npy", (n + 1,), np.int64)
        self.ev_ent = self._load("ev_ent.npy", (int(self.ev_ptr[-1]),), np.int64)
        self.post_ent = self._load("post_ent.npy", None, np.int64)
        self.post_ptr = self._load("post_ptr.npy", (len(self.post_ent) + 1,), np.int64)
        self.post_rows = self._load("post_rows.npy", (int(self.post_ptr[-1]),), np.int64)
        self.link_ptr = self._load("link_ptr.npy", (n + 1,), np.int64)
        self.link_dst = self._load("link_dst.npy", (int(self.link_ptr[-1]),), np.uint64)
        self.link_type = self._load("link_type.npy", (int(self.link_ptr[-1]),), np.int8)
        self.ent_keys = self._load("ent_keys.npy", (int(entry["n_new_entities"]),), np.uint64)
        self.ent_flags = self._load("ent_flags.npy", (len(self.ent_keys),), np.uint8)
        self.payload_off = self._load("payload_off.npy", (n + 1,), np.int64)
        self.ids = StringColumn(seg_dir, "ids", n)
        self.entity_names = StringColumn(seg_dir, "entities", len(self.ent_keys))
        self._check_structure()
        self.bitmaps = self._load_bitmaps()
        self.has_hnsw = bool(entry.get("hnsw"))
        # loaded by the first search that walks it; shared with copies of this segment
        self._graph = _LazyGraph(seg_dir / "hnsw.bin") if self.has_hnsw else None
        # payloads are read through a map opened now: a reader keeps its pinned version readable
        # even after a compaction removed these files (see docs/FORMAT.md, "Garbage collection")
        with open(seg_dir / "payload.bin", "rb") as f:
            size = os.fstat(f.fileno()).st_size
            self._payload = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""

    # -- loading -----------------------------------------------------------------------------
    def _load(self, name: str, shape, dtype) -> np.ndarray:
        path = self.dir / name
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as e:
            raise CorruptIndexError(f"{path}: unreadable .npy file ({e})") from None
        if arr.dtype != np.dtype(dtype) or (shape is not None and arr.shape != shape):
            raise CorruptIndexError(
                f"{path}: dtype {arr.dtype} shape {arr.shape}, expected {np.dtype(dtype)} {shape}")
        return arr

    def _check_structure(self) -> None:
        def fail(name, what):
            raise CorruptIndexError(f"{self.dir / name}: {what}")
        for name, ptr in (("ev_ptr.npy", self.ev_ptr), ("link_ptr.npy", self.link_ptr),
                          ("post_ptr.npy", self.post_ptr), ("payload_off.npy", self.payload_off)):
            if len(ptr) and (ptr[0] != 0 or (np.diff(ptr) < 0).any()):
                fail(name, "offsets do not start at 0 and ascend")
        if self.n and (np.diff(self.times) < 0).any():
            fail("time.npy", "rows are not sorted by time")
        if len(self.post_rows) and (self.post_rows.min() < 0 or self.post_rows.max() >= self.n):
            fail("post_rows.npy", "row out of range")
        if len(self.link_type) and (self.link_type.min() < 0):
            fail("link_type.npy", "negative link type")

    def _load_bitmaps(self) -> dict:
        path = self.dir / "bitmaps.msgpack"
        try:
            raw = msgpack.unpackb(path.read_bytes(), strict_map_key=False)
            return {group: {int(k): BitMap.deserialize(v) for k, v in raw[group].items()}
                    for group in ("source", "kind", "entity")}
        except Exception as e:  # untrusted bytes: any decoding failure is corruption
            raise CorruptIndexError(f"{path}: cannot decode bitmaps ({type(e).__name__}: {e})") from None

    @property
    def hnsw_loaded(self) -> bool:
        return self._graph is not None and self._graph.index is not None

    @property
    def hnsw(self) -> hnswlib.Index | None:
        """The segment's HNSW graph, loaded (and checksummed, unless open already did) on first
        use: opening never reads the graph. None when the segment has none."""
        g = self._graph
        if g is None:
            return None
        if g.index is None:
            with g.lock:
                if g.index is None:
                    g.index = self._load_hnsw(g)
        return g.index

    def _load_hnsw(self, g: "_LazyGraph") -> hnswlib.Index:
        path, fd = g.path, g.file.fileno()
        # the open descriptor by name: the file as pinned, even if a compaction unlinked it since
        src = next((p for p in (f"/proc/self/fd/{fd}", f"/dev/fd/{fd}") if os.path.exists(p)), str(path))
        if "hnsw.bin" in self._unchecked:   # before hnswlib parses a byte of it
            check_checksum(Path(src), self.entry["files"]["hnsw.bin"], shown=path)
        index = hnswlib.Index(space="ip", dim=self.dim)
        try:
            index.load_index(src, max_elements=self.n)
        except RuntimeError as e:
            raise CorruptIndexError(f"{path}: cannot load ({e})") from None
        if index.get_current_count() != self.n:
            raise CorruptIndexError(f"{path}: holds {index.get_current_count()} items, expected {self.n}")
        index.set_num_threads(1)
        g.file.close()
        return index

    def payload(self, row: int) -> dict:
        lo, hi = int(self.payload_off[row]), int(self.payload_off[row + 1])
        if hi > len(self._payload) or lo > hi:
            raise CorruptIndexError(f"{self.dir / 'payload.bin'}: row {row} lies outside the file")
        try:
            return msgpack.unpackb(self._payload[lo:hi])
        except Exception as e:
            raise CorruptIndexError(f"{self.dir / 'payload.bin'}: row {row} cannot be decoded ({e})") from None


class _LazyGraph:
    """A segment's HNSW graph file, opened when the segment is pinned and loaded on first use (a
    pinned reader never opens a file after pinning, see docs/FORMAT.md "Garbage collection")."""

    def __init__(self, path: Path):
        self.path, self.index, self.lock = path, None, threading.Lock()
        try:
            self.file = open(path, "rb")
        except OSError as e:
            raise CorruptIndexError(f"{path}: cannot open the HNSW graph ({e.strerror})") from None


class MemSegment(SegmentBase):
    """A segment held in memory (`build.SegmentArrays`), standing in for an on-disk `Segment`."""

    def __init__(self, arrays, row_base: int, entity_base: int, name: str = "memtable"):
        c = arrays.cols
        self.name, self.n, self.row_base, self.entity_base = name, arrays.n, row_base, entity_base
        self.entry = {"name": name, "n": arrays.n, "hnsw": None, "files": {}}
        self.time_min, self.time_max = arrays.time_min, arrays.time_max
        self.times, self.tokens, self.source, self.kind = c["time.npy"], c["tokens.npy"], c["source.npy"], c["kind.npy"]
        self.vectors, self.id_keys, self.seq, self.chash = c["vectors.npy"], c["id_keys.npy"], c["seq.npy"], c["chash.npy"]
        self.ev_ptr, self.ev_ent = c["ev_ptr.npy"], c["ev_ent.npy"]
        self.post_ent, self.post_ptr, self.post_rows = c["post_ent.npy"], c["post_ptr.npy"], c["post_rows.npy"]
        self.link_ptr, self.link_dst, self.link_type = c["link_ptr.npy"], c["link_dst.npy"], c["link_type.npy"]
        self.ent_keys, self.ent_flags = c["ent_keys.npy"], c["ent_flags.npy"]
        self.payload_off = c["payload_off.npy"]
        self.ids, self.entity_names = arrays.ids, arrays.entity_names
        self.bitmaps = {g: {int(k): BitMap.deserialize(v) for k, v in arrays.bitmaps[g].items()}
                        for g in ("source", "kind", "entity")}
        self.hnsw = None
        self._payload = arrays.payload
        self.arrays = arrays

    def payload(self, row: int) -> dict:
        lo, hi = int(self.payload_off[row]), int(self.payload_off[row + 1])
        return self._decode_payload(self._payload[lo:hi], row, "memtable")
