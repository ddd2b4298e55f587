"""Calls that arrive while the scorer is busy, scored together in one turn.

A call never waits for others. The first to arrive starts a drain, which waits for its turn
(`enter`: the service's scoring lane, or nothing) and one turn of the event loop (calls read in
the same turn as the first are still being parsed), then takes every call waiting at that
moment, up to `coalesce`, and runs them in one `turn`. An idle server so scores each call
alone, and a busy one makes one network call for several: onnxruntime's fixed cost per call
(most of the network's 100-150 us for one window) is shared, and the queue drains faster the
longer it is. The turn answers each call on its own (`Scorer.score_each` keeps a fault to its
event), so one call's fault is its own; a fault of the whole turn is every call's. A caller
that gave up before its turn is not scored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

C = TypeVar("C")  # what a caller hands in
R = TypeVar("R")  # what it gets back


@dataclass(slots=True)
class _Waiting(Generic[C, R]):
    item: C
    done: asyncio.Future[R]


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
    ) -> None:
        self._coalesce = coalesce
        self._turn = turn
        self._enter = enter
        self._leave = leave
        self._pending: list[_Waiting[C, R]] = []
        self._drain_task: asyncio.Task[None] | None = None

    def waiting(self) -> int:
        return sum(1 for w in self._pending if not w.done.done())  # done: its caller gave up

    async def submit(self, item: C) -> R:
        loop = asyncio.get_running_loop()
        waiting: _Waiting[C, R] = _Waiting(item, loop.create_future())
        self._pending.append(waiting)
        if self._drain_task is None:
            self._drain_task = loop.create_task(self._drain())
        return await waiting.done

    async def _drain(self) -> None:
        take: list[_Waiting[C, R]] = []
        try:
            while self._pending:
                await asyncio.sleep(0)
                if self._enter is not None:
                    await self._enter()
                live = [w for w in self._pending if not w.done.done()]
                take, self._pending = live[: self._coalesce], live[self._coalesce :]
                if not take:
                    if self._leave is not None:
                        self._leave()
                    continue
                try:
                    answers = await self._turn([w.item for w in take])
                except Exception as exc:  # the turn itself faulted: every caller answers its own fail-open
                    answers = [exc] * len(take)
                for w, answer in zip(take, answers, strict=True):
                    if w.done.done():
                        continue
                    if isinstance(answer, Exception):
                        w.done.set_exception(answer)
                    else:
                        w.done.set_result(answer)
                take = []
        finally:
            self._drain_task = None
            # Only a cancelled drain (the server stopping) leaves calls unanswered: end their waits.
            for w in take + self._pending:
                w.done.cancel()
            self._pending.clear()
