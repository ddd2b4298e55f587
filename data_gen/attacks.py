"""Extraction attack families. Each family is a query strategy (what to ask next) plus the
way it is sent (timing, accounts, cover traffic). Sybil campaigns and slow-and-low mimicry
reuse the other families' strategies, spread over many accounts or hidden in human timing.

Every family also has evasive variants (drawn per actor): randomised parameters, jittered
timing, and benign cover traffic mixed in.
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any, ClassVar

from moat.data_gen.actors import Actor, ParamHabit, Query, SimContext, register
from moat.data_gen.identity import CARRIER_POOLS, CLOUD_PREFIXES, UA_BROWSER, UA_HUMAN, UA_SCRIPT, Account, Prefix, hex_id, model_choice, user_agent
from moat.data_gen.text import DOMAIN_NAMES, DOMAINS, REASONING_SUFFIXES, fill, paraphrase, perturb, random_words, system_prompt
from moat.data_gen.timing import HumanTiming, LogNormalTiming, MachineTiming, ServiceTiming, Timing


class Strategy(ABC):
    """Decides the content and parameters of an attacker's next query. Subclasses draw their
    parameters in `setup()` and write the prompt in `text()`; the parameters default to the
    strategy's habit, and the prompt goes out as a completion or as chat with an optional system
    prompt, at a per-attacker ratio."""

    habit: ParamHabit

    def __init__(self, rng: random.Random, ctx: SimContext, evasive: bool) -> None:
        self.rng, self.ctx, self.evasive = rng, ctx, evasive
        self.completion_p = rng.choice([0.0, 0.0, 0.3, 1.0])
        self.system = system_prompt(rng) if rng.random() < 0.3 else None
        self.setup()

    def setup(self) -> None:
        """Draw this strategy's parameters."""

    @abstractmethod
    def text(self) -> str:
        """The next prompt."""

    def params(self) -> dict[str, Any]:
        """The next request's parameters (drawn after the prompt)."""
        return self.habit.sample(self.rng)

    def next(self) -> Query:
        text = self.text()
        params = self.params()
        if self.rng.random() < self.completion_p:
            return Query(params, prompt=text)
        messages = [{"role": "system", "content": self.system}] if self.system else []
        messages.append({"role": "user", "content": text})
        return Query(params, messages=messages)


class RandomQueries(Strategy):
    def setup(self) -> None:
        r = self.rng
        self.habit = ParamHabit.draw(r, max_tokens=r.choice([None, 256, 512, 1024, r.randint(32, 2048)]))
        self.length = (r.randint(3, 10), r.randint(12, 80))
        self.synthetic_p = r.uniform(0, 0.6)

    def text(self) -> str:
        r = self.rng
        if r.random() < self.synthetic_p:
            # Synthetic queries: real task templates with random slot fillers glued together.
            return " ".join(fill(r.choice(DOMAINS[r.choice(DOMAIN_NAMES)]), r) for _ in range(r.randint(1, 3)))
        return random_words(r, r.randint(*self.length))


class DatasetReplay(Strategy):
    def setup(self) -> None:
        r = self.rng
        self.habit = ParamHabit.draw(r, max_tokens=r.choice([None, 512, 1024, 2048]))
        self.domains = r.sample(DOMAIN_NAMES, r.randint(2, len(DOMAIN_NAMES)))

    def text(self) -> str:
        return self.ctx.grammar.prompt(self.rng, self.rng.choice(self.domains))


INSTRUCTION_VERBS = [
    "Write a detailed explanation of", "Give three worked examples about", "Create a lesson plan on",
    "Generate a question and a thorough answer about", "Write an in-depth tutorial on", "Describe the key ideas of",
    "List ten facts and explain each about", "Write a comprehensive guide to", "Compare two approaches to",
]
SEED_TASK_PROMPT = (
    "You are asked to come up with a set of diverse task instructions. Here are examples:\n"
    "1. {ex1}\n2. {ex2}\n3. {ex3}\nGenerate {a} new, different instructions."
)


