"""What a query returns: `Answer`, a token-budgeted timeline of events with why-paths."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .types import Event


@dataclass
class Answer:
    query_type: str
    events: list[Event]
    current: Optional[Event] = None
    seeds: list[Event] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    budget_tokens: int = 0
    partial: bool = False                                      # some shard did not answer
    missing_shards: list[int] = field(default_factory=list)   # ... which ones

    @property
    def tokens(self) -> int:
        return sum(e.tokens for e in self.events)

    def headline(self) -> str:
        s = f"{len(self.events)} events, {self.tokens}/{self.budget_tokens} tokens"
        if self.current is not None:
            s += f"; current: {self.current.id} ({self.current.date})"
        return s

    def to_dict(self) -> dict:
        from dataclasses import asdict
        return {"type": self.query_type, "current": self.current.id if self.current else None,
                "events": [asdict(e) for e in self.events], "timings_ms": self.timings,
                "budget_tokens": self.budget_tokens, "partial": self.partial,
                "missing_shards": list(self.missing_shards)}
