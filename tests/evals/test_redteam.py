"""The red-team check: each hand-written script sends the pattern its docstring names, the
tally reads first actions and blocks per account, and a run reports every family beside the
background without reading a label."""

from __future__ import annotations

import gzip
import ipaddress
import json
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from moat.evals.redteam import ADDRESSES, PREFIX, SCRIPTS, UA_BROWSER, Ctx, Outcome, RedTeamResult, background_at_or_above, main, render, tally, word_edit, write_actor
from moat.models.events import TRACE_LABEL_FIELDS, Event

CONTRACT = Path(__file__).resolve().parents[2] / "contract"
# Prompts of a few words to a few sentences, with digits, as real prompt files hold.
PROMPTS = [f"Question {i}: explain in {i % 7 + 2} short steps how topic {i} relates to field {i * 3} and give one example." for i in range(400)]
START, END = 1_764_500_000.0, 1_764_500_000.0 + 22 * 3600


def text(e: dict[str, Any]) -> str:
    return e.get("prompt") or e["messages"][-1]["content"]


def jaccard(a: str, b: str) -> float:
    x, y = set(a.split()), set(b.split())
    return len(x & y) / len(x | y)


def near_a_few_seeds(events: list[dict[str, Any]]) -> None:
    clusters: list[str] = []
    for e in events:
        if not any(jaccard(text(e), c) >= 0.7 for c in clusters):
            clusters.append(text(e))
    assert len(clusters) <= 5, "every probe must be a small edit of one of two to five seeds"
    assert len({text(e) for e in events}) >= 0.5 * len(events), "probes are new neighbours, not re-runs"
    assert {e["params"]["temperature"] for e in events} == {0}


def many_samples_per_prompt(events: list[dict[str, Any]]) -> None:
    assert min(Counter(text(e) for e in events).values()) >= 5
    assert all(e["params"]["n"] == 8 and e["params"]["temperature"] == 1.0 for e in events)


def top_logprobs_on_diverse_prompts(events: list[dict[str, Any]]) -> None:
    assert all(e["params"]["logprobs"] is True and e["params"]["top_logprobs"] == 20 for e in events)
    assert len({text(e) for e in events}) >= 0.4 * len(events)


def a_file_in_order(events: list[dict[str, Any]]) -> None:
    assert {e["endpoint"] for e in events} == {"/v1/completions"}
    order = [PROMPTS.index(p) for i, p in enumerate(text(e) for e in events) if i == 0 or p != text(events[i - 1])]
    assert all((b - a) % len(PROMPTS) == 1 for a, b in zip(order, order[1:])), "tasks must come in file order"


def many_keys_one_account(events: list[dict[str, Any]]) -> None:
    assert len({e["account_id"] for e in events}) == 1
    assert len({e["api_key_id"] for e in events}) >= 8


def slow_and_never_repeated(events: list[dict[str, Any]]) -> None:
    gaps = [b["ts"] - a["ts"] for a, b in zip(events, events[1:])]
    assert min(gaps) >= 120 and max(e["ts"] for e in events) <= END
    assert len({text(e) for e in events}) == len(events)
    assert {e["user_agent"] for e in events} == {UA_BROWSER}


def one_client_split_pool(events: list[dict[str, Any]]) -> None:
    accounts = {e["account_id"] for e in events}
    assert len(accounts) == 40 and len({e["user_agent"] for e in events}) == 1
    assert len({e["client_ip"].rsplit(".", 1)[0] for e in events}) == 40, "each account from its own address block"
    by_prompt: dict[str, set[str]] = {}
    for e in events:
        by_prompt.setdefault(text(e), set()).add(e["account_id"])
    # The pool is split between the accounts: each prompt goes out once per pass through it.
    assert max(map(len, by_prompt.values())) <= -(-len(events) // len(PROMPTS))


def constant_system_prompt(events: list[dict[str, Any]]) -> None:
    assert len({e["messages"][0]["content"] for e in events}) == 1 and all(e["messages"][0]["role"] == "system" for e in events)
    assert len({text(e) for e in events}) == len(events)
    assert all(e["params"]["stream"] is True for e in events)


PATTERNS: dict[str, Callable[[list[dict[str, Any]]], None]] = {
    "paraphrase-probe-machine": near_a_few_seeds,
    "paraphrase-probe-human": near_a_few_seeds,
    "sampling-harvest": many_samples_per_prompt,
    "softlabel-distill": top_logprobs_on_diverse_prompts,
    "completion-walk": a_file_in_order,
    "key-rotation": many_keys_one_account,
    "low-and-slow": slow_and_never_repeated,
    "hydra-cohort": one_client_split_pool,
    "wrapped-distill": constant_system_prompt,
}


def test_every_script_is_registered_once_and_checked_here() -> None:
    names = [s.family for s in SCRIPTS]
    assert len(names) == len(set(names))
    assert set(names) == set(PATTERNS)


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.family for s in SCRIPTS])
@pytest.mark.parametrize("seed", [0, 1])
def test_each_script_sends_its_pattern_as_valid_events_in_time_order(script, seed: int) -> None:  # noqa: ANN001
    ctx = Ctx(random.Random(seed), PROMPTS, START, END)
    events = script.actor(ctx, f"{PREFIX}x")
    assert len(events) >= 15
    for e in events:
        Event.model_validate(e)
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)
    assert START <= events[0]["ts"] and all(e["account_id"].startswith(f"{PREFIX}x") for e in events)
    assert len({e["request_id"] for e in events}) == len(events)
    PATTERNS[script.family](events)


