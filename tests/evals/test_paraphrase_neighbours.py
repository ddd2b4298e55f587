"""paraphrase_neighbours: the accounts whose prompts are near paraphrases of one another."""

from __future__ import annotations

import json
import random

import pytest

from moat.evals.paraphrase_neighbours import main, scan
from moat.models.feature_spec import WINDOW

SEED = (
    "You are a SQL expert. Convert the user's question into one PostgreSQL query for the schema below, "
    "and explain in one sentence why the query answers the question. Never invent tables or columns that "
    "the schema does not have, and say so when the question cannot be answered from it."
)
VOCAB = ("river mountain violin ledger quantum basil harbor tundra sonnet invoice glacier pepper compiler "
         "lantern orbit meadow ferry cactus ballot archive walrus canyon pistachio telescope harvest").split()


def unrelated(i: int) -> str:
    """A prompt of its own: ten words drawn for i alone."""
    return " ".join(random.Random(i).choices(VOCAB, k=10)) + "?"


def ev(account: str, i: int, prompt: str, logprobs: bool = False, **extra: object) -> dict:
    params = {"logprobs": True, "top_logprobs": 5} if logprobs else {}
    return {"request_id": f"{account}-{i}", "ts": 1000.0 + i, "account_id": account, "endpoint": "/v1/chat/completions",
            "model": "m", "messages": [{"role": "user", "content": prompt}], "params": params, **extra}


def inserted(i: int) -> str:
    """The seed with one filler word slipped in at a place that depends on i: a prober's edit."""
    words = SEED.split()
    words.insert(5 + i % 30, "please")
    return " ".join(words)


def trace(account: str, prompts: list[str]) -> list[dict]:
    return [ev(account, i, p) for i, p in enumerate(prompts)]


# (case, the account's prompts, whether it reaches a share of 0.75 over a full window)
CASES = [
    ("one filler inserted into a long seed, each time elsewhere", [inserted(i) for i in range(WINDOW + 4)], True),
    ("the same prompt re-sent is a repeat, not a paraphrase", [SEED] * (WINDOW + 4), False),
    ("unrelated prompts", [unrelated(i) for i in range(WINDOW + 4)], False),
    ("paraphrases, but never a full window", [inserted(i) for i in range(WINDOW - 1)], False),
    ("half paraphrases, half unrelated", [inserted(i) if i % 2 else unrelated(i) for i in range(WINDOW + 4)], False),
]


@pytest.mark.parametrize("case, prompts, reaches", CASES, ids=[c[0] for c in CASES])
def test_an_account_reaches_the_share_only_with_different_prompts_close_to_one_another(case: str, prompts: list[str], reaches: bool) -> None:
    account = scan(trace("a", prompts), distance=8)["a"]
    assert (account.peak >= 0.75) is reaches


def test_accounts_are_kept_apart_and_their_volume_pace_and_logprobs_counted() -> None:
    events = [ev("probe", i, inserted(i), logprobs=True) for i in range(WINDOW)]
    events += [ev("chat", i, unrelated(i), ts=1000.0 + 20 * i) for i in range(WINDOW)]
    events.sort(key=lambda e: e["ts"])
    accounts = scan(events, distance=8)
    assert accounts["probe"].peak >= 0.9 and accounts["chat"].peak == 0.0
    assert accounts["probe"].requests == WINDOW and accounts["probe"].logprobs == WINDOW
    assert accounts["probe"].median_gap_s() == 1.0 and accounts["chat"].median_gap_s() == 20.0


def test_a_label_is_never_read_and_a_family_only_groups(tmp_path, capsys) -> None:
    path = tmp_path / "t.jsonl"
    rows = [{**e, "label": 0, "family": "dev"} for e in trace("a", [inserted(i) for i in range(WINDOW + 2)])]
    rows += [{**e, "label": 1, "family": "chat"} for e in trace("b", [unrelated(i) for i in range(WINDOW)])]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main([str(path), "--by-family", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "2 accounts; 1 (50.0%) reach" in out
    assert "| a | 18 | 1.00 |" in out and "| b |" not in out
    assert "| dev | 1 | 1 |" in out and "| chat | 0 | 1 |" in out


@pytest.mark.parametrize("args, message", [
    (["--distance", "65"], "--distance: 65"),
    (["--share", "0"], "--share: 0.0"),
    (["--share", "1.5"], "--share: 1.5"),
])
def test_cli_refuses_bad_limits_by_name(tmp_path, capsys, args: list[str], message: str) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(ev("a", 0, SEED)) + "\n")
    with pytest.raises(SystemExit):
        main([str(path), *args])
    assert message in capsys.readouterr().err


def test_cli_refuses_a_missing_trace(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit):
        main([str(tmp_path / "missing.jsonl")])
    assert "missing.jsonl: no such file" in capsys.readouterr().err
