"""paraphrase_neighbours: the accounts whose prompts are near paraphrases of one another."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from moat.evals.paraphrase_neighbours import main, scan
from moat.models.feature_spec import WINDOW

SEED = (
    "You are a SQL expert. Convert the user's question into one PostgreSQL query for the schema below, "
    "and explain in one sentence why the query answers the question. Never invent tables or columns that "
    "the schema does not have, and say so when the question cannot be answered from it."
)
VOCAB = (
    "river mountain violin ledger quantum basil harbor tundra sonnet invoice glacier pepper compiler lantern orbit meadow ferry cactus ballot archive walrus canyon pistachio telescope harvest"
).split()

Raw = dict[str, Any]


def ev(account: str, i: int, prompt: str, logprobs: bool = False, **extra: Any) -> Raw:
    params = {"logprobs": True, "top_logprobs": 5} if logprobs else {}
    return {
        "request_id": f"{account}-{i}",
        "ts": 1000.0 + i,
        "account_id": account,
        "endpoint": "/v1/chat/completions",
        "model": "m",
        "messages": [{"role": "user", "content": prompt}],
        "params": params,
        **extra,
    }


def inserted(i: int) -> str:
    """The seed with one filler word slipped in at a place that depends on i: a prober's edit."""
    words = SEED.split()
    words.insert(5 + i % 30, "please")
    return " ".join(words)


def unrelated(i: int) -> str:
    """A prompt of its own: ten words drawn for i alone."""
    return " ".join(random.Random(i).choices(VOCAB, k=10)) + "?"


def trace(account: str, prompts: list[str]) -> list[Raw]:
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


# (requests between two paraphrases, whether the second is flagged): it looks back WINDOW - 1 requests.
@pytest.mark.parametrize("between, flagged", [(0, True), (WINDOW - 2, True), (WINDOW - 1, False), (WINDOW + 3, False)])
def test_a_paraphrase_counts_only_within_the_window(between: int, flagged: bool) -> None:
    prompts = [inserted(0)] + [unrelated(i) for i in range(between)] + [inserted(1)]
    assert scan(trace("a", prompts), distance=8)["a"].flags[-1] is flagged


def test_accounts_are_kept_apart_and_their_volume_pace_and_logprobs_counted() -> None:
    events = [ev("probe", i, inserted(i), logprobs=True) for i in range(WINDOW)]
    events += [ev("chat", i, unrelated(i), ts=1000.0 + 20 * i) for i in range(WINDOW)]
    events.sort(key=lambda e: e["ts"])
    accounts = scan(events, distance=8)
    assert accounts["probe"].peak >= 0.9 and accounts["chat"].peak == 0.0
    assert accounts["probe"].requests == WINDOW and accounts["probe"].logprobs == WINDOW
    assert accounts["probe"].median_gap_s() == 1.0 and accounts["chat"].median_gap_s() == 20.0


def test_the_median_gap_is_of_the_times_in_order_whatever_the_trace_order() -> None:
    events = [ev("a", i, unrelated(i), ts=float(t)) for i, t in enumerate([0, 10, 1, 11, 2, 12, 3, 13])]
    assert scan(events, distance=8)["a"].median_gap_s() == 1.0


def write(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_labels_never_change_the_report_and_a_family_only_groups(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain = trace("a", [inserted(i) for i in range(WINDOW + 2)]) + trace("b", [unrelated(i) for i in range(WINDOW)])
    # Labels opposite to what the report finds: a reader of labels would list b, not a.
    labelled = [{**e, "label": int(e["account_id"] == "b"), "family": "dev" if e["account_id"] == "a" else "chat"} for e in plain]
    outs = []
    for name, rows in (("plain", plain), ("labelled", labelled)):
        assert main([str(write(tmp_path / f"{name}.jsonl", rows)), "--no-progress"]) == 0
        outs.append(capsys.readouterr().out.replace(f"{name}.jsonl", "t.jsonl"))
    assert outs[0] == outs[1]
    assert "2 accounts; 1 (50.0%) reach" in outs[0] and "| a | 18 | 1.00 |" in outs[0] and "| b |" not in outs[0]
    assert main([str(tmp_path / "labelled.jsonl"), "--by-family", "--no-progress"]) == 0
    grouped = capsys.readouterr().out
    assert "| dev | 1 | 1 |" in grouped and "| chat | 0 | 1 |" in grouped


# (case, a trace's lines, the message that names what is wrong)
BAD_TRACES = [
    ("not an object", ["[1, 2]"], "event 1: not a JSON object"),
    ("no account", [json.dumps({k: v for k, v in ev("a", 0, SEED).items() if k != "account_id"})], "event 1: account_id: Field required"),
    ("a time that is not a number", [json.dumps(ev("a", 0, SEED)), json.dumps(ev("a", 1, SEED, ts="yesterday"))], "event 2: ts:"),
    ("not JSON", ['{"account_id": '], "not valid JSON"),
]


@pytest.mark.parametrize("case, lines, message", BAD_TRACES, ids=[c[0] for c in BAD_TRACES])
def test_a_bad_trace_is_refused_in_one_line_naming_the_event_and_field(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, lines: list[str], message: str) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert main([str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("paraphrase_neighbours: error: ") and message in err and "Traceback" not in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--distance", "65"], "--distance: 65"),
        (["--share", "0"], "--share: 0.0"),
        (["--share", "1.5"], "--share: 1.5"),
    ],
)
def test_cli_refuses_bad_limits_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    path = write(tmp_path / "t.jsonl", [ev("a", 0, SEED)])
    with pytest.raises(SystemExit):
        main([str(path), *args])
    assert message in capsys.readouterr().err


def test_cli_refuses_a_missing_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([str(tmp_path / "missing.jsonl")])
    assert "missing.jsonl: no such file" in capsys.readouterr().err
