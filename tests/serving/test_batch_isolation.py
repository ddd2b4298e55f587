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
from pydantic import ValidationError

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
    together: list[int] = field(default_factory=list)  # calls per network batch of the single-call path

    def shed(self, route: str) -> None:
        self.sheds.append(route)

    def error(self, kind: str) -> None:
        self.errors.append(kind)

    def observe(self, scores, seconds: float, scorer) -> None:
        pass

    def scored_together(self, calls: int) -> None:
        self.together.append(calls)


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
    _recording(svc, latch)
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


# Single calls that queue while the scorer is busy are scored together (service.SingleCalls).


def _recording(svc: Service, latch: threading.Event) -> list[list[str]]:
    """Hold the scorer on the latch and record the request ids of each call to it (single calls
    go through score_each, batch chunks through score_many)."""
    seen: list[list[str]] = []

    def held(score):  # noqa: ANN001, ANN202
        def run(evs):  # noqa: ANN001, ANN202
            latch.wait(10)
            seen.append([e.request_id for e in evs])
            return score(evs)

        return run

    svc.scorer.score_many = held(svc.scorer.score_many)  # type: ignore[method-assign]
    svc.scorer.score_each = held(svc.scorer.score_each)  # type: ignore[method-assign]
    return seen


async def _post_while_held(app, latch: threading.Event, bodies: list[dict], cancel: frozenset[int] = frozenset()) -> list[dict | None]:
    """Post the first body (it takes the scorer and waits on the latch), then the rest in order
    while it waits; cancel the callers in `cancel`; release; each answer (None: cancelled)."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://moat") as http:
        calls = []
        for body in bodies:
            calls.append(asyncio.create_task(http.post("/score", json=body)))
            await asyncio.sleep(0.02)  # arrival order is posting order
        for i in cancel:
            calls[i].cancel()
        await asyncio.sleep(0.02)
        latch.set()
        out = []
        for call in calls:
            try:
                out.append((await call).json())
            except asyncio.CancelledError:
                out.append(None)
        return out


@pytest.mark.parametrize(
    ("coalesce", "together"),
    [
        (32, [1, 12]),  # the first alone (the scorer was idle), the twelve that queued behind it in one batch
        (5, [1, 5, 5, 2]),  # at most `coalesce` calls a batch
        (1, [1] * 13),  # coalescing off: one call a batch, as before
    ],
)
async def test_queued_single_calls_are_scored_together_as_if_one_by_one(coalesce: int, together: list[int]) -> None:
    # The events' own times (a server clock would score the two runs at different times).
    svc, latch = Service(Scorer(ServingSettings(time_source="caller"), store=MemoryStore())), threading.Event()
    seen = _recording(svc, latch)
    bodies = list(events("c", 13, 3, 1.7645e9))
    app = service.build_app(lambda: svc, EdgeSettings(score_inline=False, coalesce=coalesce))
    answers = await _post_while_held(app, latch, bodies)
    assert svc.metrics.together == together and [len(ids) for ids in seen] == together
    assert [rid for ids in seen for rid in ids] == [b["request_id"] for b in bodies]  # arrival order
    _same_answers(answers, _one_by_one(bodies))


def _one_by_one(bodies: list[dict]) -> list[dict]:
    reference = Scorer(ServingSettings(time_source="caller"), store=MemoryStore())
    return [reference.score_raw(b).model_dump(exclude_none=True) for b in bodies]


def _same_answers(got: list[dict | None], want: list[dict]) -> None:
    for g, w in zip(got, want, strict=True):
        assert g is not None
        g, w = dict(g), dict(w)
        # A batched network call may round the last digit of a risk differently; nothing else moves.
        assert abs(g.pop("risk") - w.pop("risk")) < 1e-5
        assert g == w


async def test_a_faulty_event_fails_open_its_own_call_only() -> None:
    """One call's featurisation faults inside a shared batch: that call fails open, its
    neighbours get the scores of one by one (without the faulty event, which never entered state)."""
    svc, latch = Service(Scorer(ServingSettings(time_source="caller"), store=MemoryStore())), threading.Event()
    seen = _recording(svc, latch)
    step = svc.scorer._step

    def faulty(event, clock=None):
        if event.request_id == "f2":
            raise RuntimeError("injected featurisation fault")
        return step(event, clock)

    svc.scorer._step = faulty  # type: ignore[method-assign]
    bodies = list(events("f", 5, 2, 1.7645e9))
    app = service.build_app(lambda: svc, EdgeSettings(score_inline=False))
    answers = await _post_while_held(app, latch, bodies)
    assert seen == [["f0"], ["f1", "f2", "f3", "f4"]]  # f2 was in the shared batch
    assert answers[2]["action"] == "allow" and answers[2]["reasons"] == [MOAT_ERROR]
    _same_answers([a for i, a in enumerate(answers) if i != 2], _one_by_one([b for i, b in enumerate(bodies) if i != 2]))
    assert svc.metrics.errors == ["internal"]


async def test_a_network_fault_fails_open_every_call_of_its_batch() -> None:
    svc, latch = Service(Scorer(ServingSettings(), store=MemoryStore())), threading.Event()
    seen = _recording(svc, latch)
    run = svc.scorer._run

    def broken(batch):
        if len(seen) > 1:  # the shared batch, not the first call's
            raise RuntimeError("injected network fault")
        return run(batch)

    svc.scorer._run = broken  # type: ignore[method-assign]
    app = service.build_app(lambda: svc, EdgeSettings(score_inline=False))
    answers = await _post_while_held(app, latch, list(events("n", 4, 2, 1.7645e9)))
    assert [a["request_id"] for a in answers] == ["n0", "n1", "n2", "n3"]
    assert MOAT_ERROR not in answers[0]["reasons"]
    assert all(a["action"] == "allow" and a["reasons"] == [MOAT_ERROR] for a in answers[1:])
    assert svc.metrics.errors == ["internal"] * 3


async def test_a_metrics_fault_after_scoring_keeps_the_scores() -> None:
    svc, latch = Service(Scorer(ServingSettings(), store=MemoryStore())), threading.Event()
    _recording(svc, latch)

    def broken(calls: int) -> None:
        raise RuntimeError("injected metrics fault")

    svc.metrics.scored_together = broken  # type: ignore[method-assign]
    app = service.build_app(lambda: svc, EdgeSettings(score_inline=False))
    answers = await _post_while_held(app, latch, list(events("m", 3, 2, 1.7645e9)))
    assert not any(MOAT_ERROR in a["reasons"] for a in answers) and svc.scorer.counters.scored == 3


@pytest.mark.parametrize("cancel_while", ["queued behind a call", "its turn waits behind a batch chunk"])
async def test_a_caller_that_gives_up_before_its_turn_is_not_scored(cancel_while: str) -> None:
    svc, latch = Service(Scorer(ServingSettings(), store=MemoryStore())), threading.Event()
    seen = _recording(svc, latch)
    app = service.build_app(lambda: svc, EdgeSettings(score_inline=False, batch_chunk=1))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://moat") as http:
        if cancel_while == "queued behind a call":
            first = asyncio.create_task(http.post("/score", json=next(events("x", 1, 1, 1.7645e9))))
        else:  # the drain has taken its turn in the lane's queue, behind the batch's chunk
            first = asyncio.create_task(http.post("/score/batch", json=list(events("x", 1, 1, 1.7645e9))))
        await asyncio.sleep(0.05)
        gone = asyncio.create_task(http.post("/score", json=next(events("gone", 1, 1, 1.7645e9))))
        await asyncio.sleep(0.05)
        gone.cancel()
        await asyncio.sleep(0.05)
        after = asyncio.create_task(http.post("/score", json=next(events("after", 1, 1, 1.7645e9))))
        await asyncio.sleep(0.05)
        latch.set()
        await first
        assert (await after).json()["request_id"] == "after0"
    assert seen == [["x0"], ["after0"]]  # the event of the caller that left never reached state
    assert svc.scorer.counters.scored == 2


async def test_single_calls_that_arrive_behind_a_chunk_go_before_the_next_batch() -> None:
    """A batch chunk holds the lane; a single call, a second batch and another single call
    arrive in that order: both single calls are scored (together) before the second batch."""
    svc, latch = Service(Scorer(ServingSettings(), store=MemoryStore())), threading.Event()
    seen = _recording(svc, latch)
    app = service.build_app(lambda: svc, EdgeSettings(score_inline=False, batch_chunk=1))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://moat") as http:
        posts = []
        for path, body in [("/score/batch", list(events("X", 2, 1, 1.7645e9))), ("/score", next(events("A", 1, 1, 1.7645e9))),
                           ("/score/batch", list(events("Y", 2, 1, 1.7645e9))), ("/score", next(events("B", 1, 1, 1.7645e9)))]:
            posts.append(asyncio.create_task(http.post(path, json=body)))
            await asyncio.sleep(0.05)
        latch.set()
        assert all(r.status_code == 200 for r in await asyncio.gather(*posts))
    assert seen.index(["A0", "B0"]) < seen.index(["Y0"])


async def test_concurrent_inline_calls_get_the_scores_of_one_by_one() -> None:
    svc = Service(Scorer(ServingSettings(time_source="caller"), store=MemoryStore()))
    app = service.build_app(lambda: svc, EdgeSettings())  # scored on the event loop, as served
    bodies = list(events("i", 40, 5, 1.7645e9))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://moat") as http:
        answers = [r.json() for r in await asyncio.gather(*(http.post("/score", json=b) for b in bodies))]
    assert sum(svc.metrics.together) == len(bodies) and max(svc.metrics.together) > 1  # they did share batches
    _same_answers(answers, _one_by_one(bodies))


@pytest.mark.parametrize(
    ("coalesce", "wait_ms", "n", "together"),
    [
        (4, 1000, 8, [4, 4]),  # each batch waits until it is full (the calls come 20 ms apart)
        (32, 50, 1, [1]),  # a lone call is scored once it has waited 50 ms
        (32, 0, 3, [1, 1, 1]),  # no wait (the default): an idle scorer takes each call alone
    ],
)
async def test_a_wait_to_fill_batches_single_calls_that_come_apart(coalesce: int, wait_ms: float, n: int, together: list[int]) -> None:
    """MOAT_COALESCE_WAIT_MS, the GPU tier's micro-batcher: calls that never queue behind a
    busy scorer still share a network batch, and each gets the score of one by one."""
    svc = Service(Scorer(ServingSettings(time_source="caller"), store=MemoryStore()))
    app = service.build_app(lambda: svc, EdgeSettings(coalesce=coalesce, coalesce_wait_ms=wait_ms))
    bodies = list(events("w", n, 2, 1.7645e9))
    loop = asyncio.get_running_loop()
    began = loop.time()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://moat") as http:
        calls = []
        for body in bodies:
            calls.append(asyncio.create_task(http.post("/score", json=body)))
            await asyncio.sleep(0.02)
        answers = [r.json() for r in await asyncio.wait_for(asyncio.gather(*calls), 5)]
    assert svc.metrics.together == together
    if n == 1:
        assert loop.time() - began >= wait_ms / 1000  # the lone call did wait (asyncio timers never fire early)
    _same_answers(answers, _one_by_one(bodies))


@pytest.mark.parametrize(
    ("settings", "refused"),
    [
        ({"coalesce": 300, "coalesce_wait_ms": 2}, True),  # calls past max_queue (256) are shed: the batch never fills
        ({"coalesce": 300, "coalesce_wait_ms": 2, "max_queue": 300}, False),
        ({"coalesce": 300}, False),  # without a wait a batch takes what is there
    ],
)
def test_a_wait_for_a_batch_larger_than_the_queue_is_refused(settings: dict, refused: bool) -> None:
    if refused:
        with pytest.raises(ValidationError, match=r"coalesce \(300\) must not exceed max_queue \(256\)"):
            EdgeSettings(**settings)
    else:
        assert EdgeSettings(**settings).coalesce == 300


@pytest.mark.parametrize(
    ("env", "field", "value"),
    [
        ({"MOAT_COALESCE_WAIT_MS": "2.5"}, "coalesce_wait_ms", 2.5),
        ({"MOAT_COALESCE_WAIT_MS": "-1"}, "coalesce_wait_ms", None),  # refused, naming the field
        ({"MOAT_COALESCE_WAIT_MS": "5000"}, "coalesce_wait_ms", None),  # above 1 s: refused
        ({"MOAT_COALESCE": "0"}, "coalesce", None),
    ],
)
def test_coalescing_settings_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], field: str, value: float | None) -> None:
    for name, raw in env.items():
        monkeypatch.setenv(name, raw)
    if value is None:
        with pytest.raises(ValidationError, match=field):
            EdgeSettings()
    else:
        assert getattr(EdgeSettings(), field) == value
