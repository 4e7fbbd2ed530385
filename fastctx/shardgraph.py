"""The shard graph file set: what `Shard.graph` and `Shard.supersession` derive from a shard's
disk segments, written once and memory-mapped by every reader.

A shard of several segments otherwise derives, in every process, at its first causal query:
links resolved from id keys to rows, reverse links, the event -> entity table, entity postings
merged across segments in (time, row) order, and the supersession overlay (2.9 s at 3.4M events).
`write_graph_dir` stores those arrays, plus the disk rows' id keys sorted (the id lookup), as
`.npy` files in a directory `graph-NNNNNN` of the shard, named by the manifest entry "graph":

    {"name", "key", "n_rows", "n_entities", "files": {file: {"size", "crc32"}}}

`key` is `state_key(manifest)`: a CRC-32 of the disk state the arrays were computed from (the
segment entries, which name every file's checksum, the deletion overlay entry, the kinds and
params). The entry is written in the same atomic manifest commit as that state (build,
compaction, `Index.write_graph`); a later commit that changes the state (a flush, a new overlay)
leaves the entry *stale*: readers then ignore it and derive the arrays as before, and garbage
collection removes its directory. Events still in the write-ahead log are merged onto the
mapped arrays (`Shard.graph`) when they only add new ids; otherwise the shard derives everything.

Checks follow the segments' rule: opening checks presence, sizes, `.npy` headers (dtype, shape)
and the checksum of files of at most 1 MiB; the first use checksums every file of at most
`segment.GRAPH_CHECK_MAX_BYTES` and range-checks the bigger ones (every row, entity and offset in
range, so damage can never make a kernel read out of bounds); `fastctx verify` checksums all of
them and compares the arrays with a fresh derivation.
"""
from __future__ import annotations

import json
import mmap
import os
import zlib
from pathlib import Path
from typing import Optional

import numpy as np

from .corpus import LINK_TYPES
from .errors import CorruptIndexError
from .format import EAGER_CHECKSUM_MAX_BYTES, check_checksum, check_inside, check_name, crc32_file, write_new_dir

PREFIX = "graph-"

# stem: (dtype, length): "n" rows, "n+1", "e+1" (entities + 1), or the ptr array whose last value it is
LAYOUT = {
    "out_ptr": (np.int64, "n+1"), "out_dst": (np.int64, "out_ptr"), "out_type": (np.int8, "out_ptr"),
    "in_ptr": (np.int64, "n+1"), "in_src": (np.int64, "in_ptr"), "in_type": (np.int8, "in_ptr"),
    "ev_ptr": (np.int64, "n+1"), "ev_ent": (np.int64, "ev_ptr"),
    "ent_ptr": (np.int64, "e+1"), "ent_rows": (np.int64, "ent_ptr"),
    "sup_by": (np.int64, "n"), "sup_at": (np.int64, "n"),
    "id_keys": (np.uint64, "n"), "id_rows": (np.int64, "n"),
}
# value ranges checked on first use: [lo, hi) with "n" / "e" standing for rows / entities
_RANGES = {"out_dst": (0, "n"), "in_src": (0, "n"), "ent_rows": (0, "n"), "id_rows": (0, "n"),
           "sup_by": (-1, "n"), "ev_ent": (0, "e"), "out_type": (0, len(LINK_TYPES)),
           "in_type": (0, len(LINK_TYPES))}


