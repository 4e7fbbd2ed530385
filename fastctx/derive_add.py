"""Derived links of events added to a live index (`Index.add`): the build's rules
(`derive.title_revert_links`, `derive.actor_links`, `derive.reland_links`,
`derive.cocitation_links`, `derive.comention_links`) from each added event to the events
already in the shard and to the earlier events of its own batch.

What a later full build would add beyond these: links *from* events already indexed *to* an
added one (an event added out of time order, or a revert added after its re-land), and
`similar` links (off by default); `co_mention` weights count the events indexed when an event
is added, a build counts all. `fastctx build` or `compact --rebuild` recomputes everything.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from .columns import keys64
from .corpus import LINK_CODE, REVERT_CODES, EventBatch
from .derive import (COMENTION_PER_ENTITY, WORD, comention_top, comention_weights, rows_by_entity, title_key,
                     unlinked_reverts, words)

_RELANDS, _SAME_ACTOR = LINK_CODE["relands"], LINK_CODE["same_actor"]
_CO_MENTION, _CO_CITED, _TITLE_REVERTS = LINK_CODE["co_mention"], LINK_CODE["co_cited"], LINK_CODE["title_reverts"]


def built_actor_k(shard) -> int:
    """The `actor_k` the shard's build applied: 0 where it found its actors' closeness in time
    to be chance and derived no same-actor links (derive.corpus_params); 1 (no limit) for a
    build that did not record it."""
    return int(((shard.manifest or {}).get("params") or {}).get("actor_k", 1))


def links_at_add(shard, batch: EventBatch, params) -> tuple[list[int], list[str], list[int]]:
    """(source rows in `batch`, target ids, link type codes) of the added events' derived links."""
    out: tuple[list[int], list[str], list[int]] = ([], [], [])
    live = _Live(shard)
    if params.title_reverts:   # first: the re-lands below follow them
        _title_reverts(live, batch, params, out)
    title_reverts = [(s, to) for s, to, c in zip(*out) if c == _TITLE_REVERTS]
    if params.actor_k > 0 and built_actor_k(shard) > 0:
        _actor(live, batch, params, out)
    if params.relands:
        _relands(live, batch, out, title_reverts)
    if params.cocite_k > 0:
        _cocite(live, batch, params, out)
    if params.comention_k > 0 and params.comention_prefixes:
        _comention(live, batch, params, out)
    return out


class _Live:
    """The shard's live rows as the derivations need them (nothing is read when it is empty)."""

    def __init__(self, shard):
        self.shard = shard
        self.empty = shard is None or shard.n == 0
        if not self.empty:
            self.g, self.deleted = shard.graph, shard.deleted_mask

    def id(self, row: int) -> str:
        seg, local = self.shard.locate(int(row))
        return seg.ids[local]

    def text(self, row: int):
        seg, local = self.shard.locate(int(row))
        return seg.payload(local).get("text")

    def entity_rows(self, name: str) -> np.ndarray:
        if self.empty:
            return np.zeros(0, np.int64)
        ids = self.shard.entity_ids([name])
        if not ids:
            return np.zeros(0, np.int64)
        rows = np.asarray(self.g.ent_rows[self.g.ent_ptr[ids[0]]:self.g.ent_ptr[ids[0] + 1]], np.int64)
        return rows[self.deleted[rows] == 0]

    def links_of_type(self, code: int) -> tuple[np.ndarray, np.ndarray]:
        """(source rows, target rows) of the live links of one type."""
        if self.empty:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        g = self.g
        at = np.flatnonzero(np.asarray(g.out_type) == code)
        src = np.searchsorted(g.out_ptr, at, "right") - 1
        return src.astype(np.int64), np.asarray(g.out_dst, np.int64)[at]


def _actor(live: _Live, batch: EventBatch, params, out) -> None:
    """Each added event to the previous `actor_k` events of each of its actors within the window,
    among the shard's events and the batch's, in (time, shard rows before the batch's, row)
    order, as a build orders them; an event two of its actors share is linked once, and each
    event's links come in row order (shard rows first), as a build lists them."""
    k, window = params.actor_k, int(params.actor_window_days * 86400)
    t = np.asarray(batch.times, np.int64)
    found: dict[int, set] = {}    # batch row -> {(0: shard / 1: batch, row)}
    for name, rows in rows_by_entity(batch, params.actor_prefixes).items():
        old = live.entity_rows(name)
        old_t = np.asarray(live.g.times, np.int64)[old] if len(old) else np.zeros(0, np.int64)
        # candidates: (time, tie order, target id); the shard's rows before the batch's
        cands = [(int(tm), 0, int(r), None) for tm, r in zip(old_t.tolist(), old.tolist())]
        cands += [(int(t[j]), 1, j, batch.ids[j]) for j in rows]
        cands.sort(key=lambda c: (c[0], c[1], c[2]))
        times = np.array([c[0] for c in cands], np.int64)
        position = {c[2]: p for p, c in enumerate(cands) if c[1] == 1}
        for i in rows:
            lo = int(np.searchsorted(times, t[i] - window, "left"))
            hi = position[i]
            found.setdefault(i, set()).update((c[1], c[2]) for c in cands[max(lo, hi - k):hi])
    _emit(live, batch, found, _SAME_ACTOR, out)


