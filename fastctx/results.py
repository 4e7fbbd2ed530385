"""What a query returns: `Answer`, a token-budgeted timeline of events with why-paths, and the
ways to take it out: plain dicts, a pandas DataFrame, an Arrow table, prompt-ready text."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Optional

from .errors import InvalidQueryError
from .types import Event


def estimate_tokens(text: str) -> int:
    """Rough token count of text we add around events (about 4 characters a token)."""
    return (len(text) + 3) // 4


@dataclass(repr=False)
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

    def __repr__(self) -> str:
        s = f"Answer({self.query_type}, {self.headline()}"
        if self.partial:
            s += f", partial: shards {self.missing_shards} missing"
        return s + ")"

    def _is_current(self, e: Event) -> bool:
        return self.current is not None and e.id == self.current.id

    def to_dict(self) -> dict:
        return {"type": self.query_type, "current": self.current.id if self.current else None,
                "events": [asdict(e) for e in self.events], "timings_ms": self.timings,
                "budget_tokens": self.budget_tokens, "partial": self.partial,
                "missing_shards": list(self.missing_shards)}

    def to_list(self) -> list[dict]:
        """One plain dict per event, in answer order (`Event.to_dict` plus `current`: whether it
        is the answer's current fact)."""
        return [{**e.to_dict(), "current": self._is_current(e)} for e in self.events]

    def to_pandas(self):
        """A pandas DataFrame, one row per event; `datetime` is a UTC timestamp column."""
        from .extras import require
        pd = require("pandas", "pandas", "Answer.to_pandas()")
        df = pd.DataFrame(self.to_list(), columns=_COLUMNS)
        df["datetime"] = pd.to_datetime(df["time"], unit="s", utc=True)
        return df

    def to_arrow(self):
        """A pyarrow Table, one row per event (`datetime` a UTC timestamp; `attrs`, free-form per
        event, a JSON string)."""
        from .extras import require
        pa = require("pyarrow", "arrow", "Answer.to_arrow()")
        rows = self.to_list()
        cols = {c: [r[c] for r in rows] for c in _COLUMNS}
        cols["attrs"] = [json.dumps(a, sort_keys=True) for a in cols["attrs"]]
        cols["datetime"] = cols["time"]
        types = {"datetime": pa.timestamp("s", tz="UTC"), "time": pa.int64(), "tokens": pa.int64(),
                 "score": pa.float64(), "entities": pa.list_(pa.string()), "links": pa.list_(pa.list_(pa.string())),
                 "shard": pa.int32(), "row": pa.int64(), "hops": pa.int32(), "superseded_at": pa.int64(),
                 "current": pa.bool_()}   # every other column is a string
        return pa.table({c: pa.array(v, type=types.get(c, pa.string())) for c, v in cols.items()})

    def to_context(self, max_tokens: Optional[int] = None) -> str:
        """Prompt-ready text: a header, then one block per event in timeline order (id, date,
        source/kind, why-path, "superseded by X on DATE" marks, the current fact marked, text),
        within `max_tokens` (default: the answer's budget; event text counts its stored tokens,
        the lines around it about 4 characters a token). The current fact is kept first when
        the budget cannot hold everything; a last line says how many events were left out."""
        if max_tokens is None:
            max_tokens = self.budget_tokens or None
        if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                       or max_tokens < 1):
            raise InvalidQueryError(f"max_tokens must be a positive integer or None, got {max_tokens!r}")
        head = f"Retrieved context ({self.query_type} question): {len(self.events)} events"
        if self.current is not None:
            head += f"; current fact: {self.current.id} ({self.current.date})"
        if self.partial:
            head += f"; PARTIAL: shards {self.missing_shards} did not answer"
        used = estimate_tokens(head)
        blocks = {i: self._block(i, e) for i, e in enumerate(self.events)}
        order = sorted(blocks, key=lambda i: not self._is_current(self.events[i]))   # current first
        kept = set()
        for i in order:
            cost = estimate_tokens(blocks[i][0]) + blocks[i][1]
            if max_tokens is None or used + cost <= max_tokens:
                kept.add(i)
                used += cost
        lines = [head, ""]
        for n, i in enumerate(sorted(kept), 1):
            lines += [f"[{n}] " + blocks[i][0] + blocks[i][2], ""]
        if len(kept) < len(self.events):
            lines.append(f"({len(self.events) - len(kept)} more events left out: over the {max_tokens}-token budget)")
        return "\n".join(lines).rstrip() + "\n"

    def _block(self, i: int, e: Event) -> tuple[str, int, str]:
        """(lines before the text, the text's tokens, the text part) of event i."""
        head = f"{e.id} | {e.date} | {e.source}/{e.kind}"
        if self._is_current(e):
            head += " | CURRENT"
        if e.superseded_by:
            on = f" on {e.to_dict()['superseded_date']}" if e.superseded_at is not None else ""
            head += f" | SUPERSEDED by {e.superseded_by}{on}"
        if e.why:
            head += f"\nwhy: {e.why}"
        text = (e.text or "").strip()
        return head, (e.tokens if text else 0), ("\n" + text if text else "")


_COLUMNS = ["id", "date", "datetime", "time", "source", "kind", "tokens", "score", "current", "why", "parent",
            "hops", "superseded_by", "superseded_at", "superseded_date", "text", "entities", "links", "attrs",
            "shard", "row"]
