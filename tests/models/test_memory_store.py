"""MemoryStore and CampaignSketch bounds: idle scopes are swept without being touched again,
holds outlive the TTL, a scope's clock never goes backwards, the sketch is bounded by its
settings, and a mirror kept once with its account gives the windows of a state of its own."""

from __future__ import annotations

import dataclasses
import math

import pytest

from moat.models.events import Event
from moat.models.featurizer import Featurizer
from moat.models.memory_store import MemoryStore
from moat.models.scope_window import Crowd, ScopeState, window
from moat.models.state import CAMPAIGN_BUCKET_S, SWEEP_PER_UPDATE, TS_MAX, CampaignSketch
from moat.models.summary import summarize


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _touch(store: MemoryStore, key: str, ts: float = 1000.0) -> None:
    # Events are bounded at parse; the store must stand on its own, so the summary gets any time.
    s = dataclasses.replace(summarize(Event.model_validate({"request_id": "r", "ts": 1000.0, "account_id": key, "prompt": "hello"})), ts=ts)
    store.update("account", key, s.ts, lambda st: window(st, s, Crowd(), "account"))


def _state(store: MemoryStore, key: str) -> ScopeState:
    got: list[ScopeState] = []
    store.update("account", key, 0.0, got.append)
    return got[0]


def test_idle_scopes_are_swept_without_being_touched_again() -> None:
    """The issue's repro: with MOAT_SCOPE_TTL_S=60, 18,001 scopes touched once were all still held
    after the TTL. Now a few requests after the TTL free them, a bounded number per request."""
    clock = Clock()
    store = MemoryStore(ttl_s=60, clock=clock)
    for i in range(18_000):
        store.update("account", f"idle-{i}", 1000.0, lambda st: None)
    assert store.size() == 18_000
    clock.t = 61.0
    live = math.ceil(18_000 / SWEEP_PER_UPDATE) + 1
    for i in range(live):
        store.update("account", f"live-{i}", 1061.0, lambda st: None)
    assert store.size() == live
    assert store.expired == 18_000


@pytest.mark.parametrize(
    "case, idle_s, hold_s, fresh",
    [
        ("within the TTL", 59.0, 0.0, False),
        ("past the TTL", 61.0, 0.0, True),
        ("past the TTL but inside the hold", 61.0 + 800.0, 900.0, False),
        ("past the TTL and the hold", 61.0 + 900.0, 900.0, True),
    ],
)
def test_a_scope_expires_a_ttl_after_its_last_request_or_its_hold(case: str, idle_s: float, hold_s: float, fresh: bool) -> None:
    clock = Clock()
    store = MemoryStore(ttl_s=60, clock=clock)
    _touch(store, "acct")
    if hold_s:
        store.set_holds([("account", "acct", 3, 1000.0 + hold_s)])
    clock.t = idle_s
    assert (_state(store, "acct").total == 0) is fresh


@pytest.mark.parametrize(
    "case, times, stored",
    [
        ("in order", [1000.0, 1001.0, 1005.0], [1000.0, 1001.0, 1005.0]),
        ("one from the past", [1000.0, 1005.0, 900.0], [1000.0, 1005.0, 1005.0]),
        ("a jump ahead, then back", [1000.0, 500_000.0, 1002.0], [1000.0, 500_000.0, 500_000.0]),
        ("below zero", [-1e308, 10.0], [0.0, 10.0]),
        ("the float limits", [-1e308, 1e308, 1000.0], [0.0, TS_MAX, TS_MAX]),
    ],
)
def test_a_scope_clock_never_goes_backwards(case: str, times: list[float], stored: list[float]) -> None:
    store = MemoryStore(clock=Clock())
    for ts in times:
        _touch(store, "acct", ts)
    assert _state(store, "acct").history()["ts"].tolist() == stored


def test_event_time_jumps_free_nothing() -> None:
    """Only the store's own clock ages a scope: a caller far in the future wipes nobody."""
    store = MemoryStore(ttl_s=60, clock=Clock())
    _touch(store, "victim", 1000.0)
    _touch(store, "jumper", 1000.0 + 1e9)
    assert _state(store, "victim").total == 1 and store.size() == 2


def test_store_passes_campaign_bounds_to_its_sketch() -> None:
    store = MemoryStore(max_templates=7, max_accounts=3)
    assert (store.sketch.max_templates, store.sketch.max_accounts) == (7, 3)
    assert (store.cohorts.max_templates, store.cohorts.max_accounts) == (7, 3)


# (case, calls of (sketch, item, account, ts), expected count of the last call). The campaign and
# cohort sketches count separately: a template and a fingerprint with the same number are not
# the same crowd.
SKETCH_CASES = [
    ("three accounts, one fingerprint", [("cohort", 5, "a", 0.0), ("cohort", 5, "b", 10.0), ("cohort", 5, "c", 20.0)], 3),
    ("one account thrice", [("cohort", 5, "a", 0.0), ("cohort", 5, "a", 10.0), ("cohort", 5, "a", 20.0)], 1),
    ("another fingerprint", [("cohort", 5, "a", 0.0), ("cohort", 5, "b", 10.0), ("cohort", 6, "c", 20.0)], 1),
    ("a template is not a fingerprint", [("campaign", 5, "a", 0.0), ("campaign", 5, "b", 10.0), ("cohort", 5, "c", 20.0)], 1),
    ("out of the hour", [("cohort", 5, "a", 0.0), ("cohort", 5, "b", 7 * CAMPAIGN_BUCKET_S)], 1),
]


