"""The example events are valid, the README shows the same event it ships, and what the README
says the shipped model answers is what the scorer answers. (tests/serving/test_examples.py runs
the same examples against a live service.)"""

from __future__ import annotations

import ast
import json
from typing import Any

import jsonschema
import pytest

from moat.models.events import Event
from moat.serving.scorer import Scorer
from moat.serving.settings import ServingSettings
from tests.conftest import ROOT
from tests.docs.markdown import README, fenced

EXAMPLES = ROOT / "examples"


def load(name: str) -> Any:
    return json.loads((EXAMPLES / name).read_text(encoding="utf-8"))


def example_events() -> list[tuple[str, dict]]:
    return [("event.json", load("event.json"))] + [(f"events.json[{i}]", e) for i, e in enumerate(load("events.json"))]


@pytest.mark.parametrize("where, event", example_events(), ids=[w for w, _ in example_events()])
def test_example_events_follow_the_contract(where: str, event: dict, event_schema: dict) -> None:
    jsonschema.validate(event, event_schema)
    Event.model_validate(event)  # what the service validates with; a 422 would fail here


def test_batch_example_is_a_sorted_list_of_distinct_requests() -> None:
    events = load("events.json")
    assert isinstance(events, list) and len(events) > 1
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)
    assert len({e["request_id"] for e in events}) == len(events)


def readme_python_event() -> dict:
    """The `event = {...}` literal of the README's Python block."""
    [(_, block)] = fenced(README, ("python",))
    for node in ast.walk(ast.parse(block)):
        if isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(t, ast.Name)] == ["event"]:
            return ast.literal_eval(node.value)
    raise AssertionError("the README's Python block defines no `event`")


def test_readme_snippet_scores_the_shipped_example_event() -> None:
    assert readme_python_event() == load("event.json")


def readme_sample_answer() -> dict:
    """The answer the README prints after its first curl call."""
    return next(json.loads(body) for _, body in fenced(README, ("text",)) if body.lstrip().startswith('{"request_id"'))


def test_readme_sample_answer_is_what_the_shipped_model_answers(score_schema: dict) -> None:
    shown = readme_sample_answer()
    jsonschema.validate(shown, score_schema)
    got = Scorer().score(Event.model_validate(load("event.json"))).model_dump(exclude_none=True)
    assert shown == {**got, "risk": pytest.approx(got["risk"], abs=1e-6)}


ACTIONS = ["allow", "throttle", "perturb", "block"]


@pytest.mark.parametrize("after_single", [False, True], ids=["alone", "after event.json"])
def test_batch_example_shows_what_the_readme_says(after_single: bool) -> None:
    """The README: the developer is allowed; from its third request the probe's risk climbs, and
    by its fifth it is throttled (scored at the events' own times), with `logit_bias_sweep` among
    the reasons. It holds whether or not the single example (the same prompt from another
    account) was scored first."""
    scorer = Scorer(ServingSettings(time_source="caller"))  # the events' own times, as the README says
    if after_single:
        scorer.score(Event.model_validate(load("event.json")))
    scores = [scorer.score(Event.model_validate(e)) for e in load("events.json")]
    probe = [s for s in scores if s.request_id.startswith("probe-")]
    developer = [s for s in scores if s.request_id.startswith("dev-")]
    assert probe and developer
    assert all(s.action == "allow" for s in developer)
    assert [s.risk for s in probe[2:]] == sorted(s.risk for s in probe[2:])
    levels = [ACTIONS.index(s.action) for s in probe]
    assert levels == sorted(levels) and levels[0] == 0 and levels[4] >= ACTIONS.index("throttle")
    assert "logit_bias_sweep" in probe[-1].reasons
