"""One shard: a manifest naming immutable segments, plus shard-wide views built from them.

Rows and entity ids are global inside a shard (segment row_base / entity_base). The event graph
the expansion kernels walk is a set of flat arrays over those global rows; with one segment they
are the segment's own memory maps, with several they are concatenated once on open.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .build import BuildReport, Progress, ShardContext, write_segment
from .columns import keys64
from .corpus import EventBatch
from .errors import CorpusError, CorruptIndexError
from .format import fsync_dir, read_manifest, write_manifest
from .params import BuildParams
from .segment import Segment


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


def _concat_csr(ptrs: Sequence[np.ndarray], cols: Sequence[Sequence[np.ndarray]]):
    if len(ptrs) == 1:
        return (ptrs[0], *cols[0])
    ptr = [np.zeros(1, np.int64)]
    base = 0
    for p in ptrs:
        ptr.append(np.asarray(p[1:]) + base)
        base += int(p[-1])
    return (np.concatenate(ptr), *(np.concatenate(c) for c in zip(*cols)))


class Shard:
    def __init__(self, shard_dir: Path, *, verify: bool = False):
        self.dir = Path(shard_dir)
        self.manifest = read_manifest(self.dir)
        self.dim: int = self.manifest["dim"]
        self.sources: list[str] = self.manifest["sources"]
        self.kinds: list[str] = self.manifest["kinds"]
        self.n_entities: int = self.manifest["n_entities"]
        self.segments = [Segment(self.dir / e["name"], e, self.dim, verify=verify)
                         for e in self.manifest["segments"]]
        if sum(s.n for s in self.segments) != self.manifest["n_rows"]:
            raise CorruptIndexError(f"{self.dir / 'MANIFEST.json'}: n_rows does not match its segments")

    @property
    def n(self) -> int:
        return self.manifest["n_rows"]

    # -- lookups across segments ---------------------------------------------------------------
    def lookup_ids(self, keys: np.ndarray) -> np.ndarray:
        out = np.full(len(keys), -1, np.int64)
        for seg in self.segments:
            hit = seg.id_lookup.get(keys)
            out = np.where(hit >= 0, hit, out)
        return out

    def lookup_entities(self, keys: np.ndarray) -> np.ndarray:
        out = np.full(len(keys), -1, np.int64)
        for seg in self.segments:
            hit = seg.entity_lookup.get(keys)
            out = np.where(hit >= 0, hit, out)
        return out

    def entity_ids(self, names: Sequence[str]) -> list[int]:
        """Global ids of the known entity names (unknown names are left out)."""
        return [int(g) for g in self.lookup_entities(keys64(list(names))) if g >= 0]

    def codes(self, names: Sequence[str], dictionary: Sequence[str]) -> list[int]:
        return [dictionary.index(v) for v in names if v in dictionary]

    def locate(self, row: int) -> tuple[Segment, int]:
        """Segment and local row of a global row."""
        for seg in self.segments:
            if row < seg.row_base + seg.n:
                return seg, row - seg.row_base
        raise IndexError(f"row {row} out of range (shard has {self.n})")

    def entity_name(self, entity_id: int) -> str:
        for seg in self.segments:
            if entity_id < seg.entity_base + len(seg.ent_keys):
                return seg.entity_names[entity_id - seg.entity_base]
        raise IndexError(f"entity {entity_id} out of range")

    # -- shard-wide arrays ---------------------------------------------------------------------
    @cached_property
    def times(self) -> np.ndarray:
        segs = self.segments
        return segs[0].times if len(segs) == 1 else np.concatenate([s.times for s in segs])

    @cached_property
    def tokens(self) -> np.ndarray:
        segs = self.segments
        return segs[0].tokens if len(segs) == 1 else np.concatenate([s.tokens for s in segs])

    @cached_property
    def kind_codes(self) -> np.ndarray:
        segs = self.segments
        return segs[0].kind if len(segs) == 1 else np.concatenate([s.kind for s in segs])

    @cached_property
    def graph(self) -> Graph:
        segs, n = self.segments, self.n
        out_ptr, out_dst, out_type = _concat_csr([s.link_ptr for s in segs],
                                                 [(s.link_dst, s.link_type) for s in segs])
        ev_ptr, ev_ent = _concat_csr([s.ev_ptr for s in segs], [(s.ev_ent,) for s in segs])
        if len(out_dst) and (out_dst.min() < 0 or out_dst.max() >= n):
            raise CorruptIndexError(f"{self.dir}: a link points outside the shard's rows")
        # reverse links: group sources by destination (sources ascending inside each group)
        src = np.repeat(np.arange(n, dtype=np.int64), np.diff(out_ptr))
        order = np.lexsort((src, out_dst))
        in_ptr = np.zeros(n + 1, np.int64)
        np.cumsum(np.bincount(out_dst, minlength=n), out=in_ptr[1:])
        if len(segs) == 1 and len(segs[0].post_ent) == self.n_entities:
            ent_ptr, ent_rows = segs[0].post_ptr, segs[0].post_rows  # every entity is local
        else:
            ent_ptr, ent_rows = self._merged_postings()
        return Graph(self.times, out_ptr, out_dst, out_type, in_ptr, src[order], out_type[order],
                     ev_ptr, ev_ent, ent_ptr, ent_rows)

    @cached_property
    def entity_flags(self) -> np.ndarray:
        segs = self.segments
        return segs[0].ent_flags if len(segs) == 1 else np.concatenate([s.ent_flags for s in segs])

    @cached_property
    def supersession(self) -> tuple[np.ndarray, np.ndarray]:
        """(superseded_by, superseded_at) per global row; -1 where the event is still current.
        Explicit `supersedes`/`reverts` links, and implicit slot supersession: consecutive events of
        a slot kind on the same slot entity. The earliest superseder wins."""
        from .corpus import LINK_TYPES
        g, n = self.graph, self.n
        src = np.repeat(np.arange(n, dtype=np.int64), np.diff(g.out_ptr))
        explicit = np.isin(g.out_type, [LINK_TYPES.index("supersedes"), LINK_TYPES.index("reverts")])
        old, new = [g.out_dst[explicit]], [src[explicit]]
        slot_kinds = [self.kinds.index(k) for k in self.manifest.get("params", {}).get("slot_kinds", [])
                      if k in self.kinds]
        slot_ents = np.flatnonzero(self.entity_flags & 1)
        if len(slot_ents) and slot_kinds:
            df = np.diff(g.ent_ptr)[slot_ents]
            ent = np.repeat(slot_ents, df)
            rows = np.concatenate([g.ent_rows[g.ent_ptr[e]:g.ent_ptr[e + 1]] for e in slot_ents])
            keep = np.isin(self.kind_codes[rows], slot_kinds)
            ent, rows = ent[keep], rows[keep]
            same = ent[1:] == ent[:-1]  # postings are time-sorted: pair each with the next
            old.append(rows[:-1][same])
            new.append(rows[1:][same])
        old_a, new_a = np.concatenate(old), np.concatenate(new)
        at = self.times[new_a]
        valid = at >= self.times[old_a]
        old_a, new_a, at = old_a[valid], new_a[valid], at[valid]
        order = np.lexsort((new_a, at, old_a))
        old_a, new_a, at = old_a[order], new_a[order], at[order]
        first = np.ones(len(old_a), bool)
        first[1:] = old_a[1:] != old_a[:-1]
        by = np.full(n, -1, np.int64)
        when = np.full(n, -1, np.int64)
        by[old_a[first]] = new_a[first]
        when[old_a[first]] = at[first]
        return by, when

    def _merged_postings(self) -> tuple[np.ndarray, np.ndarray]:
        ent = np.concatenate([np.repeat(s.post_ent, np.diff(s.post_ptr)) for s in self.segments])
        rows = np.concatenate([np.asarray(s.post_rows) + s.row_base for s in self.segments])
        order = np.lexsort((rows, self.times[rows], ent))
        ptr = np.zeros(self.n_entities + 1, np.int64)
        np.cumsum(np.bincount(ent, minlength=self.n_entities), out=ptr[1:])
        return ptr, rows[order]

    # -- writing -------------------------------------------------------------------------------
    def append(self, batch: EventBatch, params: BuildParams, progress: Progress = None) -> BuildReport:
        """Write `batch` as a new segment and commit a new manifest version. On any error the
        shard is exactly as it was (the half-written segment directory is removed)."""
        if batch.dim != self.dim:
            raise CorpusError(f"vectors have dim {batch.dim}, the index has dim {self.dim}", field="vectors")
        return append_segment(self.dir, self.manifest, batch, params, progress,
                              lookup_ids=self.lookup_ids, lookup_entities=self.lookup_entities)


def new_manifest(dim: int) -> dict:
    return {"version": 0, "dim": int(dim), "segments": [], "sources": [], "kinds": [],
            "n_rows": 0, "n_entities": 0, "next_segment": 1}


def append_segment(shard_dir: Path, manifest: dict, batch: EventBatch, params: BuildParams,
                   progress: Progress = None, lookup_ids=None, lookup_entities=None) -> BuildReport:
    if len(batch) == 0:
        raise CorpusError("no events to add", field="events")
    manifest.setdefault("params", {"slot_prefixes": list(params.slot_prefixes),
                                   "slot_kinds": list(params.slot_kinds)})
    ctx = ShardContext(row_base=manifest["n_rows"], entity_base=manifest["n_entities"],
                       sources=list(manifest["sources"]), kinds=list(manifest["kinds"]))
    if lookup_ids is not None:
        ctx.lookup_ids, ctx.lookup_entities = lookup_ids, lookup_entities
    name = f"seg-{manifest['next_segment']:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=shard_dir))
    try:
        entry, report = write_segment(tmp, batch, ctx, params, progress)
        entry["name"] = name
        for f in os.listdir(tmp):
            with open(tmp / f, "rb") as fh:
                os.fsync(fh.fileno())
        os.rename(tmp, shard_dir / name)
        fsync_dir(shard_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    new = {**manifest, "version": manifest["version"] + 1, "segments": manifest["segments"] + [entry],
           "sources": ctx.sources, "kinds": ctx.kinds, "n_rows": manifest["n_rows"] + len(batch),
           "n_entities": manifest["n_entities"] + report.new_entities,
           "next_segment": manifest["next_segment"] + 1}
    write_manifest(shard_dir, new)
    manifest.clear()
    manifest.update(new)
    return report


def create_shard(shard_dir: Path, dim: int) -> None:
    shard_dir.mkdir(parents=True, exist_ok=True)
    write_manifest(shard_dir, new_manifest(dim))
