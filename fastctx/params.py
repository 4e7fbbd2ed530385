"""Tuning knobs, in one place, each named for the trade-off it controls."""
from __future__ import annotations

from dataclasses import dataclass, fields


def _check_positive(obj) -> None:
    for f in fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v < 0:
            raise ValueError(f"{type(obj).__name__}.{f.name} must be >= 0, got {v!r}")


@dataclass(frozen=True)
class BuildParams:
    """How segments are built."""
    hnsw_m: int = 16                 # graph degree: higher = better recall, bigger index, slower build
    hnsw_ef_construction: int = 200  # build-time beam: higher = better graph, slower build
    hnsw_min_rows: int = 4096        # below this a segment has no HNSW and is always scanned exactly
    bitmap_min_postings: int = 512   # entities with at least this many events get a stored roaring bitmap
    threads: int = 2                 # threads for HNSW construction
    seed: int = 100                  # HNSW level-assignment seed (builds are deterministic)
    # Implicit supersession: a later event of one of `slot_kinds` that mentions the same "slot"
    # entity (a name starting with one of `slot_prefixes`) replaces the earlier one as current.
    slot_prefixes: tuple[str, ...] = ("decision:",)
    slot_kinds: tuple[str, ...] = ("decision",)
    # Derived `similar` links (derive.similarity_links): each event's `similar_k` most similar
    # earlier events within `similar_window_days`, if they stand out from the event's other
    # candidates by `similar_z` standard deviations; scans at most `similar_max_candidates`
    # earlier events per event (bounds the build's cost at large N). 0 disables.
    similar_k: int = 0
    # Derived `same_actor` links: each event links to the previous `actor_k` events of each of
    # its actors (entities starting with one of `actor_prefixes`) within `actor_window_days`:
    # one sitting (an hour) of one person is usually one piece of work. Walked at a weak weight;
    # never counted as causal evidence (see AnswerParams.chain_evidence).
    actor_k: int = 2
    actor_window_days: float = 1.0 / 24
    actor_prefixes: tuple[str, ...] = ("person:", "user:", "author:", "speaker:")
    # Derived `relands` links: a later event whose title repeats that of a reverted event
    # re-lands the change and supersedes the revert (derive.reland_links). False disables.
    relands: bool = True
    # Derived entities (derive.py): identifier terms of the text (walked, rarity-weighted) and
    # the words of text and entity names (lexical seeds). Access lists are always derived.
    text_terms: bool = True
    text_words: bool = True
    similar_window_days: float = 120.0
    similar_z: float = 2.5
    similar_max_candidates: int = 8192

    def __post_init__(self):
        _check_positive(self)
        if self.hnsw_m < 2:
            raise ValueError(f"BuildParams.hnsw_m must be >= 2, got {self.hnsw_m}")


@dataclass(frozen=True)
class SearchParams:
    """How seeds are searched; see `planner.plan_segment` for how these pick a strategy."""
    exact_max_rows: int = 2048        # allowed rows at or below this: exact scan (no graph at all)
    hnsw_min_fraction: float = 0.005  # allowed fraction below this: exact scan (over-fetch would be huge)
    hnsw_candidate_cost: float = 12.0 # one over-fetched HNSW candidate costs about this many gathered row scores
    slice_row_cost: float = 0.3       # a row of a contiguous (time-window) scan, relative to a gathered row
    ef_search: int = 64               # HNSW beam for unfiltered search; raised to the over-fetch size
    overfetch: float = 2.0            # HNSW over-fetch factor on k / allowed fraction
    max_rounds: int = 4               # over-fetch doublings before falling back to an exact scan

    def __post_init__(self):
        _check_positive(self)
        if not 0 <= self.hnsw_min_fraction <= 1:
            raise ValueError(f"SearchParams.hnsw_min_fraction must be in [0, 1], got {self.hnsw_min_fraction}")
