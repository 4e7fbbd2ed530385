"""Read and validate an orgmem-v1 corpus (see ``shared/orgmem/FORMAT.md``) into columnar form.

Everything here is all-or-nothing: the first defect raises `CorpusError` (naming the file, the
1-based line and the field, saying what was expected and showing the bad value, truncated) before
anything is returned. Nothing is ever partially built.

Entry points
------------
- `read_meta(dir)`    -> the validated ``meta.json`` dict.
- `read_events(dir)`  -> `EventBatch` from ``events.jsonl`` + ``vectors.npy``.
- `read_queries(dir)` -> (normalised query dicts, float32 query vectors) from ``queries.jsonl`` +
  ``query_vectors.npy``.
- `EventBatch.from_records(records, vectors)` -> the same validation on in-memory mappings; errors
  name ``records[i]`` (or ``<origin>[i]``) as their file and carry no line.
- `validate_vectors(...)` -> the shape / dtype / value checks shared by all of the above.

Decisions (documented behaviour)
--------------------------------
Lines and blank lines
    Line i of ``events.jsonl`` is event row i. Blank (whitespace-only) lines are allowed only at
    the very end of the file (trailing); a blank line followed by a non-blank one is refused,
    because it would shift every later row. The same rule applies to ``queries.jsonl``. Lines
    are UTF-8 JSON objects; ``meta.json["n_events"]`` must equal the number of (non-blank)
    event lines, and ``meta["n_queries"]``, when present, the number of query lines.
Event fields
    ``id``: non-empty string, unique in the file (a duplicate names both lines).
    ``time``: JSON integer (``true``/``false`` and floats such as ``1.7e9`` or ``5.0`` are refused)
    in ``[TIME_MIN, TIME_MAX]`` (1970-01-01 .. 2200-01-01 UTC).
    ``source``, ``kind``: non-empty strings (``meta["sources"]``/``meta["kinds"]`` are
    informational and not enforced).
    ``tokens``: integer in ``[0, TOKENS_MAX]``; missing or ``null`` -> estimated from the text
    (`estimate_tokens`: ceil(characters / 4), at least 1; 1 for an event without text). A given
    value below ceil(characters / CHARS_PER_TOKEN_MAX) is raised to that (capped at TOKENS_MAX),
    so a small claim cannot smuggle a large text into an answer's token budget.
    Strings must be valid Unicode (a lone surrogate escape such as ``"\\ud800"`` is refused) and
    values nest at most ``MAX_NESTING`` levels.
    ``entities``: list of non-empty strings; a missing key or ``null`` means no entities;
    duplicates within one event are dropped (first occurrence kept, order kept).
    ``links``: list of objects ``{"to": non-empty str, "type": one of LINK_TYPES}``; a missing key
    or ``null`` means no links. Other keys inside a link object are ignored. A link to the event's
    own id is refused; an exact duplicate ``(to, type)`` within one event is dropped. Targets are
    NOT resolved here (they may point to later lines or to events already in an index).
    ``text``: string, ``null`` or missing (-> ``None``).
    Any other field is kept verbatim in ``attrs[i]`` (a dict). To save memory, events without
    extra fields share one empty dict per batch: treat ``attrs`` entries as read-only.
Vectors
    ``vectors.npy`` must be 2-D ``[n_events, meta.dim]`` of a floating dtype (float16/32/64),
    all finite, no all-zero row. Rows need not be exactly unit length: any finite non-zero row
    is accepted and, if some row's L2 norm differs from 1 by more than `NORM_TOL`, the whole
    array is L2-normalised into a new float32 array (downstream uses cosine similarity).
    Otherwise a float32 C-contiguous input is returned as is (a read-only memmap stays a memmap:
    the file is never loaded into RAM twice; checks run in chunks of rows). Value errors
    (NaN/inf/zero row) name the row and the corresponding ``events.jsonl`` line; for ``.npy``
    files `CorpusError.line` is the 1-based row (= the jsonl line of that event).
Queries
    ``qid`` non-empty unique string; ``type`` in QUERY_TYPES; ``filters`` an object (missing or
    ``null`` -> ``{}``) with only the keys of FILTER_KEYS: ``entities_any``, ``entities_all``,
    ``sources``, ``kinds`` are non-empty lists of non-empty strings (an empty list is refused:
    omit the key instead), ``time_from``/``time_to`` integers in the time range (``null`` ->
    the key is dropped), ``time_from <= time_to``. ``as_of``: integer in the time range or
    ``null``; required non-null for ``type == "as_of"``. ``direction`` in DIRECTIONS (missing or
    ``null`` -> ``"back"``). ``budget_tokens`` integer in ``[1, BUDGET_MAX]``. ``text`` string,
    ``null`` or missing (-> ``None``). ``scope`` (optional) is checked as ``filters`` are and
    kept as given (an empty list in it is refused: a scope must not read "any of none" as no
    bound). Unknown top-level query fields are kept verbatim.
Progress and cost
    ``read_events(..., progress=f)`` calls ``f(n_lines_done)`` every `PROGRESS_EVERY` lines and
    once at the end of the file. Parsing stops at line ``n_events + 1`` if the file is longer.
    Lines are parsed one at a time into Python lists (no raw dicts kept; entity/source/kind
    strings are shared, one object per distinct value) and converted to arrays once; about
    4-5 us per event line on one core (a 1e5-event generated corpus reads in ~0.45 s).
"""
from __future__ import annotations

import json
import math
import os
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from .encoder import EncoderError, HashingEncoder, from_spec, record_problem
from .errors import NPY_LOAD_ERRORS, CorpusError

__all__ = [
    "LINK_TYPES", "QUERY_TYPES", "DIRECTIONS", "FILTER_KEYS", "TIME_MIN", "TIME_MAX", "TOKENS_MAX",
    "BUDGET_MAX", "MAX_DIM", "NORM_TOL", "FORMAT", "EventBatch", "read_meta", "read_events",
    "read_queries", "validate_vectors", "parse_records", "read_event_lines", "estimate_tokens",
]

