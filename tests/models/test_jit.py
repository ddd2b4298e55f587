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


@pytest.mark.parametrize("kernel_path", ["moat.models.summary.gram_kernel", "moat.models.scope_window.relational_kernel", "moat.models.scope_window.push_kernel", "moat.serving.scorer.pack_kernel"])
def test_a_cached_kernel_goes_stale_with_the_spec_and_row_layout_it_froze(kernel_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """numba checks only the kernel's own file; a cache written before an edit of the feature
    spec or the row layout would run with stale offsets. The stamp must cover both."""
    import importlib

    module, name = kernel_path.rsplit(".", 1)
    dispatcher = getattr(importlib.import_module(module), name)
    locator = dispatcher._cache._impl.locator
    assert isinstance(locator, (jit.UserProvidedLocator, jit.InTreeLocator, jit.UserWideLocator))
    before = locator.get_source_stamp()
    monkeypatch.setattr(jit, "FROZEN_DIGEST", "an edited feature spec")
    assert locator.get_source_stamp() != before
