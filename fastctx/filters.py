"""Query filters and their evaluation to allowed rows per segment.

A segment is time-sorted, so the time window (time_from/time_to/as_of) is a row range found by
binary search. Entity, source and kind filters are roaring bitmaps. The result is either a plain
range (no bitmap needed: the fast path) or a range-clamped bitmap, always with an exact count.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from pyroaring import BitMap

from .errors import InvalidQueryError

FILTER_KEYS = ("time_from", "time_to", "entities_any", "entities_all", "sources", "kinds")


def unix_time(name: str, v: Any) -> Optional[int]:
    """A time as inclusive Unix seconds: an integer, a `datetime` (naive means UTC), a `date`
    (its midnight UTC), a numpy datetime64 or an ISO 8601 string ("2024-03-01", "...T12:00Z")."""
    if v is None:
        return None
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return int(v)
    if isinstance(v, str):
        text = v.strip()
        try:   # Python 3.10's fromisoformat does not know the "Z" suffix
            v = _dt.datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in "zZ" and text else text)
        except ValueError:
            raise InvalidQueryError(f"filter '{name}': {text!r} is not an ISO 8601 date or time "
                                    "(e.g. 2024-03-01 or 2024-03-01T12:00:00Z)") from None
    if isinstance(v, np.datetime64):
        if np.isnat(v):
            raise InvalidQueryError(f"filter '{name}' is NaT (not a time)")
        return int(v.astype("datetime64[s]").astype(np.int64))
    if isinstance(v, _dt.datetime):
        return int((v if v.tzinfo is not None else v.replace(tzinfo=_dt.timezone.utc)).timestamp() // 1)
    if isinstance(v, _dt.date):
        return int(_dt.datetime(v.year, v.month, v.day, tzinfo=_dt.timezone.utc).timestamp())
    raise InvalidQueryError(f"filter '{name}' must be a Unix time (int), a datetime, a date or an ISO 8601 "
                            f"string, or None; got {v!r}")



def _strings(name: str, v: Any) -> tuple[str, ...]:
    if v is None:
        return ()
    if isinstance(v, str) or not isinstance(v, Sequence) or not all(isinstance(s, str) and s for s in v):
        raise InvalidQueryError(f"filter '{name}' must be a list of non-empty strings, got {v!r}")
    return tuple(v)


@dataclass(frozen=True)
class Filters:
    """Hard constraints on seed events. Times are inclusive Unix seconds (datetimes, dates and
    ISO 8601 strings are converted; a naive datetime means UTC)."""
    time_from: Optional[int] = None
    time_to: Optional[int] = None
    entities_any: tuple[str, ...] = ()
    entities_all: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    as_of: Optional[int] = None  # only events with time <= as_of exist for this query

    def __post_init__(self):
        for name in ("time_from", "time_to", "as_of"):
            object.__setattr__(self, name, unix_time(name, getattr(self, name)))
        for name in ("entities_any", "entities_all", "sources", "kinds"):
            object.__setattr__(self, name, _strings(name, getattr(self, name)))

    @classmethod
    def from_dict(cls, d: Optional[Mapping], as_of: Optional[int] = None) -> "Filters":
        if d is not None and not isinstance(d, Mapping):
            raise InvalidQueryError(f"filters must be a mapping of filter keys, got {d!r}")
        d = dict(d or {})
        unknown = set(d) - set(FILTER_KEYS)
        if unknown:
            raise InvalidQueryError(f"unknown filter field(s) {sorted(unknown)}; known: {list(FILTER_KEYS)}")
        return cls(as_of=as_of, **d)

    def to_dict(self) -> dict:
        """The filter keys that are set, as plain JSON / wire values (inverse of `from_dict`;
        `as_of` travels separately)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k in FILTER_KEYS
                if (v := getattr(self, k)) not in (None, ())}

    def time_bounds(self) -> tuple[int, int]:
        lo = self.time_from if self.time_from is not None else np.iinfo(np.int64).min
        hi = self.time_to if self.time_to is not None else np.iinfo(np.int64).max
        if self.as_of is not None:
            hi = min(hi, self.as_of)
        return lo, hi

    @property
    def has_bitmap_filters(self) -> bool:
        return bool(self.entities_any or self.entities_all or self.sources or self.kinds)