def _emit(live: _Live, batch: EventBatch, found: dict, code: int, out) -> None:
    """Links of type `code` from each batch row to its targets in `found` ({row: {(0: shard /
    1: batch, target row)}}), each once, in row order (the shard's rows first), as a build
    lists an event's derived links."""
    for i in sorted(found):
        for side, r in sorted(found[i]):
            out[0].append(i)
            out[1].append(batch.ids[r] if side else live.id(r))
            out[2].append(code)


def _cocite(live: _Live, batch: EventBatch, params, out) -> None:
    """Each added event to the previous `cocite_k` events linking to one of its link targets (by
    a link of `cocite_types`): the target's live citers in the shard and the batch's, in (time,
    shard rows before the batch's, row) order, as a build orders them."""
    codes = [LINK_CODE[x] for x in params.cocite_types if x in LINK_CODE]
    if not codes:
        return
    t = np.asarray(batch.times, np.int64)
    row_of = {eid: i for i, eid in enumerate(batch.ids)}
    citers: dict[tuple, set] = {}   # ("batch", row) or ("shard", row) -> the batch rows citing it
    for j in np.flatnonzero(np.isin(np.asarray(batch.link_type), codes)).tolist():
        s, target = int(batch.link_src[j]), batch.link_to[j]
        if target in row_of:
            if row_of[target] != s:
                citers.setdefault(("batch", row_of[target]), set()).add(s)
        elif not live.empty:
            x = int(live.shard.lookup_ids(keys64([target]))[0])
            if x >= 0:
                citers.setdefault(("shard", x), set()).add(s)
    found: dict[int, set] = {}    # batch row -> {(0: shard / 1: batch, row)}
    for (where, x), rows in citers.items():
        cands = [(int(t[j]), 1, j) for j in rows]
        if where == "shard":   # the target's live in-links of those types
            g = live.g
            lo, hi = int(g.in_ptr[x]), int(g.in_ptr[x + 1])
            src = np.asarray(g.in_src[lo:hi], np.int64)[np.isin(np.asarray(g.in_type[lo:hi]), codes)]
            src = np.unique(src[live.deleted[src] == 0])
            cands += [(int(g.times[r]), 0, int(r)) for r in src.tolist()]
        cands.sort()
        for p, (_, side, i) in enumerate(cands):
            if side != 1:
                continue
            found.setdefault(i, set()).update((side_d, d) for _, side_d, d in cands[max(0, p - params.cocite_k):p])
    _emit(live, batch, found, _CO_CITED, out)


def _title_reverts(live: _Live, batch: EventBatch, params, out) -> None:
    """Each added `Revert "T"` event without a reverts link to the latest earlier event titled T,
    among the batch's and the shard's. The shard's are found through the word vocabulary (the
    events holding every word of T, then their titles, latest first): with `text_words` off,
    among the batch's only."""
    wanted = unlinked_reverts(batch)
    if not wanted:
        return
    t = np.asarray(batch.times, np.int64)
    keys, mine = set(wanted.values()), {}
    for i, text in enumerate(batch.texts):
        k = title_key(text) if text else None
        if k in keys:
            mine.setdefault(k, []).append((int(t[i]), i))
    for r, key in sorted(wanted.items()):
        # candidates in (time, shard rows before the batch's, row) order, as a build orders them
        cands = [(tm, 1, i) for tm, i in mine.get(key, ()) if (tm, i) < (int(t[r]), r)]
        x = _latest_titled(live, key, int(t[r])) if params.text_words else None
        if x is not None:
            cands.append((int(live.g.times[x]), 0, x))
        if cands:
            _, side, y = max(cands)
            out[0].append(r)
            out[1].append(batch.ids[y] if side else live.id(y))
            out[2].append(_TITLE_REVERTS)