def state_key(manifest: dict) -> int:
    """CRC-32 of the disk state a graph file set is valid for."""
    body = {"segments": manifest["segments"], "deletes": manifest.get("deletes"),
            "kinds": manifest.get("kinds"), "params": manifest.get("params")}
    return zlib.crc32(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def is_fresh(manifest: dict) -> bool:
    """The manifest names a graph file set computed from exactly its disk state."""
    entry = manifest.get("graph")
    return (isinstance(entry, dict) and len(manifest["segments"]) > 1 and entry.get("key") == state_key(manifest)
            and entry.get("n_rows") == manifest["n_rows"] and entry.get("n_entities") == manifest["n_entities"])


def fresh_name(manifest: dict) -> Optional[str]:
    """The directory a fresh entry names (garbage collection keeps it), else None."""
    return manifest["graph"].get("name") if is_fresh(manifest) else None


# ------------------------------------------------------------------------------------ writing
def write_graph_dir(shard_dir: Path, name: str, arrays: dict) -> dict:
    """Write `arrays` (LAYOUT's stems) into a temporary directory, fsync it, rename it to `name`
    and return its manifest entry (without "key", which the committer adds). A leftover directory
    of that name (from a crash before its manifest commit: no reader uses it) is replaced."""
    def fill(tmp: Path) -> dict:
        files = {}
        for stem, (dtype, _) in LAYOUT.items():
            path = tmp / f"{stem}.npy"
            with open(path, "wb") as f:
                np.save(f, np.ascontiguousarray(arrays[stem], dtype))
                f.flush()
                os.fsync(f.fileno())
            files[path.name] = {"size": path.stat().st_size, "crc32": crc32_file(path)}
        return {"name": name, "files": files}
    return write_new_dir(shard_dir, name, fill)


# ------------------------------------------------------------------------------------ reading
class GraphFile:
    """A fresh graph file set of a pinned shard version, mapped when the version is pinned (so
    garbage collection cannot take it away); `gf[stem]` checks each array on its first use."""

    def __init__(self, shard_dir: Path, manifest: dict, *, verify: bool = False):
        entry, where = manifest["graph"], Path(shard_dir) / "MANIFEST.json"
        self.dir = check_inside(shard_dir, check_name(entry.get("name"), where, "graph directory name"), where)
        files = entry.get("files")
        if not isinstance(files, dict) or set(files) != {f"{s}.npy" for s in LAYOUT} or not all(
                isinstance(m, dict) and type(m.get("size")) is int and type(m.get("crc32")) is int
                for m in files.values()):
            raise CorruptIndexError(f"{where}: the graph entry does not list the graph files with sizes and checksums")
        self.files, self.n, self.n_entities = files, int(manifest["n_rows"]), int(manifest["n_entities"])
        self.key, self.name = entry["key"], entry["name"]
        self._arrays: dict[str, np.ndarray] = {}
        self._maps: dict[str, mmap.mmap] = {}
        self.unchecked: set[str] = set()
        for stem, (dtype, length) in LAYOUT.items():
            want = {"n": self.n, "n+1": self.n + 1, "e+1": self.n_entities + 1}.get(length)
            if want is None:
                want = int(self._arrays[length][-1]) if len(self._arrays[length]) else 0
            self._map(stem, np.dtype(dtype), want, verify)

    def _map(self, stem: str, dtype: np.dtype, length: int, verify: bool) -> None:
        path, meta = self.dir / f"{stem}.npy", self.files[f"{stem}.npy"]
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size != meta["size"]:
                    raise CorruptIndexError(f"{path}: size {size} bytes, manifest says {meta['size']} (truncated or replaced)")
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, fortran, dt = read(f)
                offset = f.tell()
                # a private mapping: writable arrays (the kernels' compiled signatures), never written back
                m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        except FileNotFoundError:
            raise CorruptIndexError(f"{path}: file is missing (named by the manifest)") from None
        except (ValueError, OSError) as e:
            raise CorruptIndexError(f"{path}: unreadable .npy file ({e})") from None
        if dt != dtype or tuple(shape) != (length,) or offset + length * dtype.itemsize != size:
            raise CorruptIndexError(f"{path}: dtype {dt} shape {shape}, expected {dtype} ({length},)")
        self._maps[stem] = m
        self._arrays[stem] = np.frombuffer(m, dtype, count=length, offset=offset)
        if verify or size <= EAGER_CHECKSUM_MAX_BYTES:
            self._crc(stem)
        else:
            self.unchecked.add(stem)

    def _crc(self, stem: str) -> None:
        check_checksum(self.dir / f"{stem}.npy", self.files[f"{stem}.npy"], crc=zlib.crc32(self._maps[stem]))

    def __getitem__(self, stem: str) -> np.ndarray:
        """One array, checked on its first use: the checksum of a file of at most
        GRAPH_CHECK_MAX_BYTES, the value ranges (and offsets) of a bigger one."""
        if stem in self.unchecked:
            from . import segment
            if len(self._maps[stem]) <= segment.GRAPH_CHECK_MAX_BYTES:
                self._crc(stem)
            else:
                self._check_values(stem)
            self.unchecked.discard(stem)
        return self._arrays[stem]

    def _check_values(self, stem: str) -> None:
        a = self._arrays[stem]
        bad = None
        if stem.endswith("_ptr"):
            if len(a) and (a[0] != 0 or bool(np.any(a[1:] < a[:-1]))):
                bad = "offsets do not start at 0 and ascend"
        elif stem in _RANGES and len(a):
            lo, hi = _RANGES[stem]
            hi = {"n": self.n, "e": self.n_entities}.get(hi, hi)
            if int(a.min()) < lo or int(a.max()) >= hi:
                bad = f"a value lies outside [{lo}, {hi})"
        elif stem == "id_keys" and bool(np.any(a[1:] < a[:-1])):
            bad = "keys are not sorted"
        if bad:
            raise CorruptIndexError(f"{self.dir / (stem + '.npy')}: {bad}; the graph file is corrupted")

    def verify_all(self) -> None:
        """Every checksum (for `verify`)."""
        for stem in sorted(self.unchecked):
            self._crc(stem)
        self.unchecked.clear()


def matches(graph_file: Optional[GraphFile], manifest: dict) -> bool:
    """`graph_file` (None: no file) is the one `manifest` calls fresh (None when it names none)."""
    if not is_fresh(manifest):
        return graph_file is None
    return graph_file is not None and (graph_file.key, graph_file.name) == (
        manifest["graph"]["key"], manifest["graph"]["name"])


def open_graph(shard_dir: Path, manifest: dict, *, verify: bool = False) -> Optional[GraphFile]:
    """The manifest's graph file set when it is fresh (else None: the shard derives the arrays)."""
    return GraphFile(shard_dir, manifest, verify=verify) if is_fresh(manifest) else None