@pytest.mark.parametrize("case, calls, expected", SKETCH_CASES, ids=[c[0] for c in SKETCH_CASES])
def test_cohort_sketch_counts_accounts_per_fingerprint(case: str, calls: list[tuple[str, int, str, float]], expected: int) -> None:
    store = MemoryStore()
    counts = [getattr(store, sketch)(item, account, ts) for sketch, item, account, ts in calls]
    assert counts[-1] == expected


@pytest.mark.parametrize("max_templates, max_accounts", [(3, 2000), (200_000, 4), (2, 2)])
def test_campaign_sketch_is_bounded_by_its_settings(max_templates: int, max_accounts: int) -> None:
    sketch = CampaignSketch(max_templates=max_templates, max_accounts=max_accounts)
    counts = [sketch.observe(t, f"acct-{a}", 1000.0) for t in range(10) for a in range(10)]
    assert len(sketch) == min(10, max_templates)
    assert max(counts) == min(10, max_accounts)
    assert all(len(seen) <= max_accounts for seen in sketch._templates.values())


def test_campaign_sketch_sweeps_templates_out_of_the_hour() -> None:
    sketch = CampaignSketch()
    for t in range(500):
        sketch.observe(t, "acct", 0.0)
    hour_later = 7 * CAMPAIGN_BUCKET_S
    for i in range(math.ceil(500 / SWEEP_PER_UPDATE)):
        sketch.observe(10_000, f"acct-{i}", hour_later)
    assert len(sketch) == 1


def test_campaign_sketch_keeps_one_copy_of_each_account_id() -> None:
    sketch = CampaignSketch()
    a, b = "".join(["acct", "-7"]), "".join(["acct-", "7"])
    assert a == b and a is not b
    sketch.observe(1, a, 0.0)
    sketch.observe(2, b, 0.0)
    (first,), (second,) = (list(seen) for seen in sketch._templates.values())
    assert first is second


def test_campaign_sketch_entries_of_one_bucket_share_its_number() -> None:
    """A bucket number of its own per entry was a fifth of the sketch's memory."""
    sketch = CampaignSketch()
    bucket_ts = 3_000_000 * CAMPAIGN_BUCKET_S  # far above the integers Python keeps one copy of
    for t, a, ts in [(1, "a", bucket_ts), (2, "b", bucket_ts + 5), (1, "c", bucket_ts + 9), (3, "d", bucket_ts + CAMPAIGN_BUCKET_S)]:
        sketch.observe(t, a, ts)
    numbers = [n for seen in sketch._templates.values() for n in seen.values()]
    assert numbers == [3_000_000, 3_000_000, 3_000_000, 3_000_001]
    assert len({id(n) for n in numbers[:3]}) == 1


def test_stores_clamp_to_the_times_an_event_may_carry() -> None:
    from moat.models.events import MAX_TS

    assert TS_MAX == MAX_TS



def _request(i: int, account: str, key: str | None, ip: str | None, text: str = "") -> Event:
    fields = {"request_id": f"r{i}", "ts": 1_764_500_000.0 + 7.0 * i, "account_id": account, "prompt": text or f"question {i % 5} about item {i}"}
    return Event.model_validate({**fields, **({"api_key_id": key} if key else {}), **({"client_ip": ip} if ip else {})})


# (case, requests as (account, key, ip)): each breaks a mirror in its own way.
MIRROR_BREAKS = [
    ("one account, one key, one block", [("a", "k", "203.0.113.9")] * 6),
    ("the account moves to a second key and back", [("a", "k1", "203.0.113.9")] * 3 + [("a", "k2", "203.0.113.9")] * 2 + [("a", "k1", "203.0.113.9")] * 2),
    ("a second account takes the key", [("a", "k", "203.0.113.9")] * 3 + [("b", "k", "198.51.100.7")] * 2 + [("a", "k", "203.0.113.9")] * 2),
    ("two accounts behind one block", [("a", "ka", "203.0.113.9"), ("b", "kb", "203.0.113.77")] * 4),
    ("the account drops its key and address", [("a", "k", "203.0.113.9")] * 3 + [("a", None, None)] * 2 + [("a", "k", "203.0.113.9")]),
    ("a key that an older account starts using", [("a", None, "203.0.113.9")] * 3 + [("a", "k", "203.0.113.9")] * 3),
    ("a new account on an old key", [("a", "k", "203.0.113.9")] * 2 + [("b", "k", "203.0.113.9")] * 3),
]


