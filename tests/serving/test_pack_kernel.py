"""The compiled window packing equals the numpy reference bit for bit: every float16 converts
as numpy converts it, and padded batches match on windows of every shape."""

from __future__ import annotations

import numpy as np
import pytest

from moat.models.feature_spec import N_FEATURES, N_TOKENS, WINDOW
from moat.models.featurizer import Featurizer, ScopeWindow
from moat.models.memory_store import MemoryStore
from moat.models.traces import iter_events
from moat.serving.pack_kernel import half_to_float_bits, pack_kernel
from moat.serving.scorer import _pack, _pack_reference
from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(pack_kernel is None, reason="numba is not installed: only the reference runs")


def test_every_float16_converts_as_numpy_converts_it() -> None:
    bits = np.arange(1 << 16, dtype=np.uint16)  # zeros, subnormals, normals, infinities, NaNs
    want = bits.view(np.float16).astype(np.float32).view(np.uint32)
    got = np.array([half_to_float_bits(b) for b in bits], dtype=np.uint32)
    assert np.array_equal(got, want)


def window(rows: int, rng: np.random.Generator, special: bool = False) -> ScopeWindow:
    feats = rng.integers(0, 1 << 16, (rows, N_FEATURES), dtype=np.uint16)
    if not special:  # finite values in the range features take
        feats = rng.random((rows, N_FEATURES)).astype(np.float16).view(np.uint16)
    tokens = rng.integers(0, 1 << 16, (rows, N_TOKENS), dtype=np.uint16)
    return ScopeWindow("account", "a", feats.view(np.float16), tokens)


# (case, window lengths, every float16 bit pattern possible)
SHAPES = [
    ("one window of one row", [1], False),
    ("one full window (the live path's usual batch)", [WINDOW], False),
    ("one window, all bit patterns", [WINDOW], True),
    ("full windows", [WINDOW] * 3, False),
    ("ragged: padding differs per window", [1, 5, WINDOW, 2, 9], False),
    ("all bit patterns: subnormals, -0, infinities, NaNs", [WINDOW, 3], True),
]


@pytest.mark.parametrize("case, lengths, special", SHAPES, ids=[c[0] for c in SHAPES])
def test_packed_batch_equals_the_reference(case: str, lengths: list[int], special: bool) -> None:
    rng = np.random.default_rng(len(lengths))
    windows = [window(n, rng, special) for n in lengths]
    got, want = _pack(windows), _pack_reference(windows)
    for a, b in zip((got.feats, got.tokens, got.mask, got.last), (want.feats, want.tokens, want.mask, want.last)):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def test_featurised_trace_packs_as_the_reference() -> None:
    featurizer = Featurizer(MemoryStore())
    windows = [w for e in iter_events(ROOT / "tests" / "data" / "golden_trace.jsonl") for w in featurizer.step(e).windows]
    for a in range(0, len(windows), 300):
        got, want = _pack(windows[a : a + 300]), _pack_reference(windows[a : a + 300])
        assert [x.tobytes() for x in (got.feats, got.tokens, got.mask, got.last)] == [x.tobytes() for x in (want.feats, want.tokens, want.mask, want.last)]


def test_windows_not_as_stored_take_the_reference() -> None:
    """A float32 window (not the stored float16) must not be read as float16 bits."""
    rng = np.random.default_rng(1)
    w = window(4, rng)
    wide = w._replace(feats=w.feats.astype(np.float32))
    assert _pack([wide]).feats.tobytes() == _pack_reference([w]).feats.tobytes()
