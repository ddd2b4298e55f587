"""The free-choice counterfactual: each variant changes exactly the choice it names on every
request, "as sent" is the red team's own scoring of the unchanged actor, and the report marks
what reaches the throttle threshold and names the cheapest evasion."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from moat.evals.counterfactual import SYSTEM, VARIANTS, Counterfactual, account_max_risk, main, render, run
from moat.evals.redteam import SCRIPTS, UA_BROWSER, score_pass, write_actor

PROMPTS = [f"Question {i}: explain in {i % 7 + 2} short steps how topic {i} relates to field {i * 3} and give one example." for i in range(120)]
START = 1_767_225_600.0
CHAT = {
    "request_id": "r1", "ts": START, "account_id": "redteam-x-0", "api_key_id": "k", "client_ip": "10.0.0.1", "user_agent": "curl/8.5.0",
    "endpoint": "/v1/chat/completions", "model": "m", "params": {"temperature": 0, "max_tokens": 64},
    "messages": [{"role": "system", "content": "old"}, {"role": "user", "content": "hi"}],
}
COMPLETION = {k: v for k, v in CHAT.items() if k != "messages"} | {"endpoint": "/v1/completions", "prompt": "hi"}
BY_NAME = {v.name: v for v in VARIANTS}


@pytest.mark.parametrize(
    ("variant", "event", "expected"),
    [
        ("as sent", CHAT, CHAT),
        # One choice changed, the rest of the request as sent.
        ("free parameters unset", CHAT | {"params": {"temperature": 0, "seed": 1, "stream": True, "max_tokens": 64, "n": 4}}, CHAT | {"params": {"max_tokens": 64, "n": 4}}),
        ("temperature 0.7", CHAT, CHAT | {"params": {"temperature": 0.7, "max_tokens": 64}}),
        ("stream", COMPLETION, COMPLETION | {"params": {"temperature": 0, "max_tokens": 64, "stream": True}}),
        ("n unset", COMPLETION | {"params": {"n": 8, "temperature": 1.0}}, COMPLETION | {"params": {"temperature": 1.0}}),
        ("logprobs unset", CHAT | {"params": {"logprobs": True, "top_logprobs": 20, "max_tokens": 9}}, CHAT | {"params": {"max_tokens": 9}}),
        ("browser user agent", CHAT, CHAT | {"user_agent": UA_BROWSER}),
        # One system message, first, replacing the request's own; the user turn kept.
        ("system prompt", CHAT, CHAT | {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hi"}]}),
        ("system prompt", COMPLETION, COMPLETION | {"prompt": f"{SYSTEM}\n\nhi"}),
    ],
)
def test_a_variant_changes_exactly_the_choice_it_names(variant: str, event: dict[str, Any], expected: dict[str, Any]) -> None:
    before = json.dumps(event, sort_keys=True)
    assert BY_NAME[variant].change.apply(event) == expected
    assert json.dumps(event, sort_keys=True) == before, "the actor's own request must not change"


def test_variants_are_registered_once_as_sent_first_and_costly_ones_marked() -> None:
    names = [v.name for v in VARIANTS]
    assert names[0] == "as sent" and len(set(names)) == len(names)
    # Giving up soft labels, samples or long answers costs the attacker: never counted as free.
    assert {v.name for v in VARIANTS if not v.free} == {"max_tokens 64", "logprobs unset", "n unset"}


@pytest.fixture(scope="module")
def result() -> Counterfactual:
    scripts = tuple(s for s in SCRIPTS if s.family in {"paraphrase-probe-machine", "softlabel-distill"})
    return run(PROMPTS, None, 1, 0, scripts=scripts, progress=False)


def test_as_sent_is_each_account_s_highest_risk_in_one_pass(result: Counterfactual) -> None:
    script = next(s for s in SCRIPTS if s.family == "softlabel-distill")
    events = write_actor(script, 0, PROMPTS, START, START + 86_400.0, 0)
    assert result.risks["softlabel-distill"]["as sent"] == [pytest.approx(max(r for _, _, r in score_pass([], events, None)))]


def test_a_cohort_counts_each_account_once_at_its_own_highest_risk() -> None:
    script = next(s for s in SCRIPTS if s.family == "hydra-cohort")
    events = write_actor(script, 0, PROMPTS, START, START + 86_400.0, 0)
    best: dict[str, float] = {}
    for account, _, risk in score_pass([], events, None):
        best[account] = max(best.get(account, 0.0), risk)
    assert len(best) == 40
    assert sorted(account_max_risk(events, None)) == pytest.approx(sorted(best.values()))


def test_a_change_that_leaves_every_request_as_it_was_is_not_reported() -> None:
    # The red team's paraphrase probers already send an SDK's user agent, and chat requests
    # without n: those columns would only repeat "as sent".
    result = run(PROMPTS, None, 1, 0, scripts=tuple(s for s in SCRIPTS if s.family == "paraphrase-probe-machine"), progress=False)
    assert result.median("paraphrase-probe-machine", "SDK user agent") is None
    assert result.median("paraphrase-probe-machine", "n unset") is None
    assert result.median("paraphrase-probe-machine", "temperature 0.7") is not None
    assert "| — |" in render(result, "m", 0.5)


def test_every_variant_that_changes_something_is_scored(result: Counterfactual) -> None:
    assert set(result.risks) == {"paraphrase-probe-machine", "softlabel-distill"}
    for by_variant in result.risks.values():
        assert {"as sent", "free parameters unset", "stream", "seed", "system prompt"} <= set(by_variant) <= {v.name for v in VARIANTS}
        assert all(len(r) == 1 and 0.0 <= r[0] <= 1.0 for r in by_variant.values())
    # The variants reach the model: a changed choice changes some risk.
    assert len({round(r[0], 6) for r in result.risks["paraphrase-probe-machine"].values()}) > 1


@pytest.mark.parametrize(
    ("risks", "bold", "lowest"),
    [
        ({"as sent": 0.9, "stream": 0.3}, ["0.90"], "0.30 (stream)"),
        ({"as sent": 0.65, "n unset": 0.1}, [], "0.60 (free parameters unset)"),  # giving up n is not free: never the cheapest evasion
        ({"as sent": 0.7}, ["0.70"], "0.60 (free parameters unset)"),  # at the threshold counts
    ],
)
def test_report_marks_the_threshold_and_the_cheapest_evasion(risks: dict[str, float], bold: list[str], lowest: str) -> None:
    result = Counterfactual()
    for v in VARIANTS:  # the others: free ones under the threshold of 0.7, costly ones far under
        result.risks["s"][v.name] = [risks.get(v.name, 0.6 if v.free else 0.05)]
    row = next(line for line in render(result, "m", 0.7).splitlines() if line.startswith("| s |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert [c.strip("*") for c in cells[1:-1] if c.startswith("**")] == bold
    assert cells[-1] == lowest


@pytest.mark.parametrize(
    ("prompts", "argv", "message"),
    [
        (5, [], "counterfactual: error: --prompts: 5 distinct prompts; the scripts need at least 30"),
        (60, ["--actors", "0"], "counterfactual: error: --actors: must be at least 1, got 0"),
        (60, ["--model", "{tmp}/nope"], "counterfactual: error: --model: {tmp}/nope: not a model bundle (no meta.json)"),
        (60, ["--out", "{tmp}/p.jsonl"], "counterfactual: error: --out: {tmp}/p.jsonl is a file, not a directory"),
    ],
    ids=["too few prompts", "no actors", "not a bundle", "out is a file"],
)
def test_bad_input_is_one_line_naming_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str], prompts: int, argv: list[str], message: str) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"prompt number {i} about something"}) + "\n" for i in range(prompts)))
    (tmp_path / "nope").mkdir()
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(["--prompts", str(path), "--out", str(tmp_path / "out"), "--no-progress", *argv]) == 2
    assert capsys.readouterr().err.strip() == message.replace("{tmp}", str(tmp_path))
    assert not (tmp_path / "out").exists()
