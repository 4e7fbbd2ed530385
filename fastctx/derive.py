"""Entities derived from an event's own content, at build and at add, deterministic, no model.

Three kinds, each a reserved entity type starting with `~` (a user entity may not start with `~`):

- `~t:NAME`  identifier-like terms of the text: code identifiers (snake_case, camelCase,
             CONSTANT_CASE), dotted and qualified names, call-like names (`f()`), file paths,
             exception and error names, config keys (`a.b=`, `--flag`), ticket-like ids
             (`ABC-123`, `#123`), version strings, quoted names, and the people a message
             credits in a trailer (`Reported-by: Jane Doe`). Two events naming the same
             rare thing connect through it, weighted by rarity like any entity.
- `~w:WORD`  the event's words (text and the names of its entities), lower-cased, crudely
             stemmed, stop words dropped: the vocabulary the query's own words are matched
             against (lexical seeds). Never walked by expansion (a shared word is no relation).
- `~acl:P`   one per principal of the event's access list, plus `~acl:*` on every event that
             has a non-empty access list; never walked: they exist so that roaring bitmaps answer
             "who may see which rows" (see `view.py`).

`ENT_FLAGS` bits record what an entity is for: slot (implicit supersession), not walked,
lexical (matched against query words).
"""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import TYPE_CHECKING, Iterable, Optional, Sequence

import numpy as np

if TYPE_CHECKING:   # corpus imports this module
    from .corpus import EventBatch

FLAG_SLOT = 1        # implicit supersession slot (e.g. decision:...)
FLAG_NO_WALK = 2     # never followed by expansion (words, access lists)
FLAG_LEXICAL = 4     # matched against the query's words
FLAG_ACTOR = 8       # a person, user, author or speaker (BuildParams.actor_prefixes)

TERM, WORD, ACL = "~t:", "~w:", "~acl:"
ACL_ANY = ACL + "*"          # on every event with a non-empty access list
RESERVED_PREFIX = "~"

_MAX_TEXT = 20_000           # characters of text looked at per event (bounds build cost)
_MAX_TERMS = 64              # identifier terms kept per event
_MAX_WORDS = 256             # distinct words kept per event

_STOP = frozenset("""
a about above after again against all am an and any are aren't as at be because been before being below
between both but by can can't cannot could couldn't did didn't do does doesn't doing don't down during each
few for from further had hadn't has hasn't have haven't having he he'd he'll he's her here here's hers herself
him himself his how how's i i'd i'll i'm i've if in into is isn't it it's its itself let's me more most
mustn't my myself no nor not of off on once only or other ought our ours ourselves out over own same shan't
she she'd she'll she's should shouldn't so some such than that that's the their theirs them themselves then
there there's these they they'd they'll they're they've this those through to too under until up very was
wasn't we we'd we'll we're we've were weren't what what's when when's where where's which while who who's
whom why why's with won't would wouldn't you you'd you'll you're you've your yours yourself yourselves
also just get got like one two yes yeah oh ok okay really well much many thing things will shall may might
""".split())

_WORD_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9']*")
_TERM_RES = (
    # people a message credits in a trailer ("Reported-by: Jane Doe <jd@x.org>", "Co-authored-by:",
    # "Reviewed-by:"; not the author's own "Signed-off-by:"): the name, as one term
    re.compile(r"(?im)^[ \t]*(?!signed-off-by)[a-z]+(?:-[a-z]+)*-by:[ \t]*([^<>\n]*[^\s<>])[ \t]*(?:<[^>\n]*>)?[ \t]*$"),
    re.compile(r"(?:[A-Za-z0-9_.-]+/)+[A-Za-z0-9_.-]+"),                     # paths a/b/c.py
    re.compile(r"\b[A-Za-z_][A-Za-z0-9_]*(?:(?:\.|::)[A-Za-z_][A-Za-z0-9_]*)+\b"),  # dotted / qualified
    re.compile(r"\b[A-Za-z]*_[A-Za-z0-9_]+\b"),                                # snake_case, CONSTANT_CASE
    re.compile(r"\b[a-z]+[A-Z][A-Za-z0-9]*\b"),                                # camelCase
    re.compile(r"\b[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]*)+\b"),                      # PascalCase, FooError
    re.compile(r"\b[A-Za-z_][A-Za-z0-9_]*(?=\()"),                             # call-like f(
    re.compile(r"\b[A-Z][A-Z0-9]+-\d+\b"),                                     # ABC-123
    re.compile(r"(?<![\w&])#\d{2,}\b"),                                        # #123
    re.compile(r"\bv?\d+\.\d+(?:\.\d+)+[a-z0-9]*\b"),                          # versions 1.2.3
    re.compile(r"--[a-z][a-z0-9-]+"),                                          # --flags
    re.compile(r"[`'\"]([A-Za-z_][\w.:/-]{2,60})[`'\"]"),                      # quoted names
)


