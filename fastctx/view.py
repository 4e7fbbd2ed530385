"""What one asker may see: a query's scope and principals, as hard limits on every event.

- `scope` (same keys as filters): a tenant, a conversation, a workspace. Unlike `filters`, which
  pick seeds, the scope bounds the whole answer: expansion never leaves it.
- `principals` (e.g. `user:ana`, `group:payments`): an event with a non-empty access list is
  visible only to askers naming one of its principals; an event without one is visible to all.
  `None` means unrestricted access; an index that holds any access list refuses it unless
  asked for explicitly (`Index.query(..., unrestricted=True)`).

An event the view hides is never a seed, never walked through, never named in a why-path, never
current (a hidden later version does not exist for that asker: the visible latest version is
current), never counted or fetched. Both are evaluated with the segment's roaring bitmaps
(access lists are stored as derived `~acl:` entities, see `derive.py`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Union

import numpy as np
from pyroaring import BitMap

from .derive import ACL, ACL_ANY
from .errors import InvalidQueryError
from .filters import Filters, segment_allowed


def _principals(v) -> Optional[tuple[str, ...]]:
    if v is None:
        return None
    if isinstance(v, str) or not isinstance(v, Sequence) or not all(
            isinstance(p, str) and p and p == p.strip() for p in v):
        raise InvalidQueryError(f"principals must be a list of non-empty strings (e.g. ['user:ana']), got {v!r}")
    return tuple(dict.fromkeys(v))


@dataclass(frozen=True)
class View:
    scope: Optional[Filters] = None
    principals: Optional[tuple[str, ...]] = None

    @classmethod
    def make(cls, scope: Union[None, Filters, Mapping] = None, principals=None) -> "View":
        if scope is not None and not isinstance(scope, Filters):
            if not isinstance(scope, Mapping):
                raise InvalidQueryError(f"scope must be a mapping of filter keys, got {scope!r}")
            empty = [k for k, v in scope.items() if isinstance(v, (list, tuple)) and not v]
            if empty:    # "any of none" must not read as "no bound": the scope would fail open
                raise InvalidQueryError(f"scope {empty[0]!r} is an empty list; a scope bounds every event, "
                                        "so name at least one value (leave scope out for no bound)")
            scope = Filters.from_dict(scope)
        if scope is not None and scope == Filters():   # {} names no key: no scope, as absent or null
            scope = None
        return cls(scope, _principals(principals))

    @property
    def restricts(self) -> bool:
        return self.scope is not None or self.principals is not None

    def to_msg(self) -> dict:
        """Wire form (shard requests)."""
        scope = None if self.scope is None else self.scope.to_dict()
        return {"scope": scope, "principals": None if self.principals is None else list(self.principals)}

    @classmethod
    def from_msg(cls, m: Optional[Mapping]) -> "View":
        m = m or {}
        return cls.make(m.get("scope"), m.get("principals"))

    def hidden(self, shard, seg) -> Optional[BitMap]:
        """Local rows of `seg` (a segment of `shard`) this view hides, or None when none."""
        out: Optional[BitMap] = None
        if self.principals is not None:
            marker = shard.entity_ids([ACL_ANY])
            if marker:
                restricted = seg.entity_rows(marker[0])
                if len(restricted):
                    granted = shard.entity_ids([ACL + p for p in self.principals])
                    seen = BitMap.union(*(seg.entity_rows(e) for e in granted)) if granted else BitMap()
                    out = restricted - seen
        if self.scope is not None:
            s = self.scope
            resolved = ((shard.entity_ids(s.entities_any), shard.entity_ids(s.entities_all),
                         shard.codes(s.sources, shard.sources), shard.codes(s.kinds, shard.kinds))
                        if s.has_bitmap_filters else ([], [], [], []))
            a = segment_allowed(seg, s, *resolved)
            inside = a.bitmap if a.bitmap is not None else BitMap(range(a.lo, a.hi))
            outside = BitMap(range(seg.n)) - inside
            out = outside if out is None else out | outside
        return out if out is not None and len(out) else None

    def hidden_mask(self, shard) -> Optional[np.ndarray]:
        """bool [shard.n]: rows this view hides (None when none)."""
        mask = None
        for seg in shard.segments:
            h = self.hidden(shard, seg)
            if h is not None:
                if mask is None:
                    mask = np.zeros(shard.n, bool)
                mask[seg.row_base + np.asarray(h.to_array(), np.int64)] = True
        return mask


def holds_acl(shard) -> bool:
    """Whether any event of the shard carries an access list (asked on every query: cached on
    the pinned shard version, which a write replaces)."""
    got = shard.__dict__.get("_holds_acl")
    if got is None:
        got = shard.__dict__["_holds_acl"] = bool(shard.entity_ids([ACL_ANY]))
    return got
