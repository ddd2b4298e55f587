"""Each family's output is valid contract data and has the behaviour that defines it."""

from __future__ import annotations

import itertools
import math
import statistics

import jsonschema
import pytest

from moat.data_gen.actors import SimContext
from moat.data_gen.registry import attacks, personas, registry
from moat.data_gen.simulator import EPOCH
from moat.data_gen.text import PromptGrammar
from moat.data_gen.timing import DAY
from moat.models.events import Event

CTX = SimContext(start=EPOCH, end=EPOCH + 3 * DAY, grammar=PromptGrammar())


def sample(family: str, seeds: range, limit: int = 400) -> list[list[dict]]:
    cls = registry()[family]
    return [list(itertools.islice(cls(f"t{s}", s, CTX).events(), limit)) for s in seeds]


@pytest.mark.parametrize("family", sorted(registry()))
def test_family_validates_against_contract_schema(family: str, event_schema: dict) -> None:
    validator = jsonschema.Draft202012Validator(event_schema)
    runs = sample(family, range(4), limit=150)
    events = [e for run in runs for e in run]
    assert events, f"{family} produced no events"
    for ev in events:
        validator.validate(ev)
        Event.model_validate(ev)
        assert ev["family"] == family and ev["label"] == registry()[family].label
    for run in runs:
        ts = [e["ts"] for e in run]
        assert ts == sorted(ts), "an actor's events must be in time order"


@pytest.mark.parametrize("family", sorted(attacks()))
def test_attack_families_cite_a_source(family: str) -> None:
    doc = registry()[family].__doc__ or ""
    assert any(str(y) in doc for y in range(2016, 2025)), f"{family} docstring must cite its source"


def test_logit_probe_varies_logit_bias_over_repeated_prompts() -> None:
    for run in sample("logit_probe", range(6)):
        by_prompt: dict[str, set[str]] = {}
        for e in run:
            text = (e.get("prompt") or e["messages"][-1]["content"]).strip()
            by_prompt.setdefault(text, set()).add(repr(sorted(e["params"].get("logit_bias", {}).items())))
        repeated = [v for v in by_prompt.values() if len(v) > 1]
        assert repeated, "no prompt was repeated with different logit_bias"
        assert max(len(v) for v in by_prompt.values()) >= 5


def test_sybil_campaign_spans_many_accounts_and_prefixes() -> None:
    for run in sample("sybil_campaign", range(4), limit=3000):
        accounts = {e["account_id"] for e in run}
        prefixes = {e["client_ip"].rsplit(".", 1)[0] if "." in e["client_ip"] else e["client_ip"][:14] for e in run}
        assert len(accounts) >= 10
        assert len(prefixes) >= 3
        per_account = len(run) / len(accounts)
        assert per_account <= 250, "each sybil account must stay low-volume"


def _log_gaps(runs: list[list[dict]]) -> list[float]:
    return [math.log(b["ts"] - a["ts"] + 1e-3) for run in runs for a, b in zip(run, run[1:]) if b["account_id"] == a["account_id"]]


def test_mimicry_timing_matches_human_distribution() -> None:
    from scipy.stats import ks_2samp

    human = _log_gaps(sample("chat_user", range(40), limit=200))
    mimic = _log_gaps(sample("slow_low_mimicry", range(40), limit=200))
    machine = _log_gaps(sample("random_queries", range(40), limit=200))
    assert abs(statistics.median(human) - statistics.median(mimic)) < 1.0  # within a factor e
    assert ks_2samp(human, mimic).statistic < ks_2samp(human, machine).statistic
    assert ks_2samp(human, mimic).statistic < 0.25


@pytest.mark.parametrize("family", sorted(registry()))
def test_behaviour_is_drawn_per_actor_not_fixed(family: str) -> None:
    """Two actors of one family differ in rate and parameters: no constant a model could key on."""
    runs = [r for r in sample(family, range(8), limit=100) if len(r) > 5]
    assert len(runs) >= 2
    signatures = {
        (round(statistics.median(b["ts"] - a["ts"] for a, b in zip(r, r[1:])), 1), repr(sorted(r[0]["params"].items())))
        for r in runs
    }
    assert len(signatures) >= 2


def test_personas_and_attacks_cover_the_required_families() -> None:
    assert {"chat_user", "prompt_developer", "app_backend", "batch_pipeline", "eval_runner", "agent_loop", "labeller", "corporate_nat", "logprob_researcher",
            "doc_pipeline", "tenant_app", "benchmark_runner", "shared_nat"} <= set(personas())
    assert {"random_queries", "dataset_replay", "self_instruct", "logit_probe", "active_learning", "coverage_sweep", "reasoning_harvest", "sybil_campaign", "slow_low_mimicry",
            "human_task_walk", "paraphrase_probe", "sybil_cohort"} <= set(attacks())