@pytest.mark.parametrize("case, requests", MIRROR_BREAKS, ids=[c[0] for c in MIRROR_BREAKS])
@pytest.mark.parametrize("max_scopes", [None, 4])
def test_shared_mirrors_give_the_windows_of_separate_states(case: str, requests: list[tuple[str, str | None, str | None]], max_scopes: int | None) -> None:
    """A key or address block kept once with its account gives, request by request, the windows
    (every row's vector, scope flag included) that a state of its own gives; also when the
    bound evicts an account and keeps its mirror, or the other way round."""
    events = [_request(i, *r) for i, r in enumerate(requests)]
    shared, separate = (Featurizer(MemoryStore(max_scopes=max_scopes, share_mirrors=on)) for on in (True, False))
    for e in events:
        a, b = shared.step(e).windows, separate.step(e).windows
        assert [(w.scope, w.key, w.dependent, w.feats.tobytes(), w.tokens.tobytes()) for w in a] == [(w.scope, w.key, w.dependent, w.feats.tobytes(), w.tokens.tobytes()) for w in b], e.request_id


def test_a_mirror_expires_on_its_own_hold_not_its_accounts() -> None:
    """Holds are per scope: a held key outlives the TTL of the account it mirrored."""
    clocks = [Clock(), Clock()]
    stores = [MemoryStore(ttl_s=60, clock=clocks[0]), MemoryStore(ttl_s=60, clock=clocks[1], share_mirrors=False)]
    featurizers = [Featurizer(st) for st in stores]
    events = [_request(i, "a", "k", "203.0.113.9") for i in range(4)]
    windows = []
    for f, st, clock in zip(featurizers, stores, clocks):
        f.step(events[0])
        f.step(events[1])
        st.set_holds([("api_key", "k", 3, events[1].ts + 900)])
        assert st.get_holds([("account", "a"), ("api_key", "k")]) == [(0, 0.0), (3, events[1].ts + 900)]
        clock.t = 120.0  # past the TTL: the account starts over, the held key does not
        windows.append([(w.scope, w.feats.tobytes()) for w in f.step(events[2]).windows])
    assert windows[0] == windows[1]
    assert stores[0].get_holds([("api_key", "k")]) == [(3, events[1].ts + 900)]


@pytest.mark.parametrize("accounts", [1, 50])
def test_an_account_with_its_own_key_and_block_keeps_one_state(accounts: int) -> None:
    store = MemoryStore(max_scopes=None, ttl_s=None)
    f = Featurizer(store)
    for i in range(3 * accounts):
        n = i % accounts
        f.step(_request(i, f"acct-{n}", f"key-{n}", f"10.{n // 200}.{n % 200}.1"))
    states = {id(entry.state) for entry in store._scopes.values()}
    assert store.size() == 3 * accounts and len(states) == accounts


# (case, hold set on the scope before it is pushed out (level, until; its last request is at
# 1000), holds the evicted-hold list may keep, the hold it has when it comes back)
EVICTED = [
    ("a held scope pushed out by the bound gets its hold back", (3, 2000.0), 8, (3, 2000.0)),
    ("a scope without a hold comes back without one", None, 8, (0, 0.0)),
    ("a hold over at the scope's last request is not kept", (3, 900.0), 8, (0, 0.0)),
    ("past the list's own bound, the oldest evicted hold goes", (3, 2000.0), 1, (0, 0.0)),
]


@pytest.mark.parametrize("case, hold, kept, back", EVICTED, ids=[c[0] for c in EVICTED])
def test_the_scope_bound_keeps_holds(monkeypatch: pytest.MonkeyPatch, case: str, hold: tuple | None, kept: int, back: tuple) -> None:
    """A flood of fresh scopes must not shed an attacker's block with its history."""
    import moat.models.memory_store as memory_store

    monkeypatch.setattr(memory_store, "EVICTED_HOLDS", kept)
    store = MemoryStore(max_scopes=4, ttl_s=None)
    _touch(store, "attacker")
    _touch(store, "other-held")
    if hold is not None:
        store.set_holds([("account", "attacker", *hold), ("account", "other-held", 3, 2000.0)])
    for i in range(10):  # the flood: the attacker, then the other held scope, are pushed out
        _touch(store, f"flood-{i}")
    assert store.get_holds([("account", "attacker")]) == [(0, 0.0)], "pushed out"
    _touch(store, "attacker", ts=1100.0)
    assert store.get_holds([("account", "attacker")]) == [back]


def test_a_mirror_pushed_out_gets_its_hold_back_as_a_mirror_again() -> None:
    """The other way a scope starts fresh: a new account's first request re-creates the key as
    that account's mirror."""
    store = MemoryStore(max_scopes=6, ttl_s=None)
    f = Featurizer(store)
    f.step(_request(0, "a", "k", "203.0.113.9"))
    until = _request(0, "a", "k", None).ts + 900.0
    store.set_holds([("api_key", "k", 3, until)])
    for i in range(10):
        f.step(_request(i + 1, f"flood-{i}", f"fk-{i}", f"10.0.{i}.1"))
    assert store.get_holds([("api_key", "k")]) == [(0, 0.0)], "pushed out"
    windows = f.step(_request(20, "b", "k", "198.51.100.7")).windows
    assert windows[1].mirrors(windows[0]), "back as the new account's mirror"
    assert store.get_holds([("api_key", "k")]) == [(3, until)]
