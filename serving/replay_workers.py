"""`moat replay --workers N`: the same scores as one process, with featurisation spread over N
worker processes.

Partitioning a trace by account is not exact: address blocks, the campaign sketch and the
policy's holds on an address block are shared across accounts. So work is split by what it
depends on, not by account:

1. parse and summarise (stateless): each chunk of lines is cut into N slices, one per worker;
2. cross-account values (sequential, in this process): the campaign and cohort counts of each request, in
   trace order, from the scorer's own sketch;
3. scope windows (stateful per scope): every (scope, key) belongs to one worker (a hash of it),
   which holds that scope's whole history and computes its windows in trace order. A scope's
   window reads only its own history, the request's summary and its crowd counts, so any
   split of the scopes gives the windows one process gives;
4. network and policy (in this process): the scorer's stream path on chunks of the same size
   (MOAT_REPLAY_CHUNK events), so the network sees the same batches and holds are applied in trace order.

Exact under the one-process replay's own assumptions: state from empty, scopes never evicted
(the run stops with an error before more than `max_scopes` scopes would be held, where one process
would start evicting), and no scope idle past `scope_ttl_s` of wall-clock time during the run.
"""

from __future__ import annotations

import itertools
import multiprocessing
import operator
import queue
import threading
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import ValidationError

from moat.models.events import Event
from moat.models.featurizer import ScopeWindow, Step, is_dependent
from moat.models.memory_store import MemoryStore
from moat.models.scope_window import Crowd, push, relational
from moat.models.summary import Summary, summarize

if TYPE_CHECKING:
    from moat.serving.scorer import Scorer

LOOKAHEAD = 2  # chunks parsed ahead of the one being featurised, so workers rarely wait
SCOPES_AHEAD = 1  # chunks whose scope windows are asked for before the oldest is collected
_SUMMARY_FIELDS = tuple(f.name for f in fields(Summary))


class ReplayWorkerError(RuntimeError):
    """The workers cannot go on: one exited, or the run would need what they cannot mirror."""


@dataclass(frozen=True, slots=True)
class Ref:
    """What the policy step reads of a scored event."""

    request_id: str


@dataclass(frozen=True, slots=True)
class Invalid:
    """A line that failed validation: the first error's location and message."""

    loc: str
    msg: str


class Holds:
    """The policy's holds per (scope, key), as the one-process store keeps them (unbounded, as
    replay's scopes are never evicted)."""

    def __init__(self) -> None:
        self._holds: dict[tuple[str, str], tuple[int, float]] = {}

    def get_holds(self, scopes: list[tuple[str, str]]) -> list[tuple[int, float]]:
        return [self._holds.get(k, (0, 0.0)) for k in scopes]

    def set_holds(self, holds: Sequence[tuple[str, str, int, float]]) -> None:
        for scope, key, action, until in holds:
            self._holds[(scope, key)] = (action, until)


_STOP = bytes(ForkingPickler.dumps(None))  # what tells a worker to exit

# A summary as a plain tuple of its fields, which pickles several times faster than the slotted
# dataclass; Summary(*packed) restores it.
_pack = operator.attrgetter(*_SUMMARY_FIELDS)


def _parse(raw: str | dict) -> tuple[str, tuple] | Invalid:
    try:
        # As `moat replay` validates: JSON text straight from the line, or a caller's dict.
        event = Event.model_validate_json(raw) if isinstance(raw, str) else Event.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        return Invalid(".".join(map(str, first["loc"])) or "body", first["msg"])
    return event.request_id, _pack(summarize(event))


