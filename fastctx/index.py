"""`Index`: the embedded facade. Build or open an index directory, search it, add to it.

The embedded index is "local shards + an in-process coordinator": every query runs per shard and
per segment, and results merge with a fixed tie-break (score desc, then shard, then row).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from .build import BuildReport, Progress
from .corpus import EventBatch, read_events, read_meta
from .encoder import Encoder, HashingEncoder
from .errors import FormatError, IndexExistsError, InvalidQueryError
from .filters import Filters, segment_allowed
from .format import INDEX_MARKER, read_marker, write_marker
from .params import BuildParams, SearchParams
from .planner import SegmentPlan, plan_segment
from .seeds import search_segment, top_k
from .shard import Shard, create_shard
from .types import Event, Hits

QueryInput = Union[str, Sequence[str], np.ndarray]
MAX_K = 10_000


def _encoder_from_marker(marker: dict) -> Optional[Encoder]:
    spec = marker.get("encoder")
    if isinstance(spec, dict) and spec.get("name") == HashingEncoder.name:
        return HashingEncoder(dim=int(spec["dim"]))
    return None


class Index:
    """An open index directory. Thread-compatible for readers (one writer at a time)."""

    def __init__(self, path: Union[str, Path], *, verify: bool = False, encoder: Optional[Encoder] = None,
                 search_params: SearchParams = SearchParams()):
        self.path = Path(path)
        if not (self.path / INDEX_MARKER).exists():
            raise FormatError(f"{self.path}: not a fastctx index (no {INDEX_MARKER})")
        self.marker = read_marker(self.path)
        self.shards = [Shard(self.path / name, verify=verify) for name in self.marker["shards"]]
        self.dim = self.shards[0].dim
        self.encoder = encoder or _encoder_from_marker(self.marker)
        if self.encoder is not None and self.encoder.dim != self.dim:
            raise InvalidQueryError(f"encoder dim {self.encoder.dim} != index dim {self.dim}")
        self.search_params = search_params

    # -- creation ------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: Union[str, Path], dim: int, *, encoder: Optional[dict] = None, **open_kw) -> "Index":
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if any(path.iterdir()):
            raise IndexExistsError(f"{path}: directory is not empty")
        create_shard(path / "shard-000", dim)
        write_marker(path, ["shard-000"], **({"encoder": encoder} if encoder else {}))
        return cls(path, **open_kw)

    def add(self, events: Union[EventBatch, Sequence[dict]], vectors: Optional[np.ndarray] = None, *,
            params: BuildParams = BuildParams(), progress: Progress = None) -> BuildReport:
        """Append events (an `EventBatch`, or orgmem event dicts plus their vectors) as a new
        segment. Links may point into any earlier segment. A rejected batch changes nothing."""
        batch = events if isinstance(events, EventBatch) else EventBatch.from_records(events, vectors)
        shard = self.shards[0]
        report = shard.append(batch, params, progress)
        self.shards[0] = Shard(shard.dir)
        self._engine = None
        return report

    # -- reading -------------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return sum(s.n for s in self.shards)

    def _vectors(self, query: QueryInput) -> tuple[np.ndarray, bool]:
        """(float32 [nq, dim] unit rows, was_batch)."""
        if isinstance(query, str) or (isinstance(query, Sequence) and query and isinstance(query[0], str)):
            texts = [query] if isinstance(query, str) else list(query)
            if self.encoder is None:
                raise InvalidQueryError("this index has no text encoder recorded; pass encoder= to Index() "
                                        "or query with vectors")
            return self.encoder.encode(texts).astype(np.float32), not isinstance(query, str)
        q = np.asarray(query, dtype=np.float32)
        batch = q.ndim == 2
        q = q.reshape(-1, q.shape[-1]) if q.ndim in (1, 2) else q
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise InvalidQueryError(f"query vector shape {np.shape(query)}: expected ({self.dim},) or (nq, {self.dim})")
        if not np.isfinite(q).all():
            raise InvalidQueryError("query vector contains NaN or inf")
        norms = np.linalg.norm(q, axis=1, keepdims=True)
        if (norms == 0).any():
            raise InvalidQueryError("query vector is all zeros")
        return np.ascontiguousarray(q / norms), batch

    def _resolve(self, shard: Shard, f: Filters):
        return (shard.entity_ids(f.entities_any), shard.entity_ids(f.entities_all),
                shard.codes(f.sources, shard.sources), shard.codes(f.kinds, shard.kinds))

    def plans(self, filters: Filters) -> list[tuple[int, Any, Any, SegmentPlan]]:
        out = []
        for si, shard in enumerate(self.shards):
            resolved = self._resolve(shard, filters)
            for seg in shard.segments:
                allowed = segment_allowed(seg, filters, *resolved)
                out.append((si, seg, allowed, plan_segment(seg.name, seg.n, seg.hnsw is not None,
                                                           allowed, self.search_params)))
        return out

    def explain(self, filters: Optional[Filters] = None, **filter_kw) -> list[SegmentPlan]:
        """The plan each segment would run for these filters (no vector needed)."""
        return [p for *_, p in self.plans(filters or Filters(**filter_kw))]

    def search(self, query: QueryInput, k: int = 10, *, filters: Optional[Filters] = None, **filter_kw) -> Hits:
        """Filtered top-k seed events for one query or a batch (text or vectors).
        Filters: time_from, time_to, as_of, entities_any, entities_all, sources, kinds."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_K:
            raise InvalidQueryError(f"k must be an integer in [1, {MAX_K}], got {k!r}")
        if filters is not None and filter_kw:
            raise InvalidQueryError("pass either filters= or filter keywords, not both")
        f = filters or Filters(**filter_kw)
        t0 = time.perf_counter()
        qs, _ = self._vectors(query)
        t_enc = time.perf_counter()
        plans = self.plans(f)
        t_plan = time.perf_counter()
        nq = len(qs)
        shards = np.full((nq, k), -1, np.int32)
        rows = np.full((nq, k), -1, np.int64)
        scores = np.full((nq, k), np.nan, np.float32)
        counts = np.zeros(nq, np.int64)
        timings = []
        for i, q in enumerate(qs):
            ts = time.perf_counter()
            parts = [(si, seg.row_base + r, s) for si, seg, allowed, plan in plans
                     for r, s in zip(*search_segment(seg, plan, allowed, q, k, self.search_params))]
            if parts:
                sh = np.array([p[0] for p in parts], np.int32)
                rw = np.array([p[1] for p in parts], np.int64)
                sc = np.array([p[2] for p in parts], np.float32)
                order = np.lexsort((rw, sh, -sc))[:k]
                c = len(order)
                shards[i, :c], rows[i, :c], scores[i, :c], counts[i] = sh[order], rw[order], sc[order], c
            timings.append({"encode_ms": 1e3 * (t_enc - t0) / nq, "plan_ms": 1e3 * (t_plan - t_enc) / nq,
                            "seeds_ms": 1e3 * (time.perf_counter() - ts)})
        return Hits(shards, rows, scores, counts, timings, self.event)

    # -- causal answers ------------------------------------------------------------------------
    def engine(self):
        if getattr(self, "_engine", None) is None:
            from .answer import Engine
            if len(self.shards) != 1:
                raise InvalidQueryError("causal queries over several local shards go through the coordinator")
            self._engine = Engine(self)
        return self._engine

    def query(self, query: Union[str, np.ndarray], *, type: str = "chain", filters: Optional[Filters] = None,
              as_of: Optional[int] = None, direction: str = "back", budget_tokens: int = 4000, **filter_kw):
        """Causal answer for one query (text or vector): a token-budgeted timeline with why-paths.
        type: chain | current | as_of. as_of hides every event (and supersession) after that time."""
        if filters is not None and filter_kw:
            raise InvalidQueryError("pass either filters= or filter keywords, not both")
        f = filters or Filters(**filter_kw)
        if as_of is not None:
            f = replace(f, as_of=int(as_of))
        if type == "as_of" and f.as_of is None:
            raise InvalidQueryError("an as_of query needs as_of=<unix time>")
        qv, batch = self._vectors(query)
        if batch or len(qv) != 1:
            raise InvalidQueryError("query() answers one query at a time; loop over a batch")
        return self.engine().run(qv[0], type, f, direction, budget_tokens)

    def query_spec(self, spec: dict, vector: Optional[np.ndarray] = None):
        """Answer one query in the orgmem queries.jsonl form (vector, or its `text`)."""
        f = Filters.from_dict(spec.get("filters"), as_of=spec.get("as_of"))
        q = vector if vector is not None else spec.get("text")
        if q is None:
            raise InvalidQueryError(f"query {spec.get('qid')!r} has neither a vector nor text")
        return self.query(q, type=spec.get("type", "chain"), filters=f, direction=spec.get("direction", "back"),
                          budget_tokens=spec.get("budget_tokens", 4000))

    def warm_up(self) -> None:
        """Compile kernels and build shard-wide views now rather than inside the first query."""
        if len(self.shards) == 1:
            self.engine().warm_up()

    def event(self, shard: int, row: int, score: float = float("nan")) -> Event:
        """Fetch one event's payload by address."""
        sh = self.shards[shard]
        seg, local = sh.locate(row)
        p = seg.payload(local)
        return Event(id=seg.ids[local], time=int(seg.times[local]), source=sh.sources[int(seg.source[local])],
                     kind=sh.kinds[int(seg.kind[local])], tokens=int(seg.tokens[local]), score=score,
                     text=p.get("text"), entities=p.get("entities", []), links=p.get("links", []),
                     attrs=p.get("attrs", {}), shard=shard, row=row)

    def stats(self) -> dict:
        segs = [s for sh in self.shards for s in sh.segments]
        return {
            "path": str(self.path), "events": self.n, "dim": self.dim, "shards": len(self.shards),
            "segments": len(segs), "entities": sum(sh.n_entities for sh in self.shards),
            "links": sum(int(s.link_ptr[-1]) for s in segs),
            "tokens": int(sum(int(np.asarray(s.tokens, dtype=np.int64).sum()) for s in segs)),
            "time_min": min((s.time_min for s in segs), default=None),
            "time_max": max((s.time_max for s in segs), default=None),
            "hnsw_segments": sum(s.hnsw is not None for s in segs),
            "bytes_on_disk": sum(f["size"] for s in segs for f in s.entry["files"].values()),
            "sources": sorted({x for sh in self.shards for x in sh.sources}),
            "kinds": sorted({x for sh in self.shards for x in sh.kinds}),
        }

    def close(self) -> None:
        self.shards = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open(path: Union[str, Path], **kw) -> Index:  # noqa: A001 - mirrors builtins.open on purpose
    return Index(path, **kw)


