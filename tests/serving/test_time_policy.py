"""The time policy (docs/operations.md, "Time"): caller time within a skew of the server clock,
a per-scope clock that never goes backwards, and holds and histories that no jump in the
caller's time can erase."""

from __future__ import annotations

import math
import random

import pytest

from moat.models.events import Event
from moat.models.memory_store import MemoryStore
from moat.serving.scorer import TIME_SOURCES, CallerClock, Scorer, ServerClock, TimeSource
from moat.serving.settings import ServingSettings

NOW = 1_764_500_042.0
SKEW = 300.0

STAMPS = [
    # (case, caller ts, the time it is scored at)
    ("on time", NOW, NOW),
    ("a little late", NOW - 299.0, NOW - 299.0),
    ("a little early", NOW + SKEW, NOW + SKEW),
    ("too far in the past", NOW - SKEW - 1, NOW),
    ("too far in the future", NOW + 200_000.0, NOW),
    ("epoch zero", 0.0, NOW),
    ("float minimum", -1e308, NOW),
    ("float maximum", 1e308, NOW),
    ("infinity", math.inf, NOW),
    ("NaN", math.nan, NOW),
]


@pytest.mark.parametrize("case, ts, expected", STAMPS, ids=[c[0] for c in STAMPS])
def test_server_clock_trusts_caller_time_only_within_the_skew(case: str, ts: float, expected: float) -> None:
    assert ServerClock(SKEW, now=lambda: NOW).stamp(ts) == expected


@pytest.mark.parametrize("ts", [0.0, NOW + 200_000.0, -5.0])
def test_caller_clock_trusts_recorded_time(ts: float) -> None:
    assert CallerClock().stamp(ts) == ts


@pytest.mark.parametrize("source, kind", [("server", ServerClock), ("caller", CallerClock)])
def test_time_source_is_chosen_by_setting(source: str, kind: type, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOAT_TIME_SOURCE", source)
    assert isinstance(TIME_SOURCES[ServingSettings().time_source](ServingSettings()), kind)
    assert ServingSettings().time_source == source


def test_server_time_is_the_default() -> None:
    assert ServingSettings.model_fields["time_source"].default == "server"


class Clock:
    """The server's clock, moved by the test."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _clock(source: str, server: Clock) -> TimeSource:
    return ServerClock(SKEW, now=server) if source == "server" else CallerClock()


def _probe(i: int, ts: float, rng: random.Random) -> Event:
    """A logit-bias probe request (the shipped model acts on this account within 60 requests)."""
    params = {"max_tokens": 1, "logprobs": True, "top_logprobs": 5, "temperature": 0, "logit_bias": {str(rng.randint(0, 100_000)): 100}}
    return Event.model_validate({
        "request_id": f"p{i}", "ts": ts, "account_id": "acct_probe", "api_key_id": "key_1", "client_ip": "203.0.113.9",
        "endpoint": "/v1/completions", "params": params, "prompt": "Translate to French: the invoice is overdue",
    })


@pytest.mark.parametrize("source", ["server", "caller"])
def test_jumping_time_forward_does_not_let_probes_through(source: str) -> None:
    """The issue's repro: once the probe is acted on, 16 probes each 100,000 s after the last were
    all allowed (each jump passed the TTL, so every probe met an empty history). Under server
    time the jumps are clamped away; under caller time the history and its hold survive them."""
    server, rng = Clock(NOW), random.Random(0)
    sc = Scorer(ServingSettings(time_source=source), clock=_clock(source, server))
    t = NOW
    for i in range(60):
        t += rng.uniform(0.5, 1.5)
        server.t = t
        last = sc.score(_probe(i, t, rng))
    assert last.action != "allow"  # the premise: the account is acted on
    jumped = []
    for j in range(16):
        t += 100_000.0
        server.t += 1.0
        jumped.append(sc.score(_probe(100 + j, t, rng)).action)
    # A probe that met an empty history would be allowed (one request is no sweep); each jump
    # keeps the history (server time clamps it away; caller time keeps the scope), so none is.
    assert "allow" not in jumped


STRICT = {"throttle_threshold": 0.0, "perturb_threshold": 0.0, "block_threshold": 0.0}  # blocks everything
LENIENT = {"throttle_threshold": 1.0001, "perturb_threshold": 1.0001, "block_threshold": 1.0001}  # acts on nothing


def _ev(i: int, ts: float) -> Event:
    return Event.model_validate({"request_id": f"r{i}", "ts": ts, "account_id": "acct-1", "prompt": f"hello {i}"})


@pytest.mark.parametrize("source", ["server", "caller"])
def test_one_request_far_in_the_future_keeps_a_blocked_account_blocked(source: str) -> None:
    """The issue's repro: under memory state one request at ts + 200,000 s wiped a blocked
    account's history and its hold, and the account's next request was allowed."""
    server = Clock(NOW)
    store = MemoryStore()
    strict = Scorer(ServingSettings(time_source=source, cooldown_s=900, **STRICT), store=store, clock=_clock(source, server))
    lenient = Scorer(ServingSettings(time_source=source, cooldown_s=900, **LENIENT), store=store, clock=_clock(source, server))
    for i in range(5):
        assert strict.score(_ev(i, NOW + i)).action == "block"
    lenient.score(_ev(5, NOW + 200_000.0))  # allowed under caller time: its own time is past the hold
    assert store.get_holds([("account", "acct-1")]) == [(3, NOW + 4 + 900)]
    history: list[int] = []
    store.update("account", "acct-1", NOW + 6, lambda st: history.append(st.total))
    assert history == [6]  # the five blocked requests and the jump, none wiped
    server.t = NOW + 10
    assert lenient.score(_ev(7, NOW + 10)).action == "block"  # still inside the hold


def test_events_outside_the_skew_are_counted_and_scored_at_server_time() -> None:
    server = Clock(NOW)
    store = MemoryStore()
    sc = Scorer(ServingSettings(cooldown_s=900, **STRICT), store=store, clock=ServerClock(SKEW, now=server))
    sc.score(_ev(0, NOW + 10))
    sc.score(_ev(1, NOW + 10 * SKEW))
    assert sc.counters.clock_replaced == 1
    # The hold runs from the first request's time: the far-future one, scored at the server's
    # time, did not push it out to NOW + 3000 + 900.
    assert store.get_holds([("account", "acct-1")]) == [(3, NOW + 10 + 900)]
