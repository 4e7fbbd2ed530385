"""fastctx: on-disk retrieval index for organizational memory.

    import fastctx
    idx, report = fastctx.build("corpus/", "index/")      # or fastctx.open("index/")
    answer = idx.query("what led to the double charges?", type="chain")
"""
from .errors import (CorpusError, CorruptIndexError, FastctxError, FormatError, IndexExistsError,
                     IndexLockedError, InvalidQueryError, ShardUnavailableError)
from .extras import MissingExtraError
from .filters import Filters
from .index import Index, build, open, verify  # noqa: A004 - fastctx.open mirrors builtins.open on purpose
from .results import Answer
from .types import Event, Hits

__version__ = "0.1.0"


def connect(address: str, **kw):
    """A client of a coordinator server ("host:port") with `Index.query`'s API (see shards/).
    ``token=`` (bearer token), ``ca=`` (TLS, trusting this CA's PEM file), ``client_cert=`` and
    ``client_key=`` (mutual TLS) for secured servers; see docs/SHARDED.md, "Security".
    Needs the `serve` extra (grpcio): without it, MissingExtraError says how to install it."""
    from .extras import require
    require("grpc", "serve", "fastctx.connect()")
    from .shards.server import connect as _connect
    return _connect(address, **kw)


__all__ = ["Index", "build", "open", "verify", "connect", "Filters", "Answer", "Hits", "Event", "FastctxError",
           "MissingExtraError",
           "CorpusError", "CorruptIndexError", "FormatError", "IndexExistsError", "IndexLockedError",
           "InvalidQueryError", "ShardUnavailableError", "__version__"]
