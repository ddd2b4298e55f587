"""Gate hints: the live path's guess of which dependent windows the gate will need. The guess
may only change how many network calls a request costs, never a score."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moat.models.events import Event
from moat.models.traces import iter_raw
from moat.serving.gate_hints import GateHints
from moat.serving.scorer import Scorer
from moat.serving.settings import ServingSettings

# (case, size, outcomes as (account, gate opened) in request order, accounts expected open after)
LEARNING = [
    ("an opened gate is remembered", 4, [("a", True)], {"a"}),
    ("a shut gate is forgotten", 4, [("a", True), ("a", False)], set()),
    ("a shut gate is never stored", 4, [("a", False), ("b", False)], set()),
    ("the latest of one batch wins", 4, [("a", True), ("b", True), ("a", False)], {"b"}),
    ("beyond the bound the least recently opened goes", 2, [("a", True), ("b", True), ("c", True)], {"b", "c"}),
    ("re-opening refreshes an account", 2, [("a", True), ("b", True), ("a", True), ("c", True)], {"a", "c"}),
]


@pytest.mark.parametrize("case, size, outcomes, expected", LEARNING, ids=[c[0] for c in LEARNING])
def test_hints_remember_open_gates_within_their_bound(case: str, size: int, outcomes: list, expected: set) -> None:
    hints = GateHints(size)
    hints.learn([a for a, _ in outcomes], [o for _, o in outcomes])
    assert {a for a in "abc" if hints.expects_open(a)} == expected
    assert len(hints) == len(expected) <= size


def test_hints_reject_an_empty_bound() -> None:
    with pytest.raises(ValueError, match="size"):
        GateHints(0)


# (case, gate settings, hints preset to expect every account open or none): every way a guess
# can go, right or wrong, against the same plan scored without hints.
GATE_EVERYTHING = {"corroboration": 0.0, "throttle_threshold": 0.0, "perturb_threshold": 0.0}
GATE_NOTHING = {"corroboration": 1.0, "throttle_threshold": 1.0, "perturb_threshold": 1.0, "block_threshold": 1.0}
GUESSES = [
    ("every window needed, every one guessed", GATE_EVERYTHING, True),
    ("every window needed, none guessed", GATE_EVERYTHING, False),
    ("none needed, every one guessed", GATE_NOTHING, True),
    ("the shipped gate, every one guessed", {}, True),
    ("the shipped gate, none guessed", {}, False),
]


@pytest.mark.parametrize("case, gate, guess", GUESSES, ids=[c[0] for c in GUESSES])
def test_a_guess_changes_network_calls_not_risks(small_traces: Path, case: str, gate: dict, guess: bool) -> None:
    sc = Scorer(ServingSettings(time_source="caller", **gate))
    events = [Event.model_validate(r) for _, r in zip(range(300), iter_raw(small_traces / "test.jsonl"))]
    plan = sc._plan([sc._step(e)[0] for e in events])
    assert len(plan.dependent_event) > 0, "the trace must have dependent windows to guess about"
    hints = GateHints()
    if guess:
        hints.learn([st.windows[0].key for st in plan.steps], [True] * plan.n_events)
    calls = []
    run = sc._run
    sc._run = lambda batch: calls.append(len(batch.last)) or run(batch)  # type: ignore[method-assign]
    own, dep = sc._infer(plan, hints)
    sc._run = run  # type: ignore[method-assign]
    own_ref, dep_ref = sc._infer(plan)
    np.testing.assert_allclose(own, own_ref, rtol=1e-6)
    assert np.array_equal(np.isnan(dep), np.isnan(dep_ref)), "a guess decided which windows count"
    np.testing.assert_allclose(dep[~np.isnan(dep)], dep_ref[~np.isnan(dep_ref)], rtol=1e-6)
    needed = int(np.count_nonzero(~np.isnan(dep_ref)))
    # A right guess saves the second call; a wrong one costs a wasted window or the second call.
    assert calls == ([len(own) + len(dep)] if guess else [len(own)] + ([needed] if needed else []))
    assert (hints.hits, hints.wasted, hints.missed) == ((needed, len(dep) - needed, 0) if guess else (0, 0, needed))


# (case, gate settings, whether the first 600 requests of the small trace open any gate with a
# dependent window behind it)
LIVE_GATES = [
    ("the shipped gate", {}, False),
    ("a gate at 0.5", {"corroboration": 0.5, "throttle_threshold": 0.5, "perturb_threshold": 0.5}, True),
    ("every gate open", GATE_EVERYTHING, True),
]


@pytest.mark.parametrize("case, gate, opens", LIVE_GATES, ids=[c[0] for c in LIVE_GATES])
def test_live_scoring_with_hints_equals_scoring_without(small_traces: Path, case: str, gate: dict, opens: bool) -> None:
    """Request by request, as the service scores: the same answers, and fewer network calls
    where accounts open their gates."""
    events = [Event.model_validate(r) for _, r in zip(range(600), iter_raw(small_traces / "test.jsonl"))]
    with_hints, without = Scorer(ServingSettings(time_source="caller", **gate)), Scorer(ServingSettings(time_source="caller", **gate))
    without.gate_hints = None
    calls = {"with": 0, "without": 0}
    for name, sc in (("with", with_hints), ("without", without)):
        run = sc._run

        def counted(batch, run=run, name=name):  # type: ignore[no-untyped-def]
            calls[name] += 1
            return run(batch)

        sc._run = counted  # type: ignore[method-assign]
    for e in events:
        assert with_hints.score(e) == without.score(e), e.request_id
    hints = with_hints.gate_hints
    assert hints is not None and (hints.hits > 0) == opens
    assert len(events) <= calls["with"] <= calls["without"] - (1 if opens else 0)
