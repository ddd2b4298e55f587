"""The families added so that no single simulator quirk carries the decision (issue 10, item 4):
each shows the behaviour that defines it, including the benign ones that look like attacks
field by field and the attacks that look benign field by field."""

from __future__ import annotations

import ipaddress
import itertools
import random
from collections import Counter, defaultdict

import pytest

from moat.data_gen.actors import Actor, SimContext
from moat.data_gen.identity import CARRIER_POOLS, CLOUD_PREFIXES, Prefix
from moat.data_gen.registry import registry
from moat.data_gen.simulator import EPOCH
from moat.data_gen.text import PromptGrammar
from moat.data_gen.timing import DAY

# Long enough that no actor's script is cut short by the end of the simulation.
CTX = SimContext(start=EPOCH, end=EPOCH + 10 * DAY, grammar=PromptGrammar())
SEEDS = range(6)
NEW_FAMILIES = ["doc_pipeline", "tenant_app", "benchmark_runner", "shared_nat", "human_task_walk", "paraphrase_probe", "sybil_cohort"]


def run(family: str, seed: int, limit: int = 5000) -> tuple[Actor, list[dict]]:
    actor = registry()[family](f"t{seed}", seed, CTX)
    return actor, list(itertools.islice(actor.events(), limit))


def text(ev: dict) -> str:
    return ev.get("prompt") or ev["messages"][-1]["content"]


def block(ip: str) -> str:
    """The /24 (IPv4) or /48 (IPv6) an address is in."""
    net = ipaddress.ip_network(f"{ip}/{24 if '.' in ip else 48}", strict=False)
    return str(net.network_address)


def prefix_block(p: Prefix) -> str:
    return block(p.address(random.Random(0)))


@pytest.mark.parametrize("seed", SEEDS)
def test_sybil_cohort_is_one_fingerprint_arriving_together_splitting_one_pool(seed: int) -> None:
    actor, events = run("sybil_cohort", seed)
    by_account: dict[str, list[dict]] = defaultdict(list)
    for ev in events:
        by_account[ev["account_id"]].append(ev)
    assert 20 <= len(by_account) <= 60
    assert len({ev.get("user_agent") for ev in events}) == 1, "the cohort must share one exact user agent"
    assert len({repr(sorted(ev["params"].items())) for ev in events}) == 1, "the cohort must share exact parameter values"
    assert len({ev["model"] for ev in events}) == 1
    first_seen = sorted(evs[0]["ts"] for evs in by_account.values())
    assert first_seen[-1] - first_seen[0] <= 4 * 3600, "accounts must arrive within a few hours"
    assert all(15 <= len(evs) <= 80 for evs in by_account.values())
    # One pool, split: the accounts' prompts, account by account, are consecutive slices of it.
    order = [a.account_id for a in actor.accounts]  # type: ignore[attr-defined]
    # (as the actor writes them: its text habit may translate or paste, the same way every time)
    pool = [actor.text_habit(order[0]).rewrite(p) for p in actor.pool[: len(events)]]  # type: ignore[attr-defined]
    assert [text(e) for acct in order for e in by_account[acct]] == pool


@pytest.mark.parametrize("seed", SEEDS)
def test_doc_pipeline_classifier_forces_one_label_token_and_is_benign(seed: int) -> None:
    _, events = run("doc_pipeline", seed, limit=600)
    reviews = [e for e in events if "logit_bias" in e["params"]]
    assert reviews, "the review classifier sent nothing"
    assert len(reviews) < len(events), "the pipeline's main template stage sent nothing"
    biases = {repr(sorted(e["params"]["logit_bias"].items())) for e in reviews}
    assert len(biases) == 1, "a classifier biases the same label tokens every time"
    bias = reviews[0]["params"]["logit_bias"]
    assert 2 <= len(bias) <= 4 and set(bias.values()) == {100.0}
    assert all(e["params"]["max_tokens"] == 1 and e["params"]["temperature"] == 0.0 and e["label"] == 0 for e in reviews)


@pytest.mark.parametrize("seed", SEEDS)
def test_benchmark_runner_walks_its_test_set_in_order_at_temperature_zero(seed: int) -> None:
    actor, events = run("benchmark_runner", seed)
    habit = actor.text_habit(events[0]["account_id"])  # as the account's writer writes them
    items = [habit.rewrite(i) for i in actor.items]  # type: ignore[attr-defined]
    assert 150 <= len(items) <= 1300
    first_pass = [text(e) for e in events[: len(items)]]
    assert first_pass == items[: len(first_pass)]
    assert all(e["params"]["temperature"] == 0.0 for e in events)
    assert len({e["account_id"] for e in events}) == 1


