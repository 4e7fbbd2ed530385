"""Segments: the read-only view of one immutable on-disk segment (memory-mapped columns, bitmaps,
HNSW, payloads), and `MemSegment`, the same interface over in-memory arrays (the memtable of
events still in the write-ahead log; it has no HNSW, so the planner always scans it exactly)."""
from __future__ import annotations

import mmap
import os
import threading
import zlib
from functools import cached_property
from pathlib import Path

import hnswlib
import msgpack
import numpy as np
from pyroaring import BitMap

from .codes import CODE_FILES, Codes
from .columns import KeyLookup, StringColumn
from .errors import NPY_LOAD_ERRORS, CorruptIndexError
from .format import check_checksum, verify_files


class SegmentBase:
    name: str
    n: int
    row_base: int
    entity_base: int
    has_hnsw: bool = False
    hnsw = None
    codes = None      # int8 codes of the vectors for large exact scans (fastctx.codes), if written

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
        if CODE_FILES[0] in entry["files"]:     # segments written before the codes have none
            self.codes = Codes(self._load("codes.npy", (n, dim), np.int8),
                               self._load("code_scale.npy", (n,), np.float32),
                               self._load("code_bound.npy", (n,), np.float32))
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
        except NPY_LOAD_ERRORS as e:
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
    def walk_loaded(self) -> bool:
        """Whether a search has read the graph in place for the walk (see `walk`)."""
        return self._graph is not None and self._graph.arrays is not None

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

    @property
    def walk(self) -> "GraphArrays | None":
        """The segment's HNSW graph read in place as arrays (for the graph walk of
        kernels/hnsw_search.py). A graph file of at most GRAPH_CHECK_MAX_BYTES is checksummed and
        every link checked first; a bigger one is not read whole before its first answer: the walk
        checks each link list it reads, and `verify` checks the checksum. None without a graph."""
        g = self._graph
        if g is None:
            return None
        if g.arrays is None:
            with g.lock:
                if g.arrays is None:
                    small = (g.map is None or len(g.map) <= GRAPH_CHECK_MAX_BYTES
                             or "hnsw.bin" not in self._unchecked)     # small, or opened to verify
                    if small:
                        self._check_graph(g)
                    g.arrays = GraphArrays(g.map, g.path, self.n, self.dim, full_check=small)
        return g.arrays

    def _check_graph(self, g: "_LazyGraph") -> None:
        """The graph file's CRC-32 (once per segment, whichever reader comes first)."""
        if "hnsw.bin" in self._unchecked and not g.checked:
            if g.map is None:
                raise CorruptIndexError(f"{g.path}: the HNSW graph is empty")
            check_checksum(g.path, self.entry["files"]["hnsw.bin"], crc=zlib.crc32(g.map))
        g.checked = True

    def _load_hnsw(self, g: "_LazyGraph") -> hnswlib.Index:
        path = g.path
        if g.file.closed:
            raise CorruptIndexError(f"{path}: the HNSW graph file was closed")
        fd = g.file.fileno()
        # the open descriptor by name: the file as pinned, even if a compaction unlinked it since
        src = next((p for p in (f"/proc/self/fd/{fd}", f"/dev/fd/{fd}") if os.path.exists(p)), str(path))
        self._check_graph(g)   # before hnswlib parses a byte of it
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


# Graph files up to this size are checksummed and link-checked whole at first use; a bigger one
# (748 MB per segment at 3.4M x 128: 0.2 s of CRC and 0.08 s of link checks each, warm) is checked
# link list by link list inside the walk, and whole by `fastctx verify` (docs/FORMAT.md).
GRAPH_CHECK_MAX_BYTES = 64 << 20