def spec_query(spec: Mapping, vector=None) -> tuple[Any, dict]:
    """(what to ask, keyword arguments of `query()`) for one query in the orgmem queries.jsonl
    form: its vector if given, else its `text`; filters, as_of, type, direction, budget, scope
    and principals as the format defines them. Embedded and sharded `query_spec` share it."""
    if not isinstance(spec, Mapping):
        raise InvalidQueryError(f"a query spec is a mapping (one line of queries.jsonl), got {spec!r}")
    q = vector if vector is not None else spec.get("text")
    if q is None:
        raise InvalidQueryError(f"query {spec.get('qid')!r} has neither a vector nor text")
    return q, {"type": spec.get("type", "chain"), "filters": Filters.from_dict(spec.get("filters"), as_of=spec.get("as_of")),
               "direction": spec.get("direction", "back"), "budget_tokens": spec.get("budget_tokens", 4000),
               "scope": spec.get("scope"), "principals": spec.get("principals"), "text": spec.get("text")}


@dataclass
class Allowed:
    """Allowed local rows of one segment: rows in [lo, hi), further restricted by `bitmap` if set."""
    lo: int
    hi: int
    bitmap: Optional[BitMap]
    count: int

    @property
    def is_range(self) -> bool:
        return self.bitmap is None

    def rows(self) -> np.ndarray:
        if self.bitmap is None:
            return np.arange(self.lo, self.hi, dtype=np.int64)
        return np.asarray(self.bitmap.to_array(), dtype=np.int64)

    def contains(self, rows: np.ndarray) -> np.ndarray:
        """Vectorised membership test for candidate rows (no per-row Python callback)."""
        rows = np.asarray(rows, dtype=np.int64)
        inside = (rows >= self.lo) & (rows < self.hi)
        if self.bitmap is None or not inside.any():
            return inside
        hit = BitMap(rows[inside].astype(np.uint32)) & self.bitmap
        return inside & np.isin(rows, np.asarray(hit.to_array(), dtype=np.int64))


def allowed_mentioning(seg, allowed: Allowed, entity_ids: Sequence[int]) -> Allowed:
    """`allowed` narrowed to the rows that also mention the entity (`entity_ids`: its resolved
    id, or none when the name is unknown): what `segment_allowed` gives for the same filters with
    the entity added to `entities_all`, without evaluating them again."""
    if allowed.count == 0 or allowed.hi <= allowed.lo:
        return allowed
    if not entity_ids:
        return Allowed(allowed.lo, allowed.hi, BitMap(), 0)
    bm = seg.entity_rows(entity_ids[0])
    if allowed.bitmap is not None:
        bm = bm & allowed.bitmap
    elif allowed.lo > 0 or allowed.hi < seg.n:
        bm = bm & BitMap(range(allowed.lo, allowed.hi))
    return Allowed(allowed.lo, allowed.hi, bm, len(bm))


def segment_allowed(seg, filters: Filters, entity_ids_any: Sequence[int], entity_ids_all: Sequence[int],
                    source_codes: Sequence[int], kind_codes: Sequence[int],
                    extra_mask: Optional[BitMap] = None) -> Allowed:
    """Evaluate `filters` on segment `seg`. Entity/source/kind names are already resolved to ids
    (an unknown name resolves to nothing: it matches no row). `extra_mask`, if given, removes rows
    (e.g. deleted ones) as a bitmap of *disallowed* local rows."""
    t_lo, t_hi = filters.time_bounds()
    lo = int(np.searchsorted(seg.times, t_lo, side="left"))
    hi = int(np.searchsorted(seg.times, t_hi, side="right"))
    if hi <= lo:
        return Allowed(lo, lo, None, 0)
    bitmap: Optional[BitMap] = None

    def narrow(bm: BitMap) -> None:
        nonlocal bitmap
        bitmap = bm if bitmap is None else bitmap & bm

    if filters.entities_any:
        narrow(BitMap.union(*(seg.entity_rows(e) for e in entity_ids_any)) if entity_ids_any else BitMap())
    for names, ids in ((filters.entities_all, entity_ids_all),):
        if names:
            if len(ids) < len(names):  # an unknown entity: nothing can mention all of them
                narrow(BitMap())
            for e in ids:
                narrow(seg.entity_rows(e))
    for names, codes, group in ((filters.sources, source_codes, "source"), (filters.kinds, kind_codes, "kind")):
        if names:
            stored = [seg.bitmaps[group].get(c) for c in codes]
            narrow(BitMap.union(*(b for b in stored if b is not None)) if any(b is not None for b in stored)
                   else BitMap())
    if extra_mask is not None and len(extra_mask):
        narrow(BitMap(range(lo, hi)) - extra_mask)
    if bitmap is None:
        return Allowed(lo, hi, None, hi - lo)
    if lo > 0 or hi < seg.n:
        bitmap = bitmap & BitMap(range(lo, hi))
    return Allowed(lo, hi, bitmap, len(bitmap))
