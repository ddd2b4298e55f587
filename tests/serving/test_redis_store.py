"""RedisStore against a real redis-server: same decisions as memory, replicas agree, faults
degrade to local state."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from moat.models.events import Event
from moat.models.feature_spec import WINDOW
from moat.models.scope_window import ROW, window
from moat.models.state import TS_MAX, StoreUnavailable
from moat.models.summary import summarize
from moat.models.traces import iter_raw
from moat.serving.scorer import Scorer
from moat.serving.settings import ServingSettings
from moat.serving.state import redis_store
from moat.serving.state.redis_store import STATE_VERSION, RedisStore, state_version


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


def test_concurrent_updates_to_one_scope_are_not_lost(redis_url: str) -> None:
    """Four replicas hammer one scope; optimistic transactions retry, so no update is lost."""
    stores = [RedisStore(redis_url, timeout_s=1.0) for _ in range(4)]
    errors: list[Exception] = []

    def bump(store: RedisStore, worker: int) -> None:
        for i in range(25):
            s = summarize(Event.model_validate({"request_id": f"{worker}-{i}", "ts": float(i), "account_id": "hot", "prompt": f"p {i}"}))
            try:
                store.update("account", "hot", s.ts, lambda st: window(st, s, 1, "account"))
            except StoreUnavailable as exc:
                errors.append(exc)

    threads = [threading.Thread(target=bump, args=(s, w)) for w, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    totals: list[int] = []
    stores[0].update("account", "hot", 0.0, lambda st: totals.append(st.total))
    assert not errors
    assert totals == [100]
    assert stores[0].client.llen(stores[0].redis_key("r", "account", "hot")) == WINDOW


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


def test_campaign_counts_distinct_accounts_per_hour(redis_url: str) -> None:
    store = RedisStore(redis_url)
    counts = [store.campaign(42, f"acct-{i % 5}", 1000.0 + i) for i in range(20)]
    assert counts[-1] == 5
    assert store.campaign(42, "late", 1000.0 + 7200) == 1  # two hours later the old accounts are gone


def _event(i: int, account: str = "acct") -> Event:
    return Event.model_validate({"request_id": f"r{i}", "ts": 1000.0 + i, "account_id": account, "prompt": f"prompt {i}"})


def _push(store: RedisStore, i: int) -> int:
    """One request into the account scope; the scope's total as the request saw it."""
    s = summarize(_event(i))
    seen: list[int] = []

    def apply(st):
        seen.append(st.total)
        return window(st, s, 1, "account")

    store.update("account", "acct", s.ts, apply)
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
        {"spec": "2"},
    ],
    ids=["row gains a field", "row fields reordered", "row field widened", "head format", "bloom size", "window", "hold format", "feature spec"],
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


ROW_BYTES = ROW.itemsize


def _row_at(ts: float) -> bytes:
    row = np.zeros(1, dtype=ROW)
    row["ts"] = ts
    return row.tobytes()


def _head_with_rates(rate: float) -> bytes:
    return redis_store._HEAD.pack(3, rate, rate, 3) + b"\x00" * (2 * redis_store._BLOOM_BYTES)


CORRUPT = [
    # (case, head bytes or None to keep the valid head, rows to store instead of the valid ones)
    ("head too short", b"\x00" * 40, None),
    ("head too long", b"\x00" * 1000, None),
    ("empty head", b"", None),
    ("a row too short", None, [b"\x00" * (ROW_BYTES - 1)]),
    ("a good row and a long one", None, [b"\x00" * ROW_BYTES, b"\x00" * (ROW_BYTES + 8)]),
    ("more rows than a window", None, [b"\x00" * ROW_BYTES] * (WINDOW + 1)),
    # Written before the store clamped times: such a row made every later gap infinite.
    ("a row at ts 1e308", None, [_row_at(0.0), _row_at(1e308)]),
    ("a row at ts -1e308", None, [_row_at(-1e308)]),
    ("infinite rates in the head", _head_with_rates(float("inf")), None),
]


@pytest.mark.parametrize("case, head, rows", CORRUPT, ids=[c[0] for c in CORRUPT])
def test_a_blob_of_the_wrong_size_is_a_fresh_scope_with_a_warning(redis_url: str, caplog, case: str, head: bytes | None, rows: list[bytes] | None) -> None:
    store = RedisStore(redis_url)
    for i in range(3):
        _push(store, i)
    head_key, rows_key = store.redis_key("h", "account", "acct"), store.redis_key("r", "account", "acct")
    if head is not None:
        store.client.set(head_key, head)
    if rows is not None:
        store.client.delete(rows_key)
        store.client.rpush(rows_key, *rows)
    with caplog.at_level(logging.WARNING, logger=redis_store.__name__):
        assert _push(store, 3) == 0
    assert any("starting it fresh" in r.message for r in caplog.records)
    # The bad bytes are replaced, not appended to: the scope is whole again.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=redis_store.__name__):
        assert _push(store, 4) == 1
    assert not caplog.records
    assert store.client.llen(rows_key) == 2


@pytest.mark.parametrize("value", [b"garbage", b"2:", b":5.0", b"\xff\xfe:1", b"3:inf", b"3:nan"])
def test_a_malformed_hold_reads_as_no_hold(redis_url: str, value: bytes, caplog) -> None:
    store = RedisStore(redis_url)
    store.set_hold("account", "good", 3, 2000.0)
    store.client.set(store.redis_key("hold", "account", "bad"), value)
    with caplog.at_level(logging.WARNING, logger=redis_store.__name__):
        assert store.get_holds([("account", "bad"), ("account", "good")]) == [(0, 0.0), (3, 2000.0)]
    assert any("malformed hold" in r.message for r in caplog.records)


def test_a_scorer_on_stale_redis_state_scores_without_failing_open(redis_url: str, small_traces: Path) -> None:
    """Old-layout bytes under every current head key: requests are scored on fresh scopes, neither
    raising (which the service answers by failing open) nor tripping the store's breaker."""
    evs = events(small_traces, 40)
    sc = Scorer(settings(state=redis_url))
    for e in evs[:20]:
        sc.score(e)
    store = sc.store
    assert isinstance(store, RedisStore)
    for k in store.client.scan_iter(f"{store.prefix}:h:*"):
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
        feats, _ = store.update("account", "acct", s.ts, lambda st: window(st, s, 1, "account"))
        if i >= len(times):
            assert np.isfinite(feats.astype(np.float32)).all()
    stored = np.frombuffer(b"".join(store.client.lrange(store.redis_key("r", "account", "acct"), 0, -1)), dtype=ROW)["ts"]
    assert (np.diff(stored) >= 0).all() and 0.0 <= stored.min() and stored.max() <= TS_MAX


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
        longest, sizes = 0.0, []
        for i, e in enumerate(evs[21:]):
            t0 = time.perf_counter()
            score = sc.score(e)
            if i % 100 == 1:  # as serving/metrics.py samples it
                sizes.append(sc.state_size())
            longest = max(longest, time.perf_counter() - t0)
            assert 0.0 <= score.risk <= 1.0
    finally:
        os.kill(pid, signal.SIGCONT)
    assert sizes == [-1, -1]
    assert store.failures >= 1 and sc.counters.store_fallbacks >= 1
    # A correctness guard, not a benchmark: a call that waited out several timeouts (or one
    # socket's default) would pass 10x the Redis timeout.
    assert longest < 10 * timeout