class SelfInstruct(Strategy):
    def setup(self) -> None:
        r = self.rng
        self.habit = ParamHabit.draw(r, temperature=r.choice([None, round(r.uniform(0.6, 1.1), 2)]), max_tokens=r.choice([1024, 2048, 4096, r.randint(700, 4000)]))
        self.bootstrap_p = r.uniform(0.05, 0.4)

    def text(self) -> str:
        r, g = self.rng, self.ctx.grammar
        if r.random() < self.bootstrap_p:
            return SEED_TASK_PROMPT.format(ex1=g.prompt(r), ex2=g.prompt(r), ex3=g.prompt(r), a=r.randint(5, 20))
        if r.random() < 0.5:
            return f"{r.choice(INSTRUCTION_VERBS)} {fill('{topic}', r)} for {fill('{job}', r)}s."
        return g.prompt(r)


class LogitProbe(Strategy):
    """Repeats each prompt with a different logit_bias, max_tokens=1 and top_logprobs, reading the
    logprob shifts to recover the logit vector and the output projection."""

    def setup(self) -> None:
        r = self.rng
        self.prompts = [self.ctx.grammar.prompt(r) for _ in range(r.randint(1, 60))]
        self.repeats = r.randint(5, 200)
        self.bias_size = (1, r.randint(1, 300)) if self.evasive else (r.choice([1, 1, 5, 50, 300]),) * 2
        self.bias_value = r.choice([100.0, -100.0, 50.0, None])  # None: random magnitudes
        self.max_tokens = (1, r.randint(1, 8)) if self.evasive else (1, 1)
        self.top_logprobs = r.randint(1, 20)
        self.temperature = r.choice([0.0, 0.0, None, 1.0])
        self.interleave = r.random() < 0.3
        self._i = 0
        self._j = 0
        # Probes send the bare prompt without a system prompt; an attacker drawn to never send
        # completions sends them half the time.
        self.completion_p = self.completion_p or 0.5
        self.system = None

    def text(self) -> str:
        r = self.rng
        if self.interleave:
            prompt = r.choice(self.prompts)
        else:
            if self._j >= self.repeats:
                self._i, self._j = (self._i + 1) % len(self.prompts), 0
            prompt = self.prompts[self._i]
            self._j += 1
        if self.evasive and r.random() < 0.3:
            prompt = prompt + r.choice([" ", "  ", "\n", " ."])
        return prompt

    def params(self) -> dict[str, Any]:
        r = self.rng
        size = r.randint(*self.bias_size)
        bias = {str(r.randint(0, 100255)): (self.bias_value if self.bias_value is not None else round(r.uniform(-100, 100), 1)) for _ in range(size)}
        params: dict[str, Any] = {"max_tokens": r.randint(*self.max_tokens), "logprobs": True, "logit_bias": bias}
        if r.random() < 0.9:
            params["top_logprobs"] = self.top_logprobs if not self.evasive else r.randint(1, 20)
        if self.temperature is not None:
            params["temperature"] = self.temperature if not self.evasive else round(r.uniform(0, 0.5), 2)
        return params


class ActiveLearning(Strategy):
    def setup(self) -> None:
        r = self.rng
        self.seeds = [self.ctx.grammar.prompt(r) for _ in range(r.randint(5, 80))]
        self.strength = (r.uniform(0.03, 0.1), r.uniform(0.15, 0.45))
        self.new_seed_p = r.uniform(0.01, 0.1)
        self.habit = ParamHabit.draw(r)

    def text(self) -> str:
        r = self.rng
        if r.random() < self.new_seed_p:
            self.seeds.append(self.ctx.grammar.prompt(r))
        return perturb(r.choice(self.seeds), r, r.uniform(*self.strength))


class CoverageSweep(Strategy):
    """Walks a domain's templates and slot values in order: every language x every task, etc."""

    def setup(self) -> None:
        from moat.data_gen import text as T

        r = self.rng
        axes = [("lang", T.LANGS), ("obj", T.CODE_OBJECTS), ("topic", T.TOPICS), ("lang_h", T.LANG_H), ("job", T.JOBS), ("sentence", T.SENTENCES), ("city", T.CITIES)]
        a, b = r.sample(axes, 2)
        self.axes = (a, b)
        self.templates = [t for t in sum(DOMAINS.values(), []) if "{" + a[0] + "}" in t or "{" + b[0] + "}" in t] or DOMAINS["qa"]
        self.templates = r.sample(self.templates, min(len(self.templates), r.randint(1, 6)))
        self.cells = [(t, x, y) for t in self.templates for x in a[1] for y in b[1]]
        if self.evasive:
            r.shuffle(self.cells)
        self._k = 0
        self.habit = ParamHabit.draw(r)

    def text(self) -> str:
        tpl, x, y = self.cells[self._k % len(self.cells)]
        self._k += 1
        (na, _), (nb, _) = self.axes
        return fill(tpl.replace("{" + na + "}", x).replace("{" + nb + "}", y), self.rng)


