"""Redis Cluster: a real three-master cluster (`redis-server --cluster-enabled yes` three times,
then `redis-cli --cluster create`). A scope's keys share a hash tag, a sketch item has its own,
each script call stays in one slot, and two scorers taking turns on the cluster decide as one
process on memory state does."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis
from redis.cluster import RedisCluster, key_slot

from moat.models.events import Event
from moat.models.memory_store import MemoryStore
from moat.models.traces import iter_raw
from moat.serving.scorer import Scorer
from moat.serving.settings import ServingSettings
from moat.serving.state.redis_store import RedisStore
from tests.serving.conftest import free_port
from tests.serving.test_redis_round_trips import GOLDEN, _replay, exchanges


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (apt-get install redis-server redis-tools; .ci/run does this)")
    return path


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server, cli = _binary("redis-server"), _binary("redis-cli")
    ports = [free_port() for _ in range(3)]
    procs = []
    try:
        for port in ports:
            workdir = tmp_path_factory.mktemp(f"node{port}")
            # The bus port is named: the default, port + 10000, may be taken or past 65535.
            procs.append(subprocess.Popen(
                [server, "--port", str(port), "--cluster-port", str(free_port()), "--bind", "127.0.0.1", "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
        for port in ports:
            _wait(lambda port=port: redis.Redis(port=port, socket_timeout=1).ping(), f"node {port}")
        subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=60)
        _wait(lambda: all(redis.Redis(port=p, socket_timeout=1).cluster("info")["cluster_state"] == "ok" for p in ports), "cluster state ok")
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


def _wait(ready, what: str) -> None:
    for _ in range(200):
        try:
            if ready():
                return
        except redis.RedisError:
            pass
        time.sleep(0.05)
    pytest.fail(f"{what} did not come up")


@pytest.fixture
def fresh(cluster_url: str) -> str:
    RedisStore(cluster_url, cluster=True, secret=b"s" * 32).flush()
    return cluster_url


def test_visits_on_a_cluster_give_what_the_memory_store_gives(fresh: str) -> None:
    """Every window and sketch count of the golden trace, two stores taking turns; and the
    layout: a scope's state and hold share a slot, the scopes spread over the masters."""
    events = [Event.model_validate(r) for r in iter_raw(GOLDEN)]
    expected = _replay([MemoryStore(max_scopes=None, ttl_s=None)], events)
    stores = [RedisStore(fresh, cluster=True, secret=b"s" * 32) for _ in range(2)]
    assert _replay(stores, events) == expected
    one = stores[0]
    assert isinstance(one.client, RedisCluster)
    scope, key = "account", events[0].account_id
    assert key_slot(one.redis_key("s", scope, key).encode()) == key_slot(one.redis_key("h", scope, key).encode())
    owners = {one.client.get_node_from_key(k).name for k in one.client.scan_iter(f"{one.prefix}:s:*")}
    assert len(owners) == 3


def test_a_request_on_a_cluster_costs_two_exchanges(fresh: str) -> None:
    """The sketch counts first (with the scopes this replica does not know), then every scope's
    compare-and-set: each exchange goes to all the nodes it touches at once."""
    events = [Event.model_validate(r) for r in iter_raw(GOLDEN)][:100]
    store = RedisStore(fresh, cluster=True, secret=b"s" * 32)
    _replay([store], events)
    assert store.round_trips == 2 * len(events)
    assert store.runner.calls >= 4 * len(events)  # two sketch items and two or three scopes each, one call per slot


def test_a_requests_holds_on_a_cluster_cost_one_exchange(fresh: str) -> None:
    """Holds on scopes of different slots go out together, and another replica reads them."""
    a, b = (RedisStore(fresh, cluster=True, secret=b"s" * 32) for _ in range(2))
    e = Event.model_validate({"request_id": "r0", "ts": 1_764_500_000.0, "account_id": "acct", "api_key_id": "key", "client_ip": "203.0.113.9", "prompt": "hello"})
    _replay([a], [e])
    keys = [("account", "acct"), ("api_key", "key")]
    assert key_slot(a.redis_key("h", *keys[0]).encode()) != key_slot(a.redis_key("h", *keys[1]).encode())
    n, sent = a.round_trips, exchanges(a)
    a.set_holds([(*keys[0], 3, e.ts + 900), (*keys[1], 2, e.ts + 600)])
    assert a.round_trips == n + 1 and sent == ["pipeline"]
    _replay([b], [e.model_copy(update={"request_id": "r1", "ts": e.ts + 1})])
    assert b.get_holds(keys) == [(3, e.ts + 900), (2, e.ts + 600)]


def test_two_scorers_taking_turns_on_a_cluster_decide_as_one_on_memory(fresh: str) -> None:
    events = [Event.model_validate(r) for r in iter_raw(GOLDEN)]
    memory = Scorer(ServingSettings(time_source="caller"))
    expected = [(s.action, s.risk, tuple(s.reasons)) for s in map(memory.score, events)]
    replicas = [Scorer(ServingSettings(time_source="caller", state=fresh, redis_cluster=True)) for _ in range(2)]
    got = [(s.action, s.risk, tuple(s.reasons)) for s in (replicas[i % 2].score(e) for i, e in enumerate(events))]
    assert got == expected
    assert all(r.counters.store_fallbacks == 0 for r in replicas)
    assert {a for a, _, _ in expected} != {"allow"}, "the trace should make the policy act, or holds go untested"


def test_the_cluster_setting_reaches_the_store(fresh: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOAT_REDIS_CLUSTER", "true")
    monkeypatch.setenv("MOAT_STATE", fresh)
    scorer = Scorer(ServingSettings(time_source="caller"))
    store = scorer.store
    assert isinstance(store, RedisStore) and isinstance(store.client, RedisCluster)
    for e in [Event.model_validate(r) for r in iter_raw(GOLDEN)][:50]:
        scorer.score(e)
    nodes = store.client.get_primaries()
    assert scorer.state_size() == sum(redis.Redis(host=n.host, port=n.port).dbsize() for n in nodes) > 0