FORMAT = "orgmem-v1"
LINK_TYPES = ("reply", "references", "fixes", "follow_up", "reverts", "backport_of", "supersedes", "similar",
              "same_actor", "relands", "co_mention", "co_cited", "title_reverts")
LINK_CODE = {t: i for i, t in enumerate(LINK_TYPES)}
REVERT_CODES = (LINK_CODE["reverts"], LINK_CODE["title_reverts"])   # "this event reverts that one"
# computed at build (derive.py), never read from input
DERIVED_LINK_TYPES = ("similar", "same_actor", "relands", "co_mention", "co_cited", "title_reverts")
USER_LINK_CODE = {t: i for t, i in LINK_CODE.items() if t not in DERIVED_LINK_TYPES}
QUERY_TYPES = ("chain", "current", "as_of")
DIRECTIONS = ("back", "forward", "both")
FILTER_KEYS = ("entities_any", "entities_all", "sources", "kinds", "time_from", "time_to")
TIME_MIN, TIME_MAX = 0, 7_258_118_400     # 1970-01-01 .. 2200-01-01 UTC, Unix seconds
TOKENS_MAX = 10_000_000                   # largest `tokens` of one event
CHARS_PER_TOKEN_MAX = 8                   # a `tokens` claim is believed up to this many characters a token
BUDGET_MAX = 1_000_000_000                # largest `budget_tokens` of one query
MAX_DIM = 65_536                          # largest embedding dimension accepted in meta.json
NORM_TOL = 1e-4                           # |norm - 1| above this for any row -> normalised copy
PROGRESS_EVERY = 10_000
_CHUNK_ROWS = 65_536                      # vector checks run over this many rows at a time
_SHOW = 80                                # bad values are shown truncated to this many characters

_KNOWN_EVENT_KEYS = frozenset(("id", "time", "source", "kind", "tokens", "entities", "links", "text"))
_KNOWN_QUERY_KEYS = frozenset(("qid", "type", "filters", "as_of", "direction", "budget_tokens", "text"))


def _show(v: Any) -> str:
    """repr of a bad value, truncated."""
    try:
        s = json.dumps(v, ensure_ascii=False)
    except (TypeError, ValueError):
        s = repr(v)
    return s if len(s) <= _SHOW else s[:_SHOW - 3] + "..."


def _clip(s: str) -> str:
    """Raw text, truncated."""
    return s if len(s) <= _SHOW else s[:_SHOW - 3] + "..."