class ReasoningHarvest(Strategy):
    def setup(self) -> None:
        r = self.rng
        n = 1 if (self.evasive and r.random() < 0.5) else r.randint(2, 8)
        self.habit = ParamHabit.draw(r, n=n, temperature=r.choice([None, round(r.uniform(0.5, 1.0), 2)]), max_tokens=r.choice([2048, 4096, 8192, r.randint(1500, 8000)]))
        self.domains = r.sample(["math", "code", "qa"], r.randint(1, 3))
        self.suffix_p = r.uniform(0.5, 1.0)

    def text(self) -> str:
        r = self.rng
        text = self.ctx.grammar.prompt(r, r.choice(self.domains))
        if r.random() < self.suffix_p:
            text += r.choice(REASONING_SUFFIXES)
        return text


class AttackActor(Actor):
    """One attacker with one account: strategy queries at machine or service pace, with cover
    traffic when evasive, until the budget or the simulation ends. Subclasses pick the strategy;
    campaigns override `start` (accounts, pace, first request) and `next_account`."""

    label = 1
    kind = "attack"
    one_writer = True
    scripted_text = True
    strategy_cls: ClassVar[type[Strategy]]
    account: Account  # opened by `start`

    def setup(self) -> None:
        r = self.rng
        self.evasive = r.random() < 0.45
        self.strategy = self.strategy_cls(r, self.ctx, self.evasive)
        self.cover_p = r.uniform(0.05, 0.4) if self.evasive and r.random() < 0.7 else 0.0
        self.cover_habit = ParamHabit.draw(r)
        self.limit = self.budget(1500, 1.0, low=60, high=20000)

    def cover_query(self) -> Query:
        r, g = self.rng, self.ctx.grammar
        history = [{"role": "user", "content": g.prompt(r)}]
        if r.random() < 0.4:
            history += [{"role": "assistant", "content": g.answer(r, history[0]["content"])}, {"role": "user", "content": g.follow_up(r)}]
        return Query(self.cover_habit.sample(r), messages=history)

    def query(self) -> Query:
        return self.cover_query() if self.cover_p and self.rng.random() < self.cover_p else self.strategy.next()

    def scripted_timing(self) -> Timing:
        """A script's pace: a steady machine, or a service-like rate when evasive."""
        r = self.rng
        rate = r.lognormvariate(math.log(0.3), 1.0)
        if self.evasive and r.random() < 0.5:
            return ServiceTiming.draw(r, rate, library=self.ctx.timing)
        return MachineTiming.draw(r, rate, evasive=self.evasive)

    def start(self) -> tuple[Timing, float]:
        """Open the account, then draw the pace and the first request's time. Runs when events
        begin, after every subclass's setup, so those draws come first."""
        r = self.rng
        self.account = self.new_account(UA_HUMAN if self.evasive and r.random() < 0.4 else UA_SCRIPT, n_keys=r.randint(1, 2), n_hosts=r.randint(1, 4))
        return self.scripted_timing(), self.start_time(0.8)

    def next_account(self) -> Account:
        """The account that sends the next request (drawn before the query)."""
        return self.account

    def events(self) -> Iterator[dict[str, Any]]:
        timing, t = self.start()
        for _ in range(self.limit):
            if t >= self.ctx.end:
                return
            account = self.next_account()
            yield self.event(account, t, self.query())
            t += timing.gap(self.rng, t)


@register
class RandomQueryAttack(AttackActor):
    """Random or synthetic queries. Source: Tramèr et al. 2016, "Stealing Machine Learning Models
    via Prediction APIs"; Krishna et al. 2020, "Thieves on Sesame Street!" (random word sequences)."""

    family = "random_queries"
    strategy_cls = RandomQueries


@register
class DatasetReplayAttack(AttackActor):
    """Natural-distribution replay of a public prompt set. Source: Orekondy et al. 2019, "Knockoff Nets"."""

    family = "dataset_replay"
    strategy_cls = DatasetReplay


