"""`Index`: the embedded facade. Build or open an index directory, search it, answer from it;
its write path (lock, write-ahead log, add / delete / flush / compact) is `writer.IndexWriter`.

The embedded index is "local shards + an in-process coordinator": every query runs per shard and
per segment, and results merge with a fixed tie-break (score desc, then shard, then row).
"""
from __future__ import annotations

import functools
import shutil
from builtins import type as builtins_type
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from .build import BuildReport, Progress
from .columns import keys64
from .compaction import CompactionPolicy
from .corpus import EventBatch
from .encoder import (Encoder, EncoderError, HashingEncoder, check_match, from_record, from_spec, record_problem,
                      spec_of)
from .errors import (AccessDeniedError, CorpusError, CorruptIndexError, FormatError, IndexExistsError,
                     InvalidQueryError)
from .filters import Filters, allowed_mentioning, segment_allowed, spec_query
from .format import INDEX_MARKER, fsync_dir, publish_dir, read_marker, write_marker
from .params import AnswerParams, BuildParams, SearchParams
from .planner import SegmentPlan, plan_segment, walk_hits, walk_search
from .seeds import allowed_mask, search_segment_batch
from .shard import Shard, create_shard, load_parts
from .types import Event, Hits
from .derive import corpus_params, with_derived_links
from .view import View, holds_acl
from .wal import WalWriter
from .writer import LOCK_FILE, IndexWriter

QueryInput = Union[str, Sequence[str], np.ndarray]
MAX_K = 10_000


def _filters(filter_kw: dict) -> Filters:
    """Filters from keyword arguments, with unknown names reported as a query error. Validating
    long name lists costs more than a small search, so repeated keyword sets are remembered."""
    if not filter_kw:
        return _NO_FILTERS
    try:
        key = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in filter_kw.items()))
        hit = _FILTERS_SEEN.get(key)
    except TypeError:    # unhashable values: validated (and refused) below
        key, hit = None, None
    if hit is None:
        hit = Filters.from_dict({k: v for k, v in filter_kw.items() if k != "as_of"}, as_of=filter_kw.get("as_of"))
        if key is not None:
            with _CACHE_LOCK:    # shard servers search from several threads
                if len(_FILTERS_SEEN) >= 256:
                    _FILTERS_SEEN.pop(next(iter(_FILTERS_SEEN)))
                _FILTERS_SEEN[key] = hit
    return hit


_NO_FILTERS = Filters()
_FILTERS_SEEN: dict = {}
_CACHE_LOCK = threading.Lock()
_EVERY_ROW = np.zeros(0, np.uint8)    # the walk's "every row allowed" mask (never read)


def _walk_mask(allowed, n: int) -> np.ndarray:
    """The walk's allowed mask of a segment's rows: empty when every row is allowed."""
    return _EVERY_ROW if allowed.count == n else allowed_mask(allowed, n).view(np.uint8)


def _encoder_from_marker(marker: dict) -> Optional[Encoder]:
    """The encoder the index recorded, re-created (None when it records none). A model-backed
    one loads its model on first use; a "custom" one raises EncoderError (pass encoder=)."""
    return from_record(marker.get("encoder"))


def unit_query_rows(q: np.ndarray) -> np.ndarray:
    """Float32 query rows `q` [nq, dim] scaled to unit length: NaN, inf and all-zero rows are
    refused; a row whose float32 sum of squares overflows or underflows (values near 1e20 or
    1e-20) is scaled in float64, as the corpus reader does, never silently zeroed."""
    if not np.isfinite(q).all():
        raise InvalidQueryError("query vector contains NaN or inf")
    with np.errstate(over="ignore", under="ignore"):
        norms = np.linalg.norm(q, axis=1, keepdims=True)
    odd = ~((norms > 0) & (norms < np.inf))[:, 0]
    if not odd.any():
        return np.ascontiguousarray(q / norms)
    q64 = q[odd].astype(np.float64)
    scale = np.abs(q64).max(axis=1, keepdims=True)
    if (scale == 0).any():
        raise InvalidQueryError("query vector is all zeros")
    s = q64 / scale
    out = np.ascontiguousarray(q / np.where(odd[:, None], 1.0, norms), dtype=np.float32)
    out[odd] = (s / np.linalg.norm(s, axis=1, keepdims=True)).astype(np.float32)
    return out