def build(corpus_dir: Union[str, Path], index_dir: Union[str, Path], *, overwrite: bool = False,
          params: BuildParams = BuildParams(), progress: Progress = None) -> tuple[Index, BuildReport]:
    """Build an index from an orgmem-v1 corpus folder. The index appears whole or not at all:
    it is built in a temporary sibling directory and renamed into place."""
    corpus_dir, index_dir = Path(corpus_dir), Path(index_dir)
    if index_dir.exists() and (not index_dir.is_dir() or any(index_dir.iterdir())) and not overwrite:
        raise IndexExistsError(f"{index_dir}: exists and is not empty (use overwrite=True / --overwrite)")
    meta = read_meta(corpus_dir)
    batch = read_events(corpus_dir, progress=(lambda done: progress("read", done, meta["n_events"]))
                        if progress else None)
    encoder = (meta.get("params") or {}).get("encoder")
    encoder_spec = {"name": encoder, "dim": batch.dim} if encoder == HashingEncoder.name else None
    index_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{index_dir.name}.build.", dir=index_dir.parent))
    try:
        shard_dir = tmp / "shard-000"
        create_shard(shard_dir, batch.dim)
        write_marker(tmp, ["shard-000"], **({"encoder": encoder_spec} if encoder_spec else {}))
        from .shard import append_segment, read_manifest  # local: avoids a cycle at import time
        report = append_segment(shard_dir, read_manifest(shard_dir), batch, params, progress)
        if index_dir.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{index_dir.name}.old.", dir=index_dir.parent))
            os.rename(index_dir, trash / "old")
            os.rename(tmp, index_dir)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, index_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Index(index_dir), report


def verify(path: Union[str, Path]) -> list[str]:
    """Every problem found in an index directory (empty list: it is sound). Checks every file's
    size and checksum, then every structural invariant the reader relies on."""
    from .errors import FastctxError
    try:
        idx = Index(path, verify=True)
        for shard in idx.shards:
            g = shard.graph
            if len(g.ev_ent) and (g.ev_ent.min() < 0 or g.ev_ent.max() >= shard.n_entities):
                return [f"{shard.dir}: an event names an entity id out of range"]
            if len(g.ent_rows) and (np.diff(g.times[g.ent_rows])[np.diff(np.repeat(
                    np.arange(len(g.ent_ptr) - 1), np.diff(g.ent_ptr))) == 0] < 0).any():
                return [f"{shard.dir}: entity postings are not time-sorted"]
            for seg in shard.segments:
                for row in (0, seg.n - 1):
                    seg.payload(row)
    except FastctxError as e:
        return [str(e)]
    return []
