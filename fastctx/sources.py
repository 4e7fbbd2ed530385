"""Ways events come in: orgmem folders (with or without ``vectors.npy``), JSONL files or stdin
(``-``), Parquet files, pandas DataFrames, Arrow tables and in-memory lists of mappings.

Every reader ends in corpus.py's validation (`parse_records` / `read_event_lines`), so the rules
and the located errors are the same whatever the way in. `read_source` returns the parsed
columns plus the vectors when the source carries them; `to_batch` computes missing vectors
from the events' text with an encoder (batched, with progress).

Tabular sources (DataFrame, Arrow, Parquet) have one row per event and the ``events.jsonl``
field names as columns; missing cells (None/NaN) count as absent fields, list columns hold
entities / links, a ``time`` column may also be a timestamp (naive ones are UTC), and whole
floats in ``time`` / ``tokens`` are integers (pandas stores an integer column with gaps as float).
"""
from __future__ import annotations

import datetime as dt
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from .corpus import EventBatch, parse_records, read_event_lines, read_events, read_meta
from .errors import CorpusError

EMBED_BATCH = 256          # texts per encoder call (bounded memory, progress between calls)
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
PARQUET_SUFFIXES = (".parquet", ".pq")


@dataclass
class Source:
    """Parsed events of one source: `cols` (or a ready `batch`), the vectors when the source has
    them, the corpus meta (``meta.json`` of a folder, else {}), and `where(k)` -> (file, line)
    naming event k in errors."""

    origin: str
    cols: Optional[dict] = None
    vectors: Optional[np.ndarray] = None
    batch: Optional[EventBatch] = None
    meta: dict = field(default_factory=dict)
    where: Callable[[int], tuple] = lambda k: (None, None)

    @property
    def n(self) -> int:
        return len(self.batch) if self.batch is not None else len(self.cols["ids"])

    @property
    def has_vectors(self) -> bool:
        return self.batch is not None or self.vectors is not None


def describe(source: Any) -> str:
    """A short name of a source, for messages."""
    if isinstance(source, (str, Path)):
        return "stdin" if str(source) == "-" else str(source)
    return type(source).__name__


def read_source(source: Any, *, progress: Callable[[str, int, int], None] | None = None) -> Source:
    """Read any supported source into a `Source` (nothing is encoded here)."""
    if isinstance(source, EventBatch):
        return Source("batch", batch=source)
    if isinstance(source, (str, Path)):
        return _read_path(source, progress)
    mod = type(source).__module__.split(".")[0]
    if mod == "pandas" and hasattr(source, "to_dict"):
        return _from_rows("DataFrame", source.to_dict(orient="records"))
    if mod == "pyarrow" and hasattr(source, "to_pylist"):
        return _from_rows("Arrow table", source.to_pylist())
    if isinstance(source, (list, tuple)):
        return _from_rows("records", list(source))
    raise CorpusError(f"cannot read events from a {type(source).__name__}: expected a corpus folder, a .jsonl or "
                      ".parquet file, '-' (stdin), a pandas DataFrame, an Arrow table or a list of event mappings",
                      file=describe(source))


def _read_path(source, progress) -> Source:
    lines = None     # a file's line count is unknown before reading it: progress starts at "encode"
    if str(source) == "-":
        cols = read_event_lines(sys.stdin.buffer, name="<stdin>", progress=lines)
        return Source("<stdin>", cols=cols, where=lambda k: ("<stdin>", k + 1))
    path = Path(source)
    if path.is_dir():
        return _read_folder(path, progress)
    if not path.exists():
        raise CorpusError("not found (expected a corpus folder, a .jsonl or .parquet file, or '-')", file=str(path))
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        from .extras import require
        pq = require("pyarrow.parquet", "arrow", "reading Parquet files")
        try:
            table = pq.read_table(path)
        except Exception as e:   # ArrowInvalid, OSError: not a Parquet file
            raise CorpusError(f"not a readable Parquet file ({str(e)[:200]})", file=str(path)) from None
        return _from_rows(str(path), table.to_pylist())   # errors name FILE[row]
    if suffix in JSONL_SUFFIXES:
        cols = read_event_lines(path, progress=lines)
        return Source(str(path), cols=cols, where=lambda k, f=str(path): (f, k + 1))
    raise CorpusError(f"unknown file type {suffix or '(none)'!r}: expected .jsonl (one event per line) or .parquet",
                      file=str(path))


