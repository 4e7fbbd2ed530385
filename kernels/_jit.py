"""Shared Numba presets and dtype conventions for fastctx kernels.

Every kernel is compiled with ``cache=True`` (the machine code is stored next
to the module, so only the first process on a machine pays for compilation)
and ``nogil=True`` (a server can run queries from several threads at once).
``fastmath`` is deliberately off: kernels promise bit-exact float64 results
that a pure-Python reference can reproduce, which rules out reassociation and
FMA contraction.

Dtype conventions (callers pass exactly these, C-contiguous, 1-D):

=========  ===========  ==================================================
kind       dtype        why
=========  ===========  ==================================================
row ids    int64        global row space may exceed 2**31 events
offsets    int64        CSR pointers (``*_ptr``), length ``count + 1``
times      int64        unix seconds
flags      uint8        0 / 1 masks (``allowed``)
types      int8         link type / via kind codes
weights    float32      stored weights; kernels widen to float64 inside
scores     float32 out  computed in float64, rounded once on output
hops       int32        path length in edges
=========  ===========  ==================================================

Scalars should be passed as Python ``int`` / ``float`` so every call hits the
same compiled specialisation (``int64`` / ``float64``).
"""

import numba
import numpy as np

PRESET = {"cache": True, "nogil": True}

ROW = np.int64
PTR = np.int64
TIME = np.int64
FLAG = np.uint8
CODE = np.int8
WEIGHT = np.float32
SCORE = np.float32
HOPS = np.int32

INT64_MIN = np.iinfo(np.int64).min
INT64_MAX = np.iinfo(np.int64).max


def njit(func=None, **options):
    """``numba.njit`` with the fastctx preset; usable bare or with overrides."""
    opts = {**PRESET, **options}
    if func is None:
        return numba.njit(**opts)
    return numba.njit(**opts)(func)
