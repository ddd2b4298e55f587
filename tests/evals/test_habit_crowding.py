"""habit_crowding: accounts per coarse client habit within an hour, as the campaign sketch counts."""

from __future__ import annotations

import pytest

from moat.evals.habit_crowding import crowding, habit, main


def ev(account: str, ts: float, temperature: float | None = 0.7, stream: bool = False, system: bool = False, endpoint: str = "/v1/chat/completions", max_tokens: int = 64) -> dict:
    params = {"max_tokens": max_tokens, **({"temperature": temperature} if temperature is not None else {}), **({"stream": True} if stream else {})}
    messages = [{"role": "system", "content": "be brief"}] * system + [{"role": "user", "content": "hi"}]
    return {"account_id": account, "ts": ts, "endpoint": endpoint, "params": params, "messages": messages}


# (case, events in order, the last account's median count)
CASES = [
    ("one account", [ev("a", 0), ev("a", 10)], 1.0),
    ("two accounts, one habit", [ev("a", 0), ev("b", 10)], 2.0),
    ("another max_tokens value is the same habit", [ev("a", 0), ev("b", 10, max_tokens=900)], 2.0),
    ("another temperature is not", [ev("a", 0), ev("b", 10, temperature=0.2)], 1.0),
    ("no temperature sent is not", [ev("a", 0), ev("b", 10, temperature=None)], 1.0),
    ("streaming is not", [ev("a", 0), ev("b", 10, stream=True)], 1.0),
    ("a system message is not", [ev("a", 0), ev("b", 10, system=True)], 1.0),
    ("another endpoint is not", [ev("a", 0), ev("b", 10, endpoint="/v1/completions")], 1.0),
    ("out of the hour", [ev("a", 0), ev("b", 3700)], 1.0),
    ("three accounts, the last counted on each of its requests", [ev("a", 0), ev("b", 5), ev("c", 10), ev("c", 4000)], 2.0),
]


@pytest.mark.parametrize("case, events, expected", CASES, ids=[c[0] for c in CASES])
def test_crowding_counts_accounts_per_habit_within_the_hour(case: str, events: list[dict], expected: float) -> None:
    assert crowding(events)[events[-1]["account_id"]] == expected


def test_habit_ignores_the_user_agent_and_model() -> None:
    a, b = ev("a", 0), ev("b", 0)
    a["user_agent"], b["user_agent"], b["model"] = "curl/8.0", "OpenAI/Python 1.40", "other"
    assert habit(a) == habit(b)


def test_cli_reports_each_trace_and_refuses_a_missing_one(tmp_path, capsys) -> None:
    import json

    trace = tmp_path / "t.jsonl"
    trace.write_text("".join(json.dumps({**e, "family": f}) + "\n" for e, f in [(ev("a", 0), "benign"), (ev("b", 5), "sybil"), (ev("b", 9), "sybil")]))
    assert main([str(trace), "--by-family", "--over", "1"]) == 0
    out = capsys.readouterr().out
    assert "t.jsonl: 2 accounts" in out and "share above 1: 50.0%" in out and "sybil" in out
    with pytest.raises(SystemExit):
        main([str(tmp_path / "missing.jsonl")])
    assert "missing.jsonl: no such file" in capsys.readouterr().err