def stem(word: str) -> str:
    """A crude, deterministic English stem: enough to match "charges"/"charge", "retried"/"retry"."""
    w = word.lower()
    if w.endswith("'s"):
        w = w[:-2]
    w = w.strip("'")
    if len(w) > 5 and w.endswith("ing"):
        w = w[:-3]
    elif len(w) > 4 and w.endswith("ied"):
        w = w[:-3] + "y"
    elif len(w) > 4 and w.endswith("ed"):
        w = w[:-2]
    elif len(w) > 4 and w.endswith("ies"):
        w = w[:-3] + "y"
    elif len(w) > 3 and w.endswith("es") and w[-3] in "sxz":
        w = w[:-2]
    elif len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
        w = w[:-1]
    return w


def words(text: str) -> list[str]:
    """Distinct stemmed content words of `text`, in first-seen order."""
    out: dict[str, None] = {}
    for m in _WORD_RE.finditer(text[:_MAX_TEXT]):
        raw = m.group(0).lower()
        if raw in _STOP or len(raw) < 2:
            continue
        w = stem(raw)
        if len(w) >= 2 and w not in _STOP:
            out.setdefault(w)
            if len(out) >= _MAX_WORDS:
                break
    return list(out)


def terms(text: str) -> list[str]:
    """Distinct identifier-like terms of `text` (case kept, trailing punctuation dropped)."""
    text = text[:_MAX_TEXT]
    out: dict[str, None] = {}
    for rx in _TERM_RES:
        for m in rx.finditer(text):
            t = (m.group(1) if rx.groups else m.group(0)).strip(".:/-")
            if len(t) >= 3 and not t.isdigit():
                out.setdefault(t)
            if len(out) >= _MAX_TERMS:
                return list(out)
    return list(out)


def query_words(text: Optional[str]) -> list[str]:
    """The `~w:`/`~t:` entity names a query's text can match."""
    if not text:
        return []
    return [WORD + w for w in words(text)] + [TERM + t for t in terms(text)]


def event_derived(text: Optional[str], entities: Sequence[str], acl: Optional[Sequence[str]],
                  with_terms: bool = True, with_words: bool = True) -> list[str]:
    """Derived entity names of one event (deterministic; no duplicates; none equal to a user entity)."""
    out: list[str] = []
    if text and with_terms:
        out += [TERM + t for t in terms(text)]
    if with_words:
        bag = " ".join([text or ""] + [e.split(":", 1)[-1].replace("_", " ").replace("-", " ") for e in entities])
        out += [WORD + w for w in words(bag)]
    if acl:
        out += [ACL_ANY] + [ACL + p for p in dict.fromkeys(acl)]
    return list(dict.fromkeys(out))


def entity_flags(names: Iterable[str], slot_prefixes: Sequence[str], actor_prefixes: Sequence[str] = ()) -> np.ndarray:
    """uint8 FLAG_* bits per entity name."""
    slot, actor = tuple(slot_prefixes), tuple(actor_prefixes)
    out = []
    for nm in names:
        nm = str(nm)
        f = FLAG_SLOT if slot and nm.startswith(slot) else 0
        if actor and nm.startswith(actor):
            f |= FLAG_ACTOR
        if nm.startswith(WORD):
            f |= FLAG_NO_WALK | FLAG_LEXICAL
        elif nm.startswith(TERM):
            f |= FLAG_LEXICAL
        elif nm.startswith(ACL):
            f |= FLAG_NO_WALK
        out.append(f)
    return np.asarray(out, np.uint8)


def event_acl(attrs: Optional[dict]) -> Optional[list]:
    """The access list an event carries (validated by the corpus reader), or None."""
    if not attrs:
        return None
    acl = attrs.get("acl")
    return list(acl) if acl else None