@register
class SelfInstructAttack(AttackActor):
    """Self-instruct / Alpaca-style distillation: generated instructions over topic x task templates,
    long outputs. Source: Wang et al. 2023, "Self-Instruct"; Taori et al. 2023, Stanford Alpaca."""

    family = "self_instruct"
    strategy_cls = SelfInstruct


@register
class LogitProbeAttack(AttackActor):
    """Logit and logprob probing: the same prompts with varying logit_bias, max_tokens=1 and
    top_logprobs. Source: Carlini et al. 2024, "Stealing Part of a Production Language Model";
    Finlayson et al. 2024, "Logits of API-Protected LLMs Leak Proprietary Information"."""

    family = "logit_probe"
    strategy_cls = LogitProbe


@register
class ActiveLearningAttack(AttackActor):
    """Active-learning boundary exploration: perturbations and paraphrases of seed prompts.
    Source: Pal et al. 2020, "ActiveThief"."""

    family = "active_learning"
    strategy_cls = ActiveLearning


@register
class CoverageSweepAttack(AttackActor):
    """Capability-targeted coverage sweep: systematic enumeration of a domain's task x slot grid.
    Source: capability-targeted distillation as in Gudibande et al. 2023, "The False Promise of
    Imitating Proprietary LLMs" (targeted imitation data)."""

    family = "coverage_sweep"
    strategy_cls = CoverageSweep


@register
class ReasoningHarvestAttack(AttackActor):
    """Reasoning-trace harvesting: full step-by-step reasoning at scale, n > 1. Source: distillation
    of reasoning traces, Mukherjee et al. 2023 ("Orca"), Ho et al. 2023 ("Large Language Models
    Are Reasoning Teachers")."""

    family = "reasoning_harvest"
    strategy_cls = ReasoningHarvest


BASE_STRATEGIES: list[type[Strategy]] = [RandomQueries, DatasetReplay, SelfInstruct, LogitProbe, ActiveLearning, CoverageSweep, ReasoningHarvest]