def _tname(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "string"
    if isinstance(v, (list, tuple)):
        return "list"
    if isinstance(v, Mapping):
        return "object"
    return type(v).__name__


def _got(v: Any) -> str:
    return f"got {_tname(v)} {_show(v)}"


# ------------------------------------------------------------------------------------ EventBatch
@dataclass
class EventBatch:
    """n events in columnar form; row i is line i of ``events.jsonl`` (or ``records[i]``).

    ``link_src`` is non-decreasing (links are grouped by their source row, in input order).
    """

    ids: list
    times: np.ndarray         # int64 [n]
    tokens: np.ndarray        # int32 [n]
    sources: list
    kinds: list
    entity_ptr: np.ndarray    # int64 [n+1], CSR into entity_names
    entity_names: list
    link_src: np.ndarray      # int64 [m], row in this batch
    link_to: list             # [m] target external id (unresolved)
    link_type: np.ndarray     # int8 [m], code into LINK_TYPES
    texts: list
    attrs: list
    vectors: np.ndarray       # float32 [n, dim], C-contiguous (may be a read-only memmap)

    def __post_init__(self) -> None:
        n = len(self.ids)
        m = len(self.link_to)
        ok = (len(self.times) == n and len(self.tokens) == n and len(self.sources) == n
              and len(self.kinds) == n and len(self.entity_ptr) == n + 1 and len(self.texts) == n
              and len(self.attrs) == n and len(self.link_src) == m and len(self.link_type) == m
              and self.vectors.ndim == 2 and self.vectors.shape[0] == n
              and int(self.entity_ptr[-1]) == len(self.entity_names))
        if not ok:
            raise ValueError("EventBatch columns have inconsistent lengths")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def entities(self, row: int) -> list:
        """Entities of one row (convenience)."""
        return self.entity_names[int(self.entity_ptr[row]):int(self.entity_ptr[row + 1])]

    @classmethod
    def from_records(cls, records: Sequence[Mapping], vectors, *, origin: str = "records") -> "EventBatch":
        """Validate in-memory event mappings (same rules as ``events.jsonl``) plus their vectors.

        Errors name ``f"{origin}[i]"`` as their file (no line), and ``f"{origin} vectors"`` for
        the vectors. The records are not modified.
        """
        cols = parse_records(records, origin=origin)
        return cls.with_vectors(cols, vectors, origin=origin)

    @classmethod
    def with_vectors(cls, cols: dict, vectors, *, origin: str = "records") -> "EventBatch":
        """A batch from parsed columns (`parse_records`, `read_event_lines`) and their vectors,
        validated like ``vectors.npy`` (errors name ``f"{origin} vectors"``)."""
        n = len(cols["ids"])
        vectors = _as_array(vectors, file=f"{origin} vectors")
        dim = vectors.shape[1] if getattr(vectors, "ndim", 0) == 2 else -1
        if dim <= 0:
            raise CorpusError(f"expected a 2-D array [n, dim] with dim > 0, got shape {tuple(vectors.shape)}",
                              file=f"{origin} vectors", field="shape")
        vec = validate_vectors(vectors, n, dim, file=f"{origin} vectors", lines_of=origin)
        return cls(vectors=vec, **cols)

    def select(self, rows) -> "EventBatch":
        """The events at `rows` (int indices, in the given order, no repeats; or a bool mask of
        length n), as a new batch. Links keep only those whose source row is selected, with
        ``link_src`` re-based to the new row numbers; ``link_to`` stays the external id."""
        n = len(self)
        rows = np.asarray(rows)
        if rows.dtype == bool:
            if rows.shape != (n,):
                raise ValueError(f"bool mask must have shape ({n},), got {rows.shape}")
            rows = np.flatnonzero(rows)
        elif rows.size == 0:
            rows = np.zeros(0, dtype=np.int64)
        elif not np.issubdtype(rows.dtype, np.integer):
            raise TypeError(f"rows must be integer indices or a bool mask, got dtype {rows.dtype}")
        rows = rows.astype(np.int64, copy=False).ravel()
        if rows.size and (rows.min() < 0 or rows.max() >= n):
            raise IndexError(f"row index out of range [0, {n})")
        k = rows.size
        pos = np.full(n, -1, dtype=np.int64)
        pos[rows] = np.arange(k, dtype=np.int64)
        if k and np.count_nonzero(pos >= 0) != k:
            raise ValueError("rows contains repeated indices")
        rl = rows.tolist()
        # entities (CSR gather)
        lo = self.entity_ptr[rows]
        cnt = self.entity_ptr[rows + 1] - lo
        ptr = np.zeros(k + 1, dtype=np.int64)
        np.cumsum(cnt, out=ptr[1:])
        gidx = np.repeat(lo - ptr[:-1], cnt) + np.arange(int(ptr[-1]), dtype=np.int64)
        names = self.entity_names
        entity_names = [names[j] for j in gidx.tolist()]
        # links
        new_src = pos[self.link_src] if len(self.link_src) else np.zeros(0, dtype=np.int64)
        keep = np.flatnonzero(new_src >= 0)
        keep = keep[np.argsort(new_src[keep], kind="stable")]
        link_to = self.link_to
        vec = np.ascontiguousarray(self.vectors[rows], dtype=np.float32)
        return EventBatch(
            ids=[self.ids[i] for i in rl],
            times=self.times[rows].copy(),
            tokens=self.tokens[rows].copy(),
            sources=[self.sources[i] for i in rl],
            kinds=[self.kinds[i] for i in rl],
            entity_ptr=ptr,
            entity_names=entity_names,
            link_src=new_src[keep].astype(np.int64, copy=False),
            link_to=[link_to[j] for j in keep.tolist()],
            link_type=self.link_type[keep].copy(),
            texts=[self.texts[i] for i in rl],
            attrs=[self.attrs[i] for i in rl],
            vectors=vec,
        )


def parse_records(records: Sequence[Mapping], *, origin: str = "records") -> dict:
    """Validate in-memory event mappings into columns (everything but the vectors); errors name
    ``f"{origin}[i]"``."""
    if isinstance(records, (str, bytes, Mapping)) or not hasattr(records, "__len__"):
        raise CorpusError(f"expected a sequence of event mappings, got {_tname(records)}", file=origin)

    def where(k: int):
        return f"{origin}[{k}]", None

    return _parse_events(_checked_records(records, origin), where, expect=None)


MAX_NESTING = 64    # deepest JSON nesting accepted inside one event (attribute values)


def _bad_value(v: Any, depth: int = 0) -> str | None:
    """Why `v` cannot be stored (a string with a lone surrogate, which UTF-8 cannot encode, a
    non-finite number, or nesting deeper than MAX_NESTING), else None."""
    if type(v) is str:
        if not v.isascii():
            try:
                v.encode("utf-8")
            except UnicodeEncodeError as e:
                return f"string with a lone surrogate ({v[e.start]!a} at character {e.start}), not valid Unicode"
        return None
    if type(v) is int and not -2**63 <= v < 2**64:
        return f"integer {_show(v)} is outside the 64-bit range stored for attribute values"
    if type(v) is float and not math.isfinite(v):   # NaN / Infinity are not JSON: get and export would emit them
        return f"{v!r} is not a JSON number (NaN and infinities cannot be stored)"
    if depth > MAX_NESTING:
        return f"nested deeper than {MAX_NESTING} levels"
    if isinstance(v, Mapping):
        for key, x in v.items():
            why = _bad_value(key, depth + 1) or _bad_value(x, depth + 1)
            if why:
                return why
    elif isinstance(v, (list, tuple)):
        for x in v:
            why = _bad_value(x, depth + 1)
            if why:
                return why
    return None


def _checked_records(records, origin: str) -> Iterator:
    for k, d in enumerate(records):
        why = _bad_value(d) if isinstance(d, Mapping) else None
        if why:
            raise CorpusError(why, file=f"{origin}[{k}]")
        yield d


class _Borrowed:
    """A stream used in a `with` block without being closed by it."""

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self.f

    def __exit__(self, *exc):
        return False

    def __iter__(self):
        return iter(self.f)


def read_event_lines(path, *, progress: Callable[[int], Any] | None = None, name: str | None = None) -> dict:
    """Validate the events of one JSONL file or binary stream (any number of lines, no
    meta.json, no vectors) into columns; errors name the file (or `name`) and the 1-based line."""
    if not hasattr(path, "read"):
        path = Path(path)
        if not path.is_file():
            raise CorpusError("file not found", file=name or str(path))
    fname = name or str(path)

    def where(k: int):
        return fname, k + 1

    return _parse_events(_jsonl_objects(path, [0], progress, name=name), where, expect=None)


# ------------------------------------------------------------------------------------ parsing core
def _int_in(v, lo: int, hi: int) -> int | None:
    """int(v) if v is an integer (Python or NumPy, not bool) within [lo, hi], else None."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        return None
    v = int(v)
    return v if lo <= v <= hi else None


def estimate_tokens(text) -> int:
    """The token count assumed for an event given without one: ceil(len(text) / 4) characters
    per token (about right for English with common tokenizers), at least 1."""
    return min(TOKENS_MAX, max(1, -(-len(text) // 4))) if isinstance(text, str) else 1


def _parse_events(objs: Iterator, where: Callable[[int], tuple], expect: int | None) -> dict:
    """Validate event objects into column lists/arrays. `where(k)` -> (file, line) for errors
    about object k (0-based); only called on error. Stops after `expect` + 1 objects."""
    ids: list = []
    times: list = []
    tokens: list = []
    sources: list = []
    kinds: list = []
    counts: list = []
    entity_names: list = []
    link_src: list = []
    link_to: list = []
    link_type: list = []
    texts: list = []
    attrs: list = []
    # bound methods (this loop runs millions of times)
    ids_app, times_app, tokens_app = ids.append, times.append, tokens.append
    sources_app, kinds_app, counts_app = sources.append, kinds.append, counts.append
    ent_ext, texts_app, attrs_app = entity_names.extend, texts.append, attrs.append
    empty_attrs: dict = {}
    interned: dict = {}          # one str object per distinct entity / source / kind string
    intern = interned.setdefault
    known = _KNOWN_EVENT_KEYS
    str_, int_, list_, dict_, len_, set_ = str, int, list, dict, len, set
    tmin, tmax, kmax = TIME_MIN, TIME_MAX, TOKENS_MAX
    stop = -1 if expect is None else expect

    def fail(k, field, msg):
        f, ln = where(k)
        raise CorpusError(msg, file=f, line=ln, field=field)

    k = -1
    for k, d in enumerate(objs):
        if type(d) is not dict_:
            if not isinstance(d, Mapping):
                fail(k, None, f"expected a JSON object (an event), {_got(d)}")
            d = dict(d)
        g = d.get
        eid = g("id")
        if type(eid) is not str_ or not eid:
            fail(k, "id", ("missing; expected a non-empty string" if "id" not in d
                           else f"expected a non-empty string, {_got(eid)}"))
        t = g("time")
        if (type(t) is not int_ or t < tmin or t > tmax) and (t := _int_in(t, tmin, tmax)) is None:
            t = g("time")
            fail(k, "time", ("missing; expected an integer Unix time" if "time" not in d else
                             f"expected an integer Unix time in [{tmin}, {tmax}], {_got(t)}"))
        src = g("source")
        if type(src) is not str_ or not src:
            fail(k, "source", ("missing; expected a non-empty string" if "source" not in d
                               else f"expected a non-empty string, {_got(src)}"))
        kind = g("kind")
        if type(kind) is not str_ or not kind:
            fail(k, "kind", ("missing; expected a non-empty string" if "kind" not in d
                             else f"expected a non-empty string, {_got(kind)}"))
        tok = g("tokens")
        if tok is None:   # optional: estimated from the text (see estimate_tokens)
            txt = g("text")
            tok = min(kmax, max(1, -(-len_(txt) // 4))) if type(txt) is str_ else 1
        elif (type(tok) is not int_ or tok < 0 or tok > kmax) and (tok := _int_in(tok, 0, kmax)) is None:
            tok = g("tokens")
            fail(k, "tokens", f"expected an integer in [0, {kmax}], {_got(tok)}")
        else:   # a claim far below the text's size is raised: budgets must hold
            txt = g("text")
            if type(txt) is str_ and tok < (est := -(-len_(txt) // CHARS_PER_TOKEN_MAX)):
                tok = min(kmax, est)
        ents = g("entities")
        if ents:
            if type(ents) is not list_ and type(ents) is not tuple:
                fail(k, "entities", f"expected a list of non-empty strings, {_got(ents)}")
            for e in ents:
                if type(e) is not str_ or not e:
                    fail(k, "entities", f"expected a list of non-empty strings, element {_got(e)}")
                if e[0] == "~":
                    fail(k, "entities", f"names starting with '~' are reserved for derived entities, got {_show(e)}")
            ne = len_(ents)
            if ne > 1 and len_(set_(ents)) != ne:
                ents = list(dict.fromkeys(ents))
                ne = len_(ents)
            ent_ext(map(intern, ents, ents))
            counts_app(ne)
        elif ents is None or ents == [] or ents == ():
            counts_app(0)
        else:
            fail(k, "entities", f"expected a list of non-empty strings, {_got(ents)}")
        links = g("links")
        if links:
            _add_links(links, k, eid, link_src, link_to, link_type, fail)
        elif links is not None and links != [] and links != ():
            fail(k, "links", f"expected a list of link objects, {_got(links)}")
        txt = g("text")
        if txt is not None and type(txt) is not str_:
            fail(k, "text", f"expected a string or null, {_got(txt)}")
        if len_(d) > 8 or not known.issuperset(d):
            extra = {key: val for key, val in d.items() if key not in known}
            if why := _bad_value(extra):
                fail(k, None, f"attribute value: {why}")
            acl = extra.get("acl")
            if acl is not None and (type(acl) is not list_ or not all(
                    type(p) is str_ and p and not p.isspace() and p == p.strip() for p in acl)):
                fail(k, "acl", f"expected a list of principals (non-empty strings), {_got(acl)}")
            attrs_app(extra if extra else empty_attrs)
        else:
            attrs_app(empty_attrs)
        ids_app(eid)
        times_app(t)
        tokens_app(tok)
        sources_app(intern(src, src))
        kinds_app(intern(kind, kind))
        texts_app(txt)
        if k == stop:
            break
    n = k + 1
    check_unique_ids(ids, where)
    del interned
    ptr = np.zeros(n + 1, dtype=np.int64)
    if n:
        np.cumsum(np.fromiter(counts, dtype=np.int64, count=n), out=ptr[1:])
    m = len_(link_src)
    return dict(
        ids=ids,
        times=np.fromiter(times, dtype=np.int64, count=n),
        tokens=np.fromiter(tokens, dtype=np.int32, count=n),
        sources=sources,
        kinds=kinds,
        entity_ptr=ptr,
        entity_names=entity_names,
        link_src=np.fromiter(link_src, dtype=np.int64, count=m),
        link_to=link_to,
        link_type=np.fromiter(link_type, dtype=np.int8, count=m),
        texts=texts,
        attrs=attrs,
    )


def check_unique_ids(ids: list, where: Callable[[int], tuple]) -> None:
    """CorpusError naming the second use of a repeated id and where the first was."""
    if len(set(ids)) == len(ids):
        return
    first: dict = {}
    for j, eid in enumerate(ids):
        if eid in first:
            f, ln = where(j)
            f0, ln0 = where(first[eid])
            at = f"line {ln0}" if ln0 is not None else f0
            raise CorpusError(f"duplicate id {_show(eid)} (first used at {at})", file=f, line=ln, field="id")
        first[eid] = j


def _add_links(links, k: int, eid: str, link_src: list, link_to: list, link_type: list, fail) -> None:
    if type(links) is not list and type(links) is not tuple:
        fail(k, "links", f"expected a list of link objects, {_got(links)}")
    seen = set() if len(links) > 1 else None
    for lk in links:
        if type(lk) is not dict:
            if not isinstance(lk, Mapping):
                fail(k, "links", f"expected a link object {{\"to\": str, \"type\": str}}, element {_got(lk)}")
        to = lk.get("to")
        if type(to) is not str or not to:
            fail(k, "links.to", f"expected a non-empty event id string, {_got(to)} in link {_show(lk)}")
        ty = lk.get("type")
        code = USER_LINK_CODE.get(ty) if type(ty) is str else None
        if code is None:
            fail(k, "links.type", f"expected one of {', '.join(USER_LINK_CODE)}, got {_show(ty)} in link {_show(lk)}")
        if to == eid:
            fail(k, "links.to", f"event links to itself ({_show(eid)})")
        if seen is not None:
            key = (to, code)
            if key in seen:
                continue
            seen.add(key)
        link_src.append(k)
        link_to.append(to)
        link_type.append(code)


def _jsonl_objects(path: Path, counter: list, progress=None, name: str | None = None,
                   span: tuple[int, int, int] | None = None) -> Iterator:
    """Yield the parsed object of each line; blank lines only allowed at the end.
    counter[0] is kept equal to the number of lines yielded. `span` = (start byte, end byte,
    number of the first line) reads one block of the file (fastctx/ray_read.py); a block that
    ends in blank lines then sets counter[1] to the first of them (the reader of the whole file
    decides whether a later block makes that an error)."""
    fname = name or str(path)
    try:
        # a binary stream (stdin) is read as is; the caller keeps it open
        f = _Borrowed(path) if hasattr(path, "read") else open(path, "rb")
    except FileNotFoundError:
        raise CorpusError("file not found", file=fname) from None
    except OSError as e:
        raise CorpusError(f"cannot open: {e}", file=fname) from None
    scan = json.JSONDecoder().scan_once   # the C scanner; skips loads()'s per-call overhead
    every = PROGRESS_EVERY if progress is not None else 0
    with f:
        first = 1
        if span is not None:
            f.seek(span[0])
            f, first = _Lines(f.read(span[1] - span[0])), span[2]
        lineno = first - 1
        blank_at = None
        for lineno, raw in enumerate(f, first):
            try:
                s = raw.decode("utf-8")
                d, end = scan(s, 0)
                if end != len(s) and not s[end:].isspace():
                    raise ValueError("extra data")
            except (ValueError, StopIteration, RecursionError):   # also JSONDecodeError, UnicodeDecodeError
                try:
                    d = json.loads(raw.decode("utf-8").rstrip())   # slow path: leading blanks, or the error
                except (ValueError, RecursionError) as e:
                    if not raw.strip():
                        blank_at = lineno
                        break
                    if isinstance(e, RecursionError):
                        msg = "JSON nested too deeply"
                    elif isinstance(e, UnicodeDecodeError):
                        msg = f"not valid UTF-8 ({e.reason} at byte {e.start})"
                    elif isinstance(e, json.JSONDecodeError):
                        msg = f"not valid JSON ({e.msg} at column {e.colno})"
                    else:   # e.g. an integer over Python's 4300-digit limit: a ValueError without a position
                        msg = f"not valid JSON ({str(e).partition(';')[0]})"
                    raise CorpusError(f"{msg}: {_clip(raw.decode('utf-8', 'replace').rstrip())}",
                                      file=fname, line=lineno) from None
            # rare shapes only: a \uD8xx escape (maybe a lone surrogate) or many brackets
            if (b"\\ud" in raw or b"\\uD" in raw or raw.count(b"[") + raw.count(b"{") > MAX_NESTING) \
                    and (why := _bad_value(d)):
                raise CorpusError(why, file=fname, line=lineno)
            counter[0] = lineno
            if every and lineno % every == 0:
                progress(lineno)
            yield d
        if blank_at is not None:
            for ln, raw in enumerate(f, blank_at + 1):
                if raw.strip():
                    raise blank_inside(fname, blank_at, ln)
            if span is not None:
                counter[1] = blank_at
        if progress is not None:
            progress(counter[0])


def blank_inside(fname: str, blank_at: int, later: int) -> CorpusError:
    return CorpusError(f"blank line inside the file (line {later} after it is not blank); "
                       "blank lines are only allowed at the end", file=fname, line=blank_at)


class _Lines:
    """The lines of one block of bytes (with their line ends), as a file object would give them."""

    def __init__(self, data: bytes):
        parts = data.split(b"\n")          # b"\n" only, as a binary file splits (not bare b"\r")
        last = parts.pop()
        self._lines = iter([p + b"\n" for p in parts] + ([last] if last else []))

    def __iter__(self):
        return self._lines

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ------------------------------------------------------------------------------------ meta
def _is_int(v) -> bool:
    return type(v) is int


def _regular_or_missing(path: Path) -> None:
    """Refuse a FIFO, device or directory before opening it (a FIFO would block the read)."""
    import stat
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as e:
        raise CorpusError(f"cannot read: {e.strerror}", file=str(path)) from None
    if not stat.S_ISREG(mode):
        raise CorpusError("not a regular file", file=str(path))


def read_meta(corpus_dir, *, text_only: bool = False) -> dict:
    """Read and validate ``meta.json``: an object with ``format == "orgmem-v1"``, ``dim`` an
    integer in [1, MAX_DIM], ``n_events`` an integer >= 0; optional ``n_queries`` (integer >= 0),
    ``name`` (string), ``sources``/``kinds`` (lists of strings), ``params`` (object) whose
    ``encoder_spec``, when not null, is a recorded encoder (`encoder.record_problem`) or a spec
    string, and whose ``encoder: "hashing-v1"`` (without an encoder_spec) needs a ``dim`` the
    hashing encoder makes. Returns it.
    `text_only` (a corpus without ``vectors.npy``): ``dim`` and ``n_events`` may be left out."""
    d = Path(corpus_dir)
    path = d / "meta.json"
    fname = str(path)
    if not d.is_dir():
        raise CorpusError("corpus folder not found", file=str(d))
    _regular_or_missing(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CorpusError("file not found (every orgmem-v1 corpus has a meta.json)", file=fname) from None
    except OSError as e:
        raise CorpusError(f"cannot read: {e}", file=fname) from None
    try:
        meta = json.loads(raw)
    except RecursionError:
        raise CorpusError("not valid JSON (nested too deeply)", file=fname) from None
    except ValueError as e:
        line = getattr(e, "lineno", None)
        raise CorpusError(f"not valid JSON ({getattr(e, 'msg', e)})", file=fname, line=line) from None
    if type(meta) is not dict:
        raise CorpusError(f"expected a JSON object, {_got(meta)}", file=fname, line=1)

    def bad(field, msg):
        raise CorpusError(msg, file=fname, field=field)

    if "format" not in meta:
        bad("format", f"missing; expected {FORMAT!r}")
    if meta["format"] != FORMAT:
        bad("format", f"expected {FORMAT!r}, got {_show(meta['format'])}")
    for key, lo, hi in (("dim", 1, MAX_DIM), ("n_events", 0, None)):
        if text_only and meta.get(key) is None:
            continue
        if key not in meta:
            bad(key, "missing; expected an integer")
        v = meta[key]
        if not _is_int(v) or v < lo or (hi is not None and v > hi):
            rng = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
            bad(key, f"expected an integer {rng}, {_got(v)}")
    if "n_queries" in meta and meta["n_queries"] is not None:
        v = meta["n_queries"]
        if not _is_int(v) or v < 0:
            bad("n_queries", f"expected an integer >= 0, {_got(v)}")
    if "name" in meta and meta["name"] is not None and not isinstance(meta["name"], str):
        bad("name", f"expected a string, {_got(meta['name'])}")
    for key in ("sources", "kinds"):
        v = meta.get(key)
        if v is not None and (type(v) is not list or not all(isinstance(x, str) for x in v)):
            bad(key, f"expected a list of strings, {_got(v)}")
    if meta.get("params") is not None and type(meta["params"]) is not dict:
        bad("params", f"expected an object, {_got(meta['params'])}")
    _check_encoder(meta, bad)
    return meta


def _check_encoder(meta: dict, bad: Callable[[str, str], None]) -> None:
    """The encoder meta.json names (see `index._corpus_encoder`) is judged before anything is
    read or built: a bad one would otherwise crash the build or be written into the index."""
    params = meta.get("params") or {}
    spec = params.get("encoder_spec")
    if isinstance(spec, str):
        try:
            from_spec(spec)
        except EncoderError as e:
            bad("params.encoder_spec", str(e))
    elif isinstance(spec, dict):
        if problem := record_problem(spec):
            bad("params.encoder_spec" + (f".{problem[0]}" if problem[0] else ""), problem[1])
    elif spec is not None:
        bad("params.encoder_spec", f"expected an object (a recorded encoder) or a spec string, {_got(spec)}")
    elif params.get("encoder") == HashingEncoder.name and meta.get("dim") is not None:
        if problem := record_problem({"name": HashingEncoder.name, "dim": meta["dim"]}):
            bad("dim", f"{problem[1]} (params.encoder names {HashingEncoder.name})")


# ------------------------------------------------------------------------------------ vectors
def _as_array(v, *, file: str) -> np.ndarray:
    if isinstance(v, np.ndarray):
        return v
    try:
        return np.asarray(v)
    except (TypeError, ValueError) as e:
        raise CorpusError(f"expected an array of floats: {e}", file=file) from None


_NPY_MAGIC = b"\x93NUMPY"


def _load_npy(path: Path) -> np.ndarray:
    fname = str(path)
    if not path.is_file():
        raise CorpusError("file not found", file=fname)
    try:
        with open(path, "rb") as f:
            magic = f.read(len(_NPY_MAGIC))
    except OSError as e:
        raise CorpusError(f"cannot read: {e.strerror}", file=fname) from None
    if magic != _NPY_MAGIC:   # np.load would return an NpzFile for a zip, not an array
        what = ("an .npz archive; save the vectors with numpy.save, not numpy.savez" if magic.startswith(b"PK")
                else "no .npy magic bytes at the start")
        raise CorpusError(f"not a readable .npy array ({what})", file=fname)
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except NPY_LOAD_ERRORS as e:
        first = _npy_why(e)
    try:   # e.g. an empty array, which older NumPy cannot memory-map
        _check_npy_size(path)
        return np.load(path, allow_pickle=False)
    except NPY_LOAD_ERRORS as e:
        why = _npy_why(e)
        raise CorpusError(f"not a readable .npy array ({first}{'; ' + why if why != first else ''})",
                          file=fname) from None


def _npy_why(e: BaseException) -> str:
    if isinstance(e, (SyntaxError, tokenize.TokenError)):
        return "its header does not parse"
    if isinstance(e, OverflowError):
        return f"its header declares an impossible shape ({e})"
    return str(e)[:200]


def _check_npy_size(path: Path) -> None:
    """ValueError when the header declares more data than the file holds: loading it whole
    would first allocate what a damaged header asks for (terabytes, maybe)."""
    fmt = np.lib.format
    with open(path, "rb") as f:
        version = fmt.read_magic(f)
        read = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
        if read is None:
            raise ValueError(f".npy format version {version} (expected 1.0 or 2.0)")
        shape, _, dtype = read(f)
        need = f.tell() + math.prod(shape) * dtype.itemsize
        have = os.fstat(f.fileno()).st_size
    if need > have:
        raise ValueError(f"the header declares shape {shape} of {dtype}, {need} bytes, but the file has {have}")


def _check_header(vectors: np.ndarray, n: int, dim: int, *, file: str, lines_of: str | None) -> None:
    shape = tuple(vectors.shape)
    if vectors.ndim != 2:
        raise CorpusError(f"expected a 2-D array [{n}, {dim}], got shape {shape}", file=file, field="shape")
    if shape[0] != n:
        what = f" (one per {lines_of} entry)" if lines_of else ""
        raise CorpusError(f"expected {n} rows{what}, got shape {shape}", file=file, field="shape")
    if shape[1] != dim:
        raise CorpusError(f"expected {dim} columns (meta.json dim), got shape {shape}", file=file, field="shape")
    if vectors.dtype.kind != "f":
        raise CorpusError(f"expected a floating dtype (float32), got {vectors.dtype}", file=file, field="dtype")


def validate_vectors(vectors, n: int, dim: int, *, file: str, lines_of: str | None = None) -> np.ndarray:
    """Check `vectors` is a 2-D floating array ``[n, dim]``, all finite, no all-zero row; return it
    as float32 C-contiguous, L2-normalised.

    No copy when the input is already float32, C-contiguous and every row's norm is within
    `NORM_TOL` of 1 (a memmap stays a memmap). Otherwise one new float32 array (normalised if any
    row is off). Checks run over chunks of rows, so a memmap is read once (twice if normalised).
    `lines_of` names the jsonl file whose line r+1 corresponds to row r (for messages).
    """
    vectors = _as_array(vectors, file=file)
    _check_header(vectors, n, dim, file=file, lines_of=lines_of)
    if n == 0:
        return np.zeros((0, dim), dtype=np.float32)
    is32 = vectors.dtype == np.float32
    rows = max(1, min(_CHUNK_ROWS, (64 << 20) // max(1, dim * vectors.dtype.itemsize)))
    norms = np.empty(n, dtype=np.float64)
    off = False
    for a in range(0, n, rows):
        b = min(n, a + rows)
        c = vectors[a:b]
        if is32:
            # fast path: float32 sums of squares; rows that overflowed/underflowed (or hold
            # NaN/inf/zeros) are recomputed carefully, which also raises on the bad ones
            nr = np.sqrt(np.einsum("ij,ij->i", c, c).astype(np.float64))
            odd = np.flatnonzero(~(np.isfinite(nr) & (nr > 1e-15)))
            if odd.size:
                nr[odd] = _careful_norms(np.asarray(c[odd]), a + odd, file=file, lines_of=lines_of)
        else:
            nr = _careful_norms(np.asarray(c), a + np.arange(b - a), file=file, lines_of=lines_of)
        norms[a:b] = nr
        if not off and np.any(np.abs(nr - 1.0) > NORM_TOL):
            off = True
    if not off:
        if is32 and vectors.flags.c_contiguous:
            return vectors
        return np.ascontiguousarray(vectors, dtype=np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for a in range(0, n, rows):
        b = min(n, a + rows)
        nr = norms[a:b]
        if is32 and nr.min() > 1e-30 and nr.max() < 1e30:   # scale factors representable in float32
            np.multiply(vectors[a:b], (1.0 / nr).astype(np.float32)[:, None], out=out[a:b])
        else:
            out[a:b] = np.asarray(vectors[a:b], dtype=np.float64) / nr[:, None]
    return out


def _careful_norms(c: np.ndarray, rowids: np.ndarray, *, file: str, lines_of: str | None) -> np.ndarray:
    """L2 norms (float64) of the rows of `c` (any float dtype) without overflow/underflow
    (computed as max|x| * ||x / max|x|||); raises on NaN/inf or all-zero rows."""
    c = c.astype(np.float64, copy=False)
    fin = np.isfinite(c).all(axis=1)
    if not fin.all():
        j = int(np.flatnonzero(~fin)[0])
        bad = c[j][~np.isfinite(c[j])][0]
        _vec_fail(file, lines_of, int(rowids[j]), f"contains a non-finite value ({bad})")
    scale = np.abs(c).max(axis=1)
    zero = scale == 0
    if zero.any():
        j = int(np.flatnonzero(zero)[0])
        _vec_fail(file, lines_of, int(rowids[j]), "is all zeros (expected a non-zero embedding)")
    s = c / scale[:, None]
    nr = np.sqrt(np.einsum("ij,ij->i", s, s)) * scale
    if not np.all(np.isfinite(nr)):
        j = int(np.flatnonzero(~np.isfinite(nr))[0])
        _vec_fail(file, lines_of, int(rowids[j]), "has a norm beyond the float64 range")
    return nr


def _row_label(lines_of: str, row: int) -> str:
    if lines_of.endswith(".jsonl"):
        return f"{lines_of} line {row + 1}"
    return f"{lines_of}[{row}]"


def _vec_fail(file: str, lines_of: str | None, row: int, what: str):
    at = f" (the vector of {_row_label(lines_of, row)})" if lines_of else ""
    raise CorpusError(f"row {row}{at} {what}", file=file, line=row + 1, field="values")


# ------------------------------------------------------------------------------------ events
def read_events(corpus_dir, *, progress: Callable[[int], Any] | None = None,
                parse: Callable[[Path], dict] | None = None) -> EventBatch:
    """Read ``events.jsonl`` + ``vectors.npy`` of an orgmem-v1 corpus (meta.json validated too).
    `progress(n_lines_done)` is called every ~10k lines and at the end. `parse(events_path)`
    replaces the whole-file parse (fastctx/ray_read.py parses it in blocks)."""
    d = Path(corpus_dir)
    meta = read_meta(d)
    n_meta, dim = meta["n_events"], meta["dim"]
    epath, vpath = d / "events.jsonl", d / "vectors.npy"
    efile = str(epath)
    if not epath.is_file():
        raise CorpusError("file not found (every orgmem-v1 corpus has an events.jsonl)", file=efile)
    vectors = _load_npy(vpath)
    # cheap header checks first, so a wrong vectors file fails before a long parse
    _check_header(vectors, n_meta, dim, file=str(vpath), lines_of="events.jsonl")
    counter = [0]

    def where(k: int):
        return efile, k + 1

    cols = (_parse_events(_jsonl_objects(epath, counter, progress), where, expect=n_meta) if parse is None
            else parse(epath))
    n = len(cols["ids"])
    if n > n_meta:   # the whole-file parse stops at line n_meta + 1
        raise CorpusError(f"more event lines than meta.json n_events = {n_meta}", file=efile, line=n_meta + 1,
                          field="n_events")
    if n < n_meta:
        raise CorpusError(f"meta.json n_events = {n_meta} but the file has only {n} event lines",
                          file=efile, line=n + 1, field="n_events")
    vec = validate_vectors(vectors, n, dim, file=str(vpath), lines_of="events.jsonl")
    return EventBatch(vectors=vec, **cols)


# ------------------------------------------------------------------------------------ queries
def _str_list(v, *, allow_empty: bool) -> bool:
    return (type(v) is list and (allow_empty or len(v) > 0)
            and all(type(x) is str and x for x in v))


def _check_filter_map(name: str, flt: Any, fail: Callable[[str | None, str], None]) -> dict:
    """A query's `filters` or `scope` object: known keys, times in range and in order, non-empty
    lists (an empty list would match nothing, and a scope must never read it as no bound)."""
    out: dict = {}
    if flt is None:
        return out
    if type(flt) is not dict:
        fail(name, f"expected an object, {_got(flt)}")
    for key, v in flt.items():
        if key not in FILTER_KEYS:
            fail(f"{name}.{key}", f"unknown filter (expected one of {', '.join(FILTER_KEYS)})")
        if key in ("time_from", "time_to"):
            if v is None:
                continue
            if type(v) is not int or v < TIME_MIN or v > TIME_MAX:
                fail(f"{name}.{key}", f"expected an integer Unix time in [{TIME_MIN}, {TIME_MAX}], {_got(v)}")
        elif not _str_list(v, allow_empty=False):
            fail(f"{name}.{key}", f"expected a non-empty list of non-empty strings, {_got(v)}")
        out[key] = list(v) if isinstance(v, list) else v
    if "time_from" in out and "time_to" in out and out["time_from"] > out["time_to"]:
        fail(f"{name}.time_to", f"expected time_to >= time_from ({out['time_from']}), got {out['time_to']}")
    return out


def _check_query(q: Any, fail: Callable[[str | None, str], None]) -> dict:
    if type(q) is not dict:
        fail(None, f"expected a JSON object (a query), {_got(q)}")
    qid = q.get("qid")
    if type(qid) is not str or not qid:
        fail("qid", "missing; expected a non-empty string" if "qid" not in q
             else f"expected a non-empty string, {_got(qid)}")
    typ = q.get("type")
    if typ not in QUERY_TYPES or type(typ) is not str:
        fail("type", f"expected one of {', '.join(QUERY_TYPES)}, got {_show(typ)}")
    out_f = _check_filter_map("filters", q.get("filters"), fail)
    _check_filter_map("scope", q.get("scope"), fail)     # same keys; passed on as given
    as_of = q.get("as_of")
    if as_of is not None and (type(as_of) is not int or as_of < TIME_MIN or as_of > TIME_MAX):
        fail("as_of", f"expected an integer Unix time in [{TIME_MIN}, {TIME_MAX}] or null, {_got(as_of)}")
    if typ == "as_of" and as_of is None:
        fail("as_of", "required (an integer Unix time) for a query of type as_of, got " + _show(as_of))
    direction = q.get("direction")
    if direction is None:
        direction = "back"
    elif type(direction) is not str or direction not in DIRECTIONS:
        fail("direction", f"expected one of {', '.join(DIRECTIONS)}, got {_show(direction)}")
    budget = q.get("budget_tokens")
    if type(budget) is not int or budget < 1 or budget > BUDGET_MAX:
        fail("budget_tokens", "missing; expected an integer > 0" if "budget_tokens" not in q
             else f"expected an integer in [1, {BUDGET_MAX}], {_got(budget)}")
    text = q.get("text")
    if text is not None and type(text) is not str:
        fail("text", f"expected a string or null, {_got(text)}")
    out = {"qid": qid, "type": typ, "text": text, "filters": out_f, "as_of": as_of,
           "direction": direction, "budget_tokens": budget}
    for key, v in q.items():
        if key not in _KNOWN_QUERY_KEYS:
            out[key] = v
    return out


def read_queries(corpus_dir) -> tuple[list[dict], np.ndarray]:
    """Read ``queries.jsonl`` + ``query_vectors.npy``. Returns (queries, float32 [nq, dim]) where
    each query is normalised: keys qid, type, text (or None), filters (only given keys), as_of
    (or None), direction (default "back"), budget_tokens, plus unknown fields verbatim."""
    d = Path(corpus_dir)
    meta = read_meta(d)
    dim = meta["dim"]
    qpath, vpath = d / "queries.jsonl", d / "query_vectors.npy"
    qfile = str(qpath)
    if not qpath.is_file():
        raise CorpusError("file not found", file=qfile)
    vectors = _load_npy(vpath)
    counter = [0]
    queries: list = []
    first: dict = {}
    for k, q in enumerate(_jsonl_objects(qpath, counter)):
        def fail(field, msg, _ln=k + 1):
            raise CorpusError(msg, file=qfile, line=_ln, field=field)
        qq = _check_query(q, fail)
        if qq["qid"] in first:
            fail("qid", f"duplicate qid {_show(qq['qid'])} (first used at line {first[qq['qid']]})")
        first[qq["qid"]] = k + 1
        queries.append(qq)
    nq = len(queries)
    n_meta = meta.get("n_queries")
    if n_meta is not None and n_meta != nq:
        raise CorpusError(f"meta.json n_queries = {n_meta} but the file has {nq} query lines",
                          file=qfile, line=min(nq, n_meta) + 1, field="n_queries")
    vec = validate_vectors(vectors, nq, dim, file=str(vpath), lines_of="queries.jsonl")
    return queries, vec