def with_derived(batch, params=None):
    """`batch` with each event's derived entities appended to its entity list (a new batch sharing
    every other column). Payloads keep the user's entities: `compute_segment` stores those.
    `params` (BuildParams): `text_terms` / `text_words` switch those kinds off."""
    terms_on = getattr(params, "text_terms", True)
    words_on = getattr(params, "text_words", True)
    from .corpus import EventBatch
    n = len(batch)
    names: list = []
    ptr = np.zeros(n + 1, np.int64)
    for i in range(n):
        own = batch.entity_names[int(batch.entity_ptr[i]):int(batch.entity_ptr[i + 1])]
        names.extend(own)
        names.extend(event_derived(batch.texts[i], own, event_acl(batch.attrs[i]), terms_on, words_on))
        ptr[i + 1] = len(names)
    return EventBatch(ids=batch.ids, times=batch.times, tokens=batch.tokens, sources=batch.sources,
                      kinds=batch.kinds, entity_ptr=ptr, entity_names=names, link_src=batch.link_src,
                      link_to=batch.link_to, link_type=batch.link_type, texts=batch.texts, attrs=batch.attrs,
                      vectors=batch.vectors)


def bm25(postings: Sequence[np.ndarray], dfs: Sequence[int], n: int, doc_len: np.ndarray, avg_len: float,
         k1: float, b: float) -> tuple[np.ndarray, np.ndarray]:
    """BM25 with presence only (tf = 1) over the postings of the query's matched words/terms, in
    the query's order: (rows ascending, scores). `dfs` and `n` are corpus-wide (a shard passes
    the global figures, so every layout sums the same terms in the same order). Words in more
    than half of the events select nothing and are skipped. `doc_len[r]`: derived entities of r."""
    rows_l, w_l = [], []
    for rows, df in zip(postings, dfs):
        if df <= 0 or df > 0.5 * n or not len(rows):
            continue
        rows = np.asarray(rows, np.int64)
        idf = math.log(1.0 + (n - df + 0.5) / (df + 0.5))
        norm = 1.0 - b + b * (np.asarray(doc_len, np.float64)[rows] / max(avg_len, 1.0))
        rows_l.append(rows)
        w_l.append(idf * (k1 + 1.0) / (1.0 + k1 * norm))
    if not rows_l:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    rows, inv = np.unique(np.concatenate(rows_l), return_inverse=True)
    return rows, np.bincount(inv.ravel(), weights=np.concatenate(w_l))