def _read_folder(path: Path, progress) -> Source:
    """An orgmem folder: with ``vectors.npy`` exactly as before (meta.json required); without it
    a text-only corpus (meta.json optional; its ``n_events``, when given, is still checked)."""
    efile = path / "events.jsonl"
    if (path / "vectors.npy").exists():
        meta = read_meta(path)
        batch = read_events(path, progress=(lambda d: progress("read", d, meta["n_events"])) if progress else None)
        return Source(str(path), batch=batch, meta=meta, where=lambda k: (str(efile), k + 1))
    meta = read_meta(path, text_only=True) if (path / "meta.json").exists() else {}
    if not efile.is_file():
        raise CorpusError("file not found (a corpus folder holds an events.jsonl)", file=str(efile))
    total = meta.get("n_events")
    cols = read_event_lines(efile, progress=(lambda d: progress("read", d, total)) if progress and total else None)
    n = len(cols["ids"])
    if meta.get("n_events") is not None and meta["n_events"] != n:
        raise CorpusError(f"meta.json n_events = {meta['n_events']} but the file has {n} event lines",
                          file=str(efile), line=min(n, meta["n_events"]) + 1, field="n_events")
    return Source(str(path), cols=cols, meta=meta, where=lambda k: (str(efile), k + 1))


def _from_rows(origin: str, rows: list) -> Source:
    cols = parse_records([_plain(r) for r in rows], origin=origin)
    return Source(origin, cols=cols, where=lambda k: (f"{origin}[{k}]", None))


def _plain(row: Any) -> Any:
    """A table row as an event mapping: missing cells dropped, arrays as lists, a timestamp
    `time` as Unix seconds. Anything else is left for the validator to judge."""
    if not isinstance(row, dict):
        return row
    out = {}
    for key, v in row.items():
        v = _value(v)
        if v is None:
            continue
        if key == "time" and isinstance(v, dt.datetime):
            v = int((v if v.tzinfo else v.replace(tzinfo=dt.timezone.utc)).timestamp())
        elif key in ("time", "tokens") and isinstance(v, float) and v.is_integer():
            v = int(v)    # an integer column with missing cells is float in pandas
        out[key] = v
    return out


def _value(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, np.ndarray):
        return [_value(x) for x in v.tolist()]
    if isinstance(v, list):
        return [_value(x) for x in v]
    if isinstance(v, dict):
        return {a: _value(b) for a, b in v.items() if _value(b) is not None}
    if isinstance(v, np.generic):
        return v.item()
    if type(v).__name__ in ("Timestamp", "NaTType"):   # pandas, without importing it
        return None if type(v).__name__ == "NaTType" else v.to_pydatetime()
    return v


# ------------------------------------------------------------------------------------ vectors
def embed(encoder, src: Source, *, progress: Callable[[str, int, int], None] | None = None,
          batch_size: int = EMBED_BATCH) -> np.ndarray:
    """Vectors of `src`'s events from their ``text`` (an event without text is an error naming
    it). A text the encoder maps to an all-zero vector (no words it knows, e.g. "+1") is
    embedded from the event's kind, source and entities instead, so every event has a vector."""
    cols = src.cols
    texts = cols["texts"]
    for k, t in enumerate(texts):
        if t is None or not t.strip():
            f, ln = src.where(k)
            raise CorpusError(f"event {cols['ids'][k]!r} has no text and the source has no vectors: give it a "
                              "text (or give vectors for every event)", file=f, line=ln, field="text")
    n, dim = len(texts), int(encoder.dim)
    out = np.empty((n, dim), dtype=np.float32)
    for lo in range(0, n, batch_size):
        hi = min(n, lo + batch_size)
        v = np.asarray(encoder.encode(texts[lo:hi]), dtype=np.float32)
        if v.shape != (hi - lo, dim):
            raise CorpusError(f"the encoder returned shape {v.shape} for {hi - lo} texts, expected ({hi - lo}, {dim})",
                              file=src.origin, field="text")
        out[lo:hi] = v
        if progress:
            progress("encode", hi, n)
    ptr, names = cols["entity_ptr"], cols["entity_names"]
    for k in np.flatnonzero(~(np.abs(out).max(axis=1) > 0)).tolist():
        ents = names[int(ptr[k]):int(ptr[k + 1])]
        out[k] = np.asarray(encoder.encode([" ".join([cols["kinds"][k], cols["sources"][k], *ents])]),
                            dtype=np.float32)[0]
    return out


def to_batch(src: Source, encoder=None, *, progress=None) -> EventBatch:
    """The validated batch of `src`, encoding the text when the source has no vectors."""
    if src.batch is not None:
        return src.batch
    if src.vectors is None:
        if encoder is None:
            raise CorpusError("the events come without vectors and no encoder is known to compute them "
                              "(pass encoder=, or give vectors)", file=src.origin)
        return EventBatch.with_vectors(src.cols, embed(encoder, src, progress=progress), origin=src.origin)
    return EventBatch.with_vectors(src.cols, src.vectors, origin=src.origin)

