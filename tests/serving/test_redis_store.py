"""RedisStore against a real redis-server: same decisions as memory, replicas agree, faults
degrade to local state."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import pytest

from moat.models.events import Event
from moat.models.feature_spec import WINDOW
from moat.models.scope_window import ROW, window
from moat.models.state import StoreUnavailable
from moat.models.summary import summarize
from moat.models.traces import iter_raw
from moat.serving.scorer import Scorer
from moat.serving.settings import ServingSettings
from moat.serving.state import redis_store
from moat.serving.state.redis_store import STATE_VERSION, RedisStore, state_version


def events(traces: Path, n: int) -> list[Event]:
    return [Event.model_validate(r) for _, r in zip(range(n), iter_raw(traces / "test.jsonl"))]


def decisions(scores) -> list[tuple[str, float, tuple[str, ...]]]:
    return [(s.action, s.risk, tuple(s.reasons)) for s in scores]


def test_redis_gives_the_same_decisions_as_memory(redis_url: str, small_traces: Path) -> None:
    evs = events(small_traces, 500)
    memory = Scorer(ServingSettings())
    shared = Scorer(ServingSettings(state=redis_url))
    assert decisions(shared.score(e) for e in evs) == decisions(memory.score(e) for e in evs)
    assert shared.counters.store_fallbacks == 0


def _replica(url: str, conn) -> None:
    """A scorer process: scores the events it is sent, one at a time, against shared Redis."""
    sc = Scorer(ServingSettings(state=url))
    while (raw := conn.recv()) is not None:
        s = sc.score(Event.model_validate(raw))
        conn.send((s.action, s.risk, tuple(s.reasons)))


def test_two_scorer_processes_on_one_redis_equal_one_process(redis_url: str, small_traces: Path) -> None:
    import multiprocessing as mp

    raws = [r for _, r in zip(range(400), iter_raw(small_traces / "test.jsonl"))]
    single = Scorer(ServingSettings(state=redis_url.replace("/0", "/1")))
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
    sc = Scorer(ServingSettings(state=redis_url))
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
CORRUPT = [
    # (case, head bytes or None to keep the valid head, rows to store instead of the valid ones)
    ("head too short", b"\x00" * 40, None),
    ("head too long", b"\x00" * 1000, None),
    ("empty head", b"", None),
    ("a row too short", None, [b"\x00" * (ROW_BYTES - 1)]),
    ("a good row and a long one", None, [b"\x00" * ROW_BYTES, b"\x00" * (ROW_BYTES + 8)]),
    ("more rows than a window", None, [b"\x00" * ROW_BYTES] * (WINDOW + 1)),
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


@pytest.mark.parametrize("value", [b"garbage", b"2:", b":5.0", b"\xff\xfe:1"])
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
    sc = Scorer(ServingSettings(state=redis_url))
    for e in evs[:20]:
        sc.score(e)
    store = sc.store
    assert isinstance(store, RedisStore)
    for k in store.client.scan_iter(f"{store.prefix}:h:*"):
        store.client.set(k, b"\x00" * 17)
    scores = [sc.score(e) for e in evs[20:]]  # before versioning: struct.error, so fail-open
    assert len(scores) == 20 and all(0.0 <= s.risk <= 1.0 for s in scores)
    assert sc.counters.store_fallbacks == 0
