"""Per-segment seed plans, chosen from the exact allowed count (roaring cardinality).

Strategies:
  skip         nothing allowed
  exact-slice  exact scan of a contiguous row range (a time window): one BLAS gemv, no gather
  exact-rows   exact scan of the allowed rows (gathered)
  hnsw         HNSW search, everything allowed (answered by the walk below with an all-allowed
               mask: the graph is read in place, no hnswlib load, see Index._WALK_PLANS)
  hnsw-walk    the filtered graph walk (kernels/hnsw_search.py) over the segment's HNSW graph, the
               allowed mask checked inside the walk (the kernel's ACORN-style two-hop mode is
               used below `WALK_TWO_HOP_BELOW` allowed, its beam mode below `SearchParams.walk_beam_below`:
               both off, see below; `explain` names the walk)
  hnsw-filter  HNSW with adaptive over-fetch, candidates checked against the allowed set in bulk
               (fractions below `WALK_MIN_FRACTION`, where the walk loses recall)

Exact wins when few rows are allowed (cost ~ allowed rows) or when the allowed fraction is so
small that over-fetching k / fraction candidates from the graph would cost more than a scan:
the filtered graph search fetches about k * overfetch / fraction candidates, each costing about
`hnsw_candidate_cost` gathered row scores; a row of a contiguous time-window scan costs
`slice_row_cost` of a gathered one (both measured in bench/bench_seeds.py). From
`WALK_MIN_FRACTION` up the filtered walk takes over-fetch's place (it was as fast or faster at
equal recall at every fraction measured there): `walk_cost` puts it at `WALK_SLOT_CANDIDATES`
candidates per beam slot, times 1 / sqrt(fraction) for the plain walk (it scores disallowed nodes
too) and 2 for two-hop.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .filters import Allowed
from .params import SearchParams

# The filtered walk (measured at 200k and 500k x 384, bench/README.md "Filtered graph walk"): the
# planner runs the plain walk. The two-hop walk (`WALK_TWO_HOP_BELOW`, 0: never) was 2x faster at
# 10% allowed at 200k, but at 500k its recall stalled (0.51 on a 10% time window at any ef, 0.94 at
# ef 32 on a random 10%) while the plain walk reached 0.97-0.99 at ef 10; no walk below
# WALK_MIN_FRACTION (at 5% a scan was as fast). A walk
# costs about WALK_SLOT_CANDIDATES over-fetched candidates (SearchParams.hnsw_candidate_cost
# gathered row scores each) per beam slot (ef): 0.13-0.36 ms at ef 16-64 unfiltered, against
# ~0.09 us per gathered row; the plain walk grew as 1/sqrt(fraction), the two-hop walk stayed
# about 2x the unfiltered cost from 10% to 20%.
WALK_TWO_HOP_BELOW = 0.0
WALK_MIN_FRACTION = 0.08
WALK_SLOT_CANDIDATES = 5.0
# The beam walk (kernels/hnsw_search.py BEAM: the unfiltered walk, answering with the allowed rows
# it meets, as faiss's filtered search does) runs below `SearchParams.walk_beam_below` allowed; 0
# (the default): never, so answers stay those of the plain walk. Its cost does not grow as the
# fraction falls: at 10% of 200k x 384 it reached recall 0.98 at ef 48 in 82 us, where the plain
# walk took 113 us at ef 10 (its lowest) for 0.999; at 30% the plain walk was ahead (59 us, 0.968,
# against 65 us, 0.962 at ef 32). The beam needs a wider ef for the same recall, so switching it
# on is a choice of ef_search too.


def walk_kind(fraction: float, params: SearchParams) -> str:
    """Which walk a filtered segment runs at this allowed fraction: "two-hop", "beam" or "plain"."""
    if fraction < WALK_TWO_HOP_BELOW:
        return "two-hop"
    return "beam" if fraction < params.walk_beam_below else "plain"


def walk_cost(n: int, a: int, params: SearchParams, k: int) -> float:
    """Estimated cost of the filtered walk, in gathered row scores (see the module doc)."""
    per_slot = params.hnsw_candidate_cost * WALK_SLOT_CANDIDATES * max(params.ef_search, k)
    how = walk_kind(a / n, params)
    return per_slot * (2.0 if how == "two-hop" else 1.0 if how == "beam" else (n / a) ** 0.5)


@dataclass(frozen=True)
class SegmentPlan:
    segment: str
    rows: int
    allowed: int
    strategy: str
    reason: str

    @property
    def fraction(self) -> float:
        return self.allowed / self.rows if self.rows else 0.0

    def __str__(self) -> str:
        return (f"{self.segment}: {self.strategy:<11} allowed {self.allowed}/{self.rows} "
                f"({100 * self.fraction:.2f}%) - {self.reason}")


def plan_segment(name: str, n: int, has_hnsw: bool, allowed: Allowed, params: SearchParams,
                 k: int = 10) -> SegmentPlan:
    a = allowed.count
    exact = "exact-slice" if allowed.is_range else "exact-rows"
    if a == 0:
        return SegmentPlan(name, n, a, "skip", "no allowed rows")
    if not has_hnsw:
        return SegmentPlan(name, n, a, exact, "segment too small for HNSW")
    if a <= params.exact_max_rows:
        return SegmentPlan(name, n, a, exact, f"allowed <= exact_max_rows ({params.exact_max_rows})")
    if a == n:
        return SegmentPlan(name, n, a, "hnsw", "no filter applies")
    if a / n < params.hnsw_min_fraction:
        return SegmentPlan(name, n, a, exact, f"allowed fraction < hnsw_min_fraction ({params.hnsw_min_fraction})")
    scan_cost = a * (params.slice_row_cost if allowed.is_range else 1.0)
    if a / n >= WALK_MIN_FRACTION:
        cost = walk_cost(n, a, params, k)
        if cost >= scan_cost:
            return SegmentPlan(name, n, a, exact, f"walk cost ~{cost:.0f} >= scan cost ~{scan_cost:.0f}")
        return SegmentPlan(name, n, a, "hnsw-walk",
                           f"{walk_kind(a / n, params)} walk cost ~{cost:.0f} < scan cost ~{scan_cost:.0f}")
    fetch_cost = params.hnsw_candidate_cost * k * params.overfetch * n / a
    if fetch_cost >= scan_cost:
        return SegmentPlan(name, n, a, exact, f"over-fetch cost ~{fetch_cost:.0f} >= scan cost ~{scan_cost:.0f}")
    return SegmentPlan(name, n, a, "hnsw-filter", f"over-fetch cost ~{fetch_cost:.0f} < scan cost ~{scan_cost:.0f}")


def walk_search(seg, plan: SegmentPlan, mask: np.ndarray, qs: np.ndarray, k: int, params: SearchParams):
    """Run an `hnsw-walk` plan for a batch of queries: (local rows [nq, k], scores [nq, k]), best
    first, unfilled slots -1 / -inf. `mask`: the dense allowed mask of the segment's rows (empty:
    every row allowed)."""
    how = walk_kind(plan.fraction, params)
    return seg.walk.search(qs, mask.view(np.uint8), k, max(params.ef_search, k), how == "two-hop", how == "beam")


def walk_hits(seg, plan: SegmentPlan, mask: np.ndarray, k: int, params: SearchParams, row_base: int, shard: int):
    """A function of the queries running this plan's walk and answering in `types.Hits` form
    (shards, rows + row_base, scores, counts: the answer of a search that walks this one segment
    only); made once per cached plan (`GraphArrays.hits_runner`)."""
    how = walk_kind(plan.fraction, params)
    return seg.walk.hits_runner(mask.view(np.uint8), k, max(params.ef_search, k), how == "two-hop", row_base, shard,
                                how == "beam")
