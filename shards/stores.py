"""What a coordinator's query learns from its shards, held densely by global row: owners,
vectors, the neighbour lists of the shard-walking expansion (kernels/frontier.py) and the entity
lists of reached rows. Each is per query; `np.zeros` is calloc, so only the pages of rows a query
touches cost anything."""
from __future__ import annotations

import numpy as np

from fastctx.errors import ShardUnavailableError


def cat_ptr(ptrs: list) -> np.ndarray:
    """Concatenate CSR pointer arrays (each starting at 0) into one."""
    if not ptrs:
        return np.zeros(1, np.int64)
    out, base = [np.zeros(1, np.int64)], 0
    for p in ptrs:
        p = np.asarray(p, np.int64)
        out.append(p[1:] + base)
        base += int(p[-1])
    return np.concatenate(out)


class Owners:
    """The shard of each global row a query has learned, dense (shard + 1; 0 = unknown).
    np.zeros is calloc: only the pages of rows touched cost anything. On a graph replica every
    row's shard is known (`adopt`), and what replies teach is not needed."""

    def __init__(self, n: int):
        self.a = np.zeros(max(int(n), 1), np.int64)
        self.known: np.ndarray | None = None

    def adopt(self, owner: np.ndarray) -> None:
        """Read every row's shard from `owner` (a graph replica's, shared: never written)."""
        self.known = owner

    def of(self, rows: np.ndarray) -> np.ndarray:
        """Shard per row of `rows` (in range), -1 where unknown."""
        return self.known[rows] if self.known is not None else self.a[rows] - 1

    def __setitem__(self, r, s) -> None:
        if not 0 <= r < len(self.a):
            raise ShardUnavailableError(f"a shard named row {r}, outside 0..{len(self.a) - 1}: the cluster changed "
                                        f"build during the query; ask again")
        self.a[r] = int(s) + 1

    def set_many(self, rows: np.ndarray, shards) -> None:
        """`self[r] = s` for each pair (rows already range-checked by the caller)."""
        self.a[np.asarray(rows, np.int64)] = np.asarray(shards, np.int64) + 1

    def __getitem__(self, r) -> int:
        s = self.get(r, -1)
        if s < 0:
            raise KeyError(r)
        return s

    def get(self, r, default=None):
        if not 0 <= r < len(self.a):
            return default
        s = int(self.known[r]) if self.known is not None else int(self.a[r]) - 1
        return default if s < 0 else s


class ReachStore:
    """Entity lists (global ids, holder shards) of rows that replies reached, per global row."""

    def __init__(self, n: int):
        n = max(int(n), 1)
        self.ok = np.zeros(n, np.uint8)
        self.lo, self.hi = np.zeros(n, np.int64), np.zeros(n, np.int64)
        self.gid = self.hlo = self.hhi = self.hold = np.zeros(0, np.int64)

    def add(self, rows, ptr, gid, hold_ptr, hold) -> None:
        rows, ptr = np.asarray(rows, np.int64), np.asarray(ptr, np.int64)
        hold_ptr = np.asarray(hold_ptr, np.int64)
        base, hbase = len(self.gid), len(self.hold)
        self.lo[rows], self.hi[rows] = base + ptr[:-1], base + ptr[1:]
        self.ok[rows] = 1
        self.gid = np.concatenate([self.gid, np.asarray(gid, np.int64)])
        self.hlo = np.concatenate([self.hlo, hbase + hold_ptr[:-1]])
        self.hhi = np.concatenate([self.hhi, hbase + hold_ptr[1:]])
        self.hold = np.concatenate([self.hold, np.asarray(hold, np.int64)])


class Vectors:
    """Vectors a query has fetched: one growing float32 matrix and a dense row -> position map."""

    def __init__(self, n: int, dim: int):
        self.at = np.zeros(max(int(n), 1), np.int64)   # position + 1; 0 = not fetched
        self.buf = np.zeros((256, int(dim)), np.float32)
        self.n = 0

    def missing(self, rows: np.ndarray) -> np.ndarray:
        return rows[self.at[rows] == 0]

    def put(self, rows: np.ndarray, vecs: np.ndarray) -> None:
        """Store the vectors of distinct `rows` (rows already held keep theirs)."""
        new = self.at[rows] == 0
        rows, vecs = rows[new], np.asarray(vecs, np.float32)[new]
        if self.n + len(rows) > len(self.buf):
            buf = np.zeros((max(2 * len(self.buf), self.n + len(rows)), self.buf.shape[1]), np.float32)
            buf[:self.n] = self.buf[:self.n]
            self.buf = buf
        self.buf[self.n:self.n + len(rows)] = vecs
        self.at[rows] = np.arange(self.n + 1, self.n + len(rows) + 1)
        self.n += len(rows)

    def get(self, rows: np.ndarray) -> np.ndarray:
        idx = self.at[rows] - 1
        out = self.buf[np.maximum(idx, 0)]
        out[idx < 0] = 0.0
        return out


class NeighbourStore:
    """The neighbour lists fetched so far in one query (see kernels/frontier.py): per global row
    known flag, slice, edges examined, and time; entries in arrays grown by doubling."""

    def __init__(self, n: int):
        n = max(int(n), 1)
        self.ok = np.zeros(n, np.uint8)
        self.lo, self.hi, self.tot, self.tim = (np.zeros(n, np.int64) for _ in range(4))
        self.fill = 0
        self.v, self.w, self.k, self.i, self.pos = entries(1024)

    def reserve(self, extra: int) -> None:
        need = self.fill + int(extra)
        if need <= len(self.v):
            return
        cap = max(need, 2 * len(self.v))
        new = entries(cap)
        for a, b in zip(new, (self.v, self.w, self.k, self.i, self.pos)):
            a[:self.fill] = b[:self.fill]
        self.v, self.w, self.k, self.i, self.pos = new


def entries(cap: int):
    return (np.empty(cap, np.int64), np.empty(cap, np.float64), np.empty(cap, np.int8), np.empty(cap, np.int64),
            np.empty(cap, np.int64))
