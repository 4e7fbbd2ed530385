"""fastctx: on-disk retrieval index for organizational memory."""
__version__ = "0.1.0"


def connect(address: str, **kw):
    """A client of a coordinator server ("host:port") with `Index.query`'s API (see shards/)."""
    from .shards.server import connect as _connect
    return _connect(address, **kw)