WORD_EDITS = [
    # (text, seed): the edit changes one word or the ending, nothing else
    ("Explain how a heat pump moves heat from a cold room to a warm one in winter", 0),
    ("Explain how a heat pump moves heat from a cold room to a warm one in winter", 1),
    ("Solve for x: 3x + 14 = 29, and show each step of the working", 2),
    ("Solve for x: 3x + 14 = 29, and show each step of the working", 3),
    ("Hi there", 4),
]


@pytest.mark.parametrize(("seed_text", "seed"), WORD_EDITS)
def test_a_word_edit_is_a_near_neighbour_of_its_seed(seed_text: str, seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(50):
        out = word_edit(seed_text, rng)
        a, b = Counter(seed_text.split()), Counter(out.split())
        # A swap keeps the multiset; a drop, insert, number change or new ending moves at most two words.
        assert sum(((a - b) + (b - a)).values()) <= 2, out
        if len(seed_text.split()) >= 4:
            assert jaccard(out, seed_text) >= 0.8


def test_each_actor_draws_from_its_own_stream_and_repeats_with_the_seed() -> None:
    script = SCRIPTS[0]
    one = write_actor(script, 0, PROMPTS, START, END, seed=3)
    assert one == write_actor(script, 0, PROMPTS, START, END, seed=3)
    other = write_actor(script, 1, PROMPTS, START, END, seed=3)
    assert {e["account_id"] for e in one}.isdisjoint(e["account_id"] for e in other)
    assert not {e["request_id"] for e in one} & {e["request_id"] for e in other}
    assert [text(e) for e in one] != [text(e) for e in other]


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.family for s in SCRIPTS])
def test_scripted_clients_send_from_the_reserved_range(script) -> None:  # noqa: ANN001
    events = write_actor(script, 0, PROMPTS, START, END, seed=0)
    assert all(ipaddress.ip_address(e["client_ip"]) in ADDRESSES for e in events)


TALLIES = [
    # (account's (action, risk) in order, first action, blocked, max risk)
    ([("allow", 0.1), ("allow", 0.2)], None, False, 0.2),
    ([("allow", 0.1), ("throttle", 0.93), ("allow", 0.5), ("block", 0.99)], 2, True, 0.99),
    ([("perturb", 0.97)], 1, False, 0.97),
    ([("allow", 0.4), ("allow", 0.95), ("throttle", 0.9)], 3, False, 0.95),  # risk alone is not an action (cooldowns, shadow)
]


@pytest.mark.parametrize(("seq", "first", "blocked", "max_risk"), TALLIES)
def test_tally_reads_the_first_action_and_blocks_of_each_account(seq: list, first: int | None, blocked: bool, max_risk: float) -> None:
    scored = [("redteam-a-0", a, r) for a, r in seq] + [("bg", "block", 0.99), ("bg2", "allow", 0.1)]
    result = tally(iter(scored), {"redteam-a-0": "a"}, labels={"bg": 1, "bg2": 0})
    (o,) = result.families["a"]
    assert (o.first_action, o.blocked, o.max_risk, o.requests) == (first, blocked, max_risk, len(seq))
    assert sorted(b.blocked for b in result.background) == [False, True]
    assert [o.blocked for o in result.labelled[1]] == [True] and [o.blocked for o in result.labelled[0]] == [False]


def write_prompts(tmp_path: Path, n: int = len(PROMPTS)) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS[:n]))
    return path


def background(tmp_path: Path, hours: float = 22, labelled: bool = False) -> tuple[Path, list[dict[str, Any]]]:
    lines = [json.loads(x) for x in (CONTRACT / "example_trace.jsonl").read_text().splitlines()]
    lines.append({**lines[0], "request_id": "late", "ts": lines[0]["ts"] + hours * 3600})
    first = lines[0]["account_id"]
    lines = [{k: v for k, v in e.items() if k not in TRACE_LABEL_FIELDS} for e in lines]
    if labelled:
        lines = [{**e, "label": int(e["account_id"] == first), "family": "f", "actor": "a"} for e in lines]
    path = tmp_path / f"bg-{hours}-{labelled}.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in lines))
    return path, lines


