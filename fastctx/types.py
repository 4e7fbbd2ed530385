"""Result containers: `Event` (one event with its payload) and `Hits` (seed hits of a batch)."""
from __future__ import annotations

import datetime as _dt
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

import numpy as np


@dataclass(repr=False)
class Event:
    """One event of an answer, with its payload."""
    id: str
    time: int
    source: str
    kind: str
    tokens: int
    score: float
    text: Optional[str] = None
    entities: list[str] = field(default_factory=list)
    links: list[list[str]] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)
    shard: int = 0
    row: int = -1
    # set by causal-chain answers
    why: Optional[str] = None
    parent: Optional[str] = None
    hops: int = 0
    superseded_by: Optional[str] = None
    superseded_at: Optional[int] = None

    @property
    def date(self) -> str:
        return _dt.datetime.fromtimestamp(self.time, _dt.timezone.utc).strftime("%Y-%m-%d")

    @property
    def datetime(self) -> _dt.datetime:
        """The event's time as an aware UTC datetime."""
        return _dt.datetime.fromtimestamp(self.time, _dt.timezone.utc)

    def to_dict(self) -> dict:
        """Plain JSON-ready dict: every field, plus `date` (YYYY-MM-DD), `datetime` (ISO 8601,
        UTC) and `superseded_date`."""
        d = asdict(self)
        d["date"], d["datetime"] = self.date, iso(self.time)
        d["superseded_date"] = iso(self.superseded_at)[:10] if self.superseded_at is not None else None
        if d["score"] != d["score"]:      # NaN (an event fetched by id has no score) is not JSON
            d["score"] = None
        return d

    def __repr__(self) -> str:
        parts = [repr(self.id), self.date, f"{self.source}/{self.kind}", f"{self.tokens} tok"]
        if self.score == self.score:
            parts.append(f"score {self.score:.3f}")
        if self.why:
            parts.append(f"why {self.why!r}")
        if self.superseded_by:
            parts.append(f"superseded by {self.superseded_by!r}")
        return f"Event({', '.join(parts)})"


def iso(t: int) -> str:
    """Unix seconds -> ISO 8601 UTC ("2024-03-01T12:00:00Z")."""
    return _dt.datetime.fromtimestamp(int(t), _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(repr=False)
class Hits:
    """Seed hits of a batch of queries: 2-D arrays, one row per query, best first.
    Empty slots have row -1 and score NaN; `counts[i]` slots of row i are filled."""
    shards: np.ndarray   # int32 [nq, k]
    rows: np.ndarray     # int64 [nq, k]  global row inside the shard
    scores: np.ndarray   # float32 [nq, k]
    counts: np.ndarray   # int64 [nq]
    timings: list[dict[str, float]]
    _fetch: Callable[[int, int, float], Event] = field(repr=False, default=None)

    def __len__(self) -> int:
        return len(self.counts)

    def events(self, i: int = 0) -> list[Event]:
        """Payloads of query i's hits (fetched on demand: the second retrieval phase)."""
        return [self._fetch(int(self.shards[i, j]), int(self.rows[i, j]), float(self.scores[i, j]))
                for j in range(int(self.counts[i]))]

    def ids(self, i: int = 0) -> list[str]:
        return [e.id for e in self.events(i)]

    def to_list(self, i: int = 0) -> list[dict]:
        """Query i's hits as plain dicts (`Event.to_dict`), best first."""
        return [e.to_dict() for e in self.events(i)]

    def __repr__(self) -> str:
        counts = self.counts.tolist()
        shown = ", ".join(map(str, counts[:8])) + (", ..." if len(counts) > 8 else "")
        ms = sum(t.get("seeds_ms", 0.0) for t in self.timings)
        return f"Hits({len(self)} quer{'y' if len(self) == 1 else 'ies'}, k={self.rows.shape[1]}, " \
               f"hits per query [{shown}], seeds {ms:.1f} ms)"
