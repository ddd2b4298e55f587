"""RedisStore against a real redis-server: same decisions as memory, replicas agree, faults
degrade to local state."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from moat.models.events import Event
from moat.models.feature_spec import BLOOM_ROTATE, FEATURE_SPEC_VERSION, WINDOW
from moat.models.memory_store import MemoryStore
from moat.models.scope_window import ROW, Crowd, ScopeState, window
from moat.models.state import CAMPAIGN_BUCKET_S, TS_MAX, StoreUnavailable
from moat.models.summary import summarize
from moat.models.traces import iter_raw
from moat.serving.scorer import Scorer
from moat.serving.settings import ServingSettings
from moat.serving.state import redis_store
from moat.serving.state.redis_store import STATE_VERSION, RedisStore, state_version
from moat.serving.state.sealed_scope import HEAD_SLOT, PREV_AT, PREV_SLOT, ROW_SLOT, Sealer, decode, writes
from tests.models.test_memory_store import SKETCH_CASES


def events(traces: Path, n: int) -> list[Event]:
    return [Event.model_validate(r) for _, r in zip(range(n), iter_raw(traces / "test.jsonl"))]


def settings(**kw) -> ServingSettings:
    """Recorded events are scored in their own time."""
    return ServingSettings(time_source="caller", **kw)


def decisions(scores) -> list[tuple[str, float, tuple[str, ...]]]:
    return [(s.action, s.risk, tuple(s.reasons)) for s in scores]


def test_redis_gives_the_same_decisions_as_memory(redis_url: str, small_traces: Path) -> None:
    evs = events(small_traces, 500)
    memory = Scorer(settings())
    shared = Scorer(settings(state=redis_url))
    assert decisions(shared.score(e) for e in evs) == decisions(memory.score(e) for e in evs)
    assert shared.counters.store_fallbacks == 0


def _replica(url: str, conn) -> None:
    """A scorer process: scores the events it is sent, one at a time, against shared Redis."""
    sc = Scorer(settings(state=url))
    while (raw := conn.recv()) is not None:
        s = sc.score(Event.model_validate(raw))
        conn.send((s.action, s.risk, tuple(s.reasons)))


def test_two_scorer_processes_on_one_redis_equal_one_process(redis_url: str, small_traces: Path) -> None:
    import multiprocessing as mp

    raws = [r for _, r in zip(range(400), iter_raw(small_traces / "test.jsonl"))]
    single = Scorer(settings(state=redis_url.replace("/0", "/1")))
    expected = decisions(single.score(Event.model_validate(r)) for r in raws)
    ctx = mp.get_context("spawn")
    pipes, procs = [], []
    for _ in range(2):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_replica, args=(redis_url, child))
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    try:
        got = []
        for i, raw in enumerate(raws):  # alternate replicas, as a load balancer would
            pipes[i % 2].send(raw)
            got.append(pipes[i % 2].recv())
    finally:
        for p in pipes:
            p.send(None)
        for proc in procs:
            proc.join(30)
    assert got == expected


def stored(store: RedisStore, scope: str, key: str) -> ScopeState:
    """The scope as Redis holds it, read as another replica would (not from the store's cache)."""
    name = store.redis_key("s", scope, key)
    return decode(store.sealer(), name.encode(), store.client.get(name))


def test_concurrent_updates_to_one_scope_are_not_lost(redis_url: str) -> None:
    """Four replicas hammer one scope; each write is a compare-and-set on the version it computed
    on, retried on the stored state, so no update is lost."""
    stores = [RedisStore(redis_url, timeout_s=1.0) for _ in range(4)]
    errors: list[Exception] = []

    def bump(store: RedisStore, worker: int) -> None:
        for i in range(25):
            s = summarize(Event.model_validate({"request_id": f"{worker}-{i}", "ts": float(i), "account_id": "hot", "prompt": f"p {i}"}))
            try:
                store.update("account", "hot", s.ts, lambda st: window(st, s, Crowd(), "account"))
            except StoreUnavailable as exc:
                errors.append(exc)

    threads = [threading.Thread(target=bump, args=(s, w)) for w, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    state = stored(stores[0], "account", "hot")
    assert (state.total, state.n) == (100, WINDOW)
    assert sum(s.retries for s in stores) > 0  # the replicas did collide, and recovered


def test_redis_failure_degrades_to_local_state(redis_url: str, small_traces: Path, caplog) -> None:
    import redis as redis_lib

    evs = events(small_traces, 60)
    sc = Scorer(settings(state=redis_url))
    for e in evs[:30]:
        sc.score(e)
    redis_lib.Redis.from_url(redis_url).shutdown(nosave=True)
    with caplog.at_level(logging.WARNING):
        scores = [sc.score(e) for e in evs[30:]]
    assert len(scores) == 30 and all(0.0 <= s.risk <= 1.0 for s in scores)
    assert sc.counters.store_fallbacks >= 1
    assert any("unavailable" in r.message for r in caplog.records)


CAP_CASES = [
    ("four accounts, three counted", [("campaign", 9, acct, 10.0 * i) for i, acct in enumerate("abcd")], 3),
    ("the capped item still counts a returning account once", [*[("campaign", 9, acct, 10.0 * i) for i, acct in enumerate("abcd")], ("campaign", 9, "d", 50.0)], 3),
    ("an account per bucket, the hour sliding", [("cohort", 1, f"acct-{b}", b * CAMPAIGN_BUCKET_S) for b in range(9)], 3),
]


@pytest.mark.parametrize("case, calls, expected", SKETCH_CASES + CAP_CASES, ids=[c[0] for c in SKETCH_CASES + CAP_CASES])
def test_sketches_count_as_the_memory_store_does(redis_url: str, case: str, calls: list[tuple[str, int, str, float]], expected: int) -> None:
    """The memory store's table, against Redis and memory alike (with 3 accounts per item)."""
    for store in (RedisStore(redis_url, max_accounts=3), MemoryStore(max_accounts=3)):
        counts = [getattr(store, sketch)(item, account, ts) for sketch, item, account, ts in calls]
        assert counts[-1] == expected, store.name


def test_campaign_counts_distinct_accounts_per_hour(redis_url: str) -> None:
    store = RedisStore(redis_url)
    counts = [store.campaign(42, f"acct-{i % 5}", 1000.0 + i) for i in range(20)]
    assert counts[-1] == 5
    assert store.campaign(42, "late", 1000.0 + 7200) == 1  # two hours later the old accounts are gone


def _event(i: int, account: str = "acct") -> Event:
    return Event.model_validate({"request_id": f"r{i}", "ts": 1000.0 + i, "account_id": account, "prompt": f"prompt {i}"})


def _push(store: RedisStore, i: int, account: str = "acct") -> int:
    """One request into the account scope; the scope's total as the request saw it."""
    s = summarize(_event(i, account))
    seen: list[int] = []

    def apply(st):
        seen.append(st.total)
        return window(st, s, Crowd(), "account")

    store.update("account", account, s.ts, apply)
    return seen[-1]


@pytest.mark.parametrize(
    "change",
    [
        {"row": np.dtype(ROW.descr + [("extra", np.uint8)])},
        {"row": np.dtype([(name, ROW.fields[name][0]) for name in reversed(ROW.names)])},
        {"row": np.dtype([(name, np.dtype((np.float32, ROW.fields[name][0].shape)) if name == "vec" else ROW.fields[name][0]) for name in ROW.names])},
        {"head": "<qddq"},
        {"bloom_words": 32},
        {"window": 32},
        {"hold": "{action}|{until}"},
        {"spec": FEATURE_SPEC_VERSION + ".next"},
        {"layout": "slots(head,16xrow,prev)/chacha20-poly1305/ad=key+role"},
        {"sketch": "hyperloglog per bucket"},
    ],
    ids=["row gains a field", "row fields reordered", "row field widened", "head format", "bloom size", "window", "hold format", "feature spec", "slot layout or cipher", "sketch layout"],
)
def test_any_layout_change_changes_the_state_version(change: dict) -> None:
    assert state_version() == STATE_VERSION
    assert state_version(**change) != STATE_VERSION


def test_state_of_another_layout_version_is_not_read(redis_url: str, monkeypatch) -> None:
    monkeypatch.setattr(redis_store, "STATE_VERSION", "v0.oldrows")
    old = RedisStore(redis_url)
    for i in range(5):
        _push(old, i)
    monkeypatch.undo()
    new = RedisStore(redis_url)
    assert new.prefix != old.prefix
    assert [_push(new, i) for i in range(5, 8)] == [0, 1, 2]  # a fresh scope, then its own history
    assert _push(old, 99) == 5  # and the old release's state is left as it was


def test_state_written_before_versioned_keys_is_not_read(redis_url: str) -> None:
    """The keys of releases before versioning (`moat:h:…`, `moat:r:…`) are simply not looked at."""
    raw = redis_store.redis.Redis.from_url(redis_url)
    raw.set("moat:h:account:acct", b"\x01" * 80)
    raw.rpush("moat:r:account:acct", b"\x02" * 150)
    assert _push(RedisStore(redis_url), 0) == 0


def _assemble(parts: list[tuple[int, bytes]]) -> bytes:
    """The string the store's SETRANGE writes would leave."""
    out = bytearray()
    for offset, data in parts:
        out[len(out) :] = b"\0" * max(offset + len(data) - len(out), 0)
        out[offset : offset + len(data)] = data
    return bytes(out)


def _sealed(sealer: Sealer, name: bytes, rate: float = 1.0, ts: float = 1000.0) -> bytes:
    """A three-request scope sealed for `name`: with bad rates or times, it reaches the checks
    behind authentication."""
    state = ScopeState(rows=np.zeros(3, dtype=ROW), n=3, total=3, ewma_1h=rate, ewma_1d=rate, bloom_count=3)
    state.rows["ts"] = [ts - 2, ts - 1, ts]
    return _assemble(writes(sealer, name, ScopeState(), state, fresh=True)[1])


def _flip(value: bytes, at: int) -> bytes:
    return value[:at] + bytes([value[at] ^ 1]) + value[at + 1 :]


def _swap_rows(value: bytes) -> bytes:
    a, b = HEAD_SLOT, HEAD_SLOT + ROW_SLOT
    return value[:a] + value[b : b + ROW_SLOT] + value[a:b] + value[b + ROW_SLOT :]


Corrupt = Callable[[RedisStore, bytes, bytes], bytes | None]
CORRUPT: list[tuple[str, Corrupt, bool]] = [
    # (case, the value to store instead of the scope's valid one (None: a list there), whether
    # it is reported: no value and a value that is not a string are no scope, and are replaced)
    ("empty", lambda store, name, value: b"", False),
    ("head cut short", lambda store, name, value: value[: HEAD_SLOT - 1], True),
    ("last row cut short", lambda store, name, value: value[:-1], True),
    ("longer than any scope", lambda store, name, value: value + b"\0" * (PREV_AT + PREV_SLOT), True),
    ("a bit flipped in the head", lambda store, name, value: _flip(value, HEAD_SLOT - 20), True),
    ("a bit flipped in a row", lambda store, name, value: _flip(value, HEAD_SLOT + 40), True),
    ("two rows swapped", lambda store, name, value: _swap_rows(value), True),
    ("another scope's value", lambda store, name, value: store.client.get(store.redis_key("s", "account", "other")), True),
    ("sealed under another secret", lambda store, name, value: _sealed(Sealer(b"another secret!!" * 2), name), True),
    ("infinite rates, sealed by this store", lambda store, name, value: _sealed(store.sealer(), name, rate=float("inf")), True),
    ("a row at ts 1e308, sealed by this store", lambda store, name, value: _sealed(store.sealer(), name, ts=1e308), True),
    ("a list, not a string", lambda store, name, value: None, False),
]


@pytest.mark.parametrize("case, corrupt, warns", CORRUPT, ids=[c[0] for c in CORRUPT])
def test_a_value_that_does_not_authenticate_or_decode_is_a_fresh_scope_with_a_warning(redis_url: str, caplog, case: str, corrupt: Corrupt, warns: bool) -> None:
    writer = RedisStore(redis_url)
    for i in range(3):
        _push(writer, i)
    _push(writer, 0, account="other")
    name = writer.redis_key("s", "account", "acct")
    bad = corrupt(writer, name.encode(), writer.client.get(name))
    writer.client.delete(name)
    if bad is None:
        writer.client.rpush(name, b"\x02" * 150)
    else:
        writer.client.set(name, bad)
    reader = RedisStore(redis_url)  # another replica: it has to read what is stored
    with caplog.at_level(logging.WARNING, logger=redis_store.__name__):
        assert _push(reader, 3) == 0
    assert any("starting it fresh" in r.message for r in caplog.records) is warns
    # The bad value is replaced, not patched: the scope is whole again.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=redis_store.__name__):
        assert _push(RedisStore(redis_url), 4) == 1
    assert not caplog.records
    assert stored(RedisStore(redis_url), "account", "acct").total == 2


@pytest.mark.parametrize("value", [b"garbage", b"2:", b":5.0", b"\xff\xfe:1", b"3:inf", b"3:nan"])
def test_a_malformed_hold_reads_as_no_hold(redis_url: str, value: bytes, caplog) -> None:
    store = RedisStore(redis_url)
    store.set_holds([("account", "good", 3, 2000.0)])
    store.client.set(store.redis_key("h", "account", "bad"), value)
    with caplog.at_level(logging.WARNING, logger=redis_store.__name__):
        assert store.get_holds([("account", "bad"), ("account", "good")]) == [(0, 0.0), (3, 2000.0)]
    assert any("malformed hold" in r.message for r in caplog.records)


@pytest.mark.parametrize("requests", [1, 5, WINDOW, WINDOW + 1, BLOOM_ROTATE - 1, BLOOM_ROTATE, BLOOM_ROTATE + 1], ids=lambda n: f"{n} requests")
def test_a_scope_is_stored_at_its_size_without_slack(redis_url: str, requests: int) -> None:
    """Redis grows a string in place by doubling its allocation; a scope of one request was kept
    in about twice its bytes. A value that grows is written whole, so it is allocated at size
    (the window's slots, then the previous bloom once the scope rotates at 64 requests)."""
    store = RedisStore(redis_url)
    for i in range(requests):
        _push(store, i)
    name = store.redis_key("s", "account", "acct")
    size = store.client.strlen(name)
    assert size == HEAD_SLOT + min(requests, WINDOW) * ROW_SLOT + (PREV_SLOT if requests >= BLOOM_ROTATE else 0)
    assert store.client.memory_usage(name, samples=0) < size * 1.25 + 128


HOLD_TTLS = [
    # (case, scope TTL s, what is left of the hold at the scope's last request s, the hold key's TTL: least, most)
    ("cool-down within the TTL", 3600, 900.0, 3599, 3600),
    ("cool-down longer than the TTL", 600, 7200.0, 7199, 7200),
    ("cool-down of a fraction of a second more than the TTL", 600, 600.4, 600, 601),
    ("a hold that already ended", 600, -50.0, 599, 600),
]


@pytest.mark.parametrize("case, ttl, left, least, most", HOLD_TTLS, ids=[c[0] for c in HOLD_TTLS])
def test_a_hold_key_lives_as_long_as_the_scope_ttl_or_the_hold(redis_url: str, case: str, ttl: int, left: float, least: int, most: int) -> None:
    """The hold key expired with the scope's TTL even when the cool-down was longer, so a long
    cool-down ended early. It now expires at whichever is later."""
    store = RedisStore(redis_url, ttl_s=ttl)
    _push(store, 0)  # the scope's last request is at ts 1000
    store.set_holds([("account", "acct", 3, 1000.0 + left)])
    assert least <= store.client.ttl(store.redis_key("h", "account", "acct")) <= most
    assert RedisStore(redis_url).get_holds([("account", "acct")]) == [(3, 1000.0 + left)]


def test_a_hold_outlives_the_history_it_was_set_on(redis_url: str) -> None:
    store = RedisStore(redis_url, ttl_s=1)
    _push(store, 0)
    store.set_holds([("account", "acct", 3, 1000.0 + 30)])
    time.sleep(1.5)  # the scope's TTL passes
    assert store.client.exists(store.redis_key("s", "account", "acct")) == 0
    assert RedisStore(redis_url).get_holds([("account", "acct")]) == [(3, 1030.0)]


def test_a_scorer_on_stale_redis_state_scores_without_failing_open(redis_url: str, small_traces: Path) -> None:
    """Old-layout bytes under every current head key: requests are scored on fresh scopes, neither
    raising (which the service answers by failing open) nor tripping the store's breaker."""
    evs = events(small_traces, 40)
    sc = Scorer(settings(state=redis_url))
    for e in evs[:20]:
        sc.score(e)
    store = sc.store
    assert isinstance(store, RedisStore)
    for k in store.client.scan_iter(f"{store.prefix}:s:*"):
        store.client.set(k, b"\x00" * 17)
    scores = [sc.score(e) for e in evs[20:]]  # before versioning: struct.error, so fail-open
    assert len(scores) == 20 and all(0.0 <= s.risk <= 1.0 for s in scores)
    assert sc.counters.store_fallbacks == 0


@pytest.mark.parametrize("times", [[-1e308, 1e308], [1e308, -1e308], [float("nan"), 1e308]], ids=["-max then max", "max then -max", "nan then max"])
def test_caller_time_at_the_float_limits_cannot_break_a_scope(redis_url: str, times: list[float]) -> None:
    """The issue's repro: ts -1e308 then 1e308 made the account's next 15 requests fail open (their
    gaps were infinite). The store clamps what it keeps, so the next requests get finite features
    and the stored times stay in order and in range."""
    store = RedisStore(redis_url)
    base = summarize(_event(0))
    for i, ts in enumerate([*times, *(1000.0 + k for k in range(15))]):
        s = dataclasses.replace(base, ts=ts)
        feats, _ = store.update("account", "acct", s.ts, lambda st: window(st, s, Crowd(), "account"))
        if i >= len(times):
            assert np.isfinite(feats.astype(np.float32)).all()
    times = stored(store, "account", "acct").history()["ts"]
    assert (np.diff(times) >= 0).all() and 0.0 <= times.min() and times.max() <= TS_MAX


def test_a_hung_redis_costs_each_request_at_most_one_timeout(redis_url: str, small_traces: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's repro: while Redis hung, every 100th request stalled on the state-size sample,
    which bypassed the circuit breaker. Now the sample goes through the breaker: every call
    returns, the failures are counted, and no call waits much past one Redis timeout."""
    import redis as redis_lib

    timeout = 0.05
    evs = events(small_traces, 221)
    sc = Scorer(settings(state=redis_url, redis_timeout_s=timeout, redis_retry_s=0.2))
    store = sc.store
    assert isinstance(store, RedisStore)
    for e in evs[:20]:
        sc.score(e)
    assert store.failures == 0 and sc.state_size() > 0
    sampled: list[int] = []
    dbsize = store.client.dbsize
    monkeypatch.setattr(store.client, "dbsize", lambda: sampled.append(1) or dbsize())
    pid = int(redis_lib.Redis.from_url(redis_url).info("server")["process_id"])
    os.kill(pid, signal.SIGSTOP)
    try:
        sc.score(evs[20])  # times out once and opens the breaker
        assert store.failures == 1
        assert sc.state_size() == -1 and not sampled  # the open breaker answers; Redis is not asked
        longest, sizes, most_waits = 0.0, [], 0
        for i, e in enumerate(evs[21:]):
            t0, before = time.perf_counter(), store.failures
            score = sc.score(e)
            if i % 100 == 1:  # as serving/metrics.py samples it
                sizes.append(sc.state_size())
            longest = max(longest, time.perf_counter() - t0)
            most_waits = max(most_waits, store.failures - before)
            assert 0.0 <= score.risk <= 1.0
    finally:
        os.kill(pid, signal.SIGCONT)
    assert sizes == [-1, -1]
    assert store.failures >= 1 and sc.counters.store_fallbacks >= 1
    # Each Redis timeout is a failure that opens the breaker: a call that waited out several
    # (the state read, then the holds, ...) would count more than one.
    assert most_waits <= 1
    # Only a guard against a call left waiting on a socket with no timeout (minutes): the time
    # itself follows the machine's load, which once stalled a call for 1.2 s here.
    assert longest < 100 * timeout
