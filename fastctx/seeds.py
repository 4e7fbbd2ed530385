"""Executes a segment plan: top-k local rows and cosine scores for one query vector."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from .codes import Codes, candidates, worth_it
from .filters import Allowed
from .kernels.scan import code_dot_range, code_dot_rows, dot_range, dot_rows
from .parallel import cuts, run_parts
from .params import SearchParams
from .planner import SegmentPlan

EMPTY = (np.zeros(0, np.int64), np.zeros(0, np.float32))


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k best scores, best first; ties by position, at the k-th score too (the
    same rows whichever other rows were scanned)."""
    if len(scores) > k:
        part = np.argpartition(-scores, k - 1)[:k]
        kth = scores[part].min()
        above = np.flatnonzero(scores > kth)
        if len(above) + np.count_nonzero(scores == kth) > k:     # a tie across the line: lowest positions
            part = np.concatenate([above, np.flatnonzero(scores == kth)[:k - len(above)]])
    else:
        part = np.arange(len(scores))
    return part[np.lexsort((part, -scores[part]))]


# A scan of fewer rows than this stays in one thread (fastctx.parallel).
SPLIT_MIN_ROWS = 2048


def _scan(kernels: tuple, matrices: tuple, q: np.ndarray, lo: int, rows: Optional[np.ndarray], n: int,
          threads: int) -> np.ndarray:
    """Scores of `rows` (or of the range [lo, lo + n) when None) by a (range, rows) kernel pair
    over `matrices`, a large scan cut into up to `threads` parts run at once (fastctx.parallel;
    the same scores)."""
    by_range, by_rows = kernels
    parts = [(by_range, (*matrices, lo + a, lo + b, q)) if rows is None else (by_rows, (*matrices, rows[a:b], q))
             for a, b in cuts(n, threads, SPLIT_MIN_ROWS)]
    out = run_parts(parts)
    return out[0] if len(out) == 1 else np.concatenate(out)


def scan_scores(vectors: np.ndarray, q: np.ndarray, allowed: Allowed, rows: Optional[np.ndarray],
                threads: int = 1) -> np.ndarray:
    """float32 scores of the allowed rows (`rows`, or the range `allowed.lo:hi` when None):
    `dot_rows` / `dot_range`, in up to `threads` parts."""
    q = np.ascontiguousarray(q, dtype=np.float32)
    n = allowed.hi - allowed.lo if rows is None else len(rows)
    return _scan((dot_range, dot_rows), (vectors,), q, allowed.lo, rows, n, threads)


def exact_search(vectors: np.ndarray, q: np.ndarray, allowed: Allowed, k: int, threads: int = 1,
                 codes: Optional[Codes] = None):
    """The k allowed rows most similar to `q`, best first, ties by row. With the segment's int8
    `codes` (fastctx.codes) a large scan reads the codes first and scores in float32 only the
    rows that could be among the k best: the same rows and scores as the plain scan."""
    q = np.ascontiguousarray(q, dtype=np.float32)
    rows = None if allowed.is_range else allowed.rows()
    n = allowed.hi - allowed.lo if rows is None else len(rows)
    if k < n and worth_it(codes, n, k):
        approx = _scan((code_dot_range, code_dot_rows), (codes.codes, codes.scale), q, allowed.lo, rows, n, threads)
        pos = candidates(codes, approx, q, allowed.lo, rows, k)
        rows = pos + allowed.lo if rows is None else rows[pos]
        scores = scan_scores(vectors, q, allowed, rows, threads)
        best = top_k(scores, k)
        return rows[best], scores[best]
    scores = scan_scores(vectors, q, allowed, rows, threads)
    best = top_k(scores, k)
    return (best + allowed.lo if rows is None else rows[best]), scores[best]


def _hnsw_query(index, q: np.ndarray, k: int, ef: int):
    index.set_ef(max(ef, k))
    labels, dist = index.knn_query(q[None, :], k=k, num_threads=1)
    return labels[0].astype(np.int64), (1.0 - dist[0]).astype(np.float32)


def _hnsw_knn(index, qs: np.ndarray, k: int, ef: int):
    """One graph call for a batch: (labels [nq, k] int64, cosine scores [nq, k] float32)."""
    index.set_ef(max(ef, k))
    labels, dist = index.knn_query(qs, k=k, num_threads=1)
    return labels.astype(np.int64), (1.0 - dist).astype(np.float32)


