"""A batch caller cannot starve per-request scoring: single calls go before queued batch chunks,
queues are bounded, and overload is shed with a contract-valid answer and a metric, never a 5xx.

The flood test runs against a real `bentoml serve`: one thread posts 1,000-event batches back to
back while the gateway's calls arrive at 100 per second for 10 s; every one of them must be
scored, none shed or failed open (before the scoring lane, 241 of 241 such calls failed open).
Their p50/p99 is printed with -s; it is a figure, not an assertion (docs/operations.md).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event as EventType

import httpx
import jsonschema
import numpy as np
import pytest

from moat.models.memory_store import MemoryStore
from moat.serving import service
from moat.serving.fail_open import MOAT_ERROR, MOAT_OVERLOADED
from moat.serving.scorer import Scorer
from moat.serving.service import EdgeSettings, ScoringLane
from moat.serving.settings import ServingSettings
from tests.conftest import CONTRACT
from tests.serving.conftest import start_service

EXAMPLE = [json.loads(line) for line in (CONTRACT / "example_trace.jsonl").read_text().splitlines()]
RATE, SECONDS, BATCH = 100, 10, 1000


def events(prefix: str, n: int, accounts: int, t0: float) -> Iterator[dict]:
    for i in range(n):
        yield {**EXAMPLE[i % len(EXAMPLE)], "request_id": f"{prefix}{i}", "account_id": f"{prefix}acct{i % accounts}", "ts": t0 + i * 0.01}


@pytest.fixture(scope="module")
def flood_url() -> Iterator[str]:
    proc, url = start_service()
    yield url
    proc.terminate()
    proc.wait(10)


def flood(url: str, stop: EventType, done: Queue) -> None:
    """Post 1,000-event batches back to back until told to stop. It runs in its own process, so
    encoding its batches does not take the GIL from the gateway calls being timed."""
    bodies = [json.dumps(list(events(f"b{k}-", BATCH, 200, 1.7645e9 + k * 20))).encode() for k in range(4)]
    with httpx.Client(base_url=url, timeout=60, headers={"content-type": "application/json"}) as http:
        k = 0
        while not stop.is_set():
            r = http.post("/score/batch", content=bodies[k % len(bodies)])
            done.put(r.status_code == 200 and len(r.json()) == BATCH)
            k += 1


def test_batch_flood_keeps_single_calls_within_the_client_budget(flood_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    stop, done = ctx.Event(), ctx.Queue()
    flooder = ctx.Process(target=flood, args=(flood_url, stop, done), daemon=True)
    flooder.start()
    latencies, answers = [], []
    try:
        with httpx.Client(base_url=flood_url, timeout=5) as gateway:
            gateway.post("/score", json=EXAMPLE[0])  # the connection is warm, as a gateway's is
            assert done.get(timeout=60), "the first batch failed"  # the flood is under way
            start = time.perf_counter()
            for i, event in enumerate(events("g", RATE * SECONDS, 50, 1.7645e9)):
                time.sleep(max(0.0, start + i / RATE - time.perf_counter()))  # open loop
                t = time.perf_counter()
                r = gateway.post("/score", json=event)
                latencies.append(time.perf_counter() - t)
                assert r.status_code == 200, r.text
                answers.append(r.json())
    finally:
        stop.set()
        flooder.join(60)
    batches = [done.get() for _ in range(done.qsize())]
    p50, p99 = np.percentile(latencies, [50, 99]) * 1000
    print(f"\n/score under a batch flood: p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {max(latencies) * 1000:.1f} ms over {len(latencies)} calls; {len(batches) + 1} batches of {BATCH} scored meanwhile")
    assert len(batches) >= 2 and all(batches), "the flood did not run: the test measured nothing"
    assert not [a for a in answers if {MOAT_ERROR, MOAT_OVERLOADED} & set(a["reasons"])], "a gateway call was not scored"


# In-process: the lane's order, and shedding, with scoring held by a latch.


async def test_single_calls_go_before_queued_batch_chunks() -> None:
    lane, order, latch = ScoringLane(), [], threading.Event()
    running = asyncio.create_task(lane.run(ScoringLane.BATCH, latch.wait))
    await asyncio.sleep(0.05)
    queued = [asyncio.create_task(lane.run(p, order.append, name)) for p, name in [(ScoringLane.BATCH, "batch 1"), (ScoringLane.SINGLE, "single 1"), (ScoringLane.BATCH, "batch 2"), (ScoringLane.SINGLE, "single 2")]]
    await asyncio.sleep(0.05)
    assert order == [] and lane.waiting(ScoringLane.SINGLE) == 2
    latch.set()
    await asyncio.gather(running, *queued)
    assert order == ["single 1", "single 2", "batch 1", "batch 2"]


async def test_a_caller_leaving_the_queue_does_not_stall_the_lane() -> None:
    lane, order, latch = ScoringLane(), [], threading.Event()
    running = asyncio.create_task(lane.run(ScoringLane.BATCH, latch.wait))
    await asyncio.sleep(0.05)
    gone = asyncio.create_task(lane.run(ScoringLane.SINGLE, order.append, "gone"))
    after = asyncio.create_task(lane.run(ScoringLane.SINGLE, order.append, "after"))
    await asyncio.sleep(0.05)
    gone.cancel()
    latch.set()
    await asyncio.gather(running, after)
    assert order == ["after"]
    assert await asyncio.wait_for(lane.run(ScoringLane.SINGLE, order.append, "next"), 5) is None


@dataclass
class Metrics:
    sheds: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def shed(self, route: str) -> None:
        self.sheds.append(route)

    def error(self, kind: str) -> None:
        self.errors.append(kind)

    def observe(self, scores, seconds: float, scorer) -> None:
        pass


@dataclass
class Service:
    scorer: Scorer
    settings: ServingSettings = field(default_factory=ServingSettings)
    metrics: Metrics = field(default_factory=Metrics)
    refrozen: bool = False


@pytest.fixture
def latched() -> Iterator[tuple[Service, threading.Event]]:
    """A service whose scoring waits for the latch, so calls pile up in front of it."""
    svc, latch = Service(Scorer(ServingSettings(), store=MemoryStore())), threading.Event()
    score_many = svc.scorer.score_many

    def held(evs):
        latch.wait(10)
        return score_many(evs)

    svc.scorer.score_many = held  # type: ignore[method-assign]
    yield svc, latch
    latch.set()


async def test_score_overload_is_shed_as_a_contract_valid_allow(latched, score_schema: dict) -> None:
    svc, latch = latched
    # The latch blocks the thread it runs on, so single calls take the lane's thread here.
    app = service.build_app(lambda: svc, EdgeSettings(max_queue=2, score_inline=False))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://moat") as http:
        calls = []
        for i in range(4):  # one scoring, two waiting (the bound), one shed
            calls.append(asyncio.create_task(http.post("/score", json={**EXAMPLE[0], "request_id": f"q{i}"})))
            await asyncio.sleep(0.1)
        shed = (await calls[3]).json()
        latch.set()
        scored = [(await c).json() for c in calls[:3]]
    jsonschema.validate(shed, score_schema)
    assert (shed["request_id"], shed["action"], shed["reasons"]) == ("q3", "allow", [MOAT_OVERLOADED])
    assert [s["request_id"] for s in scored] == ["q0", "q1", "q2"] and not any(MOAT_OVERLOADED in s["reasons"] for s in scored)
    assert svc.metrics.sheds == ["score"]


async def test_batches_beyond_the_bound_get_429(latched) -> None:
    svc, latch = latched
    app = service.build_app(lambda: svc, EdgeSettings(max_batch_queue=1))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://moat") as http:
        first = asyncio.create_task(http.post("/score/batch", json=EXAMPLE))
        await asyncio.sleep(0.1)
        second = await http.post("/score/batch", json=EXAMPLE)
        latch.set()
        assert (await first).status_code == 200
    assert second.status_code == 429 and second.headers["retry-after"] == "1"
    assert svc.metrics.sheds == ["batch"]
