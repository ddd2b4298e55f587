"""Kernels compile whether or not numba can cache them on disk."""

from __future__ import annotations

import logging

import pytest

from moat.models import jit

pytestmark = pytest.mark.skipif(not jit.AVAILABLE, reason="numba is not installed")


def test_kernel_compiles_in_process_where_nothing_can_cache_it(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A read-only install without a writable home: numba finds no cache directory and refuses
    cache=True; the import must not fail because of it."""
    import numba.core.config

    # The zip-file locator is the only one left, and it places no plain source file.
    monkeypatch.setattr(numba.core.config, "CACHE_LOCATOR_CLASSES", "ZipCacheLocator")

    def add_one(x: int) -> int:
        return x + 1

    with caplog.at_level(logging.WARNING, logger="moat.models.jit"):
        compiled = jit.kernel([jit.types.int64(jit.types.int64)])(add_one)
    assert compiled(41) == 42
    assert "cannot cache" in caplog.text