class _LazyGraph:
    """A segment's HNSW graph file, opened when the segment is pinned and loaded on first use (a
    pinned reader never opens a file after pinning, see docs/FORMAT.md "Garbage collection")."""

    def __init__(self, path: Path):
        self.path, self.index, self.arrays, self.lock = path, None, None, threading.Lock()
        self.checked = False
        try:
            self.file = open(path, "rb")
            # mapped now (nothing is read): the walk reads it in place, and the map outlives the
            # descriptor hnswlib's load closes
            size = os.fstat(self.file.fileno()).st_size
            self.map = mmap.mmap(self.file.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        except OSError as e:
            raise CorruptIndexError(f"{path}: cannot open the HNSW graph ({e.strerror})") from None


class GraphArrays:
    """hnswlib's saved graph as plain arrays over a read-only map (layout: kernels/hnsw_search.py),
    validated against the segment (node count, labels a permutation of its rows, link ids in
    range), searched by `search` with an allowed mask checked inside the walk."""

    def __init__(self, buf, path: Path, n: int, dim: int, *, full_check: bool = True):
        from .kernels.hnsw_search import (BEAM, HEADER_BYTES, PLAIN, TWO_HOP, links_in_range, parse_header,
                                          search_filtered, search_hits, upper_offsets)
        self._walk, self._walk_hits, self._modes = search_filtered, search_hits, (PLAIN, TWO_HOP, BEAM)

        def bad(what):
            return CorruptIndexError(f"{path}: {what}")
        self.path = path
        size = len(buf)
        if size < HEADER_BYTES:
            raise bad(f"{size} bytes, shorter than the graph header")
        h = parse_header(bytes(buf[:HEADER_BYTES]))
        spe, count = h["size_per_element"], h["count"]
        if count != n:
            raise bad(f"holds {count} items, expected {n}")
        if (spe % 4 or h["offset_data"] % 4 or h["label_offset"] % 4 or h["offset_level0"] != 0
                or h["maxM0"] < 1 or h["offset_data"] != 4 * (h["maxM0"] + 1)
                or h["label_offset"] != h["offset_data"] + 4 * dim or spe != h["label_offset"] + 8
                or HEADER_BYTES + count * spe > size or not 0 <= h["entry"] < max(count, 1)):
            raise bad("graph header does not match the segment (dim, degree or size)")
        self.words = np.frombuffer(buf, np.uint32, count=count * spe // 4, offset=HEADER_BYTES)
        self.flat = self.words.view(np.float32)
        self.l0 = self.words.reshape(count, spe // 4)
        self.vf = self.l0.view(np.float32)
        lo = h["label_offset"] // 4
        self.labels = self.l0[:, lo].astype(np.int64) | (self.l0[:, lo + 1].astype(np.int64) << 32)
        if count and (self.labels.min() < 0 or self.labels.max() >= n
                      or np.bincount(self.labels, minlength=n).max() != 1):
            raise bad("graph labels are not the segment's rows")
        # the walk checks each level-0 link list it reads; full_check (small files, verify) checks all
        if full_check and not links_in_range(self.words, spe // 4, count, h["maxM0"]):
            raise bad("level-0 links out of range")
        self.upper = np.frombuffer(buf, np.uint32, offset=HEADER_BYTES + count * spe)
        self.levels, self.uptr = upper_offsets(self.upper, count, h["maxM"])
        if count and (self.levels[0] < 0 or self.levels.max() < h["maxlevel"]):
            raise bad("upper-level links are truncated or out of range")
        self.header, self.vec_col, self.label_col = h, h["offset_data"] // 4, h["label_offset"] // 4
        # the kernels' fixed leading arguments, packed once (a search pays no per-call lookups)
        self._graph_args = (self.words, self.flat, spe // 4, self.vec_col, self.label_col, self.upper, self.levels,
                            self.uptr, h["maxM"], h["maxM0"], h["entry"], h["maxlevel"], self.labels)
        self._local = threading.local()

    def _scratch(self, nq: int):
        """This thread's visit tags and candidate-heap scratch (reused; the tags reset when spent)."""
        loc = self._local
        if getattr(loc, "visited", None) is None or loc.tag + nq >= 2 ** 31 - 1:
            count = len(self.labels)
            loc.visited = np.zeros(count, np.int32)
            loc.cs, loc.cn = np.empty(count + 1, np.float32), np.empty(count + 1, np.int64)
            loc.tag = 1
        return loc

    @staticmethod
    def _queries(qs) -> np.ndarray:
        if type(qs) is np.ndarray and qs.ndim == 2 and qs.dtype == np.float32 and qs.flags.c_contiguous:
            return qs
        return np.ascontiguousarray(np.atleast_2d(qs), np.float32)

    def _mode(self, two_hop: bool, beam: bool) -> int:
        if two_hop and beam:
            raise ValueError("the walk is two-hop or beam, not both")
        plain, hop, wide = self._modes
        return hop if two_hop else wide if beam else plain

    def search(self, qs: np.ndarray, allowed: np.ndarray, k: int, ef: int, two_hop: bool, beam: bool = False):
        """(rows int64 [nq, k], scores float32 [nq, k]) of the best allowed rows, best first (equal
        scores: lower row first); unfilled slots -1 / -inf. `allowed`: uint8 per row (nonzero =
        allowed), or empty: every row allowed. two_hop / beam: the walk's mode (kernels/hnsw_search.py)."""
        qs = self._queries(qs)
        loc = self._scratch(len(qs))
        rows, scores, loc.tag, sound = self._walk(*self._graph_args, allowed, qs, int(k), int(ef),
                                                  self._mode(two_hop, beam), loc.visited, loc.tag, loc.cs, loc.cn)
        if not sound:
            raise CorruptIndexError(f"{self.path}: level-0 links out of range")
        return rows, scores

    def search_hits(self, qs: np.ndarray, allowed: np.ndarray, k: int, ef: int, two_hop: bool, row_base: int,
                    shard: int, beam: bool = False):
        """`search` in the final form of a one-segment search: (shards, rows + row_base, scores,
        counts) as `types.Hits` holds them (unfilled slots -1 / -1 / NaN)."""
        return self.hits_runner(allowed, k, ef, two_hop, row_base, shard, beam)(qs)

    def hits_runner(self, allowed: np.ndarray, k: int, ef: int, two_hop: bool, row_base: int, shard: int,
                    beam: bool = False):
        """`search_hits` with everything but the queries bound once: a repeated plan's searches
        pay one kernel call and nothing else."""
        run, args, queries, scratch = self._walk_hits, self._graph_args, self._queries, self._scratch
        opts = (int(k), int(ef), self._mode(two_hop, beam))
        where = (int(row_base), int(shard))

        def hits(qs):
            qs = queries(qs)
            loc = scratch(len(qs))
            shards, rows, scores, counts, loc.tag, sound = run(*args, allowed, qs, *opts, loc.visited, loc.tag,
                                                               loc.cs, loc.cn, *where)
            if not sound:
                raise CorruptIndexError(f"{self.path}: level-0 links out of range")
            return shards, rows, scores, counts
        return hits


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
