"""fastctx: on-disk retrieval index for organizational memory."""
__version__ = "0.1.0"
