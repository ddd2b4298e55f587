"""One round trip per request: `RedisStore.visit` sends one script call in the common case, a
second only when what it computed on was stale, and its results equal the memory store's,
however replicas take turns."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from moat.models.events import Event
from moat.models.memory_store import MemoryStore
from moat.models.scope_window import Crowd, ScopeState, rescope, window
from moat.models.state import StateStore, Visit
from moat.models.summary import Summary, summarize
from moat.models.traces import iter_raw
from moat.serving.state.redis_store import RedisStore

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden_trace.jsonl"


def visit(store: StateStore, s: Summary) -> tuple[int, int, list[bytes]]:
    """The request through `store.visit`, each scope's window as bytes."""

    def begin(campaign: int, cohort: int) -> Callable[[str, str, ScopeState | None], bytes]:
        account: list[np.ndarray] = []

        def apply(scope: str, key: str, state: ScopeState | None) -> bytes:
            if state is None:  # the memory store keeps this scope as the account's mirror
                feats, tokens = rescope(account[0], scope), account[1]
            else:
                feats, tokens = window(state, s, Crowd(campaign, cohort), scope)
                account[:] = account or [feats, tokens]
            return feats.tobytes() + tokens.tobytes()

        return apply

    return store.visit(Visit(tuple(s.scope_keys()), s.account_id, s.ts, s.shape, s.client_fp), begin)


def request(i: int, account: str = "acct", ip: str = "203.0.113.9") -> Summary:
    return summarize(Event.model_validate({
        "request_id": f"r{i}", "ts": 1_764_500_000.0 + i, "account_id": account, "api_key_id": f"key-{account}",
        "client_ip": ip, "prompt": f"Summarise this text: number {i}",
    }))


def trips(store: RedisStore, s: Summary) -> int:
    before = store.round_trips
    visit(store, s)
    return store.round_trips - before


Setup = Callable[[RedisStore, RedisStore], None]
ROUND_TRIPS: list[tuple[str, Setup, Summary, int]] = [
    # (case, what happened before (this replica, another replica), the request, round trips it costs)
    ("a new account", lambda a, b: None, request(1), 1),
    ("an account this replica served last", lambda a, b: [visit(a, request(i)) for i in range(3)], request(3), 1),
    ("a new account on a template others sent", lambda a, b: [visit(a, request(i, f"other-{i}", f"198.51.{i}.1")) for i in range(3)], request(3), 1),
    ("an account another replica served last", lambda a, b: [visit(a, request(0)), visit(b, request(1))], request(2), 2),
    ("an account this replica has not seen (a restart)", lambda a, b: [visit(b, request(i)) for i in range(3)], request(3), 2),
    ("its template joined by an account on another replica", lambda a, b: [visit(a, request(0)), visit(b, request(1, "newcomer", "198.51.7.1"))], request(2), 2),
]


@pytest.mark.parametrize("case, before, s, expected", ROUND_TRIPS, ids=[c[0] for c in ROUND_TRIPS])
def test_a_request_costs_one_round_trip_unless_another_replica_changed_what_it_reads(redis_url: str, case: str, before: Setup, s: Summary, expected: int) -> None:
    a, b = RedisStore(redis_url, secret=b"s" * 32), RedisStore(redis_url, secret=b"s" * 32)
    before(a, b)
    assert trips(a, s) == expected
    assert a.runner.calls == a.round_trips  # one script call per round trip, nothing else sent


def test_a_hold_read_costs_no_round_trip_and_sees_this_replicas_own_writes(redis_url: str) -> None:
    a, b = RedisStore(redis_url, secret=b"s" * 32), RedisStore(redis_url, secret=b"s" * 32)
    s = request(0)
    visit(a, s)
    keys = s.scope_keys()
    n = a.round_trips
    assert a.get_holds(keys) == [(0, 0.0)] * len(keys)
    a.set_holds([("account", "acct", 3, s.ts + 900)])
    assert a.get_holds(keys)[0] == (3, s.ts + 900)
    assert a.round_trips == n + 1  # the hold write; both reads came with the visit
    b.set_holds([("account", "acct", 2, s.ts + 5000)])  # another replica's hold, seen on the next visit
    visit(a, request(1))
    assert a.get_holds(keys)[0] == (2, s.ts + 5000)