@register
class SybilCampaign(AttackActor):
    """Any strategy spread over many accounts, keys and IP prefixes, each low-volume. Source:
    distributed extraction in Juuti et al. 2019 (PRADA's threat model of colluding clients) and
    Tramèr et al. 2016."""

    family = "sybil_campaign"
    strategy_cls = DatasetReplay  # replaced per actor in setup

    def setup(self) -> None:
        r = self.rng
        self.strategy_cls = r.choice(BASE_STRATEGIES)
        super().setup()
        self.limit = self.budget(3000, 0.8, low=300, high=20000)
        # Each account stays low-volume, and the budget is spread over at least ten of them.
        self.per_account = max(5, min(int(r.lognormvariate(math.log(60), 0.7)) + 10, 200, self.limit // 10))
        pool = [Prefix.draw(r) for _ in range(r.randint(3, 40))]
        self.accounts = [
            Account.draw(r, UA_SCRIPT if r.random() < 0.7 else UA_HUMAN, n_keys=1, prefixes=[r.choice(pool)], n_hosts=1)
            for _ in range(max(10, self.limit // self.per_account))
        ]
        self.parallel = r.random() < 0.5
        self._used = {a.account_id: 0 for a in self.accounts}
        self._idx = 0

    def start(self) -> tuple[Timing, float]:
        return self.scripted_timing(), self.start_time(0.8)

    def next_account(self) -> Account:
        if self.parallel:
            return self.rng.choice(self.accounts)
        # Burn accounts one after another.
        account = self.accounts[self._idx % len(self.accounts)]
        self._used[account.account_id] += 1
        if self._used[account.account_id] >= self.per_account:
            self._idx += 1
        return account


@register
class SlowLowMimicry(AttackActor):
    """Slow-and-low mimicry: human-like timing and benign cover traffic around extraction queries,
    built to stay under rate limits and PRADA-style statistics. Source: the evasion analysis in
    Juuti et al. 2019 ("PRADA") and Pal et al. 2020."""

    family = "slow_low_mimicry"
    scripted_text = False  # it writes as people do, to pass for one
    strategy_cls = DatasetReplay

    def setup(self) -> None:
        r = self.rng
        self.strategy_cls = r.choice([DatasetReplay, SelfInstruct, ReasoningHarvest, ActiveLearning, CoverageSweep])
        super().setup()
        self.evasive = True
        self.cover_p = r.uniform(0.2, 0.6)
        self.limit = self.budget(400, 0.8, low=60, high=5000)

    def start(self) -> tuple[Timing, float]:
        r = self.rng
        self.account = self.new_account(UA_HUMAN, n_keys=1, n_hosts=r.randint(1, 3))
        timing = HumanTiming.draw(r)  # the same distribution benign chat users are drawn from
        return timing, timing.hours.next_start(self.start_time(0.3), r)


# --- Attackers that look human, probe by paraphrase, or act as a cohort (issue 10, item 4).


class TaskWalk(Strategy):
    """Walks a task collection category by category and never sends the same prompt twice."""

    def setup(self) -> None:
        r = self.rng
        # Browser-like parameters: what a chat front-end sends, mostly defaults and streaming.
        self.habit = ParamHabit.draw(
            r, temperature=r.choice([None, None, 0.7, 1.0]), temperature_jitter=0.0, max_tokens=r.choice([None, None, 1024, 4096]),
            max_tokens_spread=0.0, top_p=None, logprobs_p=0.0, seed_p=0.0, stop_p=0.0, stream_p=r.uniform(0.6, 1.0), n=1,
        )
        self.completion_p = 0.0
        self.source_share = r.random()
        self.categories = r.sample(DOMAIN_NAMES, r.randint(3, len(DOMAIN_NAMES)))
        self.per_category = (r.randint(5, 20), r.randint(25, 120))
        self._left = r.randint(*self.per_category)
        self._seen: set[str] = set()

    def text(self) -> str:
        r, g = self.rng, self.ctx.grammar
        if self._left <= 0:
            self.categories = self.categories[1:] + self.categories[:1]
            self._left = r.randint(*self.per_category)
        self._left -= 1
        text = g.prompt(r, self.categories[0], self.source_share)
        for _ in range(20):
            if text not in self._seen:
                break
            text = g.prompt(r, self.categories[0], self.source_share)
        while text in self._seen:  # a small category ran dry: join two of its prompts
            text = f"{text} {g.prompt(r, self.categories[0], 0.0)}"
        self._seen.add(text)
        return text


@register
class HumanTaskWalk(AttackActor):
    """An attacker with human think times (log-normal, within active hours) and a browser's user
    agent and parameters, whose prompts never repeat and walk a task collection category by
    category. Source: the mimicry evasions of Juuti et al. 2019 ("PRADA") applied to LLM
    distillation over instruction collections (Taori et al. 2023, Stanford Alpaca)."""

    family = "human_task_walk"
    scripted_text = False  # it writes as people do, to pass for one
    strategy_cls = TaskWalk

    def setup(self) -> None:
        super().setup()
        r = self.rng
        self.cover_p = r.choice([0.0, 0.0, r.uniform(0.05, 0.3)])
        self.cover_habit = self.strategy.habit
        self.limit = self.budget(150, 0.9, low=30, high=2000)

    def start(self) -> tuple[Timing, float]:
        r = self.rng
        # Some sit behind a carrier NAT, among benign crowds; the rest send from their own block.
        self.shared_prefixes = r.choice(CARRIER_POOLS) if r.random() < 0.3 else None
        self.account = self.new_account(UA_BROWSER if r.random() < 0.8 else UA_HUMAN, n_keys=1, n_hosts=r.randint(1, 4))
        timing = HumanTiming.draw(r)
        return timing, timing.hours.next_start(self.start_time(0.4), r)


class ParaphraseProbing(Strategy):
    """A few seed prompts, each sent again and again as small paraphrases and edits."""

    def setup(self) -> None:
        r = self.rng
        self.seeds = [self.ctx.grammar.prompt(r) for _ in range(r.randint(2, 8))]
        self.strength = r.uniform(0.03, 0.15)
        self.block = r.randint(5, 60)  # paraphrases of one seed before the next
        self.habit = ParamHabit.draw(r)
        self._k = 0

    def text(self) -> str:
        seed = self.seeds[(self._k // self.block) % len(self.seeds)]
        self._k += 1
        return paraphrase(seed, self.rng, self.strength)


@register
class ParaphraseProbe(AttackActor):
    """Boundary probing by paraphrase: a few seed prompts, each re-sent as many small paraphrases
    and edits at a moderate rate, to map where the model's answer or refusal flips. Source: Pal
    et al. 2020 ("ActiveThief", uncertainty-driven queries near the boundary); Papernot et al.
    2017 ("Practical Black-Box Attacks", synthetic neighbours of seed inputs)."""

    family = "paraphrase_probe"
    strategy_cls = ParaphraseProbing

    def setup(self) -> None:
        super().setup()
        self.limit = self.budget(300, 0.8, low=60, high=3000)

    def scripted_timing(self) -> Timing:
        r = self.rng
        if r.random() < 0.5:
            return LogNormalTiming(median_s=r.lognormvariate(math.log(20), 1.0), sigma=r.uniform(0.3, 1.0))
        return ServiceTiming.draw(r, r.lognormvariate(math.log(0.05), 0.8), library=self.ctx.timing)


COHORT_SOURCES: list[type[Strategy]] = [DatasetReplay, SelfInstruct, ReasoningHarvest, TaskWalk, RandomQueries, CoverageSweep]


@register
class SybilCohort(AttackActor):
    """A sybil campaign as a cohort ("hydra cluster"): 20-60 short-lived accounts that arrive
    within a few hours, share one client fingerprint (the exact user agent, model and parameter
    values), split one prompt pool between them and follow one script of 15-80 requests each,
    from a few address prefixes or spread widely. Source: distributed extraction in Juuti et al.
    2019 ("PRADA", colluding clients), in the "hydra cluster" shape that providers have reported
    for real distillation campaigns (many fresh accounts, one tool, one script)."""

    family = "sybil_cohort"
    strategy_cls = DatasetReplay  # replaced per actor in setup

    def setup(self) -> None:
        r = self.rng
        self.strategy_cls = r.choice(COHORT_SOURCES)
        super().setup()
        self.cover_p = 0.0
        n_accounts = r.randint(20, 60)
        script_len = r.randint(15, 80)
        self.lengths = [min(80, max(15, script_len + r.randint(-3, 3))) for _ in range(n_accounts)]
        self.fingerprint = self.strategy.habit.sample(r)  # one exact parameter dict for every request
        self.fingerprint.pop("seed", None)
        ua = user_agent(r, UA_SCRIPT if r.random() < 0.6 else UA_HUMAN)
        model = model_choice(r)
        mode = r.choice(["few", "spread", "cloud"])
        if mode == "few":
            pool = [Prefix.draw(r) for _ in range(r.randint(2, 5))]
        elif mode == "cloud":
            pool = r.sample(CLOUD_PREFIXES, r.randint(1, 3))
        max_hosts = r.randint(1, 4)  # workers per account behind one block: addresses are no part of the fingerprint
        self.accounts = []
        for _ in range(n_accounts):
            prefix = r.choice(pool) if mode != "spread" else (r.choice(r.choice(CARRIER_POOLS)) if r.random() < 0.3 else Prefix.draw(r))
            hosts = [prefix.address(r) for _ in range(r.randint(1, max_hosts))]
            self.accounts.append(Account(hex_id(r, "acct_"), [hex_id(r, "key_", 8)], [prefix], ua, model, hosts))
        self.arrival_window_s = r.uniform(0.5, 4.0) * 3600
        # The one script: the same pacing for every account, drawn once.
        median = r.lognormvariate(math.log(30), 1.2)
        self.script = LogNormalTiming(median_s=median, sigma=r.uniform(0.1, 0.8))
        self.pool = [self.strategy.text() for _ in range(sum(self.lengths))]

    def events(self) -> Iterator[dict[str, Any]]:
        r, s = self.rng, self.strategy
        t0 = self.start_time(0.8)
        out: list[dict[str, Any]] = []
        offset = 0
        for account, n in zip(self.accounts, self.lengths):
            t = t0 + r.uniform(0, self.arrival_window_s)
            for text in self.pool[offset: offset + n]:
                if t >= self.ctx.end:
                    break
                messages = ([{"role": "system", "content": s.system}] if s.system else []) + [{"role": "user", "content": text}]
                query = Query(dict(self.fingerprint), prompt=text) if s.completion_p == 1.0 else Query(dict(self.fingerprint), messages=messages)
                out.append(self.event(account, t, query))
                t += self.script.gap(r, t)
            offset += n
        out.sort(key=lambda e: e["ts"])  # stable: ties keep account order, so a seed reproduces
        yield from out