def hnsw_search(index, n: int, q: np.ndarray, allowed: Allowed, k: int, params: SearchParams,
                vectors: np.ndarray, codes: Optional[Codes] = None):
    if allowed.count == n:
        return _hnsw_query(index, q, min(k, n), params.ef_search)
    fetch = min(n, math.ceil(k * n / allowed.count * params.overfetch) + 16)
    for _ in range(params.max_rounds):
        labels, scores = _hnsw_query(index, q, fetch, max(params.ef_search, fetch))
        ok = allowed.contains(labels)
        if ok.sum() >= min(k, allowed.count) or fetch >= n:
            rows, scores = labels[ok], scores[ok]
            order = np.lexsort((rows, -scores))[:k]
            return rows[order], scores[order]
        fetch = min(n, fetch * 2)
    return exact_search(vectors, q, allowed, k, params.scan_threads, codes)  # the filter defeats the graph: scan


def search_segment(seg, plan: SegmentPlan, allowed: Allowed, q: np.ndarray, k: int, params: SearchParams):
    """(local rows, scores) best first, at most k."""
    if plan.strategy == "skip" or k <= 0:
        return EMPTY
    if plan.strategy.startswith("exact"):
        return exact_search(seg.vectors, q, allowed, k, params.scan_threads, seg.codes)
    return hnsw_search(seg.hnsw, seg.n, q, allowed, k, params, seg.vectors, seg.codes)


def allowed_mask(allowed: Allowed, n: int) -> np.ndarray:
    """A dense bool mask of the allowed rows, built once per `Allowed` (plans are cached, so a
    repeated filter pays it once): candidate checks become one gather instead of a bitmap build."""
    mask = getattr(allowed, "_dense", None)
    if mask is None:
        mask = np.zeros(n, bool)
        if allowed.bitmap is None:
            mask[allowed.lo:allowed.hi] = True
        else:
            mask[np.frombuffer(allowed.bitmap.to_array(), np.uint32)] = True
        allowed._dense = mask
    return mask


def search_segment_batch(seg, plan: SegmentPlan, allowed: Allowed, qs: np.ndarray, k: int,
                         params: SearchParams) -> tuple[np.ndarray, np.ndarray]:
    """`search_segment` for many queries at once: (local rows [nq, k], scores [nq, k]), best first
    per query, unfilled slots row -1 and score -inf. The same answers as one `search_segment` per
    query (hnswlib answers each row of a batch on its own), with one graph call per round."""
    nq = len(qs)
    rows = np.full((nq, k), -1, np.int64)
    scores = np.full((nq, k), -np.inf, np.float32)
    if plan.strategy == "skip" or nq == 0:
        return rows, scores
    if plan.strategy.startswith("exact"):
        for i in range(nq):
            r, s = exact_search(seg.vectors, qs[i], allowed, k, params.scan_threads, seg.codes)
            rows[i, :len(r)], scores[i, :len(s)] = r, s
        return rows, scores
    index, n = seg.hnsw, seg.n
    if allowed.count == n:
        kk = min(k, n)
        rows[:, :kk], scores[:, :kk] = _hnsw_knn(index, qs, kk, params.ef_search)
        return rows, scores
    mask = allowed_mask(allowed, n)
    want = min(k, allowed.count)
    fetch = min(n, math.ceil(k * n / allowed.count * params.overfetch) + 16)
    pending = np.arange(nq)
    for _ in range(params.max_rounds):
        labels, sc = _hnsw_knn(index, qs[pending], fetch, max(params.ef_search, fetch))
        ok = mask[labels]
        done = (ok.sum(axis=1) >= want) | (fetch >= n)
        for j in np.flatnonzero(done).tolist():
            r, s = labels[j][ok[j]], sc[j][ok[j]]
            order = np.lexsort((r, -s))[:k]
            rows[pending[j], :len(order)], scores[pending[j], :len(order)] = r[order], s[order]
        pending = pending[~done]
        if not len(pending):
            return rows, scores
        fetch = min(n, fetch * 2)
    for i in pending.tolist():   # the filter defeats the graph: scan instead
        r, s = exact_search(seg.vectors, qs[i], allowed, k, params.scan_threads, seg.codes)
        rows[i, :len(r)], scores[i, :len(s)] = r, s
    return rows, scores
