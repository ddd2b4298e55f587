"""Compiling the scoring path's kernels with numba, cached on disk.

numba is optional: the serve and train extras install it, a core-only install does not, and
then `AVAILABLE` is False and every kernel's caller runs its Python reference. Compiled code is
cached beside the source (or in `NUMBA_CACHE_DIR`, else the user's cache directory): compiling
every kernel takes about 15 s on a loaded 2-core machine, loading them about 0.2 s. Where no
cache directory is writable (a read-only install without a writable home), numba refuses to
cache; the kernels are then compiled in each process instead of failing the import.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

try:
    import numba
except ImportError:
    numba = None

AVAILABLE = numba is not None
# What the kernel modules build their signatures from (None without numba).
types = numba.types if numba is not None else None
from_dtype = numba.from_dtype if numba is not None else None
F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger(__name__)


def kernel(signatures: list[Any] | None = None, *, inline: bool = False) -> Callable[[F], F]:
    """numba.njit with a disk cache: eagerly compiled for `signatures` (a list of numba
    signatures), or, with `inline`, a helper inlined into the kernels that call it. Releases
    the GIL (the network thread runs beside featurisation)."""
    options: dict[str, Any] = {"nogil": True, **({"inline": "always"} if inline else {})}

    def compile_(fn: F) -> F:
        if numba is None:
            raise RuntimeError("moat.models.jit.kernel needs numba; check jit.AVAILABLE first")
        try:
            return numba.njit(signatures, cache=True, **options)(fn)
        except RuntimeError as exc:
            if "no locator available" not in str(exc):
                raise
            log.warning("numba cannot cache %s here (set NUMBA_CACHE_DIR to a writable directory): compiling it in this process", fn.__qualname__)
            return numba.njit(signatures, **options)(fn)

    return compile_
