"""On-disk format: the index marker, shard manifests, checksums and atomic writes.

Layout (docs/FORMAT.md has the prose specification)::

    INDEX/fastctx.json                 {"format": "fastctx-index", "format_version": 1, "shards": [...]}
    INDEX/shard-000/MANIFEST.json      the live version of the shard (replaced atomically)
    INDEX/shard-000/seg-000001/...     immutable segment files, one file per component

Every file a manifest names carries its byte size and CRC-32; readers check them before
trusting a byte (sizes on open, checksums of small files on open and of big ones on first load or
on verify; see `verify_files`). The manifest itself
carries a CRC-32 of its canonical JSON (field "checksum"), and every file name it holds must be a
plain name inside the shard directory (`check_name`): a manifest is never trusted as a path.
"""
from __future__ import annotations

import json
import mmap
import os
import shutil
import stat
import tempfile
import zlib
from pathlib import Path
from typing import Any, Iterable

from .encoder import record_problem
from .errors import CorruptIndexError, FormatError

FORMAT_NAME = "fastctx-index"
FORMAT_VERSION = 3   # 3: manifests carry "checksum" (version 2 manifests are read without one)
INDEX_MARKER = "fastctx.json"
MANIFEST = "MANIFEST.json"
# Opening checks every file's presence and size, and the checksum of the small files only, so that
# it costs about the same at any index size. Left for later (`deferred` below): the big memory-mapped
# blobs and the HNSW graph always, and any other file over EAGER_CHECKSUM_MAX_BYTES. The graph is
# checksummed when it is first loaded (it is read whole then anyway); every deferred file by
# `verify(full=True)` / `Index.verify()` / `fastctx verify`. docs/FORMAT.md states the guarantee.
LAZY_CHECKSUM_FILES = frozenset({"vectors.npy", "payload.bin", "hnsw.bin"})
EAGER_CHECKSUM_MAX_BYTES = 1 << 20

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
    """CRC-32 of a file's bytes, through a memory map (no copy; zlib releases the GIL for the
    whole call, so a thread can checksum while another loads)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0 or not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            crc = 0
            while chunk := f.read(_CHUNK):
                crc = zlib.crc32(chunk, crc)
            return crc
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return zlib.crc32(m)


def fsync_dir(path: Path) -> None:
    """Make a rename or create inside `path` durable (POSIX: fsync of the directory itself)."""
    if os.name == "nt":      # directories cannot be opened for fsync there; NTFS journals renames
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_name(name: Any, where: Path, what: str = "file name") -> str:
    """`name` if it is a plain file name (no separator, not '.' or '..', no NUL), else
    CorruptIndexError naming it: names read from a manifest must stay inside its directory."""
    if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name
            or "\0" in name or os.path.isabs(name) or (os.altsep and os.altsep in name)
            or len(name.encode("utf-8", "surrogatepass")) > 255):
        raise CorruptIndexError(f"{where}: {what} {str(name)[:80]!r} is not a plain name inside the directory")
    return name


def check_inside(directory: Path, name: str, where: Path) -> Path:
    """directory/name, refusing a symlink that resolves outside `directory`."""
    p = Path(directory) / name
    try:
        link = p.is_symlink()
    except OSError as e:
        raise CorruptIndexError(f"{where}: {name[:80]!r} cannot be looked up ({e.strerror})") from None
    if link:
        real, root = os.path.realpath(p), os.path.realpath(directory)
        if os.path.commonpath([real, root]) != root:
            raise CorruptIndexError(f"{where}: {name!r} is a symbolic link leading outside {directory}")
    return p


def check_regular(path: Path, what: str) -> None:
    """Refuse anything but a regular file (a FIFO would block the open forever, a directory
    or device is not data) before opening it."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return                      # the caller reports a missing file its own way
    except OSError as e:
        raise CorruptIndexError(f"{path}: cannot read {what} ({e.strerror})") from None
    if not stat.S_ISREG(mode):
        raise CorruptIndexError(f"{path}: {what} is not a regular file")


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


def verify_files(directory: Path, entries: dict[str, dict[str, int]], *, full: bool) -> set[str]:
    """Check every file's presence and size, and checksums: all when `full`, else those of the
    small eagerly read files. Returns the names whose checksum was left unchecked (deferred)."""
    deferred = set()
    for name, meta in entries.items():
        p = directory / name
        if not p.is_file():
            raise CorruptIndexError(f"{p}: file is missing (named by the manifest)")
        size = p.stat().st_size
        if size != meta["size"]:
            raise CorruptIndexError(
                f"{p}: size {size} bytes, manifest says {meta['size']} (truncated or replaced)")
        if full or (name not in LAZY_CHECKSUM_FILES and size <= EAGER_CHECKSUM_MAX_BYTES):
            check_checksum(p, meta)
        else:
            deferred.add(name)
    return deferred


def check_checksum(path: Path, meta: dict[str, int], shown: Path | None = None, crc: int | None = None) -> None:
    """CorruptIndexError naming `shown` (default `path`) unless the file's CRC-32 (`crc` when
    already computed) is meta's."""
    crc = crc32_file(path) if crc is None else crc
    if crc != meta["crc32"]:
        raise CorruptIndexError(
            f"{shown or path}: checksum mismatch (crc32 {crc:#010x}, manifest says {meta['crc32']:#010x}); "
            "the file is corrupted")


