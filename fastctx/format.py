"""On-disk format: the index marker, shard manifests, checksums and atomic writes.

Layout (docs/FORMAT.md has the prose specification)::

    INDEX/fastctx.json                 {"format": "fastctx-index", "format_version": 1, "shards": [...]}
    INDEX/shard-000/MANIFEST.json      the live version of the shard (replaced atomically)
    INDEX/shard-000/seg-000001/...     immutable segment files, one file per component

Every file a manifest names carries its byte size and CRC-32; readers check them before
trusting a byte (sizes always, checksums as asked; see `verify_files`).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Any, Iterable

from .errors import CorruptIndexError, FormatError

FORMAT_NAME = "fastctx-index"
FORMAT_VERSION = 2
INDEX_MARKER = "fastctx.json"
MANIFEST = "MANIFEST.json"
# Files read whole on open are always checksummed; the big mmapped blobs below only by
# `verify(full=True)` / `fastctx verify`, so that opening does not read every vector.
LAZY_CHECKSUM_FILES = frozenset({"vectors.npy", "payload.bin"})

_CHUNK = 1 << 22


_CRASH = {}


def crashpoint(name: str) -> None:
    """Test hook for crash tests: with FASTCTX_CRASH_AT="<name>:<k>" in the environment, the
    k-th time (1-based) this process passes point `name` it kills itself with SIGKILL."""
    spec = os.environ.get("FASTCTX_CRASH_AT")
    if not spec:
        return
    point, _, k = spec.rpartition(":")
    if point != name:
        return
    _CRASH[name] = _CRASH.get(name, 0) + 1
    if _CRASH[name] == int(k or 1):
        import signal
        os.kill(os.getpid(), signal.SIGKILL)


def crc32_file(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so a reader sees the old file or the new one, never a mix."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    crashpoint("commit:before-rename")
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=1, sort_keys=True).encode())


def file_entries(directory: Path, names: Iterable[str]) -> dict[str, dict[str, int]]:
    """{name: {"size": bytes, "crc32": int}} for files in a freshly written segment."""
    out = {}
    for name in sorted(names):
        p = directory / name
        out[name] = {"size": p.stat().st_size, "crc32": crc32_file(p)}
    return out


def verify_files(directory: Path, entries: dict[str, dict[str, int]], *, full: bool) -> None:
    """Check sizes of every file and checksums (all when `full`, else the eagerly read ones)."""
    for name, meta in entries.items():
        p = directory / name
        if not p.is_file():
            raise CorruptIndexError(f"{p}: file is missing (named by the manifest)")
        size = p.stat().st_size
        if size != meta["size"]:
            raise CorruptIndexError(
                f"{p}: size {size} bytes, manifest says {meta['size']} (truncated or replaced)")
        if full or name not in LAZY_CHECKSUM_FILES:
            crc = crc32_file(p)
            if crc != meta["crc32"]:
                raise CorruptIndexError(
                    f"{p}: checksum mismatch (crc32 {crc:#010x}, manifest says {meta['crc32']:#010x}); "
                    "the file is corrupted")


def _read_json(path: Path, what: str) -> dict:
    try:
        obj = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise FormatError(f"{path}: missing; not a fastctx index ({what})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptIndexError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise CorruptIndexError(f"{path}: expected a JSON object")
    return obj


def _check_version(path: Path, obj: dict) -> None:
    if obj.get("format") != FORMAT_NAME:
        raise FormatError(f"{path}: format is {obj.get('format')!r}, expected {FORMAT_NAME!r}")
    version = obj.get("format_version")
    if not isinstance(version, int):
        raise CorruptIndexError(f"{path}: field 'format_version' missing or not an integer")
    if version > FORMAT_VERSION:
        raise FormatError(
            f"{path}: format_version {version} is newer than this fastctx supports "
            f"({FORMAT_VERSION}); upgrade fastctx to open it")


def read_marker(index_dir: Path) -> dict:
    path = index_dir / INDEX_MARKER
    obj = _read_json(path, "index marker")
    _check_version(path, obj)
    shards = obj.get("shards")
    if not isinstance(shards, list) or not shards or not all(isinstance(s, str) for s in shards):
        raise CorruptIndexError(f"{path}: field 'shards' must be a non-empty list of names")
    return obj


def write_marker(index_dir: Path, shards: list[str], **extra: Any) -> None:
    write_json_atomic(index_dir / INDEX_MARKER,
                      {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "shards": shards, **extra})


_MANIFEST_FIELDS = {"version": int, "dim": int, "segments": list, "sources": list, "kinds": list,
                    "n_rows": int, "n_entities": int}


def read_manifest(shard_dir: Path) -> dict:
    path = shard_dir / MANIFEST
    obj = _read_json(path, "shard manifest")
    _check_version(path, obj)
    for field, typ in _MANIFEST_FIELDS.items():
        if not isinstance(obj.get(field), typ):
            raise CorruptIndexError(f"{path}: field {field!r} missing or not {typ.__name__}")
    return obj


def write_manifest(shard_dir: Path, manifest: dict) -> None:
    manifest = {**manifest, "format": FORMAT_NAME, "format_version": FORMAT_VERSION}
    write_json_atomic(shard_dir / MANIFEST, manifest)


def publish_dir(tmp: Path, target: Path) -> None:
    """Move a fully built directory into place, replacing `target` if it exists. A reader sees
    the old directory or the new one; the old one is removed only after the swap."""
    if target.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
        os.rename(target, trash / "old")
        os.rename(tmp, target)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(tmp, target)
