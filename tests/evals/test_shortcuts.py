"""The counterfactual shortcut check: each intervention changes exactly its field, and the
report counts the accounts whose side of the throttle threshold a field decides."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from moat.evals.shortcuts import INTERVENTIONS, Intervention, SetParam, SetUserAgent, account_risk, render, run, sample_accounts, write_evasion
from moat.models.bundle import DEFAULT_BUNDLE, load_bundle
from moat.models.events import Params
from moat.models.traces import iter_raw

EVENT = {"request_id": "r1", "ts": 1.0, "account_id": "a", "user_agent": "curl/8", "params": {"temperature": 0.2, "max_tokens": 64}, "prompt": "hi"}


@pytest.mark.parametrize(
    ("intervention", "params", "user_agent"),
    [
        (SetParam("t unset", "temperature", None), {"max_tokens": 64}, "curl/8"),
        (SetParam("t 1", "temperature", 1.0), {"temperature": 1.0, "max_tokens": 64}, "curl/8"),
        (SetParam("stream on", "stream", True), {"temperature": 0.2, "max_tokens": 64, "stream": True}, "curl/8"),
        (SetUserAgent("no ua", None), {"temperature": 0.2, "max_tokens": 64}, None),
        (SetUserAgent("browser", "Mozilla/5.0"), {"temperature": 0.2, "max_tokens": 64}, "Mozilla/5.0"),
    ],
)
def test_an_intervention_changes_its_field_only_and_leaves_the_event_alone(intervention, params: dict, user_agent: str | None) -> None:
    before = json.dumps(EVENT, sort_keys=True)
    out = intervention.apply(EVENT)
    assert out["params"] == params and out["user_agent"] == user_agent
    assert {k: v for k, v in out.items() if k not in ("params", "user_agent")} == {k: v for k, v in EVENT.items() if k not in ("params", "user_agent")}
    assert json.dumps(EVENT, sort_keys=True) == before, "the recorded event was modified in place"


def test_every_registered_intervention_has_its_own_name_and_sets_a_real_parameter() -> None:
    names = [iv.name for iv in INTERVENTIONS]
    assert len(names) == len(set(names))
    # Params accepts unknown keys, so a misspelt parameter would silently change nothing.
    assert all(iv.param in Params.model_fields for iv in INTERVENTIONS if isinstance(iv, SetParam))


def test_an_intervention_must_say_what_it_changes() -> None:
    with pytest.raises(TypeError):
        Intervention("nothing")  # type: ignore[abstract]


def write_trace(path: Path, accounts: dict[str, int | None], events_each: int, temperature: float = 0.2) -> Path:
    with path.open("w") as fh:
        for a, label in accounts.items():
            for i in range(events_each):
                params = {"temperature": temperature, "max_tokens": 64}
                fh.write(json.dumps({**EVENT, "request_id": f"{a}-{i}", "ts": float(i), "account_id": a, "label": label, "params": params}) + "\n")
    return path


def test_sampling_takes_each_class_up_to_its_quota_and_caps_the_requests(tmp_path: Path) -> None:
    trace = write_trace(tmp_path / "t.jsonl", {f"b{i}": 0 for i in range(5)} | {f"x{i}": 1 for i in range(2)}, events_each=7)
    got, labels = sample_accounts(trace, per_class=3, max_events=4, seed=1)
    assert sorted(labels.values()) == [0, 0, 0, 1, 1] and labels.keys() == got.keys()
    assert all(evs[0]["label"] == labels[a] for a, evs in got.items())
    assert all(len(evs) == 4 and [e["ts"] for e in evs] == [0.0, 1.0, 2.0, 3.0] for evs in got.values())


@pytest.mark.parametrize("label", [None, 2])
def test_an_unlabelled_trace_is_refused_naming_the_event(tmp_path: Path, label: int | None) -> None:
    trace = write_trace(tmp_path / "t.jsonl", {"b0": 0, "x0": label}, events_each=2)
    with pytest.raises(ValueError, match="'x0-0' has label"):
        sample_accounts(trace, per_class=5, max_events=5, seed=0)


def by_temperature(model: Path, events: list[dict[str, Any]]) -> float:
    """A scorer that reads only the temperature: unset is risky, greedy is safe, else middling."""
    t = events[0]["params"].get("temperature")
    return 0.999 if t is None else 0.01 if t == 0.0 else 0.5


@pytest.mark.parametrize(
    ("recorded", "intervention", "attack_down_up", "benign_up"),
    [
        (0.2, "temperature unset", (0, 3), 2),  # lifts everyone: attackers caught, benign flagged
        (0.2, "temperature 0", (0, 0), 0),  # lowers risk that was below the line anyway
        (0.2, "max_tokens unset", (0, 0), 0),  # a field the scorer ignores
        (None, "temperature 0", (3, 0), 0),  # clears attackers (benign ones were already at 0.999: not flagged)
        (None, "temperature unset", (0, 0), 0),  # the recorded value: nothing moves
    ],
)
def test_each_direction_of_crossing_is_counted_apart(tmp_path: Path, recorded: float | None, intervention: str, attack_down_up: tuple[int, int], benign_up: int) -> None:
    trace = write_trace(tmp_path / "t.jsonl", {"b0": 0, "b1": 0, "x0": 1, "x1": 1, "x2": 1}, events_each=3, temperature=recorded)
    shifts, throttle = run(trace, DEFAULT_BUNDLE, per_class=10, progress=False, risk=by_temperature)
    assert throttle == load_bundle(DEFAULT_BUNDLE)[0].thresholds.throttle
    attack, benign = shifts[intervention][1], shifts[intervention][0]
    assert (attack.down, attack.up, benign.up, attack.accounts, benign.accounts) == (*attack_down_up, benign_up, 3, 2)


def test_the_report_shows_each_side_of_the_threshold(tmp_path: Path) -> None:
    trace = write_trace(tmp_path / "t.jsonl", {"b0": 0, "b1": 0, "x0": 1, "x1": 1, "x2": 1}, events_each=3)
    shifts, throttle = run(trace, DEFAULT_BUNDLE, per_class=10, progress=False, risk=by_temperature)
    table = render(shifts, throttle)
    assert "| temperature unset | +0.499 / +0.499 | 0 / 3 of 3 | +0.499 / +0.499 | 2 of 2 |" in table
    assert "| temperature 0 | -0.490 / -0.490 | 0 / 0 of 3 | -0.490 / -0.490 | 0 of 2 |" in table


def test_each_replay_starts_from_fresh_state() -> None:
    """The same account replayed twice scores the same: no history carries over between the
    recorded replay and its counterfactuals. A logit-bias sweep climbs with its history, so a
    store shared between replays would score the second one higher."""
    probe = {"max_tokens": 1, "logprobs": True, "top_logprobs": 20}
    events = [{**EVENT, "request_id": f"p{i}", "ts": 100.0 + 0.5 * i, "prompt": "The capital of France is", "params": {**probe, "logit_bias": {str(1000 + i): 100}}} for i in range(5)]
    first, second = account_risk(DEFAULT_BUNDLE, events), account_risk(DEFAULT_BUNDLE, events)
    assert first == second
    assert first > account_risk(DEFAULT_BUNDLE, events[:1]), "five sweeps score as one: the replay does not reach the scorer"


def test_the_evasion_trace_changes_every_attack_request_and_no_benign_one(tmp_path: Path) -> None:
    trace = write_trace(tmp_path / "t.jsonl", {"b0": 0, "x0": 1, "x1": 1}, events_each=4)
    out = tmp_path / "evaded.jsonl.gz"
    assert write_evasion(trace, "temperature 0", out) == 8
    rows = list(iter_raw(out))
    assert [r["request_id"] for r in rows] == [r["request_id"] for r in iter_raw(trace)], "order or count changed"
    assert {r["params"]["temperature"] for r in rows if r["label"] == 1} == {0.0}
    assert {r["params"]["temperature"] for r in rows if r["label"] == 0} == {0.2}


def test_an_unknown_evasion_is_refused_with_the_choices(tmp_path: Path) -> None:
    trace = write_trace(tmp_path / "t.jsonl", {"x0": 1}, events_each=1)
    with pytest.raises(ValueError, match="unknown intervention 'temperature 9'; choose from temperature unset, "):
        write_evasion(trace, "temperature 9", tmp_path / "out.jsonl")
