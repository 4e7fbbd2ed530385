"""Result containers."""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np


@dataclass
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


@dataclass
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
