"""The write-ahead log: append-only files of checksummed records, replayed on open.

Record layout (little-endian)::

    magic  b"FCW2"      4 bytes
    length uint32       payload bytes
    crc32  uint32       CRC-32 of the payload
    payload             msgpack: {"t": "add", "seq": first seq, "recs": [event mappings],
                                  "dim": d, "vec": float32 bytes [n, d],
                                  "derived": [[row in recs], [target ids], [link codes]]}
                                  ("derived", optional: the derived links of derive_add.py)
                              or {"t": "del", "seq": seq, "ids": [external ids]}

One `Index.add` batch is one record, written with one `write` and made durable with one
`fsync` (group commit): a batch is acknowledged whole or not at all.

A crash can leave a *torn tail*: a last record cut short or half written. Replay stops at the
first record that is incomplete or fails its checksum. If no valid record follows it, it is a
torn tail: readers ignore it, a writer truncates the file there (`repair=True`). If a valid
record does follow, bytes in the middle of the log were damaged: that is corruption, reported
with the file and byte offset (acknowledged records would otherwise be lost silently).

A record's payload is at most `MAX_RECORD` bytes (2 GiB; the length field is 32 bits and replay
treats anything longer as damage). `encode` refuses a larger payload before anything is written,
so a batch too big for one record is never acknowledged: split it into several `add` calls.
"""
from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from .errors import CorruptIndexError

MAGIC = b"FCW2"
HEADER = struct.Struct("<4sII")
MAX_RECORD = 1 << 31


@dataclass
class WalScan:
    records: list            # decoded payload dicts, in order
    good_bytes: int          # length of the valid prefix
    size: int                # file size when read
    torn: bool               # a torn tail was found after good_bytes
    complete_tail: bool = False  # ... and it is a whole record that fails its checksum: a process
    #                              crash cannot leave that (only power loss or damage can)


def _valid_at(data: memoryview, pos: int) -> int:
    """End offset of a valid record starting at pos, or -1."""
    if pos + HEADER.size > len(data):
        return -1
    magic, length, crc = HEADER.unpack_from(data, pos)
    end = pos + HEADER.size + length
    if magic != MAGIC or length > MAX_RECORD or end > len(data):
        return -1
    if zlib.crc32(data[pos + HEADER.size:end]) != crc:
        return -1
    return end


def scan(path: Path) -> WalScan:
    """Read every valid record of a log file (see the module doc for torn tails vs corruption)."""
    data = memoryview(Path(path).read_bytes())
    records, pos = [], 0
    while pos < len(data):
        end = _valid_at(data, pos)
        if end < 0:
            # anything valid further on? then this is damage in the middle, not a torn tail
            raw = bytes(data)
            q = raw.find(MAGIC, pos + 1)
            while q >= 0:
                if _valid_at(data, q) >= 0:
                    raise CorruptIndexError(
                        f"{path}: log record at byte {pos} fails its checksum but valid records follow "
                        f"(at byte {q}); the write-ahead log is corrupted")
                q = raw.find(MAGIC, q + 1)
            complete = False
            if pos + HEADER.size <= len(data):
                magic, length, _ = HEADER.unpack_from(data, pos)
                complete = magic == MAGIC and pos + HEADER.size + length == len(data)
            return WalScan(records, pos, len(data), True, complete)
        try:
            records.append(msgpack.unpackb(data[pos + HEADER.size:end], raw=False, strict_map_key=False))
        except Exception as e:
            raise CorruptIndexError(f"{path}: log record at byte {pos} cannot be decoded ({e})") from None
        pos = end
    return WalScan(records, pos, len(data), False)


def truncate(path: Path, size: int) -> None:
    """Cut a torn tail off (writer only), durably."""
    with open(path, "r+b") as f:
        f.truncate(size)
        f.flush()
        os.fsync(f.fileno())


def encode(payload: dict[str, Any]) -> bytes:
    body = msgpack.packb(payload, use_bin_type=True)
    if len(body) > MAX_RECORD:   # replay would take it for a torn tail and drop it
        from .errors import InvalidQueryError
        raise InvalidQueryError(
            f"one add of {len(body)} bytes exceeds the write-ahead log's record limit of {MAX_RECORD} "
            "bytes; nothing was written: add the events in smaller batches")
    return HEADER.pack(MAGIC, len(body), zlib.crc32(body)) + body


class WalWriter:
    """Appends records to one log file; `append` returns once the record is on disk."""

    def __init__(self, path: Path, *, sync: bool = True):
        self.path = Path(path)
        self.sync = sync
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.size = os.fstat(self.fd).st_size

    def append(self, records: list[bytes]) -> None:
        """Write already-encoded records with one write and one fsync (group commit). On any
        error the file is cut back to its previous length, so no partial record stays."""
        data = b"".join(records)
        try:
            view = memoryview(data)
            while view:
                written = os.write(self.fd, view)
                view = view[written:]
            if self.sync:
                os.fsync(self.fd)
        except BaseException:
            try:
                os.ftruncate(self.fd, self.size)
            except OSError:
                pass
            raise
        self.size += len(data)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
