"""fastctx.kernels: Numba kernels only. Plain arrays in and out; imports numpy and numba alone.

Nothing here imports from ``fastctx``: kernels are leaf code that the index
layers call with plain, C-contiguous NumPy arrays (dtype conventions in
``_jit``).  Every kernel is ``njit(cache=True, nogil=True)``; call
:func:`warm_up` once per process (or ``make warm`` once per machine) so the
first query does not pay for compilation.
"""

import numpy as np

from .scan import code_dot_range, code_dot_rows, dot_range, dot_rows, later_max_dot
from .expand import (
    DIR_BACK,
    DIR_BOTH,
    DIR_FORWARD,
    VIA_ENTITY,
    VIA_LINK,
    VIA_SEED,
    ExpandGraph,
    ExpandLimits,
    expand_batch,
    expand_best_first,
    expand_best_first_batch,
    expand_ppr_push,
    expand_ppr_push_batch,
)
from .walks import walk_parts

__all__ = [
    "code_dot_range",
    "code_dot_rows",
    "dot_range",
    "dot_rows",
    "later_max_dot",
    "DIR_BACK",
    "DIR_BOTH",
    "DIR_FORWARD",
    "VIA_ENTITY",
    "VIA_LINK",
    "VIA_SEED",
    "ExpandGraph",
    "ExpandLimits",
    "expand_batch",
    "expand_best_first",
    "expand_best_first_batch",
    "expand_ppr_push",
    "expand_ppr_push_batch",
    "walk_parts",
    "warm_up",
]


def _tiny_graph():
    """Three events, one link 1 -> 0, one entity shared by all."""
    i64 = np.int64
    return dict(
        times=np.array([0, 10, 20], dtype=i64),
        allowed=np.ones(3, dtype=np.uint8),
        out_ptr=np.array([0, 0, 1, 1], dtype=i64),
        out_dst=np.array([0], dtype=i64),
        out_type=np.zeros(1, dtype=np.int8),
        in_ptr=np.array([0, 1, 1, 1], dtype=i64),
        in_src=np.array([1], dtype=i64),
        in_type=np.zeros(1, dtype=np.int8),
        link_weight=np.ones(1, dtype=np.float32),
        ev_ptr=np.array([0, 1, 2, 3], dtype=i64),
        ev_ent=np.zeros(3, dtype=i64),
        ent_ptr=np.array([0, 3], dtype=i64),
        ent_rows=np.array([0, 1, 2], dtype=i64),
        ent_weight=np.ones(1, dtype=np.float32),
    )


def warm_up():
    """Compile (or load from cache) every kernel with the canonical dtypes."""
    g = _tiny_graph()
    seeds = np.array([1], dtype=np.int64)
    seed_scores = np.ones(1, dtype=np.float32)
    common = (*ExpandGraph(**g), *ExpandLimits(
        direction=3, time_lo=-(2**62), time_hi=2**62, max_hops=4, max_results=10, max_edge_visits=1000,
        hub_postings=100, hub_window_s=3600, max_per_entity=8, min_score=0.0, time_scale_s=86400.0))
    expand_best_first(seeds, seed_scores, *common)
    expand_ppr_push(seeds, seed_scores, *common, 0.15, 1e-4)
    one = np.zeros(1, dtype=np.int64)
    walk_parts(one, one, one, g["ent_ptr"], g["times"], g["ent_rows"], np.array([3], dtype=np.int64),
               3, 8, -(2**62), 2**62, 2**62, 3600, 100, np.zeros(0, dtype=np.uint8))
