"""Text encoders. The built-in one needs no model download and is fully deterministic.

`HashingEncoder` turns text into lower-cased word unigrams and bigrams, hashes each feature
(blake2b, so the result does not depend on Python's per-process hash seed) to a handful of
signed coordinates (a fixed sparse random projection), weights features by 1/sqrt(count) to
damp repetition, and L2-normalises. A text of several lines whose first line is its subject (a
commit message, a ticket, a mail) adds that line's own vector, times `title_weight`, before
the last normalisation: a question is usually worded like a subject, and a long body would
otherwise outweigh it. `SentenceTransformerEncoder` wraps a sentence-transformers
model (the optional `st` extra, imported only when used). Any object with `dim` and
`encode(texts) -> float32[n, dim]` can be used instead.

Every index records its encoder in its marker (`spec()`, see docs/FORMAT.md "Encoder"), so
opening it re-creates the encoder (`from_record`) and a different one is refused (`check_match`).
On the command line encoders are named by a spec string (`from_spec`): ``hashing``,
``hashing:DIM`` or ``sentence-transformers:NAME_OR_PATH``.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import math
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Optional, Protocol, Sequence, runtime_checkable

import numpy as np

from .errors import FastctxError


class EncoderError(FastctxError, ValueError):
    """An encoder spec is malformed, an index's recorded encoder cannot be re-created, or a
    given encoder differs from the one the index was built with."""

_WORD = re.compile(r"[a-z0-9_]+")
MAX_DIM = 65_536      # largest dimension an encoder record may give (a shard manifest's bound too)
MAX_NNZ = 16          # blake2b digests at most 64 bytes: 16 coordinates of 4 bytes per feature


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
    normalize = True

    def __init__(self, dim: int = 256, nnz: int = 6, bigram_weight: float = 0.5, title_weight: float = 1.0):
        if dim < 8:
            raise ValueError(f"HashingEncoder: dim must be >= 8, got {dim}")
        if not 1 <= nnz <= MAX_NNZ:
            raise ValueError(f"HashingEncoder: nnz must be in [1, {MAX_NNZ}], got {nnz}")
        if not title_weight >= 0:
            raise ValueError(f"HashingEncoder: title_weight must be >= 0, got {title_weight}")
        self.dim, self.nnz, self.bigram_weight = int(dim), int(nnz), float(bigram_weight)
        self.title_weight = float(title_weight)
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
        v = self._bag(text)
        if self.title_weight > 0:
            first, sep, rest = text.strip().partition("\n")
            if sep and _WORD.search(rest.lower()):     # a subject line above a body
                v = v + np.float32(self.title_weight) * self._bag(first)
                norm = float(np.linalg.norm(v))
                return v / norm if norm > 0 else v
        return v

    def _bag(self, text: str) -> np.ndarray:
        """The L2-normalised bag of hashed unigrams and bigrams of `text` (zero without words)."""
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

    def spec(self) -> dict:
        rec = {"name": self.name, "model": None, "dim": self.dim, "normalize": True}
        if (self.nnz, self.bigram_weight) != (6, 0.5):   # defaults are left out (older markers lack them)
            rec.update(nnz=self.nnz, bigram_weight=self.bigram_weight)
        if self.title_weight:                             # a marker without it predates subject lines: 0
            rec["title_weight"] = self.title_weight
        return rec

    @staticmethod
    def settings(rec: dict) -> tuple:
        """(nnz, bigram_weight, title_weight) a hashing record describes, its defaults filled in."""
        return (int(rec.get("nnz", 6)), float(rec.get("bigram_weight", 0.5)), float(rec.get("title_weight", 0.0)))


@contextlib.contextmanager
def _no_source_kernels():
    """Hide this checkout's top-level ``kernels/`` folder (the source of `fastctx.kernels`) while
    transformers imports: run from a source tree's root, it would shadow the PyPI package
    ``kernels`` that transformers uses. An installed fastctx has no such folder: nothing changes."""
    spec = importlib.util.find_spec("fastctx.kernels")
    own = Path(spec.origin).resolve().parent if spec and spec.origin else None
    hidden = [p for p in sys.path if own is not None and (Path(p or ".").resolve() / "kernels") == own]
    shadow = sys.modules.get("kernels")
    ours = shadow is not None and own is not None and Path(getattr(shadow, "__file__", "") or "/").resolve().parent == own
    if not hidden and not ours:
        yield
        return
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if p not in hidden]
    if ours:
        del sys.modules["kernels"]
    try:
        yield
    finally:
        sys.path[:] = saved + [p for p in sys.path if p not in saved]
        if ours and "kernels" not in sys.modules:
            sys.modules["kernels"] = shadow


class SentenceTransformerEncoder:
    """A sentence-transformers model (a hub name or a local folder), loaded on first use of
    `encode` (the `st` extra; set HF_HUB_OFFLINE=1 to forbid downloads). Rows are
    L2-normalised unless `normalize=False`."""

    name = "sentence-transformers"

    def __init__(self, model: str, *, normalize: bool = True, batch_size: int = 64, device: Optional[str] = None,
                 dim: Optional[int] = None):
        if not isinstance(model, str) or not model.strip():
            raise EncoderError(f"sentence-transformers: expected a model name or path, got {model!r}")
        local = Path(model).expanduser()
        # a local folder is recorded absolute so the index opens from any working directory
        self.model = str(local.resolve()) if local.is_dir() else model
        self.normalize, self.batch_size, self.device = bool(normalize), int(batch_size), device
        self._st = None
        self._dim = dim

    def _load(self):
        if self._st is None:
            from .extras import require
            with _no_source_kernels():
                st = require("sentence_transformers", "st", f"the encoder sentence-transformers:{self.model}")
                try:
                    self._st = st.SentenceTransformer(self.model, device=self.device or "cpu")
                except Exception as e:   # OSError, ValueError, HTTP errors...: all mean "no such model here"
                    raise EncoderError(f"sentence-transformers: cannot load model {self.model!r} "
                                       f"({type(e).__name__}: {str(e)[:300]})") from None
            dim_of = getattr(self._st, "get_embedding_dimension", None) or self._st.get_sentence_embedding_dimension
            got = int(dim_of())
            if self._dim is not None and got != self._dim:
                raise EncoderError(f"sentence-transformers model {self.model!r} has dim {got}, "
                                   f"but {self._dim} was recorded for it")
            self._dim = got
        return self._st

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._load()
        return self._dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        model = self._load()
        out = model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=self.normalize,
                           convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(out, dtype=np.float32).reshape(len(texts), self.dim)

    def spec(self) -> dict:
        return {"name": self.name, "model": self.model, "dim": self.dim, "normalize": self.normalize}

    def __repr__(self) -> str:
        return f"SentenceTransformerEncoder({self.model!r}, dim={self._dim})"


def spec_of(encoder: Any) -> dict:
    """What an index records about `encoder`: the built-in ones describe themselves; any other
    object with `dim` and `encode` is recorded as "custom" (with its class, for messages)."""
    spec = getattr(encoder, "spec", None)
    if callable(spec):
        return dict(spec())
    dim = getattr(encoder, "dim", None)
    if not callable(getattr(encoder, "encode", None)) or isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
        raise EncoderError(f"an encoder needs an integer `dim` and an `encode(texts)` method, got {encoder!r}")
    cls = type(encoder)
    return {"name": "custom", "model": f"{cls.__module__}.{cls.__qualname__}", "dim": int(dim),
            "normalize": None}


def from_spec(spec: Any) -> Encoder:
    """An encoder from a spec string: ``hashing`` (256 dims), ``hashing:DIM``,
    ``sentence-transformers:NAME_OR_PATH`` (``st:`` for short). An encoder object is returned
    as is (after checking it has `dim` and `encode`)."""
    if not isinstance(spec, str):
        spec_of(spec)
        return spec
    name, sep, arg = spec.strip().partition(":")
    if name in ("hashing", HashingEncoder.name):
        if not sep:
            return HashingEncoder()
        if not arg.isdigit() or not 8 <= int(arg) <= MAX_DIM:
            raise EncoderError(f"encoder {spec!r}: expected hashing:DIM with DIM an integer in [8, {MAX_DIM}]")
        return HashingEncoder(dim=int(arg))
    if name in ("sentence-transformers", "st"):
        if not arg.strip():
            raise EncoderError(f"encoder {spec!r}: expected sentence-transformers:NAME_OR_PATH")
        return SentenceTransformerEncoder(arg.strip())
    raise EncoderError(f"unknown encoder {spec!r}: expected 'hashing', 'hashing:DIM' or "
                       "'sentence-transformers:NAME_OR_PATH'")


# the fields each known encoder records (docs/FORMAT.md "Encoder")
_RECORD_FIELDS = {
    HashingEncoder.name: ("name", "model", "dim", "normalize", "nnz", "bigram_weight", "title_weight"),
    SentenceTransformerEncoder.name: ("name", "model", "dim", "normalize"),
    "custom": ("name", "model", "dim", "normalize"),
}


def record_problem(rec: Any, *, unknown_ok: bool = False) -> Optional[tuple[Optional[str], str]]:
    """What is wrong with an encoder record (a marker's "encoder", meta.json's
    params.encoder_spec): (the field, None for the record itself; what is wrong), or None.

    The one place for these rules, so a record is judged before it is written into an index or
    used to allocate vectors: every field a known encoder reads is checked for type and range
    (other fields are kept as given and never read: a converter's annotation). `unknown_ok`: an encoder
    name this fastctx does not know passes with only `dim` checked (an index written by a newer
    version still opens; using its encoder raises EncoderError)."""
    from .corpus import _got, _show   # corpus imports this module: imported late
    if not isinstance(rec, dict):
        return None, f"expected an object (a recorded encoder), {_got(rec)}"
    name = rec.get("name")
    if not isinstance(name, str) or not name:
        return "name", f"expected a non-empty string, {_got(name)}"
    fields = _RECORD_FIELDS.get(name)
    if fields is None and not unknown_ok:
        return "name", f"unknown encoder {_show(name)} (expected one of {', '.join(_RECORD_FIELDS)})"

    def bad(key: str, expected: str) -> tuple[str, str]:
        return key, f"expected {expected}, {_got(rec[key])}" if key in rec else f"missing; expected {expected}"

    hashing, st = name == HashingEncoder.name, name == SentenceTransformerEncoder.name
    lo, dim = (8 if hashing else 1), rec.get("dim")
    if not (_int_in(dim, lo, MAX_DIM) or (dim is None and (st or fields is None))):
        return bad("dim", f"an integer in [{lo}, {MAX_DIM}]" + (" or null" if st else ""))
    if fields is None:
        return None
    model = rec.get("model")
    if hashing and model is not None:
        return bad("model", "null (the hashing encoder has no model)")
    if st and not (isinstance(model, str) and model.strip()):
        return bad("model", "a model name or path")
    if name == "custom" and not (model is None or isinstance(model, str)):
        return bad("model", "a string (the encoder's class) or null")
    if rec.get("normalize") is not None and not isinstance(rec["normalize"], bool):
        return bad("normalize", "true, false or null")
    if "nnz" in rec and not _int_in(rec["nnz"], 1, MAX_NNZ):
        return bad("nnz", f"an integer in [1, {MAX_NNZ}]")
    if "bigram_weight" in rec and not _finite(rec["bigram_weight"]):
        return bad("bigram_weight", "a finite number")
    if "title_weight" in rec and not (_finite(rec["title_weight"]) and rec["title_weight"] >= 0):
        return bad("title_weight", "a finite number >= 0")
    return None


def _int_in(v: Any, lo: int, hi: int) -> bool:
    return type(v) is int and lo <= v <= hi     # not bool, not 384.0


def _finite(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


def from_record(rec: Any) -> Optional[Encoder]:
    """Re-create the encoder an index recorded (its marker's "encoder"); None when none is
    recorded. A "custom" one cannot be re-created: EncoderError says to pass encoder= again."""
    if rec is None:
        return None
    problem = record_problem(rec, unknown_ok=True)
    if problem:
        field, msg = problem
        raise EncoderError(f"the index records a malformed encoder{f' (field {field!r})' if field else ''}: {msg}")
    name, dim = rec["name"], rec.get("dim")
    if name == HashingEncoder.name:
        nnz, bigram_weight, title_weight = HashingEncoder.settings(rec)
        return HashingEncoder(dim=int(dim), nnz=nnz, bigram_weight=bigram_weight, title_weight=title_weight)
    if name == SentenceTransformerEncoder.name:
        return SentenceTransformerEncoder(rec["model"], normalize=rec.get("normalize", True) is not False,
                                          dim=int(dim) if dim is not None else None)
    if name == "custom":
        raise EncoderError(f"the index was built with a custom encoder ({rec.get('model')}, dim {dim}); "
                           "pass the same encoder again (encoder= when opening the index)")
    raise EncoderError(f"the index records an unknown encoder {name!r} (built by a newer fastctx?)")


def describe(rec: Optional[dict]) -> str:
    if not rec:
        return "none"
    model = rec.get("model")
    extra = ""
    if rec.get("name") == HashingEncoder.name:
        nnz, bigram_weight, title_weight = HashingEncoder.settings(rec)
        extra = f", nnz {nnz}, bigram_weight {bigram_weight:g}, title_weight {title_weight:g}"
    return f"{rec.get('name')}{':' + str(model) if model else ''} (dim {rec.get('dim')}{extra})"


def check_match(recorded: Optional[dict], encoder: Any, *, where: str = "the index") -> None:
    """Refuse `encoder` when `recorded` names a different encoder (name, model or dim).
    A custom encoder given for a custom record is checked by dim only (its class may move)."""
    if not recorded:
        return
    given = spec_of(encoder)
    keys = ("name", "dim") if recorded.get("name") == "custom" == given["name"] else ("name", "model", "dim")
    differs = any(given.get(k) != recorded.get(k) for k in keys)
    if not differs and given["name"] == HashingEncoder.name:   # same name and dim, other hashing settings
        differs = HashingEncoder.settings(given) != HashingEncoder.settings(recorded)
    if differs:
        raise EncoderError(f"{where} was built with encoder {describe(recorded)}, not {describe(given)}: "
                           "query and add with the encoder it was built with (or leave the encoder out "
                           "to use the recorded one)")


def default_encoder(dim: int = 256) -> Encoder:
    return HashingEncoder(dim=dim)