def _read_json(path: Path, what: str) -> dict:
    check_regular(path, what)
    try:
        obj = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise FormatError(f"{path}: missing; not a fastctx index ({what})") from None
    except IsADirectoryError:
        raise CorruptIndexError(f"{path}: {what} is a directory") from None
    except (ValueError, RecursionError) as e:   # bad JSON or UTF-8, absurd nesting
        raise CorruptIndexError(f"{path}: not valid JSON ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(obj, dict):
        raise CorruptIndexError(f"{path}: expected a JSON object")
    return obj


def _check_version(path: Path, obj: dict) -> None:
    if obj.get("format") != FORMAT_NAME:
        raise FormatError(f"{path}: format is {obj.get('format')!r}, expected {FORMAT_NAME!r}")
    version = obj.get("format_version")
    if type(version) is not int:
        raise CorruptIndexError(f"{path}: field 'format_version' missing or not an integer")
    if version < 1:     # versions count from 1: a smaller one is damage, not an old format
        raise CorruptIndexError(f"{path}: field 'format_version' must be >= 1, got {version}")
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
    for s in shards:
        check_name(s, path, "shard name")
    if len(set(shards)) != len(shards):   # one shard served twice would skew every answer
        dup = next(s for i, s in enumerate(shards) if s in shards[:i])
        raise CorruptIndexError(f"{path}: field 'shards' names {dup!r} more than once")
    # the recorded encoder is judged here, so a damaged one fails opening and `verify`, not a
    # later text query (an unknown name passes: a newer fastctx's index still opens)
    if obj.get("encoder") is not None and (problem := record_problem(obj["encoder"], unknown_ok=True)):
        field, msg = problem
        raise CorruptIndexError(f"{path}: field {'encoder' + (f'.{field}' if field else '')!r}: {msg}")
    return obj


def write_marker(index_dir: Path, shards: list[str], **extra: Any) -> None:
    write_json_atomic(index_dir / INDEX_MARKER,
                      {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "shards": shards, **extra})


_MANIFEST_FIELDS = {"version": int, "dim": int, "segments": list, "sources": list, "kinds": list,
                    "n_rows": int, "n_entities": int}


def manifest_checksum(obj: dict) -> int:
    """CRC-32 of the manifest's canonical JSON without its "checksum" field."""
    body = {k: v for k, v in obj.items() if k != "checksum"}
    return zlib.crc32(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def _is_int(v: Any, lo: int = 0, hi: int = 2**62) -> bool:
    return type(v) is int and lo <= v < hi


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


_SEGMENT_INTS = ("n", "row_base", "entity_base", "n_new_entities")


def _check_manifest_fields(path: Path, obj: dict) -> None:
    """The manifest's shape beyond the top-level types, and every name it turns into a path
    (plain names only, see `check_name`): a readable manifest never makes a reader crash."""
    where = path.parent
    if not _is_int(obj["dim"], 1, 1 << 16):
        raise CorruptIndexError(f"{path}: field 'dim' must be an integer in [1, 65536]")
    for field in ("sources", "kinds"):
        if not _str_list(obj[field]):
            raise CorruptIndexError(f"{path}: field {field!r} must be a list of strings")
    for field in ("n_rows", "n_entities", "version"):
        if not _is_int(obj[field]):
            raise CorruptIndexError(f"{path}: field {field!r} must be an integer in [0, 2**62)")
    params = obj.get("params")
    if params is not None and not (isinstance(params, dict) and all(
            _str_list(params.get(k, [])) for k in ("slot_kinds", "slot_prefixes", "actor_prefixes"))):
        raise CorruptIndexError(f"{path}: field 'params' must hold lists of strings")
    for i, e in enumerate(obj["segments"]):
        if not isinstance(e, dict) or not isinstance(e.get("files"), dict):
            raise CorruptIndexError(f"{path}: segment entry {i} is not an object with 'files'")
        check_inside(where, check_name(e.get("name"), path, "segment name"), path)
        bad = [k for k in _SEGMENT_INTS if not _is_int(e.get(k))] + \
            [k for k in ("time_min", "time_max") if not _is_int(e.get(k), -2**63, 2**63)]
        if bad or not (e.get("hnsw") is None or isinstance(e.get("hnsw"), dict)):
            raise CorruptIndexError(f"{path}: segment {e['name']!r}: field {(bad or ['hnsw'])[0]!r} is invalid")
        for f, meta in e["files"].items():
            check_name(f, path, f"file name in segment {e['name']!r}")
            if not (isinstance(meta, dict) and isinstance(meta.get("size"), int)
                    and isinstance(meta.get("crc32"), int)):
                raise CorruptIndexError(f"{path}: entry of {e['name']}/{f} needs integer 'size' and 'crc32'")
    rows = ents = 0     # segments tile the shard's rows and entity ids in order
    for e in obj["segments"]:
        if e["row_base"] != rows or e["entity_base"] != ents:
            raise CorruptIndexError(f"{path}: segment {e['name']!r} does not start where the previous one ends")
        rows, ents = rows + e["n"], ents + e["n_new_entities"]
    if rows != obj["n_rows"] or ents != obj["n_entities"]:
        raise CorruptIndexError(f"{path}: n_rows / n_entities do not match the segments")
    wal = obj.get("wal", [])
    if not isinstance(wal, list):
        raise CorruptIndexError(f"{path}: field 'wal' must be a list of names")
    for w in wal:
        check_inside(where, check_name(w, path, "log file name"), path)
    deletes = obj.get("deletes")
    if deletes is not None:
        if not isinstance(deletes, dict):
            raise CorruptIndexError(f"{path}: field 'deletes' must be an object or null")
        check_inside(where, check_name(deletes.get("name"), path, "deletion file name"), path)
        if not (_is_int(deletes.get("size")) and _is_int(deletes.get("crc32"), 0, 2**32)):
            raise CorruptIndexError(f"{path}: field 'deletes' needs integer 'size' and 'crc32'")
    for field in ("next_segment", "next_wal", "next_seq", "flushed_seq"):
        v = obj.get(field, 0)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**62:
            raise CorruptIndexError(f"{path}: field {field!r} must be an integer in [0, 2**62)")


def read_manifest(shard_dir: Path) -> dict:
    path = shard_dir / MANIFEST
    obj = _read_json(path, "shard manifest")
    _check_version(path, obj)   # first: a newer format is reported as such, not as damage
    if obj["format_version"] >= 3 or "checksum" in obj:
        if obj.get("checksum") != manifest_checksum(obj):
            raise CorruptIndexError(f"{path}: manifest checksum mismatch (edited or damaged)")
    for field, typ in _MANIFEST_FIELDS.items():
        if isinstance(obj.get(field), bool) or not isinstance(obj.get(field), typ):
            raise CorruptIndexError(f"{path}: field {field!r} missing or not {typ.__name__}")
    _check_manifest_fields(path, obj)
    return obj


def write_manifest(shard_dir: Path, manifest: dict) -> None:
    manifest = {k: v for k, v in manifest.items() if k != "checksum"}
    manifest.update(format=FORMAT_NAME, format_version=FORMAT_VERSION)
    manifest["checksum"] = manifest_checksum(manifest)
    write_json_atomic(shard_dir / MANIFEST, manifest)


def write_new_dir(parent: Path, name: str, fill):
    """Write directory `parent/name` through a temporary one: `fill(tmp)` writes and fsyncs its
    files and returns what the caller keeps; the directory is fsynced and renamed to `name` (a
    leftover of that name, from a crash before the manifest named it, is replaced); nothing is
    left behind on failure. The caller commits the manifest that names it."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=parent))
    try:
        out = fill(tmp)
        fsync_dir(tmp)
        if (parent / name).exists():
            shutil.rmtree(parent / name)
        os.rename(tmp, parent / name)
        fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def publish_dir(tmp: Path, target: Path, lock_name: str = "LOCK") -> None:
    """Move a fully built directory into place, replacing `target` if it exists, and fsync the
    parent so the rename survives a crash. A reader sees the old directory or the new one; the old
    one is removed only after the swap. A target whose writer lock (`lock_name`) is held by a
    writer is refused (IndexLockedError): replacing it would drop that writer's acknowledged
    events; the lock is held through the swap so no writer opens the old index meanwhile."""
    if target.exists():
        with _target_lock(target / lock_name):
            trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.rename(target, trash / "old")
            os.rename(tmp, target)
            fsync_dir(target.parent)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(tmp, target)
        fsync_dir(target.parent)


def os_file_lock(path: Path, held: str):
    """An exclusive OS file lock on `path`, taken without waiting (filelock: flock on POSIX,
    LockFileEx on Windows; a bare fcntl import would stop the package importing off POSIX); one
    lock object per holder, released from any thread. IndexLockedError naming `path` and `held`
    when another holder has it, or where the platform has no OS file lock at all (a soft lock
    file a crash leaves behind would block every later holder)."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # filelock warns at import where only soft locks exist
        from filelock import FileLock, SoftFileLock, Timeout
    from .errors import IndexLockedError
    if FileLock is SoftFileLock:
        raise IndexLockedError(f"{path}: this platform has no OS file lock (fcntl or Windows locking), "
                               "so fastctx cannot write here; reading works")
    lock = FileLock(str(path), timeout=0, thread_local=False)
    try:
        lock.acquire()
    except (Timeout, BlockingIOError, PermissionError):
        raise IndexLockedError(f"{path}: {held}") from None
    return lock


class _target_lock:
    """Hold an existing index's writer lock (if it has a lock file) for the time of a swap."""

    def __init__(self, path: Path):
        self.path, self.lock = path, None

    def __enter__(self):
        if not self.path.is_file():
            return self
        self.lock = os_file_lock(self.path, "a writer holds this index's lock; refusing to overwrite it "
                                             "(close the writer first)")
        return self

    def __exit__(self, *exc):
        if self.lock is not None:
            self.lock.release()
