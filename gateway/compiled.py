"""Compiled per-sample loops (numba) for the few places where numpy's per-call overhead
or Python's per-sample cost sets the CPU per stream: the analysers' kernels and the
resampler.

Every kernel has an explicit signature, so it is compiled (or loaded from numba's
on-disk cache) at import, never on the first frame that needs it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numba


def compiled(signature: Any) -> Callable[[Callable[..., Any]], Any]:
    """``numba.njit`` with the signature given, and numba's on-disk cache when it has
    somewhere to write it (next to the source or ``NUMBA_CACHE_DIR``); without one (a
    read-only install and no writable home) it compiles at each start (~5 s)."""

    def wrap(func: Callable[..., Any]) -> Any:
        try:
            return numba.njit(signature, cache=True, nogil=True)(func)
        except RuntimeError:  # "no locator available"
            return numba.njit(signature, nogil=True)(func)

    return wrap
