"""Calls that arrive while the scorer is busy, scored together in one turn.

By default a call never waits for others. The first to arrive starts a drain, which waits for
its turn (`enter`: the service's scoring lane, or nothing) and one turn of the event loop (calls
read in the same turn as the first are still being parsed), then takes every call waiting at that
moment, up to `coalesce`, and runs them in one `turn`. An idle server so scores each call
alone, and a busy one makes one network call for several: onnxruntime's fixed cost per call
(most of the network's 100-150 us for one window) is shared, and the queue drains faster the
longer it is. The turn answers each call on its own (`Scorer.score_each` keeps a fault to its
event), so one call's fault is its own; a fault of the whole turn is every call's. A caller
that gave up before its turn is not scored.

With `max_wait_s` above zero the coalescer is a micro-batcher: a drain that finds fewer than
`coalesce` calls waiting waits, without holding the entry, until that many wait or the oldest
has waited `max_wait_s`. That is for a network on a GPU, where a call costs about the same for
one window as for a few hundred (docs/performance.md, "The GPU tier"); on a CPU it only adds
the wait, since a turn's cost grows with its calls.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

C = TypeVar("C")  # what a caller hands in
R = TypeVar("R")  # what it gets back


class CoalescerStopped(RuntimeError):
    """The drain stopped (cancelled with the server, or broken) before this call was answered."""


@dataclass(slots=True)
class _Waiting(Generic[C, R]):
    item: C
    done: asyncio.Future[R]
    arrived: float  # the event loop's clock


class Coalescer(Generic[C, R]):
    """`turn(items)` answers each item in order, with its result or its own exception. `enter`
    waits for the right to run a turn; `turn` gives that right back when it ends, and `leave`
    gives it back when a drain finds nothing left to run (every waiting caller gave up)."""

    def __init__(
        self,
        coalesce: int,
        turn: Callable[[list[C]], Awaitable[list[R | Exception]]],
        enter: Callable[[], Awaitable[None]] | None = None,
        leave: Callable[[], None] | None = None,
        max_wait_s: float = 0.0,
    ) -> None:
        if coalesce < 1:
            raise ValueError(f"coalesce must be at least 1, got {coalesce}")
        if not max_wait_s >= 0:
            raise ValueError(f"max_wait_s must be zero or more, got {max_wait_s}")
        self._coalesce = coalesce
        self._turn = turn
        self._enter = enter
        self._leave = leave
        self._max_wait_s = max_wait_s
        self._full: asyncio.Future[None] | None = None  # a wait to fill, ended early when `coalesce` calls wait
        self._last_turn = (-math.inf, -math.inf)  # when the latest turn started and ended (the loop's clock)
        self._pending: list[_Waiting[C, R]] = []
        self._taken: list[_Waiting[C, R]] = []  # the calls of the turn running now
        self._drain_task: asyncio.Task[None] | None = None

    def waiting(self) -> int:
        return sum(1 for w in self._pending if not w.done.done())  # done: its caller gave up

    async def submit(self, item: C) -> R:
        loop = asyncio.get_running_loop()
        waiting: _Waiting[C, R] = _Waiting(item, loop.create_future(), loop.time())
        self._pending.append(waiting)
        if self._full is not None and not self._full.done() and len(self._pending) >= self._coalesce:
            self._full.set_result(None)
        if self._drain_task is None or self._drain_task.done():
            task = loop.create_task(self._drain())
            task.add_done_callback(self._drained)
            self._drain_task = task
        return await waiting.done

    async def _drain(self) -> None:
        while self._pending:
            await asyncio.sleep(0)
            if self._max_wait_s > 0:
                await self._fill()
            if self._enter is not None:
                await self._enter()
            live = [w for w in self._pending if not w.done.done()]
            self._taken, self._pending = live[: self._coalesce], live[self._coalesce :]
            if not self._taken:
                if self._leave is not None:
                    self._leave()
                continue
            started = asyncio.get_running_loop().time()
            try:
                answers = await self._turn([w.item for w in self._taken])
                if len(answers) != len(self._taken):
                    raise RuntimeError(f"a turn of {len(self._taken)} calls gave {len(answers)} answers")
            except Exception as exc:  # the turn itself faulted: every caller answers its own fail-open
                answers = [exc] * len(self._taken)
            for w, answer in zip(self._taken, answers):
                if w.done.done():  # its caller gave up during the turn
                    continue
                if isinstance(answer, Exception):
                    w.done.set_exception(answer)
                else:
                    w.done.set_result(answer)
            self._taken = []
            self._last_turn = (started, asyncio.get_running_loop().time())
        self._drain_task = None

    async def _fill(self) -> None:
        """Wait until `coalesce` live calls wait or the oldest live one has waited `max_wait_s`.
        A call that comes within `max_wait_s` of the end of a turn counts as waiting since that
        turn started: a turn scored on the event loop holds back the calls that reach the socket
        meanwhile, which then look as if they had just arrived. So a worker whose turns last
        `max_wait_s` or more never waits, and one with shorter turns waits only the rest."""
        loop = asyncio.get_running_loop()
        while True:
            live = [w for w in self._pending if not w.done.done()]
            if not live:
                return
            since = live[0].arrived
            started, ended = self._last_turn
            if since - ended <= self._max_wait_s:
                since = min(since, started)
            left = since + self._max_wait_s - loop.time()
            if len(live) >= self._coalesce or left <= 0:
                return
            self._full = loop.create_future()
            try:
                async with asyncio.timeout(left):
                    await self._full
            except TimeoutError:
                return
            finally:
                self._full = None

    def _drained(self, task: asyncio.Task[None]) -> None:
        """A drain that ends any other way than by running out of calls (cancelled with the
        server, even before its first step, or broken) answers every call it leaves, so none
        waits for ever; a caller sees an error, which it fails open on."""
        if self._drain_task is not task:
            return  # it ran out of calls, or a newer drain holds the waiting ones
        self._drain_task = None
        why = "cancelled" if task.cancelled() else repr(task.exception())
        for w in self._taken + self._pending:
            if not w.done.done():
                w.done.set_exception(CoalescerStopped(f"scoring stopped before this call was answered ({why})"))
        self._taken, self._pending = [], []
