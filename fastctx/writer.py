"""The write path of `Index`: the writer's lock, the write-ahead log, add / upsert / delete,
flush, compaction and the shard graph file. A mixin, so one handle reads and writes as before;
the read path (pinned versions, search, answers) stays in `index.py`.

Writes go to shard-000 only; readers never take the lock (docs/FORMAT.md, "Writers")."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from . import shard as shardmod
from . import wal as walmod
from .build import BuildReport, Progress, ShardContext, compute_time_cut, content_hashes, event_record, piece_context
from .columns import keys64
from .compaction import CompactionPolicy, SegmentMeta
from .compaction import plan as compact_plan
from .corpus import EventBatch
from .derive import with_links
from .derive_add import links_at_add
from .errors import CorpusError, IndexLockedError, InvalidQueryError
from .format import crashpoint, fsync_dir, os_file_lock
from .params import BuildParams
from .shard import (MemLog, ShardParts, attach_graph, collect_garbage, disk_key_test, load_parts, merge_segments, open_segments,
                    prune_overlay, write_overlay, write_segment_dir)
from .wal import WalWriter

LOCK_FILE = "LOCK"


def _manifest_body(m: dict) -> str:
    """A manifest's content, comparable between the on-disk and in-memory forms."""
    return json.dumps({k: v for k, v in m.items() if k not in ("format", "format_version", "checksum")},
                      sort_keys=True, default=str)