@pytest.mark.parametrize("seed", SEEDS)
def test_paraphrase_probe_clusters_around_a_few_seeds(seed: int) -> None:
    actor, events = run("paraphrase_probe", seed)
    seeds = actor.strategy.seeds  # type: ignore[attr-defined]
    assert 2 <= len(seeds) <= 8
    habit = actor.text_habit(events[0]["account_id"])
    # The request before any pasted document: a script that pastes pastes into every probe.
    seed_words = [set(habit.rewrite(s).split("\n\n")[0].lower().split()) for s in seeds]
    nearest: Counter[int] = Counter()
    probes = []
    for ev in events:
        words = set(text(ev).split("\n\n")[0].lower().split())
        scores = [len(words & s) / len(words | s) for s in seed_words]
        if max(scores) >= 0.4:
            nearest[scores.index(max(scores))] += 1
            probes.append(text(ev))
    # Evasive probers mix in up to 40% benign cover traffic; the rest are paraphrases of a seed.
    assert len(probes) >= 0.55 * len(events)
    assert len(set(probes)) >= 3 * len(nearest), "each seed must be sent as many different paraphrases"


@pytest.mark.parametrize("seed", SEEDS)
def test_human_task_walk_never_repeats_and_sends_like_a_browser(seed: int) -> None:
    _, events = run("human_task_walk", seed)
    prompts = [text(e) for e in events]
    assert len(prompts) >= 30
    # Cover traffic (a few chat questions) may repeat by chance; the walk itself never does.
    assert len(set(prompts)) >= 0.9 * len(prompts)
    assert not any("logprobs" in e["params"] or "logit_bias" in e["params"] or "seed" in e["params"] for e in events)
    gaps = sorted(b["ts"] - a["ts"] for a, b in zip(events, events[1:]))
    assert gaps[len(gaps) // 2] >= 3.0, "human think times, not a script's pace"


@pytest.mark.parametrize("seed", SEEDS)
def test_tenant_app_serves_many_users_through_one_account_from_cloud_blocks(seed: int) -> None:
    _, events = run("tenant_app", seed)
    assert len({e["account_id"] for e in events}) == 1
    assert len({e["messages"][0]["content"] for e in events}) == 1, "one constant system prompt"
    assert 2 <= len({e["api_key_id"] for e in events}) <= 5
    assert {block(e["client_ip"]) for e in events} <= {prefix_block(p) for p in CLOUD_PREFIXES}
    questions = Counter(e["messages"][1]["content"] for e in events)
    assert questions.most_common(1)[0][1] >= 3, "popular end-user questions repeat"
    assert len(questions) >= 0.3 * len(events), "end-user questions are diverse"


@pytest.mark.parametrize("seed", range(10))
def test_shared_nat_puts_many_unrelated_accounts_behind_few_blocks(seed: int) -> None:
    _, events = run("shared_nat", seed)
    accounts = {e["account_id"] for e in events}
    blocks = {block(e["client_ip"]) for e in events}
    assert len(accounts) >= 8
    assert len(blocks) <= 8
    carrier_blocks = [{prefix_block(p) for p in pool} for pool in CARRIER_POOLS]
    if any(blocks <= pool for pool in carrier_blocks):
        per_account = defaultdict(set)
        for e in events:
            per_account[e["account_id"]].add(e["client_ip"])
        assert max(len(v) for v in per_account.values()) >= 3, "carrier NAT hands out several addresses"


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_same_seed_gives_the_same_events_and_another_seed_differs(family: str) -> None:
    assert run(family, 11, limit=300)[1] == run(family, 11, limit=300)[1]
    assert run(family, 11, limit=300)[1] != run(family, 12, limit=300)[1]


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_corpus_prompts_reach_the_new_families(family: str) -> None:
    """`--corpus` real prompts keep working: an actor's prompt source is drawn per actor, so over
    a few actors some corpus prompt appears (the walk and probe seeds included)."""
    corpus = [f"corpus prompt number {i} about something real" for i in range(50)]
    ctx = SimContext(start=EPOCH, end=EPOCH + 10 * DAY, grammar=PromptGrammar(corpus, corpus_share=0.5))
    seen = set()
    for seed in range(8):
        actor = registry()[family](f"c{seed}", seed, ctx)
        for ev in itertools.islice(actor.events(), 300):
            seen |= {ev.get("prompt") or ""} | {m["content"] for m in ev.get("messages", [])}
    assert any(c in t for t in seen for c in corpus), f"{family} never sent a corpus prompt"
