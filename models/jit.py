"""Compiling the scoring path's kernels with numba, cached on disk.

numba is optional: the serve and train extras install it, a core-only install does not, and
then `AVAILABLE` is False and every kernel's caller runs its Python reference. Compiled code is
cached in `NUMBA_CACHE_DIR` when set, else beside the source, else in the user's cache directory:
compiling every kernel takes about 15 s on a loaded 2-core machine, loading them a fraction of a
second. Where no cache directory is writable (a read-only install without a writable home),
numba refuses to cache; the kernels are then compiled in each process instead of failing the
import.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

try:
    import numba
    from numba.core import caching, config
except ImportError:
    numba = None

AVAILABLE = numba is not None
# What the kernel modules build their signatures from (None without numba).
types = numba.types if numba is not None else None
from_dtype = numba.from_dtype if numba is not None else None
F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger(__name__)

# The modules whose values the kernels freeze into compiled code (numba reads module globals as
# constants): the feature spec's encoders and sizes, the stored row's layout. numba invalidates
# a cached kernel only when the kernel's own file changes, so a cache written before an edit of
# these would load stale offsets into code that runs without bounds checks. Their digest is part
# of every cached kernel's source stamp.
FROZEN_SOURCES = ("feature_spec.py", "row.py")
FROZEN_DIGEST = hashlib.sha256(b"".join((Path(__file__).parent / name).read_bytes() for name in FROZEN_SOURCES)).hexdigest()

if numba is not None:

    class _FrozenStamp:
        """A locator mixin: a cached kernel is fresh only if its file and FROZEN_SOURCES are."""

        def get_source_stamp(self) -> Any:
            return (super().get_source_stamp(), FROZEN_DIGEST)  # type: ignore[misc]

    class UserProvidedLocator(_FrozenStamp, caching.UserProvidedCacheLocator):
        """NUMBA_CACHE_DIR, when set."""

    class InTreeLocator(_FrozenStamp, caching.InTreeCacheLocator):
        """__pycache__ beside the kernel's source."""

    class UserWideLocator(_FrozenStamp, caching.UserWideCacheLocator):
        """The user's cache directory."""

# numba's own search order, with the stamp above.
LOCATORS = ",".join(f"{__name__}.{name}" for name in ("UserProvidedLocator", "InTreeLocator", "UserWideLocator"))


@contextlib.contextmanager
def _locators(classes: str) -> Iterator[None]:
    """numba picks a function's cache locator from its config when the function is decorated;
    set ours for that moment only, so no other numba user in the process sees them."""
    saved = config.CACHE_LOCATOR_CLASSES
    config.CACHE_LOCATOR_CLASSES = classes
    try:
        yield
    finally:
        config.CACHE_LOCATOR_CLASSES = saved


def kernel(signatures: list[Any] | None = None, *, inline: bool = False) -> Callable[[F], F]:
    """numba.njit with a disk cache: eagerly compiled for `signatures` (a list of numba
    signatures), or, with `inline`, a helper inlined into the kernels that call it. Releases
    the GIL (the network thread runs beside featurisation)."""
    options: dict[str, Any] = {"nogil": True, **({"inline": "always"} if inline else {})}

    def compile_(fn: F) -> F:
        if numba is None:
            raise RuntimeError("moat.models.jit.kernel needs numba; check jit.AVAILABLE first")
        try:
            with _locators(config.CACHE_LOCATOR_CLASSES or LOCATORS):
                return numba.njit(signatures, cache=True, **options)(fn)
        except RuntimeError as exc:
            if "no locator available" not in str(exc):
                raise
            log.warning("numba cannot cache %s here (set NUMBA_CACHE_DIR to a writable directory): compiling it in this process", fn.__qualname__)
            return numba.njit(signatures, **options)(fn)

    return compile_
