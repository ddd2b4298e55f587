"""The coalescer in front of the scorer (serving/coalesce.py): calls that arrive while a turn
runs go together in the next one, each answered on its own, and no call waits for company."""

from __future__ import annotations

import asyncio

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


def test_coalesce_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Coalescer(0, Turns())
