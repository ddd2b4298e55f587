"""RedisStore against a real redis-server: same decisions as memory, replicas agree, faults
degrade to local state."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from moat.models.events import Event
from moat.models.feature_spec import WINDOW
from moat.models.scope_window import window
from moat.models.state import StoreUnavailable
from moat.models.summary import summarize
from moat.models.traces import iter_raw
from moat.serving.scorer import Scorer
from moat.serving.settings import ServingSettings
from moat.serving.state.redis_store import RedisStore


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
    assert stores[0].client.llen("moat:r:account:hot") == WINDOW


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
