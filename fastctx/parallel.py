"""Independent parts of one query's work on a few threads.

The kernels release the GIL (`kernels._jit`), so an exact scan cut into row ranges, or a batch of
per-seed expansions cut into groups, runs on several cores at once; each part computes exactly
what the whole call would have for its rows or groups, so the results are identical. One pool of
worker threads serves the process. A part that finds no idle worker runs in the calling thread:
under load (a server answering several queries at once) queries do not queue behind each other's
parts, they run as they would in one thread. A forked child starts without the parent's workers.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional, Sequence

_pool: Optional[ThreadPoolExecutor] = None
_idle: Optional[threading.Semaphore] = None     # workers free right now
_size = 0
_lock = threading.Lock()


def _workers(n: int) -> tuple[ThreadPoolExecutor, threading.Semaphore]:
    """The process's workers, at least `n` of them (a bigger pool replaces a smaller one; parts
    running on the old one finish there)."""
    global _pool, _idle, _size
    with _lock:
        if _pool is None or _size < n:
            _pool, _idle, _size = ThreadPoolExecutor(n, thread_name_prefix="fastctx-part"), threading.Semaphore(n), n
        return _pool, _idle


def _forget_workers() -> None:
    """In a forked child: the parent's worker threads do not exist there; start afresh."""
    global _pool, _idle, _size, _lock
    _pool, _idle, _size, _lock = None, None, 0, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_workers)


def _run(fn: Callable, args: tuple, idle: threading.Semaphore):
    try:
        return fn(*args)
    finally:
        idle.release()


def run_parts(parts: Sequence[tuple[Callable, tuple]]) -> list:
    """`[fn(*args) for fn, args in parts]`, the first part in the calling thread and the others
    on idle workers (or in the calling thread when none is idle)."""
    if len(parts) <= 1:
        return [fn(*args) for fn, args in parts]
    pool, idle = _workers(len(parts) - 1)
    futures = [pool.submit(_run, fn, args, idle) if idle.acquire(blocking=False) else None
               for fn, args in parts[1:]]
    out = [parts[0][0](*parts[0][1])]
    out += [f.result() if f is not None else fn(*args) for f, (fn, args) in zip(futures, parts[1:])]
    return out


def cuts(n: int, threads: int, min_part: int) -> list[tuple[int, int]]:
    """[lo, hi) bounds of at most `threads` near-equal parts of `n` items, none smaller than
    `min_part` (one part when `n` is small: handing a part to a worker costs ~50 us)."""
    k = max(1, min(int(threads), n // max(int(min_part), 1)))
    bounds = [n * i // k for i in range(k + 1)]
    return list(zip(bounds[:-1], bounds[1:]))
