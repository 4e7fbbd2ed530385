"""The supersession overlay: for every event, which later event stopped it being current, and when.

Two sources of evidence: `supersedes`/`reverts` links and the derived `title_reverts` and
`relands` links (the link's source supersedes its target at the source's time; a re-land
supersedes the revert it undoes), and implicit slot supersession (consecutive events of a slot
kind that mention the same slot entity, e.g. successive `decision` events on `decision:card-vault`).
When several events supersede one, the earliest wins. A revert of a revert makes the original's
line current again through the newest event, which `current` answers follow to its end.

A re-land linked to the event it re-lands rather than to the revert (the revert backed out
several events: derive.reland_links) takes that revert's place: the event's reverts up to the
re-land are dropped, so the event goes straight to its re-land and the revert stays current for
the events it backed out that were not re-landed. (As of a time between the revert and the
re-land, such an event is then still the current one.)
"""
from __future__ import annotations

import numpy as np

from .corpus import LINK_TYPES, REVERT_CODES

_RELANDS = LINK_TYPES.index("relands")
_EXPLICIT = (LINK_TYPES.index("supersedes"), *REVERT_CODES, _RELANDS)


def supersession_overlay(times: np.ndarray, link_src: np.ndarray, link_dst: np.ndarray,
                         link_type: np.ndarray, ent_ptr: np.ndarray, ent_rows: np.ndarray,
                         slot_entities: np.ndarray, slot_kind_row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(superseded_by, superseded_at) int64 per row, -1 where the event is still current.

    `ent_ptr`/`ent_rows` are time-sorted postings; `slot_entities` the ids of slot entities;
    `slot_kind_row[r]` whether row r is of a slot kind."""
    n = len(times)
    explicit = np.isin(link_type, _EXPLICIT)
    src, dst = np.asarray(link_src[explicit], np.int64), np.asarray(link_dst[explicit], np.int64)
    typ = np.asarray(link_type)[explicit]
    keep = ~replaced_reverts(np.asarray(times, np.int64), src, dst, typ, src[np.isin(typ, REVERT_CODES)])
    old, new = [dst[keep]], [src[keep]]
    if len(slot_entities):
        ent = np.repeat(slot_entities, np.diff(ent_ptr)[slot_entities])
        rows = np.concatenate([np.asarray(ent_rows[ent_ptr[e]:ent_ptr[e + 1]], np.int64) for e in slot_entities])
        keep = slot_kind_row[rows]
        ent, rows = ent[keep], rows[keep]
        same = ent[1:] == ent[:-1]  # postings are time-sorted: each is superseded by the next
        old.append(rows[:-1][same])
        new.append(rows[1:][same])
    return earliest_superseder(times, np.concatenate(old), np.concatenate(new), 0, n)


def replaced_reverts(times: np.ndarray, new: np.ndarray, old: np.ndarray, typ: np.ndarray,
                     reverters: np.ndarray) -> np.ndarray:
    """Which (new supersedes old) pairs, of link types `typ`, are reverts of an event that a
    re-land linked to that event itself re-lands no earlier than the revert. A re-land links to
    the event rather than to the revert when its target is no revert (not in `reverters`, the
    rows with a reverts link out)."""
    reverts = np.isin(typ, REVERT_CODES)
    direct = (typ == _RELANDS) & ~np.isin(old, reverters)
    if not direct.any():
        return np.zeros(len(old), bool)
    d_old, d_t = old[direct], times[new[direct]]
    o = np.lexsort((d_t, d_old))
    d_old, d_t = d_old[o], d_t[o]
    last = np.r_[d_old[1:] != d_old[:-1], True]
    u_old, u_t = d_old[last], d_t[last]                 # the latest direct re-land of each event
    pos = np.minimum(np.searchsorted(u_old, old), len(u_old) - 1)
    return reverts & (u_old[pos] == old) & (times[new] <= u_t[pos])


def earliest_superseder(times: np.ndarray, old: np.ndarray, new: np.ndarray, r0: int,
                        size: int) -> tuple[np.ndarray, np.ndarray]:
    """(superseded_by, superseded_at) of rows r0 .. r0 + size - 1 from candidate pairs (`new`
    supersedes `old`, rows in that range): the earliest candidate not older than the row wins,
    ties by row; -1 where none."""
    old, new = np.asarray(old, np.int64), np.asarray(new, np.int64)
    at = np.asarray(times[new], np.int64)
    valid = at >= times[old]
    old, new, at = old[valid], new[valid], at[valid]
    order = np.lexsort((new, at, old))
    old, new, at = old[order], new[order], at[order]
    first = np.ones(len(old), bool)
    first[1:] = old[1:] != old[:-1]
    by, when = np.full(size, -1, np.int64), np.full(size, -1, np.int64)
    by[old[first] - r0] = new[first]
    when[old[first] - r0] = at[first]
    return by, when