def exchanges(store: RedisStore) -> list[str]:
    """Records each exchange the store's client makes from now on: a command on its own, or a
    pipeline sent whole."""
    sent: list[str] = []
    client, single, pipeline = store.client, store.client.execute_command, store.client.pipeline

    def execute_command(*args, **kwargs):
        sent.append(str(args[0]))
        return single(*args, **kwargs)

    def piped(*args, **kwargs):
        pipe = pipeline(*args, **kwargs)
        run = pipe.execute

        def execute(*a, **k):
            sent.append("pipeline")
            return run(*a, **k)

        pipe.execute = execute
        return pipe

    client.execute_command, client.pipeline = execute_command, piped
    return sent


HOLDS = [
    # (case, the request's new holds by scope index: action level, seconds held)
    ("one scope", [(0, 3, 900.0)]),
    ("account and key", [(0, 2, 600.0), (1, 3, 1200.0)]),
    ("every scope, past the state TTL", [(0, 3, 90_000.0), (1, 2, 900.0), (2, 1, 300.0)]),
]


@pytest.mark.parametrize("case, holds", HOLDS, ids=[c[0] for c in HOLDS])
def test_a_requests_holds_cost_one_exchange_and_another_replica_reads_them_all(redis_url: str, case: str, holds: list[tuple[int, int, float]]) -> None:
    a, b = RedisStore(redis_url, secret=b"s" * 32, ttl_s=3600), RedisStore(redis_url, secret=b"s" * 32, ttl_s=3600)
    s = request(0)
    visit(a, s)
    keys = s.scope_keys()
    n, sent = a.round_trips, exchanges(a)
    a.set_holds([(*keys[i], level, s.ts + held) for i, level, held in holds])
    assert a.round_trips == n + 1 and len(sent) == 1
    visit(b, request(1))
    expected = [(0, 0.0)] * len(keys)
    for i, level, held in holds:
        expected[i] = (level, s.ts + held)
        # A hold key lives for the scope's TTL, or the hold when that is longer.
        assert max(3600, held) - 5 <= b.client.ttl(b.redis_key("h", *keys[i])) <= max(3600, held)
    assert b.get_holds(keys) == expected


def _replay(stores: list[StateStore], events: list[Event]) -> list[tuple[int, int, list[bytes]]]:
    """Each request to the next store in turn, as a load balancer would."""
    return [visit(stores[i % len(stores)], summarize(e)) for i, e in enumerate(events)]


REPLICAS = [
    # (case, replicas taking turns)
    ("one replica", 1),
    ("two replicas alternating", 2),
    ("three replicas in turn", 3),
]


@pytest.mark.parametrize("case, replicas", REPLICAS, ids=[c[0] for c in REPLICAS])
def test_visits_give_what_the_memory_store_gives(redis_url: str, case: str, replicas: int) -> None:
    """Every window and sketch count of the golden trace, whichever replica serves a request."""
    events = [Event.model_validate(r) for r in iter_raw(GOLDEN)]
    expected = _replay([MemoryStore(max_scopes=None, ttl_s=None)], events)
    stores = [RedisStore(redis_url, secret=b"s" * 32) for _ in range(replicas)]
    assert _replay(stores, events) == expected
    calls = sum(s.round_trips for s in stores)
    if replicas == 1:
        assert calls == len(events)  # it knows every scope and sketch item it computes on
    else:
        assert calls > len(events) * 1.5  # mostly stale: the other replica wrote last, so one more each


def test_a_server_that_lost_the_script_is_sent_it_and_nothing_is_applied_twice(redis_url: str) -> None:
    """A restarted Redis (or SCRIPT FLUSH) does not know the script: the call is answered
    NOSCRIPT without running, and is sent again with the script itself."""
    events = [Event.model_validate(r) for r in iter_raw(GOLDEN)][:40]
    store = RedisStore(redis_url, secret=b"s" * 32)
    memory = MemoryStore(max_scopes=None, ttl_s=None)
    for i, e in enumerate(events):
        if i % 10 == 5:
            store.client.script_flush()
        assert visit(store, summarize(e)) == visit(memory, summarize(e))