def similarity_links(times: np.ndarray, vectors: np.ndarray, k: int, window_s: int, z: float,
                     max_candidates: int, block: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """(src, dst) rows of derived `similar` links, dst earlier than src: each event's `k` most
    similar earlier events within `window_s`, kept only where the similarity stands out from the
    event's candidates by `z` standard deviations (a relative floor: it adapts to the encoder's
    scale). Exact, in time-sorted blocks (one matrix product per block against the window
    before it, at most `max_candidates` rows). Deterministic: ties by row."""
    n = len(times)
    if k <= 0 or n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.lexsort((np.arange(n), times))
    t = np.asarray(times, np.int64)[order]
    src_l, dst_l = [], []
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        c_lo = max(0, int(np.searchsorted(t, t[lo] - window_s, "left")), hi - max_candidates)
        if c_lo >= hi - 1:
            continue
        q = np.asarray(vectors[order[lo:hi]], np.float32)
        c = np.asarray(vectors[order[c_lo:hi]], np.float32)
        sims = q @ c.T                                             # [block, window]
        cand_pos = np.arange(c_lo, hi)
        own = np.arange(lo, hi)[:, None]
        earlier = (cand_pos[None, :] < own) & (t[cand_pos][None, :] >= t[lo:hi][:, None] - window_s)
        cnt = earlier.sum(axis=1)
        if not cnt.any():
            continue
        s = np.where(earlier, sims, 0.0)
        mean = s.sum(axis=1) / np.maximum(cnt, 1)
        var = np.where(earlier, (sims - mean[:, None]) ** 2, 0.0).sum(axis=1) / np.maximum(cnt, 1)
        floor = mean + z * np.sqrt(var)
        masked = np.where(earlier, sims, -np.inf)
        kk = min(k, masked.shape[1])
        top = np.argpartition(-masked, kk - 1, axis=1)[:, :kk]
        for i in range(hi - lo):
            if cnt[i] < 8:            # too few earlier events to tell what stands out
                continue
            cand = top[i][np.isfinite(masked[i, top[i]]) & (masked[i, top[i]] >= floor[i])]
            for j in cand[np.lexsort((cand, -masked[i, cand]))].tolist():
                src_l.append(order[lo + i])
                dst_l.append(order[c_lo + j])
    return np.asarray(src_l, np.int64), np.asarray(dst_l, np.int64)


def rows_by_entity(batch, prefixes: Sequence[str]) -> dict[str, list[int]]:
    """Each entity name starting with one of `prefixes` -> the rows of `batch` that mention it,
    ascending, each once."""
    pre = tuple(prefixes)
    out: dict[str, list[int]] = {}
    if not pre:
        return out
    for i in range(len(batch)):
        for e in dict.fromkeys(batch.entity_names[int(batch.entity_ptr[i]):int(batch.entity_ptr[i + 1])]):
            if e.startswith(pre):
                out.setdefault(e, []).append(i)
    return out


def actor_links(batch, k: int, window_s: int, prefixes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(src, dst) rows of derived `same_actor` links: each event to the previous `k` events of
    each of its actors within `window_s`. "Previous" is in (time, row) order, so events with one
    timestamp (a rebased series of commits, turns stamped with their session's time) link in
    input order rather than not at all. Deterministic."""
    if k <= 0 or not prefixes:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    t = np.asarray(batch.times, np.int64)
    pairs: set = set()
    for rows in rows_by_entity(batch, prefixes).values():
        rows = sorted(rows, key=lambda r: (int(t[r]), r))
        for a, r in enumerate(rows):
            taken = 0
            for b in range(a - 1, -1, -1):
                d = rows[b]
                if t[r] - t[d] > window_s or taken >= k:
                    break
                pairs.add((r, d))
                taken += 1
    if not pairs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    src, dst = np.asarray(sorted(pairs), np.int64).T
    return src, dst


def actor_mentions(batch, prefixes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(actor code, row) of each distinct mention of an entity starting with one of `prefixes`."""
    by_actor = rows_by_entity(batch, prefixes)
    counts = [len(rows) for rows in by_actor.values()]
    actor = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    rows = np.fromiter((r for rows in by_actor.values() for r in rows), np.int64, int(sum(counts)))
    return actor, rows


def _within(actor: np.ndarray, t: np.ndarray, w: int) -> np.ndarray:
    """Per mention (sorted by actor, then time t >= 0), how many other mentions of its actor lie
    within `w` of it."""
    base = int(t.max()) + 2 * w + 1 if len(t) else 1
    if (int(actor.max()) + 1) * base < (1 << 62):    # one sorted key: actors stay apart
        key = actor * base + t
        return np.searchsorted(key, key + w, "right") - np.searchsorted(key, key - w, "left") - 1
    out = np.zeros(len(t), np.int64)
    cut = np.flatnonzero(np.diff(actor)) + 1
    for lo, hi in zip(np.r_[0, cut].tolist(), np.r_[cut, len(t)].tolist()):
        s = t[lo:hi]
        out[lo:hi] = np.searchsorted(s, s + w, "right") - np.searchsorted(s, s - w, "left") - 1
    return out


def actor_excess(times: np.ndarray, actor: np.ndarray, row: np.ndarray, window_s: int) -> float:
    """The share of the actors' closeness in time that chance does not explain, in [0, 1]: how
    far two events of one actor within `window_s` of each other are a sitting (one piece of
    work, one conversation) rather than a busy person's coincidence. Over the mentions (`actor`
    code, `row`) and every row's time (`times`), two readings of chance:

    * steady work: each actor's events spread evenly over its own active span, so a share
      1 - exp(-(n - 1) window / span) of its consecutive events are closer than the window;
    * busy hours: actors drawn at random by their share of all events, so the events within the
      window of one of its events are its own at that share (the times, and their bursts, kept).

    Each gives (observed - expected) / observed, the observed count read two standard deviations
    high (a Poisson count's), so a corpus too small to tell sittings from chance keeps its links;
    the larger counts, since each explains away what the other cannot (a speaker in a few long
    conversations is "steady" at a rate that makes every gap short; the main author of a history
    owns most busy hours). 1 where no two events of one actor fall within the window."""
    times = np.asarray(times, np.int64)
    actor, row = np.asarray(actor, np.int64), np.asarray(row, np.int64)
    if not len(actor) or len(times) < 2:
        return 1.0
    t0, w = int(times.min()), max(int(window_s), 0)
    t = times[row] - t0
    order = np.lexsort((t, actor))
    actor, t = actor[order], t[order]
    n_of = np.bincount(actor)
    k = np.maximum(n_of - 1, 0).astype(np.float64)
    # steady work: each actor's consecutive gaps against an even spread over its span
    close = float((np.diff(t)[actor[1:] == actor[:-1]] <= w).sum())
    first = np.searchsorted(actor, np.arange(len(n_of)))
    last = np.maximum(first + n_of - 1, first)
    span = np.maximum(t[np.minimum(last, len(t) - 1)] - t[np.minimum(first, len(t) - 1)], max(w, 1))
    expected = float((k * -np.expm1(-k * w / span.astype(np.float64))).sum())
    steady = _beyond(close, expected)
    # busy hours: each mention's own events within the window, against all events within it
    observed = float(_within(actor, t, w).sum())
    if not observed:
        return 1.0
    all_t = np.sort(times - t0)
    near = np.searchsorted(all_t, t + w, "right") - np.searchsorted(all_t, t - w, "left") - 1
    busy = _beyond(observed, float((near * k[actor]).sum()) / (len(times) - 1))
    return float(min(max(steady, busy), 1.0))


def _beyond(observed: float, expected: float) -> float:
    """The share of an observed count beyond its chance expectation, the count read two
    standard deviations high; 0 for a count of 0."""
    high = observed + 2.0 * math.sqrt(observed)
    return max(high - expected, 0.0) / high if high > 0 else 0.0


def corpus_params(batch, params):
    """(`params` as a build of `batch` applies them, the actors' `actor_excess` or None where no
    same-actor links are asked for): `actor_k` 0 where the excess is below `actor_min_excess`,
    so the build derives no same-actor links, and the manifest records it for later adds.
    Measured: generated corpora whose people act at random times 0.00-0.10 at 1e5 events,
    0.09-0.27 at 1e4; ten git histories 0.89-0.98; chat turns 0.54 (bench/README.md, "Same-actor
    links only where people work in sittings")."""
    from dataclasses import replace
    if params.actor_k <= 0 or not params.actor_prefixes or len(batch) < 2:
        return params, None
    actor, row = actor_mentions(batch, params.actor_prefixes)
    excess = actor_excess(batch.times, actor, row, int(params.actor_window_days * 86400))
    return (replace(params, actor_k=0) if excess < params.actor_min_excess else params), excess


def cocitation_links(batch, k: int, types: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(src, dst) rows of derived `co_cited` links: each event to the previous `k` events, in
    (time, row) order, that link to one of the events it links to by a link of one of `types`
    (two follow-ups to one commit, two fixes of one bug). "What led to X" then reaches the
    other work on X's causes, which a walk back in time along the links cannot: from the common
    cause, the sibling lies forward. Targets outside the batch are not seen. Deterministic."""
    from .corpus import LINK_CODE
    codes = [LINK_CODE[x] for x in types if x in LINK_CODE]
    if k <= 0 or not codes or not len(batch.link_src):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    row_of = {eid: i for i, eid in enumerate(batch.ids)}
    t = np.asarray(batch.times, np.int64)
    citers: dict[int, list[int]] = {}
    for j in np.flatnonzero(np.isin(np.asarray(batch.link_type), codes)).tolist():
        d, s = row_of.get(batch.link_to[j]), int(batch.link_src[j])
        if d is not None and d != s:
            citers.setdefault(d, []).append(s)
    pairs: set = set()
    for rows in citers.values():
        rows = sorted(set(rows), key=lambda r: (int(t[r]), r))
        for a, r in enumerate(rows):
            for d in rows[max(0, a - k):a]:
                pairs.add((r, d))
    if not pairs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    src, dst = np.asarray(sorted(pairs), np.int64).T
    return src, dst


COMENTION_PER_ENTITY = 256   # holders of one file considered per event: bounds the cost of hubs


def comention_weights(df: np.ndarray, n: int, max_share: float) -> np.ndarray:
    """Per file (an entity named by `comention_prefixes`), what sharing it says for `co_mention`
    links: log(n / df) when 2 to `max_share` * n of the `n` events hold it; 0 for the rest."""
    df = np.asarray(df, np.float64)
    ok = (df >= 2) & (df <= max(2.0, max_share * n))
    return np.where(ok, np.log(max(n, 1) / np.maximum(df, 1.0)), 0.0)


def comention_top(t: int, key: int, holders, k: int, window_s: int, scale_s: int, per_entity: int) -> np.ndarray:
    """The `k` keys sharing the most weight with the event (`t`, `key`): `holders` lists, per
    entity of the event, (holder times, holder keys, weight), sorted by (time, key). Each entity
    contributes its `per_entity` holders closest before the event in (time, key) order (equal
    times: smaller keys are earlier), within `window_s`; a key's score is its summed weight over
    1 + dt / `scale_s`. Ties by key."""
    keys, ws, ts = [], [], []
    for times, hkeys, w in holders:
        end = int(np.searchsorted(times, t, "left"))
        end += int(np.searchsorted(hkeys[end:int(np.searchsorted(times, t, "right"))], key, "left"))
        start = max(int(np.searchsorted(times, t - window_s, "left")), end - per_entity)
        if end > start:
            keys.append(hkeys[start:end]); ws.append(np.full(end - start, w)); ts.append(times[start:end])
    if not keys:
        return np.zeros(0, np.int64)
    uniq, first, inv = np.unique(np.concatenate(keys), return_index=True, return_inverse=True)
    score = np.bincount(inv.ravel(), weights=np.concatenate(ws)) / (1.0 + (t - np.concatenate(ts)[first]) / float(scale_s))
    return uniq[np.lexsort((uniq, -score))[:k]]


def comention_links(batch, k: int, window_s: int, scale_s: int, max_share: float,
                    prefixes: Sequence[str], per_entity: int = COMENTION_PER_ENTITY) -> tuple[np.ndarray, np.ndarray]:
    """(src, dst) rows of derived `co_mention` links: each event to the `k` earlier events within
    `window_s` that share the most rarity-weighted files with it, closeness in time counting
    (`comention_weights`, `comention_top`). Two commits that touch the same mid-frequency files
    in one week are usually one piece of work, though each file alone is a hub. Deterministic."""
    n = len(batch)
    if k <= 0 or n < 2 or not prefixes:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    files = rows_by_entity(batch, prefixes)
    if not files:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    df = np.array([len(rows) for rows in files.values()], np.int64)
    fid = np.repeat(np.arange(len(files), dtype=np.int64), df)
    rows = np.fromiter((r for rows in files.values() for r in rows), np.int64, int(df.sum()))
    t = np.asarray(batch.times, np.int64)
    hold = comention_holders(t, fid, rows, len(files), n, max_share)
    sources = np.unique(hold["by_row"][:, 1])
    return comention_rank(sources, t[sources], hold, k, window_s, scale_s, per_entity)


def comention_holders(t: np.ndarray, fid: np.ndarray, rows: np.ndarray, n_files: int, n: int,
                      max_share: float) -> dict:
    """What `comention_rank` ranks against, from the file mentions (file id `fid` of event
    `rows`, each pair once) of `n` events at times `t`: per file its weight and its holders in
    (time, row) order (CSR `ptr` over `time`/`row`), and the mentions of weighted files by row
    (`by_row`: (file, row) pairs sorted by row)."""
    weight = comention_weights(np.bincount(fid, minlength=n_files), n, max_share)
    pairs = np.stack([fid, rows], 1)
    pairs = pairs[weight[pairs[:, 0]] > 0]
    order = np.lexsort((pairs[:, 1], t[pairs[:, 1]], pairs[:, 0]))      # holders in time order
    h_ent, h_row = pairs[order, 0], pairs[order, 1]
    ptr = np.zeros(n_files + 1, np.int64)
    np.cumsum(np.bincount(h_ent, minlength=n_files), out=ptr[1:])
    return dict(time=t[h_row], row=h_row, ptr=ptr, weight=weight,
                by_row=pairs[np.lexsort((pairs[:, 0], pairs[:, 1]))])


def comention_rank(rows: np.ndarray, times: np.ndarray, hold: dict, k: int, window_s: int, scale_s: int,
                   per_entity: int = COMENTION_PER_ENTITY) -> tuple[np.ndarray, np.ndarray]:
    """(src, dst) `co_mention` links of the events `rows` (at `times`): `comention_top` of each
    against the holder index `hold` (`comention_holders`)."""
    h_time, h_row, h_ptr, weight, by_row = hold["time"], hold["row"], hold["ptr"], hold["weight"], hold["by_row"]
    starts = np.searchsorted(by_row[:, 1], rows, "left")
    ends = np.searchsorted(by_row[:, 1], rows, "right")
    src_l, dst_l = [], []
    for i, ti, a, b in zip(np.asarray(rows).tolist(), np.asarray(times).tolist(), starts.tolist(), ends.tolist()):
        holders = [(h_time[h_ptr[f]:h_ptr[f + 1]], h_row[h_ptr[f]:h_ptr[f + 1]], weight[f])
                   for f in by_row[a:b, 0].tolist()]
        top = comention_top(int(ti), i, holders, k, window_s, scale_s, per_entity)
        src_l.append(np.full(len(top), i, np.int64))
        dst_l.append(np.asarray(top, np.int64))
    if not src_l:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(src_l), np.concatenate(dst_l)


_RELAND_PREFIX = re.compile(r"^(?:\s*(?:re-?land(?:ed)?|reappl(?:y|ied)|re-?commit(?:ted)?)\b\s*:?\s*)+", re.I)


_PR_SUFFIX = re.compile(r"(?:\s*\((?:#|gh-)?\d+\))+\s*$", re.I)   # a squash merge's "(#1234)"


def title_key(text: Optional[str]) -> Optional[str]:
    """An event's title as a change's identity: the first line of its text without re-land
    prefixes ("Reland:", "Reapply") or a trailing pull-request number ("(#1234)": a re-land is a
    new pull request), as lower-cased words; None under three words (too generic to say two
    events are the same change)."""
    line = (text or "").lstrip()[:500].split("\n", 1)[0]
    line = _PR_SUFFIX.sub("", _RELAND_PREFIX.sub("", line))
    found = _WORD_RE.findall(line.lower())
    return " ".join(found) if len(found) >= 3 else None


_REVERT_TITLE = re.compile(r'^\s*revert\s+"(.+)"', re.I)   # `Revert "T"`, T up to the line's last quote


def reverted_title(text: Optional[str]) -> Optional[str]:
    """The `title_key` of the title a `Revert "T"` first line quotes; None for any other text,
    and for a title with no content word (too generic to name one change)."""
    m = _REVERT_TITLE.match((text or "").lstrip()[:500].split("\n", 1)[0])
    key = title_key(m.group(1)) if m else None
    return key if key and words(key) else None


def reverting_rows(batch) -> set:
    """Rows of `batch` with a link that says they revert another event (`REVERT_CODES`)."""
    from .corpus import REVERT_CODES
    types = np.isin(np.asarray(batch.link_type), REVERT_CODES)
    return set(np.asarray(batch.link_src, np.int64)[types].tolist())


def unlinked_reverts(batch) -> dict:
    """{row: reverted title} of the `Revert "T"` events of `batch` with no reverts link."""
    linked = reverting_rows(batch)
    keys = ((i, reverted_title(text)) for i, text in enumerate(batch.texts) if text and i not in linked)
    return {i: key for i, key in keys if key}


def title_revert_links(batch) -> tuple[np.ndarray, np.ndarray]:
    """(src, dst) rows of derived `title_reverts` links: an event whose first line is `Revert "T"`
    (`reverted_title`) and that has no `reverts` link reverts the latest event before it, in
    (time, row) order, whose title (`title_key`) is T. A revert made in a web interface names the
    reverted pull request ("Reverts #123"), not the commit; other reverts name a commit that is
    not among the events (a merge). Deterministic."""
    t = np.asarray(batch.times, np.int64)
    wanted = unlinked_reverts(batch)
    if not wanted:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    keys = set(wanted.values())
    by_key: dict[str, list[tuple[int, int]]] = {}
    for i, text in enumerate(batch.texts):
        k = title_key(text) if text else None
        if k in keys:
            by_key.setdefault(k, []).append((int(t[i]), i))
    pairs = []
    for r, key in sorted(wanted.items()):
        before = [c for c in by_key.get(key, ()) if c < (int(t[r]), r)]
        if before:
            pairs.append((r, max(before)[1]))
    if not pairs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    src, dst = np.asarray(pairs, np.int64).T
    return src, dst


def reland_links(batch) -> tuple[np.ndarray, np.ndarray]:
    """(src, dst) rows of derived `relands` links. When R reverts X, the first later event
    (after R) whose title repeats X's title re-lands the change: it links to R, and supersession
    follows the link, so "what is current" answers the re-land rather than the revert. Git
    histories re-land a reverted commit under its own subject far more often than by reverting
    the revert (which is an explicit link already). A revert of several events (a clean-up that
    backs out a series) is undone one event at a time: the re-land links to the event it
    re-lands, which it then supersedes in the revert's place (supersession.py), and the revert
    stays current for the others. Counted: reverted events present. Deterministic: ties by row."""
    from .corpus import REVERT_CODES
    types = np.asarray(batch.link_type)
    at = np.flatnonzero(np.isin(types, REVERT_CODES))
    if not len(at):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    row_of = {eid: i for i, eid in enumerate(batch.ids)}
    reverts = [(int(batch.link_src[j]), row_of.get(batch.link_to[j])) for j in at.tolist()]
    key_of = {x: title_key(batch.texts[x]) for _, x in reverts if x is not None}
    wanted = {k for k in key_of.values() if k}
    if not wanted:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    t = np.asarray(batch.times, np.int64)
    by_key: dict[str, list[tuple[int, int]]] = {}
    for i, text in enumerate(batch.texts):
        k = title_key(text) if text else None
        if k in wanted:
            by_key.setdefault(k, []).append((int(t[i]), i))
    pairs = set()
    undone = sorted(set((r, x) for r, x in reverts if x is not None))
    n_undone = Counter(r for r, _ in undone)
    for r, x in undone:
        k = key_of.get(x)
        if not k:
            continue
        later = [(ty, y) for ty, y in by_key[k] if y not in (x, r) and (ty, y) > (int(t[r]), r)]
        if later:
            pairs.add((min(later)[1], r if n_undone[r] == 1 else x))
    if not pairs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    src, dst = np.asarray(sorted(pairs), np.int64).T
    return src, dst


def with_derived_links(batch, params):
    """`batch` plus its derived `title_reverts`, `similar`, `same_actor`, `relands`, `co_cited`
    and `co_mention` links, appended to each source row's links (link_src stays non-decreasing),
    over a whole corpus at build; `Index.add` derives all but `similar` for the added events
    (derive_add.py)."""
    from .corpus import LINK_CODE
    if len(batch) < 2:
        return batch
    if params.title_reverts:   # first: re-lands and supersession follow them
        batch = with_link_parts(batch, [(title_revert_links(batch), LINK_CODE["title_reverts"])])
    parts = []
    if params.similar_k > 0:
        parts.append((similarity_links(batch.times, batch.vectors, params.similar_k,
                                       int(params.similar_window_days * 86400), params.similar_z,
                                       params.similar_max_candidates), LINK_CODE["similar"]))
    if params.actor_k > 0:
        parts.append((actor_links(batch, params.actor_k, int(params.actor_window_days * 86400),
                                  params.actor_prefixes), LINK_CODE["same_actor"]))
    if params.relands:
        parts.append((reland_links(batch), LINK_CODE["relands"]))
    if params.cocite_k > 0:
        parts.append((cocitation_links(batch, params.cocite_k, params.cocite_types), LINK_CODE["co_cited"]))
    if params.comention_k > 0:
        parts.append((comention_links(batch, params.comention_k, int(params.comention_window_days * 86400),
                                      int(params.comention_scale_days * 86400), params.comention_max_share,
                                      params.comention_prefixes),
                      LINK_CODE["co_mention"]))
    return with_link_parts(batch, parts)


def with_link_parts(batch, parts) -> EventBatch:
    """`batch` plus derived links given as [((src rows, dst rows), type code), ...], in that order."""
    parts = [(sd, c) for sd, c in parts if len(sd[0])]
    if not parts:
        return batch
    return with_links(batch, np.concatenate([sd[0] for sd, _ in parts]),
                      [batch.ids[d] for sd, _ in parts for d in sd[1].tolist()],
                      np.concatenate([np.full(len(sd[0]), c, np.int8) for sd, c in parts]))


def with_links(batch: EventBatch, src, to, types) -> EventBatch:
    """`batch` with links appended to their source rows (link_src stays non-decreasing)."""
    from .corpus import EventBatch
    if not len(src):
        return batch
    all_src = np.concatenate([np.asarray(batch.link_src, np.int64), np.asarray(src, np.int64)])
    all_to = list(batch.link_to) + list(to)
    all_type = np.concatenate([np.asarray(batch.link_type, np.int8), np.asarray(types, np.int8)])
    o = np.argsort(all_src, kind="stable")
    return EventBatch(ids=batch.ids, times=batch.times, tokens=batch.tokens, sources=batch.sources,
                      kinds=batch.kinds, entity_ptr=batch.entity_ptr, entity_names=batch.entity_names,
                      link_src=all_src[o], link_to=[all_to[i] for i in o.tolist()], link_type=all_type[o],
                      texts=batch.texts, attrs=batch.attrs, vectors=batch.vectors)