class IndexWriter:
    """`Index`'s writes (see the module doc); the handle's state lives in `Index.__init__`."""

    @property
    def writable(self) -> bool:
        return self._lockf is not None

    def _take_lock(self) -> None:
        if self._lockf is not None:
            return
        if len(self.marker["shards"]) != 1:
            raise InvalidQueryError("writing goes through shard-000 only; this index has several shards")
        # released by close() from any thread
        self._lockf = os_file_lock(self._lock_path, "another writer holds this index's lock "
                                                    "(one writer at a time; readers need no lock)")
        try:
            # the latest committed state, with a torn log tail cut off and orphans removed
            shard_dir = self.path / self.marker["shards"][0]
            self._parts[0] = load_parts(shard_dir, cache=self._seg_cache, repair=True)
            collect_garbage(shard_dir, self._parts[0].manifest)
            self._changed()
        except BaseException:
            self.close()
            raise

    @property
    def _lock_path(self) -> Path:
        return self.path / LOCK_FILE    # a shard server's writer locks its own shard (shards/service.py)

    @property
    def _shard_dir(self) -> Path:
        return self.path / self.marker["shards"][0]

    def _commit(self, manifest: dict) -> None:
        # never publish over a manifest this writer did not read: the lock makes that impossible
        # between fastctx writers, so a difference means the directory was replaced or edited
        base = self._parts[0].manifest
        on_disk = shardmod.read_manifest(self._shard_dir)
        if _manifest_body(on_disk) != _manifest_body(base):
            raise IndexLockedError(
                f"{self._shard_dir / 'MANIFEST.json'}: the manifest changed under this writer (version "
                f"{on_disk.get('version')} on disk, this writer read {base.get('version')}); nothing "
                "was committed: reopen the index")
        shardmod.write_manifest(self._shard_dir, manifest)
        crashpoint("commit:after-rename")

    def _ensure_wal(self) -> WalWriter:
        if self._wal is not None:
            return self._wal
        parts = self._parts[0]
        m = parts.manifest
        if m.get("wal"):
            self._wal = WalWriter(self._shard_dir / m["wal"][-1])
            return self._wal
        name = f"wal-{m.get('next_wal', 1):06d}.log"
        path = self._shard_dir / name
        WalWriter(path).close()
        fsync_dir(self._shard_dir)
        new = {**m, "version": m["version"] + 1, "wal": [name], "next_wal": m.get("next_wal", 1) + 1}
        try:
            self._commit(new)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        parts.manifest = new
        self._changed()
        self._wal = WalWriter(path)
        return self._wal

    def _existing(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(live event with this id exists, its content hash) per id key."""
        parts = self._parts[0]
        log: MemLog = parts.log
        exists = np.zeros(len(keys), bool)
        chash = np.zeros(len(keys), np.uint64)
        for seg in parts.segments:
            hit = seg.id_lookup.get(keys)
            for j in np.flatnonzero(hit >= 0).tolist():
                k, local = int(keys[j]), int(hit[j]) - seg.row_base
                s = int(seg.seq[local])
                dead = max(parts.overlay.get(k, -1), log.overlay_add.get(k, -1))
                if s > dead:
                    exists[j], chash[j] = True, seg.chash[local]
        for j, k in enumerate(keys.tolist()):
            live = log.live.get(k)
            if live is not None:
                exists[j], chash[j] = True, log.batches[live[1]][2][live[2]]
        return exists, chash

    def add(self, events: Any, vectors: Optional[np.ndarray] = None, *,
            params: Optional[BuildParams] = None, progress: Progress = None, on_existing: str = "error",
            sync: bool = True) -> BuildReport:
        """Append events durably: when this returns they are in the write-ahead log (one record,
        one fsync per call: group commit) and queryable (searched exactly until `flush`).

        on_existing: "error" refuses an id already live in the index (nothing changes);
        "upsert" skips an event whose id *and* content are already there, and treats a same-id
        event with different content as an update (the old version disappears from answers).
        Links resolve to live events (this batch, the log, the segments); others are dropped
        and reported. A rejected batch changes nothing.

        events: an `EventBatch`, a list of event mappings, a pandas DataFrame, an Arrow table, or
        a path (corpus folder, .jsonl, .parquet, "-" for stdin). Without `vectors` (and without a
        ``vectors.npy`` in a folder) the events' text is embedded with the index's encoder."""
        if on_existing not in ("error", "upsert"):
            raise InvalidQueryError(f"on_existing must be 'error' or 'upsert', got {on_existing!r}")
        batch = self._batch_of(events, vectors, progress)
        if params is not None:
            self.build_params = params
        if batch.dim != self.dim:
            raise CorpusError(f"vectors have dim {batch.dim}, the index has dim {self.dim}", field="vectors")
        if len(batch) == 0:
            raise CorpusError("no events to add", field="events")
        self._take_lock()
        keys = keys64(batch.ids)
        if len(np.unique(keys)) != len(keys):
            raise CorpusError("two different ids hash to the same 64-bit key; rename one", field="id")
        report = BuildReport()
        exists, old_hash = self._existing(keys)
        chash = content_hashes(batch)
        if exists.any():
            if on_existing == "error":
                i = int(np.flatnonzero(exists)[0])
                raise CorpusError(f"id {batch.ids[i]!r} is already in the index", field="id")
            same = exists & (old_hash == chash)
            report.skipped, report.updated = int(same.sum()), int((exists & ~same).sum())
            if same.any():
                keep = np.flatnonzero(~same)
                batch, keys, chash = batch.select(keep), keys[keep], chash[keep]
        report.n_events = len(batch)
        if len(batch) == 0:
            return report
        # link report: targets live now (this batch, the log, the segments)
        to_keys = keys64(batch.link_to)
        ok = np.isin(to_keys, keys)
        if (~ok).any():
            ok[~ok] = self._existing(to_keys[~ok])[0]
        report.n_links, report.dangling_links = int(ok.sum()), int((~ok).sum())
        for j in np.flatnonzero(~ok)[:5]:
            report.dangling_examples.append((batch.ids[int(batch.link_src[j])], batch.link_to[int(j)]))
        parts = self._parts[0]
        seq0 = int(parts.next_seq)
        # derived links (same actor, re-lands) toward what is indexed now: logged beside the
        # events, which keep only their own links
        derived = links_at_add(self.shards[0], batch, self.build_params)
        rec = walmod.encode({"t": "add", "seq": seq0, "dim": self.dim,
                             "recs": [event_record(batch, i) for i in range(len(batch))],
                             "vec": np.ascontiguousarray(batch.vectors, np.float32).tobytes(),
                             **({"derived": list(derived)} if derived[0] else {})})
        batch = with_links(batch, *derived)
        w = self._ensure_wal()
        w.sync = sync
        crashpoint("add:before-write")
        w.append([rec])
        crashpoint("add:after-write")
        parts.log.apply_add(batch, seq0, disk_key_test(parts.segments, parts.graph_file_read), chash)
        parts.next_seq = seq0 + len(batch)
        self._changed()
        if parts.log.n_added >= self.memtable_max_rows:  # logged rows, live or replaced
            self.flush()
        return report

    def _batch_of(self, events, vectors, progress) -> EventBatch:
        """`add`'s input as a validated batch, embedding text where no vectors come with it."""
        from .sources import read_source, to_batch
        if isinstance(events, EventBatch):
            if vectors is not None:
                raise CorpusError("vectors given twice: an EventBatch carries its own", field="vectors")
            return events
        src = read_source(events)
        if vectors is not None:
            if src.has_vectors:
                raise CorpusError("vectors given twice: the source has a vectors.npy", file=src.origin,
                                  field="vectors")
            src.vectors = vectors
        if src.has_vectors:
            return to_batch(src)
        if self.encoder is None:
            raise CorpusError("the events come without vectors and the index records no encoder to compute "
                              "them: pass vectors (or create the index with encoder=)", file=src.origin,
                              field="vectors")
        return to_batch(src, self.encoder, progress=progress)

    def upsert(self, events, vectors=None, **kw) -> BuildReport:
        return self.add(events, vectors, on_existing="upsert", **kw)

    def delete(self, ids: Sequence[str]) -> int:
        """Delete events by id, durably (a log record); returns how many live events that hid.
        Deleted events never appear in search results or answers; compaction drops them."""
        if isinstance(ids, str) or not all(isinstance(i, str) and i for i in ids):
            raise InvalidQueryError("delete() takes a list of non-empty id strings")
        ids = list(dict.fromkeys(ids))
        if not ids:
            return 0
        self._take_lock()
        keys = keys64(ids)
        exists, _ = self._existing(keys)
        if not exists.any():
            return 0
        parts = self._parts[0]
        seq = int(parts.next_seq)
        rec = walmod.encode({"t": "del", "seq": seq, "ids": [i for i, e in zip(ids, exists) if e]})
        self._ensure_wal().append([rec])
        parts.log.apply_delete(keys[exists], seq, disk_key_test(parts.segments, parts.graph_file_read))
        parts.next_seq = seq + 1
        self._changed()
        return int(exists.sum())

    def flush(self, progress: Progress = None) -> Optional[dict]:
        """Turn the log into an immutable segment (and the overlay file) and commit a new
        manifest version; the old log files are then removed. Returns the new segment's entry
        (None when there was nothing to flush)."""
        self._take_lock()
        parts = self._parts[0]
        log: MemLog = parts.log
        if not log.batches and not log.overlay_add:
            return None
        sh = self.shards[0]
        m = parts.manifest
        d = self._shard_dir
        new_wal = f"wal-{m.get('next_wal', 1):06d}.log"
        WalWriter(d / new_wal).close()
        entries, entry = list(m["segments"]), None
        new = {**m}
        if sh.memtable is not None:
            ctx = sh.context()
            arrays = sh.memtable.arrays
            entry = write_segment_dir(d, f"seg-{m['next_segment']:06d}", arrays, ctx, self.build_params, progress)
            crashpoint("flush:segment-written")
            entries.append(entry)
            new.update(sources=arrays.sources, kinds=arrays.kinds, n_rows=m["n_rows"] + arrays.n,
                       n_entities=m["n_entities"] + arrays.n_new_entities, next_segment=m["next_segment"] + 1)
        overlay = sh.overlay
        deletes = m.get("deletes")
        if log.overlay_add:
            deletes = write_overlay(d, f"del-{m['version'] + 1:06d}.npy", overlay)
        fsync_dir(d)
        new.update(version=m["version"] + 1, segments=entries, wal=[new_wal], next_wal=m.get("next_wal", 1) + 1,
                   next_seq=int(parts.next_seq), flushed_seq=int(parts.next_seq), deletes=deletes)
        new.setdefault("params", self.build_params.manifest_params())
        crashpoint("flush:before-commit")
        self._commit(new)
        if self._wal is not None:
            self._wal.close()
        self._wal = None
        self._parts[0] = ShardParts(new, open_segments(d, new, cache=self._seg_cache), overlay, MemLog(),
                                    parts.next_seq)
        self._changed()
        collect_garbage(d, new)
        return entry

    def compact(self, *, force: bool = False, policy: Optional[CompactionPolicy] = None,
                progress: Progress = None) -> list[tuple[int, int]]:
        """Merge runs of adjacent small segments (chosen by `compaction.plan`, a pure function of
        segment metadata), dropping deleted and replaced rows for good and rebuilding their HNSW.
        Readers keep querying their pinned version meanwhile. Returns the merged ranges."""
        self._take_lock()
        sh = self.shards[0]
        policy = policy or self.compaction
        disk = sh.disk_segments
        metas = [SegmentMeta(s.n, int(sh.deleted_mask[s.row_base:s.row_base + s.n].sum())) for s in disk]
        runs = compact_plan(metas, policy, force=force)
        if not runs:
            return []
        parts = self._parts[0]
        m, d = parts.manifest, self._shard_dir
        entries = list(m["segments"])
        next_segment = m["next_segment"]
        for i, j in sorted(runs, reverse=True):
            batch, seq, chash, intro = merge_segments(sh, disk[i:j])
            ctx = ShardContext(row_base=disk[i].row_base, entity_base=disk[i].entity_base,
                               sources=list(m["sources"]), kinds=list(m["kinds"]),
                               lookup_ids=sh.lookup_ids, lookup_entities=sh.lookup_entities_disk)
            if len(batch) == 0 and len(intro[0]) == 0:
                entries[i:j] = []          # nothing live and no entities to carry: gone
                continue
            # the run's rows, re-sorted by time, cut into pieces of >= policy.segment_rows
            pieces = compute_time_cut(batch, ctx, self.build_params, seq, policy.segment_rows, chash, intro=intro)
            written = []
            for p, arrays in enumerate(pieces):
                written.append(write_segment_dir(d, f"seg-{next_segment:06d}", arrays,
                                                 piece_context(ctx, pieces, p), self.build_params, progress))
                next_segment += 1
            entries[i:j] = written
            crashpoint("compact:segment-written")
        base, rebased = 0, []
        for e in entries:   # copies: the manifest this writer read must stay as read (see _commit)
            rebased.append({**e, "row_base": base})
            base += e["n"]
        entries = rebased
        new_segments = open_segments(d, {**m, "segments": entries}, cache=self._seg_cache)
        overlay = prune_overlay(parts.overlay, new_segments, sh)
        deletes = m.get("deletes")
        if overlay != parts.overlay:
            deletes = write_overlay(d, f"del-{m['version'] + 1:06d}.npy", overlay)
        fsync_dir(d)
        new = {**m, "version": m["version"] + 1, "segments": entries, "n_rows": base,
               "next_segment": next_segment, "deletes": deletes}
        attach_graph(d, new, new_segments, overlay)    # the merged shard's graph, in the same commit
        crashpoint("compact:before-commit")
        self._commit(new)
        from .shardgraph import open_graph
        self._parts[0] = replace(parts, manifest=new, segments=new_segments, overlay=overlay,
                                 graph_file=open_graph(d, new))     # not the replaced version's
        self._changed()
        collect_garbage(d, new)
        return runs

    def write_graph(self, *, force: bool = False) -> bool:
        """Write the shard graph file set of the current disk segments (links, reverse links,
        merged entity postings, supersession, id lookup: docs/FORMAT.md "Shard graph file") and
        commit it, so readers map it instead of deriving it at their first causal query. Builds
        and compactions write it themselves; this is for an index whose graph is missing or stale
        (after a flush). A no-op (False) when it is fresh (unless `force`) or the shard has one
        segment. The log is not flushed: its events are merged on at query time."""
        from .shardgraph import is_fresh, open_graph
        self._take_lock()
        parts = self._parts[0]
        m, d = parts.manifest, self._shard_dir
        if len(m["segments"]) < 2 or (is_fresh(m) and not force):
            return False
        new = {**m, "version": m["version"] + 1}
        attach_graph(d, new, parts.segments, parts.overlay)
        crashpoint("graph:before-commit")
        self._commit(new)
        self._parts[0] = replace(parts, manifest=new, graph_file=open_graph(d, new))
        self._changed()
        collect_garbage(d, new)
        return True
