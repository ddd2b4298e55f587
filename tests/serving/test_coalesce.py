"""The coalescer in front of the scorer (serving/coalesce.py): calls that arrive while a turn
runs go together in the next one, each answered on its own, and no call waits for company
unless a wait to fill a batch is set (the micro-batcher)."""

from __future__ import annotations

import asyncio
import time

import pytest

from moat.serving.coalesce import Coalescer, CoalescerStopped


class Turns:
    """A turn function that records its batches, holds each turn until released, and answers
    each item with its double, or with its own fault for items below zero."""

    def __init__(self, fail_whole: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.fail_whole = fail_whole

    async def __call__(self, items: list[int]) -> list[int | Exception]:
        self.batches.append(items)
        await self.gate.wait()
        if self.fail_whole and len(items) > 1:
            raise RuntimeError("the whole turn failed")
        return [ValueError(f"bad item {i}") if i < 0 else 2 * i for i in items]


async def _submit_all(co: Coalescer[int, int], items: list[int]) -> list[asyncio.Task[int]]:
    tasks = []
    for i in items:
        tasks.append(asyncio.create_task(co.submit(i)))
        await asyncio.sleep(0.01)  # arrival order is submission order
    return tasks


@pytest.mark.parametrize(
    ("coalesce", "batches"),
    [
        (32, [[0], [1, 2, 3, 4, 5]]),  # the first alone (nothing was waiting), the rest together
        (2, [[0], [1, 2], [3, 4], [5]]),  # at most `coalesce` a turn, in arrival order
        (1, [[0], [1], [2], [3], [4], [5]]),  # coalescing off
    ],
)
async def test_calls_that_arrive_during_a_turn_share_the_next(coalesce: int, batches: list[list[int]]) -> None:
    turns = Turns()
    co: Coalescer[int, int] = Coalescer(coalesce, turns)
    tasks = await _submit_all(co, list(range(6)))
    assert co.waiting() == 5  # the first is in its turn
    turns.gate.set()
    assert [await t for t in tasks] == [0, 2, 4, 6, 8, 10]
    assert turns.batches == batches and co.waiting() == 0


async def test_a_fault_is_its_callers_own_and_a_whole_turn_fault_is_everyones() -> None:
    turns = Turns()
    co: Coalescer[int, int] = Coalescer(32, turns)
    tasks = await _submit_all(co, [1, 2, -3, 4])
    turns.gate.set()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert done[:2] == [2, 4] and isinstance(done[2], ValueError) and done[3] == 8

    whole = Turns(fail_whole=True)
    co = Coalescer(32, whole)
    tasks = await _submit_all(co, [1, 2, 3])
    whole.gate.set()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert done[0] == 2 and all(isinstance(d, RuntimeError) for d in done[1:])


async def test_a_caller_that_gives_up_before_its_turn_is_never_run() -> None:
    turns = Turns()
    co: Coalescer[int, int] = Coalescer(32, turns)
    tasks = await _submit_all(co, [0, 1, 2, 3])
    tasks[2].cancel()
    await asyncio.sleep(0.01)
    assert co.waiting() == 2
    turns.gate.set()
    assert [await t for i, t in enumerate(tasks) if i != 2] == [0, 2, 6]
    assert turns.batches == [[0], [1, 3]]


async def test_a_turn_holds_its_entry_and_hands_it_back_when_nothing_is_left() -> None:
    """`enter` is awaited before the items of a turn are taken (so calls arriving meanwhile
    join it); a drain that finds every caller gone gives the entry back with `leave`."""
    held: list[str] = []
    entry = asyncio.Event()

    async def enter() -> None:
        held.append("enter")
        await entry.wait()

    async def turn(items: list[int]) -> list[int | Exception]:
        held.append(f"turn {items}")
        return list(items)

    co: Coalescer[int, int] = Coalescer(32, turn, enter, lambda: held.append("leave"))
    first = await _submit_all(co, [0, 1])  # both arrive while the entry is not granted
    entry.set()
    assert [await t for t in first] == [0, 1] and held == ["enter", "turn [0, 1]"]

    entry.clear()
    held.clear()
    gone = await _submit_all(co, [5])
    gone[0].cancel()
    entry.set()
    await asyncio.sleep(0.05)
    assert held == ["enter", "leave"]


@pytest.mark.parametrize("when", ["before its first step", "during a turn"])
async def test_a_cancelled_drain_answers_every_wait_and_a_new_one_starts(when: str) -> None:
    turns = Turns()
    co: Coalescer[int, int] = Coalescer(32, turns)
    first = asyncio.create_task(co.submit(0))
    if when == "before its first step":
        await asyncio.sleep(0)  # the drain task exists, and has not run
        assert co._drain_task is not None
        co._drain_task.cancel()
        tasks = [first]
    else:
        tasks = [first, *await _submit_all(co, [1, 2])]  # 0 is in its turn, 1 and 2 wait
        assert co._drain_task is not None
        co._drain_task.cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    # An error, not a cancellation: the callers were not cancelled, and they fail open on it.
    assert all(isinstance(d, CoalescerStopped) for d in done) and co.waiting() == 0
    turns.gate.set()
    assert await asyncio.wait_for(co.submit(5), 1) == 10  # nothing is wedged


async def test_a_caller_that_gives_up_during_its_turn_leaves_the_others_answered() -> None:
    turns = Turns()
    co: Coalescer[int, int] = Coalescer(32, turns)
    tasks = await _submit_all(co, [0, 1])
    assert turns.batches == [[0]]  # 0 is in its turn, 1 waits
    tasks[0].cancel()
    await asyncio.sleep(0.01)
    turns.gate.set()
    assert await tasks[1] == 2 and tasks[0].cancelled()
    assert turns.batches == [[0], [1]]


async def test_a_turn_that_answers_the_wrong_number_of_calls_fails_them_all() -> None:
    async def short(items: list[int]) -> list[int | Exception]:
        return items[:-1]

    co: Coalescer[int, int] = Coalescer(32, short)
    done = await asyncio.gather(co.submit(1), co.submit(2), return_exceptions=True)
    assert all(isinstance(d, RuntimeError) and "gave 1 answers" in str(d) for d in done)


@pytest.mark.parametrize(("coalesce", "items", "batches"), [(32, [7], [[7]]), (3, list(range(6)), [[0, 1, 2], [3, 4, 5]])])
async def test_a_wait_to_fill_ends_when_the_batch_is_full_or_the_oldest_has_waited(coalesce: int, items: list[int], batches: list[list[int]]) -> None:
    """Without the wait the first call would run alone (the other cases above); with it, a
    lone call is answered once it has waited 50 ms, and calls 10 ms apart fill whole batches
    long before that (a 10 s wait, so a test that passes did not run into the deadline)."""
    turns = Turns()
    turns.gate.set()
    co: Coalescer[int, int] = Coalescer(coalesce, turns, max_wait_s=0.05 if len(items) == 1 else 10.0)
    loop = asyncio.get_running_loop()
    began = loop.time()
    tasks = await _submit_all(co, items)
    assert await asyncio.wait_for(asyncio.gather(*tasks), 5) == [2 * i for i in items]
    assert turns.batches == batches
    if len(items) == 1:
        assert loop.time() - began >= 0.045  # the lone call did wait (asyncio timers never fire early)


async def test_calls_held_back_by_a_turn_on_the_event_loop_do_not_wait_again() -> None:
    """A turn scored on the event loop (the service's inline path) blocks it: calls that reach
    the server meanwhile are submitted only when it ends. They have waited since it started, so
    once a turn has lasted `max_wait_s` they go at once; a call 20 ms later makes a batch of its
    own instead of joining theirs."""
    batches: list[list[int]] = []
    later: list[asyncio.Task[int]] = []

    async def arrive_late(i: int) -> int:
        await asyncio.sleep(0.02)
        return await co.submit(i)

    async def blocking(items: list[int]) -> list[int | Exception]:
        batches.append(items)
        if items == [0]:
            # Calls read from the socket during the turn, submitted after it.
            later.extend([asyncio.create_task(co.submit(1)), asyncio.create_task(co.submit(2)), asyncio.create_task(arrive_late(3))])
            time.sleep(0.1)  # noqa: ASYNC251  # a turn that holds the loop, as inline scoring does
        return [2 * i for i in items]

    co: Coalescer[int, int] = Coalescer(3, blocking, max_wait_s=0.05)
    assert await co.submit(0) == 0  # waits its 50 ms alone, then holds the loop for 100 ms
    assert await asyncio.wait_for(asyncio.gather(*later), 5) == [2, 4, 6]
    assert batches == [[0], [1, 2], [3]]


async def test_a_wait_to_fill_holds_no_entry_and_skips_callers_that_gave_up() -> None:
    """A drain waiting to fill has not entered (batch chunks may use the lane meanwhile); a
    caller that gives up during the wait is not counted towards the batch, nor run."""
    held: list[str] = []

    async def enter() -> None:
        held.append("enter")

    async def turn(items: list[int]) -> list[int | Exception]:
        held.append(f"turn {items}")
        return list(items)

    co: Coalescer[int, int] = Coalescer(2, turn, enter, max_wait_s=10.0)
    tasks = await _submit_all(co, [0, 1])  # full at once: no wait
    assert [await t for t in tasks] == [0, 1]
    held.clear()
    tasks = await _submit_all(co, [2])
    await asyncio.sleep(0.05)
    assert held == []  # waiting to fill, not entered
    tasks[0].cancel()
    tasks = await _submit_all(co, [3, 4])
    assert await asyncio.wait_for(asyncio.gather(*tasks), 5) == [3, 4]
    assert held == ["enter", "turn [3, 4]"]


async def test_a_drain_cancelled_while_waiting_to_fill_answers_its_callers() -> None:
    turns = Turns()
    co: Coalescer[int, int] = Coalescer(32, turns, max_wait_s=10.0)
    tasks = await _submit_all(co, [0, 1])
    assert co._drain_task is not None and turns.batches == []
    co._drain_task.cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(d, CoalescerStopped) for d in done) and co.waiting() == 0


@pytest.mark.parametrize(("coalesce", "max_wait_s", "message"), [(0, 0.0, "at least 1"), (1, -0.001, "zero or more"), (1, float("nan"), "zero or more")])
def test_a_bad_limit_is_refused(coalesce: int, max_wait_s: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Coalescer(coalesce, Turns(), max_wait_s=max_wait_s)