def _latest_titled(live: _Live, key: str, before: int) -> int | None:
    """The shard's latest live row at or before `before` (time) whose title is `key`."""
    if live.empty:
        return None
    holders = sorted((live.entity_rows(WORD + w) for w in words(key)), key=len)
    if not holders:
        return None
    rows = holders[0]
    for h in holders[1:]:        # the rows holding every word of the title
        rows = np.intersect1d(rows, h, assume_unique=True)
    if not len(rows):
        return None
    times = np.asarray(live.g.times, np.int64)[rows]
    for j in np.lexsort((-rows, -times)).tolist():
        if times[j] <= before and title_key(live.text(int(rows[j]))) == key:
            return int(rows[j])
    return None


def _relands(live: _Live, batch: EventBatch, out, title_reverts=()) -> None:
    """Each (revert, reverted event) pair, the revert already indexed or in the batch, whose
    reverted event's title an added event repeats later, and which no earlier event has
    re-landed yet, is re-landed by the first such added event: linked to the revert, or to the
    reverted event when the revert backed out several (as `derive.reland_links`)."""
    keys = [title_key(x) for x in batch.texts]
    if not any(keys):
        return
    t = np.asarray(batch.times, np.int64)
    row_of = {eid: i for i, eid in enumerate(batch.ids)}
    undone = []   # (revert time, revert id, reverted id, reverted event's title), each pair once
    src, dst = (np.concatenate(x) for x in zip(*(live.links_of_type(c) for c in REVERT_CODES)))
    landed_src, landed = live.links_of_type(_RELANDS)
    first_reland = {}   # link target id -> time of its first re-land in the shard
    for s, d in zip(landed_src.tolist(), landed.tolist()):
        first_reland[live.id(d)] = min(first_reland.get(live.id(d), 1 << 62), int(live.g.times[s]))
    for r, x in sorted(set(zip(src.tolist(), dst.tolist()))):
        undone.append((int(live.g.times[r]), live.id(r), live.id(x), title_key(live.text(x))))
    at = np.flatnonzero(np.isin(np.asarray(batch.link_type), REVERT_CODES)).tolist()
    for r, target in [(int(batch.link_src[j]), batch.link_to[j]) for j in at] + list(title_reverts):
        x = row_of.get(target)
        if x is not None:
            title = keys[x]
        else:
            rows = live.shard.lookup_ids(keys64([target])) if not live.empty else [-1]
            if not (len(rows) and int(rows[0]) >= 0):
                continue   # a revert of an event not indexed re-lands nothing
            title = title_key(live.text(int(rows[0])))
        undone.append((int(t[r]), batch.ids[r], target, title))
    undone = sorted(set(undone))
    n_undone = Counter(rid for _, rid, _, _ in undone)
    by_title: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        if k:
            by_title.setdefault(k, []).append(i)
    for rt, rid, xid, title in undone:
        if not title or title not in by_title:
            continue
        target = rid if n_undone[rid] == 1 else xid
        later = [(int(t[i]), i) for i in by_title[title] if batch.ids[i] not in (rid, xid) and int(t[i]) > rt]
        if later:
            tm, i = min(later)
            landed_at = first_reland.get(target)
            if landed_at is None or tm < landed_at:
                out[0].append(i)
                out[1].append(target)
                out[2].append(_RELANDS)


def _comention(live: _Live, batch: EventBatch, params, out) -> None:
    """Each added event to the `comention_k` earlier events (the shard's and the batch's) that
    share the most rarity-weighted files with it; frequencies count both."""
    t = np.asarray(batch.times, np.int64)
    by_name = rows_by_entity(batch, params.comention_prefixes)
    if not by_name:
        return
    n_old = 0 if live.empty else live.shard.n_live
    n = n_old + len(batch)
    base = 0 if live.empty else live.shard.n        # batch row j is key base + j: after every row
    holders: dict[str, tuple] = {}
    for name, rows in by_name.items():
        old = live.entity_rows(name)
        w = comention_weights(np.array([len(old) + len(rows)]), n, params.comention_max_share)[0]
        if w <= 0:
            continue
        times = np.concatenate([np.asarray(live.g.times, np.int64)[old] if len(old) else np.zeros(0, np.int64), t[rows]])
        keys = np.concatenate([old, base + np.asarray(rows, np.int64)])
        order = np.lexsort((keys, times))
        holders[name] = (times[order], keys[order], float(w))
    window, scale = int(params.comention_window_days * 86400), int(params.comention_scale_days * 86400)
    for i in range(len(batch)):
        mine = [holders[e] for e in dict.fromkeys(batch.entities(i)) if e in holders]
        if not mine:
            continue
        for key in comention_top(int(t[i]), base + i, mine, params.comention_k, window, scale,
                                 COMENTION_PER_ENTITY).tolist():
            out[0].append(i)
            out[1].append(batch.ids[key - base] if key >= base else live.id(key))
            out[2].append(_CO_MENTION)
