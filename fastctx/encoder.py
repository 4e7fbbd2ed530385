"""Text encoders. The built-in one needs no model download and is fully deterministic.

`HashingEncoder` turns text into lower-cased word unigrams and bigrams, hashes each feature
(blake2b, so the result does not depend on Python's per-process hash seed) to a handful of
signed coordinates (a fixed sparse random projection), weights features by 1/sqrt(count) to
damp repetition, and L2-normalises. Any object with `dim` and `encode(texts) -> float32[n, dim]`
can be used instead, e.g. a wrapper around a locally installed sentence-embedding model.
"""
from __future__ import annotations

import hashlib
import re
from collections import Counter
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

_WORD = re.compile(r"[a-z0-9_]+")


def _stem(word: str) -> str:
    """Crude plural folding so 'payments' and 'payment' share a feature."""
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


@runtime_checkable
class Encoder(Protocol):
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Return float32 [len(texts), dim], each row L2-normalised (zero text -> zero row)."""
        ...


class HashingEncoder:
    """Feature-hashing encoder: unigrams + bigrams -> `nnz` signed coordinates each."""

    name = "hashing-v1"

    def __init__(self, dim: int = 256, nnz: int = 6, bigram_weight: float = 0.5):
        if dim < 8:
            raise ValueError(f"HashingEncoder: dim must be >= 8, got {dim}")
        self.dim, self.nnz, self.bigram_weight = int(dim), int(nnz), float(bigram_weight)
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _feature(self, feat: str) -> tuple[np.ndarray, np.ndarray]:
        hit = self._cache.get(feat)
        if hit is None:
            digest = hashlib.blake2b(feat.encode(), digest_size=4 * self.nnz).digest()
            raw = np.frombuffer(digest, dtype="<u4")
            cols = (raw % self.dim).astype(np.int64)
            signs = np.where((raw >> 31) & 1, -1.0, 1.0).astype(np.float32)
            hit = (cols, signs)
            if len(self._cache) < 200_000:
                self._cache[feat] = hit
        return hit

    def encode_one(self, text: str) -> np.ndarray:
        words = [_stem(w) for w in _WORD.findall(text.lower())]
        feats = Counter(words)
        bigrams = Counter(f"{a} {b}" for a, b in zip(words, words[1:]))
        v = np.zeros(self.dim, dtype=np.float32)
        for group, weight in ((feats, 1.0), (bigrams, self.bigram_weight)):
            for feat, count in group.items():
                cols, signs = self._feature(feat)
                np.add.at(v, cols, signs * (weight / np.sqrt(count)))
        norm = float(np.linalg.norm(v))
        return v / norm if norm > 0 else v

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            out[i] = self.encode_one(t)
        return out


def default_encoder(dim: int = 256) -> Encoder:
    return HashingEncoder(dim=dim)