def _scope_windows(store: MemoryStore, summaries: list[tuple], tasks: list[tuple[str, str, int, Crowd]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each task's window, in task order: (scope, key, summary index, the request's crowd)."""
    out = []
    for scope, key, i, crowd in tasks:
        s = summaries[i]

        def apply(state, s=s, crowd=crowd, scope=scope):  # noqa: ANN001, ANN202
            return push(state, s, relational(state, s, crowd, scope))

        out.append(store.update(scope, key, s.ts, apply))
    return out


def _worker(conn: Connection) -> None:
    """A worker process: answers parse and scope requests in the order they arrive."""
    # Unbounded: the coordinator stops the run before a one-process store would evict.
    store = MemoryStore(max_scopes=None, ttl_s=None)
    while (msg := conn.recv()) is not None:
        kind, payload = msg
        if kind == "parse":
            conn.send([_parse(raw) for raw in payload])
        else:
            summaries, tasks = payload
            conn.send(_scope_windows(store, [Summary(*t) for t in summaries], tasks))
    conn.close()


class _Pool:
    """N worker processes, each answering its requests in order; a reply is collected by the tag
    it was requested under, whatever else that worker answered first.

    Requests go out through one sender thread per worker, so the coordinator never blocks on a
    full pipe: with several chunks in flight, a worker can be blocked sending a large reply while
    the coordinator sends it more, and a send from the coordinator's own thread would then wait
    for a read that only that thread makes."""

    def __init__(self, n: int) -> None:
        # spawn: the parent holds an ONNX session and a thread pool, which fork does not copy safely.
        ctx = multiprocessing.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs = []
        for _ in range(n):
            here, there = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(there,), daemon=True)
            proc.start()
            there.close()
            self.conns.append(here)
            self.procs.append(proc)
        self.expected: list[deque] = [deque() for _ in range(n)]
        self.ready: list[dict] = [{} for _ in range(n)]
        self.outboxes: list[queue.SimpleQueue] = [queue.SimpleQueue() for _ in range(n)]
        self.senders = [threading.Thread(target=self._send, args=(conn, box), daemon=True) for conn, box in zip(self.conns, self.outboxes)]
        for t in self.senders:
            t.start()

    @staticmethod
    def _send(conn: Connection, box: queue.SimpleQueue) -> None:
        while True:
            payload = box.get()
            try:
                conn.send_bytes(payload)
            except OSError:  # a broken pipe: the worker is gone, and the coordinator's next read of it says so
                return
            if payload == _STOP:
                return

    def request(self, w: int, tag: Any, msg: Any) -> None:
        # Pickled here, so a message that cannot be sent fails in the coordinator, not in a
        # sender thread that would leave the coordinator waiting for a reply.
        self.outboxes[w].put(bytes(ForkingPickler.dumps(msg)))
        self.expected[w].append(tag)

    def reply(self, w: int, tag: Any) -> Any:
        while tag not in self.ready[w]:
            if not self.expected[w]:
                raise RuntimeError(f"replay worker {w}: no request {tag!r} outstanding")
            try:
                got = self.conns[w].recv()
            except (EOFError, ConnectionResetError) as exc:
                raise ReplayWorkerError(f"replay worker {w} exited (code {self.procs[w].exitcode})") from exc
            self.ready[w][self.expected[w].popleft()] = got
        return self.ready[w].pop(tag)

    def close(self) -> None:
        for box in self.outboxes:
            box.put(_STOP)  # after every request still queued
        for proc, expected in zip(self.procs, self.expected):
            # Replies nobody will read (an error, or a caller that stopped early): the worker may
            # be blocked writing one and would never read the None.
            if expected:
                proc.terminate()
        for t in self.senders:
            t.join(timeout=10)
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
        for conn in self.conns:
            conn.close()


def _owner(scope: str, key: str, n: int) -> int:
    return zlib.crc32(f"{scope}\0{key}".encode("utf-8", "surrogatepass")) % n


def _slices(n_items: int, n: int) -> list[tuple[int, int]]:
    step = -(-n_items // n)
    return [(a, min(a + step, n_items)) for a in range(0, n_items, step)]


def _chunked(raws: Iterable[str | dict], size: int) -> Iterator[list[str | dict]]:
    """Chunks of the one-process stream's size (MOAT_REPLAY_CHUNK), so the network runs the same batches."""
    chunk: list[str | dict] = []
    for raw in raws:
        chunk.append(raw)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _Featurise:
    """The coordinator: turns chunks of trace lines into (items, steps) for Scorer.score_stepped."""

    def __init__(self, scorer: "Scorer", pool: _Pool, on_invalid: Callable[[int, str | dict, Invalid], None]) -> None:
        self.scorer = scorer
        self.pool = pool
        self.n = len(pool.conns)
        self.on_invalid = on_invalid
        self.holds = Holds()
        self.scopes: set[tuple[str, str]] = set()
        self.max_scopes = scorer.settings.max_scopes
        self.lineno = 0

    def _request_parse(self, k: int, chunk: list[str | dict]) -> list[int]:
        workers = []
        for w, (a, b) in enumerate(_slices(len(chunk), self.n)):
            self.pool.request(w, ("parse", k), ("parse", chunk[a:b]))
            workers.append(w)
        return workers

    def chunks(self, raws: Iterable[str | dict]) -> Iterator[tuple[list[Ref | None], list[tuple[Step, Holds]]]]:
        source = enumerate(_chunked(raws, self.scorer.settings.replay_chunk))
        inflight: deque[tuple[int, list[str | dict], list[int]]] = deque()
        for k, chunk in itertools.islice(source, LOOKAHEAD + 1):
            inflight.append((k, chunk, self._request_parse(k, chunk)))
        # Chunk k+1's scope windows are asked for before chunk k's are collected, so the workers
        # compute them while this process runs the network and the policy on chunk k. A worker
        # answers in order, so each scope's history still grows in trace order.
        routed: deque[_Routed] = deque()
        while inflight:
            routed.append(self._route(*inflight.popleft()))
            # Each chunk routed asks for the parsing of one more.
            nxt = next(source, None)
            if nxt is not None:
                inflight.append((nxt[0], nxt[1], self._request_parse(*nxt)))
            if len(routed) > SCOPES_AHEAD:
                yield self._collect(routed.popleft())
        while routed:
            yield self._collect(routed.popleft())

    def _route(self, k: int, chunk: list[str | dict], workers: list[int]) -> "_Routed":
        """Chunk k's parsed events: their crowd counts, in trace order, and a request to each
        scope's owner for its windows."""
        parsed = [r for w in workers for r in self.pool.reply(w, ("parse", k))]
        store = self.scorer.store
        items: list[Ref | None] = []
        summaries: list[Summary] = []
        crowds: list[Crowd] = []
        per_worker: list[tuple[dict[int, int], list[tuple], list[tuple[str, str, int, Crowd]]]] = [({}, [], []) for _ in range(self.n)]
        routes: list[list[tuple[str, str, int, int]]] = []  # per event: (scope, key, worker, task index)
        for raw, p in zip(chunk, parsed):
            self.lineno += 1
            if isinstance(p, Invalid):
                self.on_invalid(self.lineno, raw, p)
                items.append(None)
                continue
            rid, packed = p
            s = store.seal(Summary(*packed))
            crowd = Crowd(store.campaign(s.shape, s.account_id, s.ts), store.cohort(s.client_fp, s.account_id, s.ts))
            i = len(summaries)
            items.append(Ref(rid))
            summaries.append(s)
            crowds.append(crowd)
            route = []
            for scope, key in s.scope_keys():
                if (scope, key) not in self.scopes:
                    self.scopes.add((scope, key))
                    if self.max_scopes is not None and len(self.scopes) > self.max_scopes:
                        raise ReplayWorkerError(f"more than MOAT_MAX_SCOPES={self.max_scopes} scopes: one process would evict scopes here, which --workers cannot mirror; run with --workers 1 or raise MOAT_MAX_SCOPES")
                w = _owner(scope, key, self.n)
                index, packs, tasks = per_worker[w]
                if i not in index:
                    index[i] = len(packs)
                    packs.append(_pack(s))
                route.append((scope, key, w, len(tasks)))
                tasks.append((scope, key, index[i], crowd))
            routes.append(route)
        asked = [w for w, (_, packs, tasks) in enumerate(per_worker) if tasks]
        for w in asked:
            self.pool.request(w, ("scopes", k), ("scopes", (per_worker[w][1], per_worker[w][2])))
        return _Routed(k, items, summaries, crowds, routes, asked)

    def _collect(self, r: "_Routed") -> tuple[list[Ref | None], list[tuple[Step, Holds]]]:
        """A routed chunk's steps, once its owners have answered."""
        results = {w: self.pool.reply(w, ("scopes", r.k)) for w in r.asked}
        stepped = []
        for s, crowd, route in zip(r.summaries, r.crowds, r.routes):
            windows: list[ScopeWindow] = []
            for scope, key, w, t in route:
                feats, tokens = results[w][t]
                # The account scope comes first.
                windows.append(ScopeWindow(scope, key, feats, tokens, is_dependent(scope, feats, tokens, windows[0] if windows else None)))
            stepped.append((Step(s, crowd, windows), self.holds))
        return r.items, stepped


@dataclass(frozen=True, slots=True)
class _Routed:
    """A chunk whose scope windows were asked for and not yet collected."""

    k: int
    items: list[Ref | None]
    summaries: list[Summary]
    crowds: list[Crowd]
    routes: list[list[tuple[str, str, int, int]]]
    asked: list[int]


def replay_parallel(scorer: "Scorer", raws: Iterable[str | dict], workers: int, on_invalid: Callable[[int, str | dict, Invalid], None]) -> Iterator[Any]:
    """Yield the scorer's Score (None for an invalid line, after `on_invalid` was told) for each
    line, in order, featurising on `workers` processes."""
    pool = _Pool(workers)
    try:
        yield from scorer.score_stepped(_Featurise(scorer, pool, on_invalid).chunks(raws))
    finally:
        pool.close()
