"""Small column helpers shared by the segment writer and reader: 64-bit string keys,
string blobs behind an offsets array, and sorted-key lookups."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import NPY_LOAD_ERRORS, CorruptIndexError


def key64(s: str) -> int:
    """Stable 64-bit key of a string (blake2b; independent of Python's hash seed)."""
    return int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little")


def keys64(strings: Sequence[str]) -> np.ndarray:
    return np.fromiter((key64(s) for s in strings), dtype=np.uint64, count=len(strings))


def write_strings(directory: Path, stem: str, strings: Sequence[str]) -> list[str]:
    """Write utf-8 strings as `<stem>.bin` + `<stem>_off.npy` (int64 [n+1]); return file names."""
    encoded = [s.encode() for s in strings]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    (directory / f"{stem}.bin").write_bytes(b"".join(encoded))
    np.save(directory / f"{stem}_off.npy", offsets)
    return [f"{stem}.bin", f"{stem}_off.npy"]


class StringColumn:
    """Read-only view of a string blob; `col[i]` decodes one string. Both files are memory-mapped
    and held as plain ndarray views of the maps: indexing a `np.memmap` builds a memmap object
    per access, which made reading an answer's ids and entity names cost microseconds each."""

    def __init__(self, directory: Path, stem: str, n: int):
        try:
            self._off = np.asarray(np.load(directory / f"{stem}_off.npy", mmap_mode="r", allow_pickle=False))
        except NPY_LOAD_ERRORS as e:
            raise CorruptIndexError(f"{directory / (stem + '_off.npy')}: unreadable .npy file ({e})") from None
        if self._off.shape != (n + 1,):
            raise CorruptIndexError(f"{directory / (stem + '_off.npy')}: shape {self._off.shape}, expected ({n + 1},)")
        path = directory / f"{stem}.bin"
        size = path.stat().st_size
        self._blob = np.asarray(np.memmap(path, dtype=np.uint8, mode="r")) if size else np.zeros(0, np.uint8)
        if n and (int(self._off[-1]) != size or int(self._off[0]) != 0):
            raise CorruptIndexError(f"{path}: size {size} does not match its offsets")

    def __len__(self) -> int:
        return len(self._off) - 1

    def __getitem__(self, i: int) -> str:
        return bytes(self._blob[int(self._off[i]):int(self._off[i + 1])]).decode()

    def startswith(self, prefixes) -> np.ndarray:
        """Per string, whether it starts with one of `prefixes`: compared as UTF-8 bytes in the
        map, one byte position at a time over the strings still matching (nothing decoded)."""
        starts, lens = np.asarray(self._off[:-1], np.int64), np.diff(self._off)
        out = np.zeros(len(lens), bool)
        for prefix in prefixes:
            want = np.frombuffer(str(prefix).encode(), np.uint8)
            cand = np.flatnonzero(~out & (lens >= len(want)))
            for j, byte in enumerate(want.tolist()):
                cand = cand[self._blob[starts[cand] + j] == byte]
            out[cand] = True
        return out


class KeyLookup:
    """Sorted 64-bit keys -> values, for id and entity maps without a Python dict."""

    def __init__(self, keys: np.ndarray, values: np.ndarray):
        order = np.argsort(keys, kind="stable")
        self.keys, self.values = keys[order], values[order]

    def get(self, query: np.ndarray) -> np.ndarray:
        """Values for `query` keys, -1 where absent."""
        query = np.asarray(query, dtype=np.uint64)
        out = np.full(len(query), -1, dtype=np.int64)
        if len(self.keys) == 0 or len(query) == 0:
            return out
        pos = np.searchsorted(self.keys, query)
        pos_c = np.minimum(pos, len(self.keys) - 1)
        hit = self.keys[pos_c] == query
        out[hit] = self.values[pos_c[hit]]
        return out


def csr_from_pairs(src: np.ndarray, n: int, *columns: np.ndarray) -> tuple[np.ndarray, ...]:
    """Group `columns` by `src` (stable, so each group keeps its input order): (ptr, *columns)."""
    order = np.argsort(src, kind="stable")
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(src, minlength=n), out=ptr[1:])
    return (ptr, *(c[order] for c in columns))
