"""The scorer's one-scatter window packing equals padding each window in turn, and the reason
rules read a vector's list form as they read the vector."""

from __future__ import annotations

import numpy as np
import pytest

from moat.models.feature_spec import N_FEATURES, N_TOKENS, WINDOW
from moat.models.featurizer import ScopeWindow
from moat.serving.reasons import RULES, floor_level, reasons
from moat.serving.scorer import _pack


def padded_one_by_one(windows: list[ScopeWindow]) -> tuple[np.ndarray, ...]:
    """The plain loop the scatter replaced."""
    t = max((len(w.feats) for w in windows), default=1)
    feats = np.zeros((len(windows), t, N_FEATURES), dtype=np.float32)
    tokens = np.zeros((len(windows), t, N_TOKENS), dtype=np.int64)
    mask = np.zeros((len(windows), t), dtype=np.float32)
    last = np.empty(len(windows), dtype=np.intp)
    for i, w in enumerate(windows):
        n = len(w.feats)
        feats[i, :n], tokens[i, :n], mask[i, :n], last[i] = w.feats, w.tokens, 1.0, n - 1
    return feats, tokens, mask, last


def windows(lengths: list[int], seed: int = 0) -> list[ScopeWindow]:
    rng = np.random.default_rng(seed)
    return [
        ScopeWindow("account", f"a{i}", rng.normal(size=(n, N_FEATURES)).astype(np.float16), rng.integers(0, 4096, (n, N_TOKENS)).astype(np.uint16))
        for i, n in enumerate(lengths)
    ]


# (case, window lengths): none, one, all full, ragged with the longest in the middle and at the end.
LENGTHS = [("no windows", []), ("one request", [1]), ("full windows", [WINDOW] * 3), ("ragged", [3, WINDOW, 1, 7]), ("longest last", [1, 2, 5])]


@pytest.mark.parametrize("case, lengths", LENGTHS, ids=[c[0] for c in LENGTHS])
def test_pack_equals_padding_each_window(case: str, lengths: list[int]) -> None:
    ws = windows(lengths)
    got = _pack(ws)
    for name, a, b in zip(("feats", "tokens", "mask", "last"), (got.feats, got.tokens, got.mask, got.last), padded_one_by_one(ws)):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_array_equal(a, b, err_msg=f"{case}: {name}")


@pytest.mark.parametrize("seed", range(6))
def test_rules_read_a_list_as_the_vector(seed: int) -> None:
    """reasons() reads the vector's tolist(); floor_level reads the vector: the same rules fire."""
    rng = np.random.default_rng(seed)
    vec = rng.uniform(0, 1.2, N_FEATURES).astype(np.float16)
    for n in (1, 5, 8, 10, WINDOW):
        fired = [r.code for r in RULES if r.fires(vec, n)]
        assert reasons(vec, n, "account") == [*fired, "scope:account"]
        assert floor_level(vec, n) == max((r.floor for r in RULES if r.code in fired), default=0)
