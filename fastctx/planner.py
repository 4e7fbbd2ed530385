"""Per-segment seed plans, chosen from the exact allowed count (roaring cardinality).

Strategies:
  skip         nothing allowed
  exact-slice  exact scan of a contiguous row range (a time window): one BLAS gemv, no gather
  exact-rows   exact scan of the allowed rows (gathered)
  hnsw         HNSW search, everything allowed
  hnsw-filter  HNSW with adaptive over-fetch, candidates checked against the allowed set in bulk

Exact wins when few rows are allowed (cost ~ allowed rows) or when the allowed fraction is so
small that over-fetching k / fraction candidates from the graph would cost more than a scan:
the filtered graph search fetches about k * overfetch / fraction candidates, each costing about
`hnsw_candidate_cost` gathered row scores; a row of a contiguous time-window scan costs
`slice_row_cost` of a gathered one (both measured in bench/bench_seeds.py).
"""
from __future__ import annotations

from dataclasses import dataclass

from .filters import Allowed
from .params import SearchParams


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
    fetch_cost = params.hnsw_candidate_cost * k * params.overfetch * n / a
    scan_cost = a * (params.slice_row_cost if allowed.is_range else 1.0)
    if fetch_cost >= scan_cost:
        return SegmentPlan(name, n, a, exact, f"over-fetch cost ~{fetch_cost:.0f} >= scan cost ~{scan_cost:.0f}")
    return SegmentPlan(name, n, a, "hnsw-filter", f"over-fetch cost ~{fetch_cost:.0f} < scan cost ~{scan_cost:.0f}")