class Index(IndexWriter):
    """An open index directory: a pinned version of each shard plus, once this handle writes,
    the writer state (lock, write-ahead log). Readers need no lock and may be many; one writer
    at a time holds `INDEX/LOCK` (an OS file lock through filelock), taken by `writable=True` or by the first
    add / delete / flush / compact, and held until `close()`."""

    def __init__(self, path: Union[str, Path], *, verify: bool = False, encoder: Optional[Encoder] = None,
                 search_params: SearchParams = SearchParams(), writable: bool = False,
                 build_params: BuildParams = BuildParams(), memtable_max_rows: int = 200_000,
                 compaction: CompactionPolicy = CompactionPolicy(), answer_params: AnswerParams = AnswerParams()):
        self.path = Path(path)
        if not (self.path / INDEX_MARKER).exists():
            raise FormatError(f"{self.path}: not a fastctx index (no {INDEX_MARKER})")
        self.marker = read_marker(self.path)
        self.search_params = search_params
        self.answer_params = answer_params
        self.build_params = build_params
        self.memtable_max_rows = memtable_max_rows
        self.compaction = compaction
        self._lockf = None
        self._wal: Optional[WalWriter] = None
        self._seg_cache: dict = {}
        self._engine = None
        self._shards: Optional[list] = None
        self._verify = verify
        self._parts = [load_parts(self.path / name, verify=verify, cache=self._seg_cache if i == 0 else None)
                       for i, name in enumerate(self.marker["shards"])]
        self.dim = self._parts[0].manifest["dim"]
        recorded_dim = (self.marker.get("encoder") or {}).get("dim")   # read_marker checked its type
        if recorded_dim is not None and recorded_dim != self.dim:      # text queries would embed at that dim
            raise CorruptIndexError(f"{self.path / INDEX_MARKER}: field 'encoder.dim' is {recorded_dim}, but the "
                                    f"index holds vectors of dim {self.dim} ({self.marker['shards'][0]}/MANIFEST.json)")
        self._encoder: Optional[Encoder] = None
        if encoder is not None:
            encoder = from_spec(encoder)
            check_match(self.marker.get("encoder"), encoder, where=str(self.path))
            if encoder.dim != self.dim:
                raise InvalidQueryError(f"encoder dim {encoder.dim} != index dim {self.dim}")
            self._encoder = encoder
        if verify:
            _ = self.shards
        if writable:
            self._take_lock()

    @property
    def encoder(self) -> Optional[Encoder]:
        """The text encoder: the one given to the constructor, else the recorded one (re-created
        on first use, so opening never loads a model it does not need); None when none is
        recorded. An index built with a custom encoder raises EncoderError here without one."""
        if self._encoder is None:
            self._encoder = _encoder_from_marker(self.marker)
        return self._encoder

    @encoder.setter
    def encoder(self, value) -> None:
        self._encoder = value

    # -- pinned versions -----------------------------------------------------------------------
    @property
    def shards(self) -> list:
        """The pinned `Shard` of each shard (rebuilt lazily after a write)."""
        if self._shards is None:
            self._shards = [Shard(self.path / name, parts=parts, params=self.build_params)
                            for name, parts in zip(self.marker["shards"], self._parts)]
        return self._shards

    @shards.setter
    def shards(self, value) -> None:
        self._shards = value

    def _changed(self) -> None:
        self._shards = None
        self._engine = None

    def refresh(self) -> "Index":
        """Pin the latest committed version (and log) of every shard (for long-lived readers)."""
        if self._lockf is None:
            self._parts = [load_parts(self.path / name, cache=self._seg_cache if i == 0 else None)
                           for i, name in enumerate(self.marker["shards"])]
            self._changed()
        return self

    # -- creation ------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: Union[str, Path], dim: Optional[int] = None, *, encoder: Any = None,
               **open_kw) -> "Index":
        """An empty index. `encoder` (a spec string such as "hashing" or
        "sentence-transformers:PATH", an encoder object, or a recorded spec dict) is recorded
        so that `add` can embed text and text queries work on every later open; `dim` defaults
        to the encoder's."""
        path = Path(path)
        enc = None
        if isinstance(encoder, dict):
            record = encoder
            if problem := record_problem(record, unknown_ok=True):   # checked before anything is written
                raise EncoderError(f"encoder record{f', field {problem[0]!r}' if problem[0] else ''}: {problem[1]}")
        elif encoder is not None:
            enc = from_spec(encoder)
            record = spec_of(enc)
        else:
            record = None
        if dim is None:
            if record is None:
                raise InvalidQueryError("Index.create needs dim= or encoder=")
            dim = int(record["dim"])
        elif record is not None and int(record.get("dim", dim)) != int(dim):
            raise InvalidQueryError(f"encoder dim {record.get('dim')} != dim {dim}")
        path.mkdir(parents=True, exist_ok=True)
        if any(path.iterdir()):
            raise IndexExistsError(f"{path}: directory is not empty")
        create_shard(path / "shard-000", dim)
        (path / LOCK_FILE).touch()
        write_marker(path, ["shard-000"], **({"encoder": record} if record else {}))
        fsync_dir(path)                    # the shard directory and LOCK entries
        fsync_dir(path.resolve().parent)   # the index directory's own entry
        if enc is not None and record.get("name") == "custom":
            open_kw.setdefault("encoder", enc)
        idx = cls(path, **open_kw)
        if enc is not None and idx._encoder is None:
            idx._encoder = enc    # already loaded: no need to re-create it from the record
        return idx

    # -- reading -------------------------------------------------------------------------------
    @property
    def n(self) -> int:
        """Live events (deleted and replaced versions are not counted)."""
        return sum(s.n_live for s in self.shards)

    def _vectors(self, query: QueryInput) -> tuple[np.ndarray, bool]:
        """(float32 [nq, dim] unit rows, was_batch)."""
        if type(query) is np.ndarray and query.dtype == np.float32 and query.shape == (self.dim,):
            # one float32 vector (the common call): the norm as np.linalg.norm computes it (the same
            # bits), and its being finite and non-zero stands for every check below; anything
            # else takes the full path and its messages
            with np.errstate(over="ignore", under="ignore"):    # huge / tiny values: the full path
                ss = np.add.reduce(query * query)
            if 0.0 < ss < np.inf:
                return (query / np.sqrt(ss)).reshape(1, -1), False
        if isinstance(query, str) or (isinstance(query, Sequence) and query and isinstance(query[0], str)):
            texts = [query] if isinstance(query, str) else list(query)
            if not all(isinstance(t, str) for t in texts):
                bad = next(t for t in texts if not isinstance(t, str))
                raise InvalidQueryError(f"a batch of text queries holds {bad!r}: every query must be a string")
            if self.encoder is None:
                raise InvalidQueryError("this index has no text encoder recorded; pass encoder= to Index() "
                                        "or query with vectors")
            return self.encoder.encode(texts).astype(np.float32), not isinstance(query, str)
        try:
            q = np.asarray(query, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise InvalidQueryError(f"query must be text or a float vector / matrix: {e}") from None
        if q.size == 0:
            raise InvalidQueryError(f"query vector is empty: expected ({self.dim},) or (nq, {self.dim})")
        batch = q.ndim == 2
        q = q.reshape(-1, q.shape[-1]) if q.ndim in (1, 2) else q
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise InvalidQueryError(f"query vector shape {np.shape(query)}: expected ({self.dim},) or (nq, {self.dim})")
        return unit_query_rows(q), batch

    def _resolve(self, shard: Shard, f: Filters):
        if not f.has_bitmap_filters:
            return [], [], [], []
        return (shard.entity_ids(f.entities_any) if f.entities_any else [],
                shard.entity_ids(f.entities_all) if f.entities_all else [],
                shard.codes(f.sources, shard.sources), shard.codes(f.kinds, shard.kinds))

    def plans(self, filters: Filters, k: int = 10, view: Optional[View] = None) -> list[tuple[int, Any, Any, SegmentPlan]]:
        out = []
        for si, shard in enumerate(self.shards):
            resolved = self._resolve(shard, filters)
            for seg in shard.segments:
                hide = shard.deleted_local(seg)
                if view is not None and view.restricts:
                    vh = view.hidden(shard, seg)
                    hide = vh if hide is None else (hide if vh is None else hide | vh)
                allowed = segment_allowed(seg, filters, *resolved, extra_mask=hide)
                out.append((si, seg, allowed, plan_segment(seg.name, seg.n, seg.has_hnsw,
                                                           allowed, self.search_params, k)))
        return out

    def allowed_count(self, filters: Filters, k: int, view: View, shard_no: Optional[int] = None) -> int:
        """Rows a `search(..., k, filters=filters, view=view)` chooses from (of one shard when
        `shard_no` is given): the planner's counts, cached with the plans of that search."""
        return sum(p.allowed for si, _, _, p in self._search_plans(filters, k, view)
                   if shard_no is None or si == shard_no)

    def explain(self, filters: Optional[Filters] = None, k: int = 10, **filter_kw) -> list[SegmentPlan]:
        """The plan each segment would run for these filters (no vector needed)."""
        return [p for *_, p in self.plans(filters or _filters(filter_kw), k)]

    def search(self, query: QueryInput, k: int = 10, *, filters: Optional[Filters] = None,
               scope=None, principals=None, unrestricted: bool = False, view: Optional[View] = None,
               **filter_kw) -> Hits:
        """Filtered top-k seed events for one query or a batch (text or vectors); a batch runs
        as `search_batch` does. Filters: time_from, time_to, as_of, entities_any, entities_all,
        sources, kinds. `scope` / `principals` limit what may be returned (see `view.py`)."""
        if type(k) is not int:
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
                raise InvalidQueryError(f"k must be an integer in [1, {MAX_K}], got {k!r}")
            k = int(k)
        if not 1 <= k <= MAX_K:
            raise InvalidQueryError(f"k must be an integer in [1, {MAX_K}], got {k!r}")
        if filters is not None and filter_kw:
            raise InvalidQueryError("pass either filters= or filter keywords, not both")
        f = filters or _filters(filter_kw)
        view = view if view is not None else self.view(scope, principals, unrestricted)
        t0 = time.perf_counter()
        qs, _ = self._vectors(query)
        t_enc = time.perf_counter()
        plans = self._search_plans(f, k, view)
        t_plan = time.perf_counter()
        hits = self._search_planned(qs, k, plans, t_enc - t0, t_plan - t_enc)
        if view.restricts:   # payloads fetched later name only what this asker may see
            hits._fetch = functools.partial(self._event_seen, view)
        return hits

    def search_batch(self, vectors: QueryInput, k: int = 10, *, filters: Optional[Filters] = None,
                     scope=None, principals=None, unrestricted: bool = False, view: Optional[View] = None,
                     **filter_kw) -> Hits:
        """Many queries under one filter: planned once, then one HNSW call per segment and
        over-fetch round for all of them (exact plans scan per query). Row i of the result is
        what `search(vectors[i], k, ...)` returns."""
        return self.search(vectors, k, filters=filters, scope=scope, principals=principals,
                           unrestricted=unrestricted, view=view, **filter_kw)

    def search_per_entity(self, query: QueryInput, k: int, names: Sequence[str], *, filters: Filters,
                          view: Optional[View] = None) -> list[Hits]:
        """For each entity name, what `search(query, k, filters=<filters, and rows must also
        mention the name>, view=view)` returns: planned from the filters' own (cached) plans,
        each segment's allowed rows narrowed to the name's rows, not evaluated again per name."""
        view = view if view is not None else self.view()
        qs, _ = self._vectors(query)
        base = self._search_plans(filters, k, view)
        ids = [{si: sh.entity_ids([name]) for si, sh in enumerate(self.shards)} for name in names]
        out = []
        for per_shard in ids:
            ts = time.perf_counter()
            plans = []
            for si, seg, allowed, _ in base:
                narrowed = allowed_mentioning(seg, allowed, per_shard[si])
                plans.append((si, seg, narrowed, plan_segment(seg.name, seg.n, seg.has_hnsw, narrowed,
                                                              self.search_params, k)))
            hits = self._search_planned(qs, k, plans, 0.0, time.perf_counter() - ts)
            if view.restricts:
                hits._fetch = functools.partial(self._event_seen, view)
            out.append(hits)
        return out

    _PLAN_CACHE_MAX = 16

    def _search_plans(self, f: Filters, k: int, view: View) -> list:
        """`plans`, remembered per (filters, k, view, params) until the pinned version changes
        (a repeated filter is planned once; the cache is dropped with the shards it describes)."""
        shards, sp = self.shards, self.search_params
        last = getattr(self, "_last_plans", None)
        # the same objects as the last call (a repeated filter: `_filters` and `view` hand back the
        # same ones): no key to hash
        if last is not None and last[0] is shards and last[1] is f and last[2] == k and last[3] is view \
                and last[4] is sp:
            return last[5]
        cache = getattr(self, "_plan_cache", None)
        if cache is None or cache[0] is not shards:
            cache = self._plan_cache = (shards, {})
        key = (f, k, view, sp)
        try:
            plans = cache[1].get(key)     # hashes the key once (filters, view, params)
        except TypeError:
            return self.plans(f, k, view)
        if plans is None:
            plans = self.plans(f, k, view)
            with _CACHE_LOCK:
                if len(cache[1]) >= self._PLAN_CACHE_MAX:
                    cache[1].pop(next(iter(cache[1])))
                cache[1][key] = plans
        self._last_plans = (shards, f, k, view, sp, plans)
        return plans

    # plans answered by the graph walk over the file in place: the unfiltered "hnsw" too, so a
    # first search needs no hnswlib load of the graph (2.7 s at 3.4M x 128, bench/README.md "Open")
    _WALK_PLANS = ("hnsw", "hnsw-walk")

    def _search_planned(self, qs: np.ndarray, k: int, plans: list, enc_s: float, plan_s: float) -> Hits:
        nq = len(qs)
        ts = time.perf_counter()
        sp = self.search_params
        # one segment walked (the common case): the kernel answers in the final form, already in the
        # merge's order (score desc, then row), so nothing is sorted or copied here; its runner is
        # made once per cached plan list
        lean = getattr(self, "_lean", None)
        if lean is None or lean[0] is not plans or lean[1] is not sp or lean[2] != k:
            live = [p for p in plans if p[3].strategy != "skip"]
            run = None
            if len(live) == 1 and live[0][3].strategy in self._WALK_PLANS:
                si, seg, allowed, plan = live[0]
                run = walk_hits(seg, plan, _walk_mask(allowed, seg.n), k, sp, seg.row_base, si)
            lean = self._lean = (plans, sp, k, run)
        if lean[3] is not None:
            return self._hits(*lean[3](qs), nq, ts, enc_s, plan_s)
        live = [p for p in plans if p[3].strategy != "skip"]
        parts = [(si, seg.row_base, walk_search(seg, plan, _walk_mask(allowed, seg.n), qs, k, sp)
                  if plan.strategy in self._WALK_PLANS else search_segment_batch(seg, plan, allowed, qs, k, sp))
                 for si, seg, allowed, plan in live]
        if len(parts) == 1:      # one segment to merge (the common case): no concatenation
            si, base, (rw, sc) = parts[0]
            if live[0][3].strategy.startswith("exact"):
                # an exact scan answers in the merge's order already (score desc, then ascending
                # row: `top_k` breaks ties by position in the ascending allowed rows)
                counts = np.count_nonzero(sc > -np.inf, axis=1).astype(np.int64)
                filled = np.arange(sc.shape[1]) < counts[:, None]
                return self._hits(np.where(filled, np.int32(si), np.int32(-1)), np.where(filled, rw + base, -1),
                                  np.where(filled, sc, np.float32(np.nan)), counts, nq, ts, enc_s, plan_s)
            order = np.lexsort((rw, -sc), axis=1)     # unfilled slots (score -inf) sort last
            rw, sc = np.take_along_axis(rw, order, 1), np.take_along_axis(sc, order, 1)
            filled = sc > -np.inf
            counts = np.count_nonzero(filled, axis=1).astype(np.int64)
            shards = np.where(filled, np.int32(si), np.int32(-1))
            rows = np.where(filled, rw + base, -1)
            scores = np.where(filled, sc, np.float32(np.nan))
            return self._hits(shards, rows, scores, counts, nq, ts, enc_s, plan_s)
        shards = np.full((nq, k), -1, np.int32)
        rows = np.full((nq, k), -1, np.int64)
        scores = np.full((nq, k), np.nan, np.float32)
        counts = np.zeros(nq, np.int64)
        if parts:
            sc = np.concatenate([p[2][1] for p in parts], axis=1) if len(parts) > 1 else parts[0][2][1]
            rw = np.concatenate([np.where(p[2][0] >= 0, p[2][0] + p[1], -1) for p in parts], axis=1)
            sh = np.concatenate([np.full(p[2][0].shape, p[0], np.int32) for p in parts], axis=1)
            # score desc, then shard, then row: the fixed tie-break of every merge
            order = np.lexsort((rw, sh, -sc), axis=1)[:, :k]
            at = np.arange(nq)[:, None]
            sc, rw, sh = sc[at, order], rw[at, order], sh[at, order]
            filled = sc > -np.inf
            counts = filled.sum(axis=1).astype(np.int64)
            c = order.shape[1]
            shards[:, :c] = np.where(filled, sh, -1)
            rows[:, :c] = np.where(filled, rw, -1)
            scores[:, :c] = np.where(filled, sc, np.nan)
        return self._hits(shards, rows, scores, counts, nq, ts, enc_s, plan_s)

    def _hits(self, shards, rows, scores, counts, nq: int, ts: float, enc_s: float, plan_s: float) -> Hits:
        per = 1e3 / max(nq, 1)
        timing = {"encode_ms": enc_s * per, "plan_ms": plan_s * per, "seeds_ms": (time.perf_counter() - ts) * per}
        return Hits(shards, rows, scores, counts, [timing] + [dict(timing) for _ in range(nq - 1)], self.event)

    # -- causal answers ------------------------------------------------------------------------
    def engine(self):
        if getattr(self, "_engine", None) is None:
            from .answer import Engine
            if len(self.shards) != 1:
                raise InvalidQueryError("causal queries over several local shards go through the coordinator")
            self._engine = Engine(self, params=self.answer_params)
        return self._engine

    def view(self, scope=None, principals=None, unrestricted: bool = False) -> View:
        """The asker's view. An index holding access lists refuses an asker who names no
        principals, unless unrestricted access is asked for explicitly."""
        plain = scope is None and principals is None
        if plain:    # the everyday asker: one View per pinned version (and the same plan-cache key)
            memo = getattr(self, "_view_memo", None)
            if memo is not None and memo[0] is self.shards and memo[1] == bool(unrestricted):
                return memo[2]
        v = View.make(scope, principals)
        if v.principals is None and not unrestricted and any(holds_acl(sh) for sh in self.shards):
            raise AccessDeniedError(f"{self.path}: this index holds access lists; pass principals=[...] "
                                    "(who asks) or unrestricted=True")
        if plain:
            self._view_memo = (self.shards, bool(unrestricted), v)
        return v

    def query(self, query: Union[str, np.ndarray], *, type: str = "chain", filters: Optional[Filters] = None,
              as_of: Optional[int] = None, direction: str = "back", budget_tokens: int = 4000,
              scope=None, principals=None, unrestricted: bool = False, fill: bool = False,
              text: Optional[str] = None, **filter_kw):
        """Causal answer for one query (text or vector): a token-budgeted timeline with why-paths.
        type: chain | current | as_of. as_of hides every event (and supersession) after that time.
        scope: filter keys every returned event must satisfy (expansion never leaves it).
        principals: who asks (events with an access list naming none of them are invisible).
        fill: pad the answer with further direct hits up to the budget (off: the answer ends
        where the evidence does). text: the query's words when `query` is a vector."""
        if filters is not None and filter_kw:
            raise InvalidQueryError("pass either filters= or filter keywords, not both")
        f = filters or _filters(filter_kw)
        if as_of is not None:
            f = replace(f, as_of=as_of)  # Filters validates it
        if type == "as_of" and f.as_of is None:
            raise InvalidQueryError("an as_of query needs as_of=<unix time>")
        _check_query_args(type, direction, f)
        view = self.view(scope, principals, unrestricted)
        qv, batch = self._vectors(query)
        if batch or len(qv) != 1:
            raise InvalidQueryError("query() answers one query at a time; loop over a batch")
        if text is None and isinstance(query, str):
            text = query
        return self.engine().run(qv[0], type, f, direction, budget_tokens, view=view, text=text, fill=fill)

    def query_spec(self, spec: dict, vector: Optional[np.ndarray] = None, *, unrestricted: bool = False,
                   fill: bool = False):
        """Answer one query in the orgmem queries.jsonl form (vector, or its `text`; `scope` and
        `principals` as the format defines them)."""
        q, kw = spec_query(spec, vector)
        return self.query(q, unrestricted=unrestricted, fill=fill, **kw)

    def warm_up(self, engine: bool = True) -> None:
        """Compile kernels and build shard-wide views now rather than inside the first query.
        `engine=False` warms the seed search only (a shard server never runs the engine)."""
        from .kernels.scan import code_dot_range, code_dot_rows, dot_range, dot_rows
        q = np.zeros(self.dim, np.float32)
        for shard in self.shards:
            for seg in shard.segments:  # each distinct array type (memory map or in memory) compiles once
                dot_rows(seg.vectors, np.zeros(min(1, seg.n), np.int64), q)
                dot_range(seg.vectors, 0, min(1, seg.n), q)
                if seg.codes is not None:
                    code_dot_rows(seg.codes.codes, seg.codes.scale, np.zeros(min(1, seg.n), np.int64), q)
                    code_dot_range(seg.codes.codes, seg.codes.scale, 0, min(1, seg.n), q)
        if any(seg.has_hnsw for shard in self.shards for seg in shard.segments):
            from .kernels.hnsw_search import warm_up as warm_walk
            warm_walk(self.dim)   # compiles the filtered walk without reading any graph
        if engine and len(self.shards) == 1:
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

    def _event_seen(self, view: View, shard: int, row: int, score: float = float("nan")) -> Event:
        e = self.event(shard, row, score)
        e.links = self.seen_links(e.links, view)
        return e

    def seen_links(self, links: list, view: View) -> list:
        """`links` ([target id, type] pairs) less those naming an event the asker may not see: one
        outside the view's scope or access, deleted, or absent. An event's links are names too,
        and an answer never names what it may not return."""
        if not view.restricts or not links:
            return links
        found = self._seen([str(x[0]) for x in links], view)
        return [x for x, at in zip(links, found) if at is not None]

    def _seen(self, ids: list, view: View) -> list:
        """Per id, (shard, row) of its live event when the asker may see it, else None."""
        out: list = [None] * len(ids)
        keys = keys64(ids)
        for si, sh in enumerate(self.shards):
            rows = sh.lookup_ids(keys)
            for j in np.flatnonzero(rows >= 0).tolist():
                seg, local = sh.locate(int(rows[j]))
                hidden = view.hidden(sh, seg) if view.restricts else None
                # a 64-bit key is not the id: never take another event for it
                if (hidden is None or local not in hidden) and seg.ids[local] == ids[j]:
                    out[j] = (si, int(rows[j]))
        return out

    def get(self, ids: Sequence[str], *, scope=None, principals=None, unrestricted: bool = False
            ) -> list[Optional[Event]]:
        """The live event of each external id, in the order asked: None where the id is absent,
        deleted, or hidden from this asker (`scope` / `principals` as in `query`)."""
        if isinstance(ids, str) or not all(isinstance(i, str) and i for i in ids):
            raise InvalidQueryError(f"get() takes a list of non-empty id strings, got {ids!r}")
        view = self.view(scope, principals, unrestricted)
        return [None if at is None else self._event_seen(view, *at) for at in self._seen(list(ids), view)]

    def _n_entities(self) -> int:
        """Distinct entities (derived ones included): a partitioned index's shards share names, so
        their corpus-wide count is the one its partition sidecar records."""
        if len(self.shards) > 1 and self.marker.get("partition"):
            from .partition import read_sidecar
            return int(read_sidecar(self.shards[0].dir)[1]["n_entities_global"])
        return sum(sh.n_entities for sh in self.shards)

    def _n_links(self, segments) -> int:
        """Stored links; a partitioned index keeps cross-shard links in its sidecars."""
        if len(self.shards) > 1 and self.marker.get("partition"):
            from .partition import read_sidecar
            return sum(int(read_sidecar(sh.dir)[0]["out_ptr"][-1]) for sh in self.shards)
        return sum(int(s.link_ptr[-1]) for s in segments)

    def stats(self) -> dict:
        segs = [s for sh in self.shards for s in sh.disk_segments]
        every = [s for sh in self.shards for s in sh.segments if s.n]
        return {
            "path": str(self.path), "events": self.n, "dim": self.dim, "shards": len(self.shards),
            "segments": len(segs), "entities": self._n_entities(),
            "links": self._n_links(every),
            "tokens": int(sum(int(np.asarray(s.tokens, dtype=np.int64).sum()) for s in every)),
            "time_min": min((s.time_min for s in every), default=None),
            "time_max": max((s.time_max for s in every), default=None),
            "hnsw_segments": sum(s.has_hnsw for s in segs),
            "bytes_on_disk": sum(f["size"] for s in segs for f in s.entry["files"].values()),
            "sources": sorted({x for sh in self.shards for x in sh.sources}),
            "kinds": sorted({x for sh in self.shards for x in sh.kinds}),
            "version": self.shards[0].version if self.shards else None,
            "memtable_events": sum(sh.memtable.n if sh.memtable is not None else 0 for sh in self.shards),
            "deleted_rows": sum(sh.n_deleted for sh in self.shards),
            "wal_files": sum(len(sh.manifest.get("wal", [])) for sh in self.shards),
            "wal_bytes": sum((sh.dir / w).stat().st_size for sh in self.shards for w in sh.manifest.get("wal", [])
                             if (sh.dir / w).exists()),
        }

    def verify(self) -> list[str]:
        """Every problem found in this index's files (empty list: sound): all checksums, the
        deferred ones of big files included, and the structural checks; see `verify`."""
        return verify(self.path)

    def close(self) -> None:
        if self._wal is not None:
            self._wal.close()
            self._wal = None
        if self._lockf is not None:
            try:
                self._lockf.release()
            finally:
                self._lockf = None
        self._shards = []
        self._engine = None

    def __repr__(self) -> str:
        if self._shards == []:
            return f"Index({str(self.path)!r}, closed)"
        from .encoder import describe
        enc = describe(self.marker.get("encoder")) if self._encoder is None else describe(spec_of(self._encoder))
        return (f"Index({str(self.path)!r}, {self.n} events, dim {self.dim}, {len(self.marker['shards'])} shard(s), "
                f"encoder {enc}{', writable' if self.writable else ''})")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _check_query_args(type: Any, direction: Any, f: Filters) -> None:
    """Types the engine assumes (its own checks name the allowed values)."""
    for name, v in (("type", type), ("direction", direction)):
        if not isinstance(v, str):
            raise InvalidQueryError(f"{name} must be a string, got {_tname(v)}")
    for name in ("as_of", "time_from", "time_to"):
        v = getattr(f, name, None)
        if v is not None and not (isinstance(v, (int, np.integer)) and -2**62 <= int(v) <= 2**62):
            raise InvalidQueryError(f"{name} must be a Unix time within +-2**62, got {str(v)[:40]}")


def _tname(v: Any) -> str:
    return "None" if v is None else builtins_type(v).__name__


def open(path: Union[str, Path], **kw) -> Index:  # noqa: A001 - mirrors builtins.open on purpose
    return Index(path, **kw)


class _Read:
    """A corpus already read by `read_for_build` (handed on to the partitioned build)."""

    def __init__(self, batch: EventBatch, spec: Optional[dict]):
        self.batch, self.spec = batch, spec


def _corpus_encoder(meta: dict) -> Optional[dict]:
    """The encoder a corpus folder's meta.json names: params.encoder_spec (a recorded spec, as
    `fastctx export` writes, or a spec string), else params.encoder == "hashing-v1"."""
    params = meta.get("params") or {}
    spec = params.get("encoder_spec")
    if isinstance(spec, dict):
        return spec
    if isinstance(spec, str):
        return spec_of(from_spec(spec))
    if params.get("encoder") == HashingEncoder.name:
        return {"name": HashingEncoder.name, "dim": int(meta.get("dim") or 256)}
    return None


def read_for_build(corpus: Any, index_dir: Path, overwrite: bool, progress: Progress, encoder: Any = None):
    """Refuse a non-empty target (unless overwriting), then read and validate the corpus (any
    source of fastctx/sources.py), embedding its text when it has no vectors: with `encoder`,
    else the one its meta.json names, else the hashing encoder.
    Returns (batch, encoder spec to record in the index marker or None)."""
    from .sources import read_source, to_batch
    if index_dir.exists() and (not index_dir.is_dir() or any(index_dir.iterdir())) and not overwrite:
        raise IndexExistsError(f"{index_dir}: exists and is not empty (use overwrite=True / --overwrite)")
    if isinstance(corpus, _Read):
        return corpus.batch, corpus.spec
    src = read_source(corpus, progress=progress)
    enc = from_spec(encoder) if encoder is not None else None
    recorded = _corpus_encoder(src.meta)
    if not src.has_vectors:
        enc = enc or (from_record(recorded) if recorded else HashingEncoder())
        return to_batch(src, enc, progress=progress), spec_of(enc)
    batch = to_batch(src)
    if enc is None:   # a record of another dim does not describe these vectors: not recorded
        return batch, recorded if recorded and recorded.get("dim") in (None, batch.dim) else None
    check_match(recorded, enc, where=f"{src.origin} (its vectors; remove vectors.npy to embed the text instead)")
    if enc.dim != batch.dim:
        raise CorpusError(f"the encoder has dim {enc.dim} but the vectors have dim {batch.dim} "
                          "(remove vectors.npy to embed the text with this encoder)", file=src.origin, field="vectors")
    return batch, spec_of(enc)


def build(corpus: Any, index_dir: Union[str, Path], *, overwrite: bool = False,
          params: BuildParams = BuildParams(), progress: Progress = None, shards: int = 1,
          shard_key: str = "id", encoder: Any = None, ray: Optional[str] = None,
          segment_rows: Optional[int] = None) -> tuple[Index, BuildReport]:
    """Build an index from a corpus: an orgmem folder (``vectors.npy`` optional), a .jsonl or
    .parquet file, "-" (stdin), a pandas DataFrame, an Arrow table or a list of event mappings.
    Events without vectors are embedded from their text with `encoder` (a spec string such as
    "sentence-transformers:PATH", or an object with `dim` and `encode`; default: the one the
    corpus's meta.json names, else "hashing"), which the index records. The index appears whole
    or not at all: it is built in a temporary sibling directory and renamed into place.
    `shards` > 1 writes that many independently servable shards (fastctx/partition.py); with
    `ray` ("local" or a cluster address) Ray tasks write them (fastctx/ray_build.py, extra "ray").
    `segment_rows` (single shard): cut the rows by event time into segments of at least this many
    rows (default `build.DEFAULT_SEGMENT_ROWS`; 0: one segment), so a time window selects whole
    segments and searches them unfiltered."""
    index_dir = Path(index_dir)
    if segment_rows is not None and (ray is not None or shards != 1):
        raise ValueError("segment_rows applies to single-shard builds (shards=1, no ray)")
    if ray is not None:
        from .ray_build import build_ray
        return build_ray(corpus, index_dir, shards=shards, ray=ray, key=shard_key, overwrite=overwrite,
                         params=params, progress=progress, encoder=encoder)
    if shards != 1:
        from .partition import build_partitioned
        read = _Read(*read_for_build(corpus, index_dir, overwrite, progress, encoder))
        return build_partitioned(read, index_dir, shards=shards, key=shard_key, overwrite=overwrite,
                                 params=params, progress=progress)
    batch, encoder_spec = read_for_build(corpus, index_dir, overwrite, progress, encoder)
    params, actor_excess = corpus_params(batch, params)
    batch = with_derived_links(batch, params)
    index_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{index_dir.name}.build.", dir=index_dir.parent))
    try:
        shard_dir = tmp / "shard-000"
        create_shard(shard_dir, batch.dim)
        (tmp / LOCK_FILE).touch()
        write_marker(tmp, ["shard-000"], **({"encoder": encoder_spec} if encoder_spec else {}))
        from .build import DEFAULT_SEGMENT_ROWS, append_time_cut
        from .shard import read_manifest
        rows = DEFAULT_SEGMENT_ROWS if segment_rows is None else _segment_rows(segment_rows)
        report = append_time_cut(shard_dir, read_manifest(shard_dir), batch, params, rows, progress)
        report.actor_excess = actor_excess
        publish_dir(tmp, index_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Index(index_dir, **({"encoder": encoder} if encoder is not None and not isinstance(encoder, str)
                               else {})), report


def _segment_rows(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
        raise ValueError(f"segment_rows must be an int >= 0, got {v!r}")
    return int(v)


def verify(path: Union[str, Path], notes: Optional[list] = None) -> list[str]:
    """Every problem found in an index directory (empty list: it is sound). Checks every file's
    size and checksum (those opening defers included), loads every HNSW graph, then checks every
    structural invariant the reader relies on. `notes`, when given, receives what is not a
    problem but worth saying: each torn log tail a crash mid-write left (the next writer drops it)."""
    from .errors import FastctxError
    try:
        idx = Index(path, verify=True)
        for shard in idx.shards:
            if notes is not None:
                notes.extend(shard.wal_notes)
            # a torn log tail is normal after a crash (it was never acknowledged) but a *whole*
            # last record failing its checksum is damage (or power loss): report it
            bad = [n for n in shard.wal_notes if "whole last record" in n]
            if bad:
                return [bad[0].replace(" (ignored)", "") + ": the write-ahead log's last record is corrupted"]
            problem = shard.check_graph_file()
            if problem:
                return [problem]
            g = shard.graph
            if len(g.ev_ent) and (g.ev_ent.min() < 0 or g.ev_ent.max() >= shard.n_entities):
                return [f"{shard.dir}: an event names an entity id out of range"]
            if len(g.ent_rows) and (np.diff(g.times[g.ent_rows])[np.diff(np.repeat(
                    np.arange(len(g.ent_ptr) - 1), np.diff(g.ent_ptr))) == 0] < 0).any():
                return [f"{shard.dir}: entity postings are not time-sorted"]
            for seg in shard.segments:
                for row in sorted({0, seg.n - 1}) if seg.n else ():
                    seg.payload(row)
                _ = seg.hnsw     # opening defers the graph: load it to check what it holds
                _ = getattr(seg, "walk", None)   # ... and read it as the filtered walk does
        if idx.marker.get("partition"):
            problem = _verify_partition(idx)
            if problem:
                return [problem]
    except FastctxError as e:
        return [str(e)]
    except Exception as e:  # damage no specific check foresaw: still a report, not a traceback
        return [f"{path}: damaged index ({type(e).__name__}: {str(e)[:300]})"]
    return []


def _verify_partition(idx: "Index") -> Optional[str]:
    """The partition sidecars agree with their shards (checksums are checked by read_sidecar)."""
    from .partition import read_sidecar
    n_shards = len(idx.shards)
    for k, shard in enumerate(idx.shards):
        arrays, meta = read_sidecar(shard.dir)
        if meta.get("shard") != k or meta.get("n_shards") != n_shards:
            return f"{shard.dir}: PARTITION.json says shard {meta.get('shard')!r} of {meta.get('n_shards')!r}"
        n = shard.manifest["n_rows"]
        grow = arrays["grow"]
        if len(grow) != n or len(arrays["out_ptr"]) != n + 1 or len(arrays["in_ptr"]) != n + 1 \
                or len(arrays["sup_by"]) != n:
            return f"{shard.dir}: PARTITION.npz arrays do not match the shard's {n} rows"
        if n and (np.diff(grow) <= 0).any():
            return f"{shard.dir}: PARTITION.npz global rows are not increasing"
    return None
