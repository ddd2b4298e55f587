"""The featurizer reuses the account's vector for a key or address block that mirrors the
account's history; the result must equal computing every scope on its own."""

from __future__ import annotations

import numpy as np
import pytest

from moat.models.events import Event
from moat.models.featurizer import Featurizer
from moat.models.memory_store import MemoryStore
from moat.models.scope_window import Crowd, ScopeState, window
from moat.models.state import CampaignSketch
from moat.models.summary import summarize


def ev(i: int, account: str, key: str | None, ip: str, text: str | None = None, **params) -> Event:
    return Event.model_validate({
        "request_id": f"r{i}", "ts": 10.0 * i + (i % 3), "account_id": account, **({"api_key_id": key} if key is not None else {}), "client_ip": ip,
        "messages": [{"role": "user", "content": text or f"question {i % 4} about topic {i % 7}"}], "params": params,
    })


def reference(events: list[Event]) -> list[list[tuple[str, str, np.ndarray, np.ndarray]]]:
    """Every scope computed from scratch with its own state: no reuse."""
    states: dict[tuple[str, str], ScopeState] = {}
    sketch, cohorts = CampaignSketch(), CampaignSketch()
    out = []
    for e in events:
        s = summarize(e)
        crowd = Crowd(sketch.observe(s.shape, s.account_id, s.ts), cohorts.observe(s.client_fp, s.account_id, s.ts))
        rows = []
        for scope, key in s.scope_keys():
            feats, tokens = window(states.setdefault((scope, key), ScopeState()), s, crowd, scope)
            rows.append((scope, key, feats, tokens))
        out.append(rows)
    return out


# (case, events): sharing patterns where a scope mirrors the account, stops mirroring, or never does.
CASES = [
    ("one account, one key, one address", [ev(i, "a", "k", "10.0.0.1") for i in range(20)]),
    ("two accounts share a key", [ev(i, "a" if i % 2 else "b", "k", f"10.0.{i % 2}.1") for i in range(20)]),
    ("an account rotates keys", [ev(i, "a", f"k{i // 5}", "10.0.0.1") for i in range(20)]),
    ("a second account joins the address block late", [ev(i, "a" if i < 12 or i % 2 else "b", f"k-{'a' if i < 12 or i % 2 else 'b'}", "10.0.0.9") for i in range(24)]),
    # At the hand-over the key and the account have the same number of requests, but not the same ones.
    ("a key passes from one account to another", [ev(i, "b" if i < 5 else "a", "k1" if 5 <= i < 10 else "k2", "10.0.0.1" if i < 5 else "10.0.0.2") for i in range(20)]),
    ("no key, shared NAT", [ev(i, f"user{i % 3}", None, "192.168.7.20") for i in range(18)]),
    ("parameters and biases vary", [ev(i, "a", "k", "10.0.0.1", "probe", logit_bias={str(i): 50 + i}, logprobs=bool(i % 2)) for i in range(20)]),
    ("bloom rotates past 64 requests", [ev(i, "a", "k", "10.0.0.1", f"novel words number {i} here") for i in range(140)]),
]


@pytest.mark.parametrize("case, events", CASES, ids=[c[0] for c in CASES])
def test_reused_vectors_equal_computing_each_scope(case: str, events: list[Event]) -> None:
    f = Featurizer(MemoryStore(max_scopes=None, ttl_s=None))
    for e, ref in zip(events, reference(events)):
        got = f.step(e).windows
        assert [(w.scope, w.key) for w in got] == [(r[0], r[1]) for r in ref]
        for w, (_, _, feats, tokens) in zip(got, ref):
            np.testing.assert_array_equal(w.feats, feats, err_msg=f"{case}: {w.scope} of {e.request_id}")
            np.testing.assert_array_equal(w.tokens, tokens)


@pytest.mark.parametrize("case, events", CASES, ids=[c[0] for c in CASES])
def test_a_window_mirrors_the_account_exactly_when_it_holds_the_same_requests(case: str, events: list[Event]) -> None:
    """What the scorer relies on to score a key or address block as its account: that the
    windows match says the scope has seen exactly the account's requests."""
    f = Featurizer(MemoryStore(max_scopes=None, ttl_s=None))
    seen: dict[tuple[str, str], list[str]] = {}
    for e in events:
        windows = f.step(e).windows
        for w in windows:
            seen.setdefault((w.scope, w.key), []).append(e.request_id)
        account = windows[0]
        assert account.scope == "account" and not account.mirrors(account)
        for w in windows[1:]:
            assert w.mirrors(account) == (seen[(w.scope, w.key)] == seen[("account", account.key)]), f"{case}: {w.scope} of {e.request_id}"


# (case, events, dependent flags of the last event's windows in scope order)
DEPENDENT = [
    ("single-key account: the key is its own", [ev(i, "a", "k", "10.0.0.1") for i in range(5)], [False, False, True]),
    ("two-key account: each key carries part of it", [ev(i, "a", f"k{i % 2}", "10.0.0.1") for i in range(6)], [False, True, True]),
    ("a key shared by two accounts carries more than either", [ev(i, f"a{i % 2}", "k", f"10.0.{i % 2}.1") for i in range(6)], [False, True, True]),
    ("a newcomer on a key another account used a lot", [ev(i, "a", "k", "10.0.0.1") for i in range(5)] + [ev(5, "b", "k", "10.0.9.1")], [False, True, True]),
    ("no key", [ev(i, "a", None, "10.0.0.1") for i in range(3)], [False, True]),
]


@pytest.mark.parametrize("case, events, expected", DEPENDENT, ids=[c[0] for c in DEPENDENT])
def test_dependent_windows(case: str, events: list[Event], expected: list[bool]) -> None:
    f = Featurizer(MemoryStore(max_scopes=None, ttl_s=None))
    for e in events:
        windows = f.step(e).windows
    assert [w.dependent for w in windows] == expected
