"""The few exceptions fastctx raises. Each subclasses a builtin so callers can catch broadly."""
from __future__ import annotations

import tokenize


class FastctxError(Exception):
    """Base of every fastctx error."""


class CorpusError(FastctxError, ValueError):
    """Bad input data. Names the file, the line (1-based, when it applies) and the field."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None):
        self.message, self.file, self.line, self.field = message, file, line, field
        where = ":".join(str(p) for p in (file, line) if p is not None)
        parts = [where] if where else []
        if field:
            parts.append(f"field '{field}'")
        prefix = ", ".join(parts)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class InvalidQueryError(FastctxError, ValueError):
    """A query argument is out of range or of the wrong type."""


class FormatError(FastctxError, ValueError):
    """An index directory is not a fastctx index, or is of an unsupported format version."""


class CorruptIndexError(FastctxError, OSError):
    """A file of an index failed its checksum or a structural check. Names the file."""


class IndexExistsError(FastctxError, FileExistsError):
    """A build target is not empty and overwrite was not asked for."""


class ShardUnavailableError(FastctxError, ConnectionError):
    """Every replica of a shard failed or timed out."""


class IndexLockedError(FastctxError, BlockingIOError):
    """Another writer holds the index's lock file (one writer at a time; readers need none)."""


class AccessDeniedError(FastctxError, PermissionError):
    """A query would see events it may not: an index holding access lists was asked without
    principals (pass the asker's principals, or unrestricted access explicitly)."""


# What NumPy's .npy reader raises on a damaged file: its header is a Python literal parsed with
# ast (SyntaxError) and, in some versions, tokenize (TokenError, not a ValueError); a huge shape
# overflows; a short file gives EOFError or ValueError.
NPY_LOAD_ERRORS = (ValueError, OSError, EOFError, OverflowError, SyntaxError, tokenize.TokenError)
