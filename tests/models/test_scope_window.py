"""ScopeState.copy: what a store hands a caller to change, and what a mirror takes when it stops
sharing its account's state (its own scope flag on every stored row)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from moat.models.feature_spec import N_FEATURES, SCOPE_INDEX
from moat.models.scope_window import ROW, ScopeState


def _state() -> ScopeState:
    rows = np.zeros(4, dtype=ROW)
    rows["vec"][:3] = 0.5
    rows["vec"][:3, SCOPE_INDEX["account"]] = 1.0
    for i in (SCOPE_INDEX["api_key"], SCOPE_INDEX["ip_prefix"]):
        rows["vec"][:3, i] = 0.0
    return ScopeState(rows=rows, n=3, total=70, ewma_1h=1.5, ewma_1d=2.5, bloom_cur=np.full(16, 3, np.uint64), bloom_prev=np.full(16, 4, np.uint64), bloom_count=6)


@pytest.mark.parametrize("scope", [None, "account", "api_key", "ip_prefix"])
def test_a_copy_shares_nothing_misses_no_field_and_carries_its_scope_flag(scope: str | None) -> None:
    state = _state()
    copy = state.copy(scope=scope)
    for f in dataclasses.fields(ScopeState):
        mine, theirs = getattr(state, f.name), getattr(copy, f.name)
        if f.name == "rows":
            assert theirs is not mine
        elif isinstance(mine, np.ndarray):
            assert theirs is not mine and np.array_equal(theirs, mine), f.name
        else:
            assert theirs == mine, f.name
    flags = sorted(SCOPE_INDEX.values())
    others = [i for i in range(N_FEATURES) if i not in flags]
    assert np.array_equal(copy.rows["vec"][:, others], state.rows["vec"][:, others])  # only the flags change
    want = scope or "account"
    assert all(copy.rows["vec"][:3, SCOPE_INDEX[sc]].tolist() == [float(sc == want)] * 3 for sc in SCOPE_INDEX)
    assert not copy.rows["vec"][3].any()  # a row past the history stays empty
    assert state.rows["vec"][0, SCOPE_INDEX["account"]] == 1.0  # the original is untouched
    assert copy.rows[["ts", "simhash"]].tolist() == state.rows[["ts", "simhash"]].tolist()
