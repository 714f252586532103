"""numba where it is installed: :func:`jit` compiles a function (cached on disk when numba may write its cache).

:data:`AVAILABLE` False (no numba wheel for the platform): :func:`jit` gives the plain Python function back,
and the callers take their numpy paths instead.
"""

from __future__ import annotations

try:
    import numba
except ImportError:  # pragma: no cover - numba is a dependency; a platform without its wheels runs without it
    numba = None

__all__ = ["AVAILABLE", "jit"]

AVAILABLE = numba is not None


def jit(fn=None, *, error_model: str = "python"):
    """``fn`` compiled in nopython mode without the GIL held, its machine code cached when possible.

    ``@jit(error_model="numpy")``: a float division by zero gives inf or NaN as in C, instead of raising."""
    if fn is None:
        return lambda f: jit(f, error_model=error_model)
    if numba is None:
        return fn
    try:
        return numba.njit(cache=True, nogil=True, error_model=error_model)(fn)
    except RuntimeError:  # no folder numba may write its cache to (NUMBA_CACHE_DIR names one): compiled per process
        return numba.njit(nogil=True, error_model=error_model)(fn)
