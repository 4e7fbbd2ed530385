"""Compaction policy: a pure function of segment metadata (tested as such).

Only *adjacent* segments are merged, and the merged segment keeps their entities in order, so
global entity ids never move (see docs/FORMAT.md). Rows do move (deleted rows are dropped and
the merged rows are re-sorted by time); stored references are id keys, resolved on open.
"""
from __future__ import annotations

from dataclasses import dataclass


# Offline builds and compaction cut rows by event time into segments of at least this many rows
# (`build.time_cuts`): a time window then covers whole segments, searched unfiltered. Each segment
# costs unfiltered search one more graph walk; bench/README.md ("Time-cut segments") has the
# measurement behind this value.
DEFAULT_SEGMENT_ROWS = 1_000_000


@dataclass(frozen=True)
class SegmentMeta:
    n: int            # rows stored
    n_deleted: int    # rows the deletion overlay hides (dropped for good by compaction)

    @property
    def live(self) -> int:
        return self.n - self.n_deleted


@dataclass(frozen=True)
class CompactionPolicy:
    small_rows: int = 50_000        # segments with fewer live rows than this are "small"
    max_rows: int = 1_000_000       # a merge never produces more live rows than this
    min_run: int = 2                # merge runs of at least this many adjacent small segments
    max_segments: int = 8           # ... or any run, when more segments than this exist
    deleted_ratio: float = 0.2      # a segment this much deleted is rewritten (alone if need be)
    segment_rows: int = DEFAULT_SEGMENT_ROWS  # a merged run is cut by time into pieces of >= this (0: never)

    def __post_init__(self):
        if self.segment_rows and self.segment_rows < self.small_rows:
            # a cut piece below small_rows would be merged again by the next compaction
            raise ValueError(f"CompactionPolicy.segment_rows ({self.segment_rows}) must be 0 or "
                             f">= small_rows ({self.small_rows})")


def plan(segments: list[SegmentMeta], policy: CompactionPolicy = CompactionPolicy(),
         force: bool = False) -> list[tuple[int, int]]:
    """Half-open ranges [i, j) of adjacent segments to rewrite, disjoint and ascending.

    Greedy, left to right: a run of adjacent segments is extended while the next one is small
    (or `force`) and the merged live size stays <= max_rows. A run is kept when it has at least
    `min_run` members (2 when there are more than `max_segments` segments, or with `force`),
    or when any member is at least `deleted_ratio` deleted (compaction drops deleted rows; with
    `force`, any deleted row). `force` merges everything that fits under max_rows.
    """
    out: list[tuple[int, int]] = []
    many = force or len(segments) > policy.max_segments
    min_run = 2 if many else max(2, policy.min_run)

    def worth(i: int, j: int) -> bool:
        if j - i >= min_run:
            return True
        ratio = 0.0 if force else policy.deleted_ratio  # force: any deleted row is worth dropping
        return any(s.n_deleted and s.n_deleted / s.n >= ratio for s in segments[i:j])

    i = 0
    while i < len(segments):
        s = segments[i]
        if not (force or s.live < policy.small_rows or (s.n and s.n_deleted / s.n >= policy.deleted_ratio)):
            i += 1
            continue
        j, total = i + 1, s.live
        while j < len(segments):
            t = segments[j]
            if not (force or t.live < policy.small_rows) or total + t.live > policy.max_rows:
                break
            total += t.live
            j += 1
        if worth(i, j):
            out.append((i, j))
        i = j
    return out