@pytest.mark.parametrize(("hours", "slow_accounts"), [(22, 1), (0.01, 0)])
def test_a_run_reports_every_family_and_the_background(tmp_path: Path, hours: float, slow_accounts: int) -> None:
    """A background too short for a script still lists its family, with no accounts."""
    path, lines = background(tmp_path, hours)
    assert main(["--background", str(path), "--prompts", str(write_prompts(tmp_path)), "--actors", "1", "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    got = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert set(got["families"]) == set(PATTERNS)
    assert got["families"]["hydra-cohort"]["accounts"] == 40 and got["families"]["key-rotation"]["accounts"] == 1
    assert got["families"]["low-and-slow"]["accounts"] == slow_accounts
    assert got["background"]["accounts"] == len({e["account_id"] for e in lines})
    report = (tmp_path / "out" / "report.md").read_text()
    assert all(f"| {name} |" in report for name in PATTERNS)
    assert (tmp_path / "out" / "redteam.png").stat().st_size > 0


def test_background_labels_split_the_report_and_change_no_score(tmp_path: Path) -> None:
    prompts = str(write_prompts(tmp_path))
    got = {}
    for labelled in (False, True):
        path, _ = background(tmp_path, labelled=labelled)
        out = tmp_path / f"out-{labelled}"
        assert main(["--background", str(path), "--prompts", prompts, "--actors", "1", "--out", str(out), "--no-progress"]) == 0
        got[labelled] = json.loads((out / "metrics.json").read_text())
    assert got[False]["families"] == got[True]["families"] and got[False]["background"] == got[True]["background"]
    assert got[False]["background_by_label"] == {} and set(got[True]["background_by_label"]) == {"benign", "attack"}


def _gz_truncated(path: Path) -> None:
    data = gzip.compress((CONTRACT / "example_trace.jsonl").read_bytes())
    path.write_bytes(data[: len(data) // 2])


BAD_INPUTS = [
    # (case, background lines or a writer, prompts, what the one-line error says)
    ("prefix clash", [{"request_id": "r1", "ts": START, "account_id": f"{PREFIX}mine", "prompt": "hi"}], None, f"starts with {PREFIX!r}"),
    ("reserved addresses", [{"request_id": "r1", "ts": START, "account_id": "a", "client_ip": "10.3.4.5", "prompt": "hi"}], None, "10.0.0.0/8"),
    ("no ts", [{"request_id": "r1", "account_id": "a", "prompt": "hi"}], None, "event 1: ts: Field required"),
    ("ts as text", [{"request_id": "r1", "ts": "1764500000", "account_id": "a", "prompt": "hi"}], None, "event 1: ts:"),
    ("an array", [[1, 2]], None, "event 1: not a JSON object"),
    ("empty", [], None, "no events"),
    ("truncated gzip", _gz_truncated, None, "Compressed file ended"),
    ("too few prompts", [{"request_id": "r1", "ts": START, "account_id": "a", "prompt": "hi"}], 10, "at least 30"),
    ("missing prompts file", [{"request_id": "r1", "ts": START, "account_id": "a", "prompt": "hi"}], -1, "--prompts"),
]


@pytest.mark.parametrize(("case", "lines", "n_prompts", "message"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_one_line_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture, case: str, lines: Any, n_prompts: int | None, message: str) -> None:
    trace = tmp_path / ("bg.jsonl.gz" if callable(lines) else "bg.jsonl")
    if callable(lines):
        lines(trace)
    else:
        trace.write_text("".join(json.dumps(x) + "\n" for x in lines))
    prompts = tmp_path / "missing.jsonl" if n_prompts == -1 else write_prompts(tmp_path, n_prompts or len(PROMPTS))
    assert main(["--background", str(trace), "--prompts", str(prompts), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("redteam: error:") and len(err.splitlines()) == 1 and message in err, err


def test_a_bad_model_fails_before_any_pass_and_names_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    trace = tmp_path / "bg.jsonl"
    trace.write_text(json.dumps({"request_id": "r1", "ts": START, "account_id": "a", "prompt": "hi"}) + "\n")
    args = ["--background", str(trace), "--prompts", str(write_prompts(tmp_path, len(PROMPTS))), "--model", str(tmp_path), "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(args) == 2
    assert capsys.readouterr().err.strip() == f"redteam: error: --model: {tmp_path}: not a model bundle (no meta.json)"
    assert not (tmp_path / "out").exists()


RANKS = [
    # (background accounts' highest risks, scripted accounts' highest risks, median share of the background at or above)
    ([0.1, 0.5, 0.9, 0.95], [0.92], 0.25),
    ([0.1, 0.5, 0.9, 0.95], [0.5], 0.75),  # a tie counts as at or above
    ([0.1, 0.5, 0.9, 0.95], [0.99], 0.0),
    ([0.1, 0.5, 0.9, 0.95], [0.05, 0.92, 0.99], 0.25),  # the median over the scripted accounts
    ([], [0.5], None),  # no background: no rank
]


@pytest.mark.parametrize(("background_risks", "risks", "share"), RANKS)
def test_rank_inside_the_background_counts_its_accounts_at_or_above(background_risks: list[float], risks: list[float], share: float | None) -> None:
    result = RedTeamResult(families={"a": [Outcome(max_risk=r) for r in risks]}, background=[Outcome(max_risk=r) for r in background_risks])
    assert background_at_or_above(result, result.families["a"]) == (None if share is None else pytest.approx(share))
    row = next(line for line in render(result, Path("bg.jsonl"), "m").splitlines() if line.startswith("| a |"))
    assert row.endswith("| — |" if share is None else f"| {share:.1%} |")
