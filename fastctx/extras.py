"""Optional dependencies, imported only when a feature needs them (`import fastctx` stays light).

A missing one raises `MissingExtraError` naming the pip extra that installs it, never a bare
ImportError traceback from deep inside a call.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from .errors import FastctxError


class MissingExtraError(FastctxError, ImportError):
    """An optional dependency of the feature asked for is not installed."""


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import `module` for `feature`, or raise MissingExtraError naming `pip install 'fastctx[extra]'`."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(f"{feature} needs the optional package '{module.split('.')[0]}', which is not "
                                f"installed ({e}); install it with: pip install 'fastctx[{extra}]'") from None
