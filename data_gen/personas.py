"""Benign personas. Several are deliberately hard negatives: they repeat prompts, run at
machine rates, ask for logprobs or set logit_bias, because real customers do.

Most personas work in sessions (a conversation, a burst of edits, a batch run) and share one
loop in `Persona`; each says only what a session asks, how fast, and what it does in between.
"""

from __future__ import annotations

import heapq
import math
import random
from abc import abstractmethod
from collections.abc import Iterator
from typing import Any, ClassVar

from moat.data_gen.actors import Actor, ParamHabit, Query, register
from moat.data_gen.identity import CARRIER_POOLS, CLOUD_PREFIXES, UA_HUMAN, UA_SCRIPT, UA_SERVICE, Account, Prefix
from moat.data_gen.text import DOMAIN_NAMES, fill, perturb, system_prompt
from moat.data_gen.timing import ActiveHours, HumanTiming, LogNormalTiming, MachineTiming, ServiceTiming, Timing, worker_pool


class Persona(Actor):
    """A benign party with one account that sends sessions of requests until the simulation ends
    or its request budget runs out. `setup()` sets the attributes below; `session()` yields one
    session's queries; the hooks default to "no pause, no follow-up"."""

    label = 0
    kind = "persona"
    lead: ClassVar[float] = 0.7  # the first request falls within this share of the time span

    account: Account
    habit: ParamHabit
    timing: Timing  # gaps between requests within a session
    limit: int  # request budget
    hours: ActiveHours | None = None  # when set, the first request waits for active hours
    completion_style: bool = False  # send /v1/completions prompts instead of chat messages

    @abstractmethod
    def session(self) -> Iterator[Query]:
        """Yield one session's queries. Its random draws happen as each query is asked for."""

    def answered(self, query: Query) -> None:
        """Runs after each request, before the next gap: a conversation records the reply here."""

    def pause(self, t: float) -> float:
        """The time the next session starts, given the time after the last request's gap."""
        return t

    def ask(self, text: str, params: dict[str, Any] | None = None) -> Query:
        """One prompt as a query in this persona's style, with its habitual parameters by default."""
        params = self.habit.sample(self.rng) if params is None else params
        return Query(params, prompt=text) if self.completion_style else Query(params, messages=[{"role": "user", "content": text}])

    def events(self) -> Iterator[dict[str, Any]]:
        r, end = self.rng, self.ctx.end
        t = self.start_time(self.lead)
        if self.hours is not None:
            t = self.hours.next_start(t, r)
        n = 0
        while t < end and n < self.limit:
            for query in self.session():
                yield self.event(self.account, t, query)
                n += 1
                self.answered(query)
                t += self.timing.gap(r, t)
                if t >= end or n >= self.limit:
                    return
            t = self.pause(t)


@register
class ChatUser(Persona):
    """A person in a chat app: multi-turn conversations, human think times, diurnal activity."""

    family = "chat_user"
    weight = 5.0

    def setup(self) -> None:
        r = self.rng
        self.account = self.new_account(UA_HUMAN, n_hosts=r.randint(1, 3))
        self.timing = HumanTiming.draw(r)
        self.hours = self.timing.hours
        # Most people chat through a front-end that fixes the parameters; some call the API.
        self.habit = ParamHabit.frontend(r) if r.random() < 0.7 else ParamHabit.draw(r)
        self.domains = r.sample(DOMAIN_NAMES, r.randint(1, 4))
        self.turns_mean = r.uniform(1.5, 6)
        self.system = system_prompt(r) if r.random() < 0.4 else None
        self.limit = self.budget(60, 1.0, high=3000)

    def session(self) -> Iterator[Query]:
        r, g = self.rng, self.ctx.grammar
        self.history: list[dict[str, str]] = [{"role": "system", "content": self.system}] if self.system else []
        turns = 1 + int(r.expovariate(1 / self.turns_mean))
        for turn in range(min(turns, 30)):
            text = g.prompt(r, r.choice(self.domains)) if turn == 0 else g.follow_up(r)
            self.history.append({"role": "user", "content": text})
            yield Query(self.habit.sample(r), messages=list(self.history))

    def answered(self, query: Query) -> None:
        self.history.append({"role": "assistant", "content": self.ctx.grammar.answer(self.rng, self.history[-1]["content"])})


@register
class PromptDeveloper(Persona):
    """A developer iterating on one prompt: near-duplicates with small edits, bursts, then idle."""

    family = "prompt_developer"
    weight = 3.0
    hours: ActiveHours  # drawn in setup

    def setup(self) -> None:
        r = self.rng
        self.account = self.new_account(UA_SCRIPT, n_keys=r.randint(1, 2))
        self.hours = ActiveHours.draw(r)
        self.habit = ParamHabit.draw(r, logprobs_p=r.choice([0.0, 0.0, r.uniform(0.1, 0.8)]))
        self.burst_len = r.uniform(4, 30)
        self.timing = LogNormalTiming(median_s=r.uniform(8, 90), sigma=0.8)
        self.edit_strength = r.uniform(0.02, 0.15)
        self.completion_style = r.random() < 0.25
        self.limit = self.budget(200, 0.9, high=5000)

    def session(self) -> Iterator[Query]:
        r, g = self.rng, self.ctx.grammar
        base = g.prompt(r)
        if r.random() < 0.5:
            base = f"{system_prompt(r)}\n\n{base}\n\nInput: {g.prompt(r)}"
        for _ in range(1 + int(r.expovariate(1 / self.burst_len))):
            if r.random() < 0.6:
                base = perturb(base, r, self.edit_strength)
            if r.random() < 0.1:  # tweak a parameter while debugging
                self.habit.temperature = r.choice([0.0, 0.3, 0.7, 1.0])
            yield self.ask(base)

    def pause(self, t: float) -> float:
        t += self.rng.uniform(600, 3 * 3600)
        return t if self.hours.is_active(t) else self.hours.next_start(t, self.rng)


@register
class AppBackend(Persona):
    """An application backend: one account serving many end users through several API keys,
    a constant system prompt, and a diurnal Poisson/Gamma arrival rate."""

    family = "app_backend"
    weight = 2.0
    lead = 0.3

    def setup(self) -> None:
        r = self.rng
        self.account = self.new_account(UA_SERVICE, n_keys=r.randint(2, 6), n_prefixes=r.randint(1, 2), n_hosts=r.randint(2, 8))
        self.timing = ServiceTiming.draw(r, rate_per_s=r.lognormvariate(math.log(0.02), 1.0), library=self.ctx.timing)
        self.habit = ParamHabit.draw(r)
        self.system = system_prompt(r) + " " + fill("Company policy: never discuss {topic}.", r)
        self.domains = r.sample(DOMAIN_NAMES, r.randint(1, 3))
        self.multi_turn_p = r.uniform(0.0, 0.6)
        self.limit = self.budget(1500, 1.0, high=15000)

    def session(self) -> Iterator[Query]:
        r, g = self.rng, self.ctx.grammar
        text = g.prompt(r, r.choice(self.domains))
        history = [{"role": "system", "content": self.system}, {"role": "user", "content": text}]
        if r.random() < self.multi_turn_p:
            for _ in range(r.randint(1, 3)):
                history.append({"role": "assistant", "content": g.answer(r, text)})
                history.append({"role": "user", "content": g.follow_up(r)})
        yield Query(self.habit.sample(r), messages=history)


@register
class BatchPipeline(Persona):
    """An enterprise batch job: one template over many documents, at a steady high rate."""

    scripted_text = True

    family = "batch_pipeline"
    weight = 1.5
    lead = 0.5

    def setup(self) -> None:
        r = self.rng
        self.account = self.new_account(UA_SERVICE, n_keys=r.randint(1, 3), n_hosts=r.randint(1, 4))
        self.template = fill(r.choice([
            "Summarize the following {word} record for the {job} team in {a} bullet points:\n",
            "Extract the fields name, date, amount and {word} as JSON from this document:\n",
            "Classify this support ticket into one of billing, bug, feature, other. Ticket:\n",
            "Translate the following {word} notes into {lang_h}, keeping formatting:\n",
            "You are a compliance reviewer. Flag any risk in this contract clause:\n",
        ]), r)
        self.habit = ParamHabit.draw(r, temperature=r.choice([0.0, 0.0, 0.1, 0.3, None]), n=1)
        rate = r.lognormvariate(math.log(1.0), 0.8)
        self.run_hour = r.uniform(0, 24)
        self.run_size = int(r.lognormvariate(math.log(600), 0.9))
        self.limit = self.budget(4000, 0.9, high=20000)
        self.timing = MachineTiming.draw(r, rate)

    def session(self) -> Iterator[Query]:
        r, g = self.rng, self.ctx.grammar
        for _ in range(max(20, int(self.run_size * r.uniform(0.5, 1.5)))):
            doc = fill("{doc}", r) if r.random() < 0.7 else g.prompt(r, "extraction")
            yield self.ask(self.template + doc)

    def pause(self, t: float) -> float:
        return t + self.rng.uniform(6, 30) * 3600


@register
class EvalRunner(Persona):
    """A benchmark runner: a fixed question set at temperature 0, sometimes with logprobs,
    re-run for each new checkpoint or prompt variant."""

    scripted_text = True

    family = "eval_runner"
    weight = 1.5
    lead = 0.6

    def setup(self) -> None:
        r = self.rng
        self.account = self.new_account(UA_SCRIPT, n_keys=r.randint(1, 2))
        g = self.ctx.grammar
        domain = r.choice(["math", "code", "qa", None])
        self.questions = [g.prompt(r, domain) for _ in range(int(r.lognormvariate(math.log(120), 0.8)) + 10)]
        self.habit = ParamHabit.draw(
            r, temperature=0.0, temperature_jitter=0.0, logprobs_p=r.choice([0.0, 0.0, 1.0]),
            top_logprobs=r.choice([0, 1, 5]), n=r.choice([1, 1, 1, 5, 10]), max_tokens=r.choice([None, 256, 1024, 2048]),
        )
        self.shot_prefix = fill("Answer the following {word} question. Put the final answer after 'Answer:'.\n", r) if r.random() < 0.5 else ""
        rate = r.lognormvariate(math.log(0.5), 0.8)
        self.limit = self.budget(800, 0.8, high=15000)
        self.timing = MachineTiming.draw(r, rate)

    def session(self) -> Iterator[Query]:
        order = list(self.questions)
        if self.rng.random() < 0.5:
            self.rng.shuffle(order)
        for q in order:
            yield self.ask(self.shot_prefix + q)

    def pause(self, t: float) -> float:
        return t + self.rng.uniform(2, 48) * 3600


@register
class AgentLoop(Persona):
    """An agent or tool loop: long conversations of tool calls and tool results."""

    scripted_text = True

    family = "agent_loop"
    weight = 1.5

    def setup(self) -> None:
        r = self.rng
        self.account = self.new_account(UA_SERVICE, n_keys=r.randint(1, 3), n_hosts=r.randint(1, 3))
        self.system = fill("You are an autonomous agent. Tools: search, calculator, {word}_db, http_get. Goal-directed; call tools as JSON.", r)
        self.habit = ParamHabit.draw(r, temperature=r.choice([0.0, 0.2, 0.7, None]))
        self.steps_mean = r.uniform(4, 30)
        self.timing = LogNormalTiming(median_s=r.uniform(0.8, 10), sigma=0.6)
        self.task_gap = LogNormalTiming(median_s=r.lognormvariate(math.log(900), 1.0), sigma=1.0)
        self.limit = self.budget(600, 1.0, high=15000)

    def session(self) -> Iterator[Query]:
        r, g = self.rng, self.ctx.grammar
        self.history = [{"role": "system", "content": self.system}, {"role": "user", "content": g.prompt(r, "tools")}]
        for _ in range(1 + int(r.expovariate(1 / self.steps_mean))):
            yield Query(self.habit.sample(r), messages=list(self.history[-60:]))

    def answered(self, query: Query) -> None:
        r = self.rng
        self.history.append({"role": "assistant", "content": fill('{"tool": "{word}", "args": {"q": "{topic}", "n": {a}}}', r)})
        self.history.append({"role": "tool", "content": fill("{doc}", r)})

    def pause(self, t: float) -> float:
        return t + self.task_gap.gap(self.rng, t)


@register
class Labeller(Persona):
    """A classification or labelling pipeline: short prompts, tiny max_tokens, logprobs for
    label confidence, and often a constant logit_bias that restricts output to the labels."""

    scripted_text = True

    family = "labeller"
    weight = 1.3
    lead = 0.5

    def setup(self) -> None:
        r = self.rng
        self.account = self.new_account(UA_SERVICE, n_keys=r.randint(1, 2))
        labels = r.sample(["positive", "negative", "neutral", "spam", "ham", "urgent", "billing", "bug", "yes", "no"], r.randint(2, 4))
        self.instruction = f"Label the text as one of: {', '.join(labels)}. Text: "
        bias = {str(r.randint(100, 100000)): float(r.choice([100, 50, 20, 10])) for _ in range(len(labels))}
        self.habit = ParamHabit.draw(
            r, temperature=r.choice([0.0, 0.0, None]), max_tokens=r.randint(1, 5), max_tokens_spread=0.0,
            logprobs_p=r.uniform(0.5, 1.0), top_logprobs=r.randint(1, 10), n=1,
        )
        self.bias = bias if r.random() < 0.5 else None
        self.timing = ServiceTiming.draw(r, rate_per_s=r.lognormvariate(math.log(0.05), 0.9), library=self.ctx.timing)
        self.completion_style = r.random() < 0.4
        self.limit = self.budget(1500, 0.9, high=15000)

    def session(self) -> Iterator[Query]:
        r = self.rng
        text = self.instruction + (fill("{review}", r) if r.random() < 0.5 else self.ctx.grammar.prompt(r))
        params = self.habit.sample(r)
        if self.bias:
            params["logit_bias"] = dict(self.bias)
        yield self.ask(text, params)


@register
class LogprobResearcher(Persona):
    """Legitimate logprob or calibration research: a prompt set re-queried a few times with
    logprobs, varying temperature and seed, occasionally a logit_bias to suppress a token."""

    scripted_text = True

    family = "logprob_researcher"
    weight = 1.2
    hours: ActiveHours  # drawn in setup

    def setup(self) -> None:
        r = self.rng
        self.account = self.new_account(UA_SCRIPT, n_keys=1)
        self.prompts = [self.ctx.grammar.prompt(r) for _ in range(r.randint(15, 250))]
        self.repeats = r.randint(1, 5)
        self.habit = ParamHabit.draw(r, logprobs_p=1.0, top_logprobs=r.randint(3, 20), max_tokens=r.choice([1, 5, 16, 64, 256]))
        self.bias_p = r.uniform(0, 0.3)
        rate = r.lognormvariate(math.log(0.3), 0.8)
        self.hours = ActiveHours.draw(r)
        self.completion_style = r.random() < 0.5
        self.limit = self.budget(600, 0.8, high=8000)
        self.timing = MachineTiming.draw(r, rate)

    def session(self) -> Iterator[Query]:
        r = self.rng
        for p in self.prompts:
            for _ in range(self.repeats):
                params = self.habit.sample(r)
                params["temperature"] = r.choice([0.0, 0.5, 1.0])
                if r.random() < self.bias_p:
                    params["logit_bias"] = {str(r.randint(100, 50000)): -100.0}
                yield self.ask(p, params)

    def pause(self, t: float) -> float:
        return self.hours.next_start(t + self.rng.uniform(3600, 48 * 3600), self.rng)


@register
class CorporateNat(Actor):
    """Many employees' accounts behind one corporate NAT prefix: chat users and developers
    whose traffic shares one client IP block (a hard case for per-address limits). A crowd,
    not one persona: it merges its members' events instead of running sessions itself."""

    family = "corporate_nat"
    label = 0
    kind = "persona"
    weight = 0.6

    def setup(self) -> None:
        r = self.rng
        self.prefix = Prefix.draw(r, v6_share=0.2)
        self.members: list[Persona] = []
        for i in range(r.randint(5, 40)):
            cls = ChatUser if r.random() < 0.7 else PromptDeveloper
            self.members.append(cls(f"{self.actor_id}.{i}", r.getrandbits(64), self.ctx, shared_prefixes=[self.prefix]))

    def events(self) -> Iterator[dict[str, Any]]:
        for ev in heapq.merge(*(m.events() for m in self.members), key=lambda e: e["ts"]):
            ev["family"] = self.family
            ev["actor"] = self.actor_id
            yield ev


# --- High-volume business tenants, benchmark runners and NAT crowds (issue 10, item 4). Each draws
# its rates, lengths, parameters and prompt source per actor from wide ranges, so their marginals
# overlap the attack families' and only behaviour over time tells them apart.

# Token ids a review classifier biases towards: the ids of short label words ("yes", "no",
# " A", " B", ...) in common tokenizers, so several tenants bias the same few ids.
LABEL_TOKEN_IDS = [9642, 2822, 32, 33, 34, 35, 16, 17, 18, 15, 3763, 1217, 7566, 8505]
DOC_TEMPLATES = [
    "Summarize the following {word} record for the {job} team in {a} bullet points:\n",
    "Extract the fields name, date, amount and {word} as JSON from this document:\n",
    "Rewrite this {word} notice in plain language for customers:\n",
    "Translate the following {word} notes into {lang_h}, keeping formatting:\n",
    "You are a compliance reviewer. List every obligation in this contract clause:\n",
]
REVIEW_QUESTIONS = [
    "Does this document need human review? Answer yes or no.\n",
    "Is this {word} record complete? Answer A (complete), B (incomplete) or C (unreadable).\n",
    "Classify the risk of this clause: 0 low, 1 medium, 2 high. Reply with the digit only.\n",
]


def cloud_prefixes(rng: random.Random) -> list[Prefix]:
    """One or two of the shared cloud /24s a tenant's servers send from."""
    return rng.sample(CLOUD_PREFIXES, rng.randint(1, 2))


@register
class DocPipeline(Persona):
    """A high-volume document pipeline: one template over varied documents from a steady worker
    pool, plus a review classifier that asks for one token (max_tokens=1) with logit_bias +100 on
    a few label tokens, the usual way to force a label out of a chat API. Benign, though its
    classifier requests look like logit probing field by field. Stands for enterprise batch jobs
    over invoices, contracts and tickets; max_tokens=1 with logit_bias on label tokens is a
    common API classification recipe)."""

    scripted_text = True

    family = "doc_pipeline"
    weight = 1.2
    lead = 0.4

    def setup(self) -> None:
        r = self.rng
        self.shared_prefixes = cloud_prefixes(r) if r.random() < 0.7 else None
        self.account = self.new_account(UA_SERVICE, n_keys=r.randint(1, 3), n_hosts=r.randint(1, 6))
        self.template = fill(r.choice(DOC_TEMPLATES), r)
        self.review = fill(r.choice(REVIEW_QUESTIONS), r)
        self.bias = {str(t): 100.0 for t in r.sample(LABEL_TOKEN_IDS, r.randint(2, 4))}
        self.review_p = r.uniform(0.15, 0.9)
        self.review_logprobs = r.random() < 0.3
        self.habit = ParamHabit.draw(r, temperature=r.choice([0.0, 0.0, 0.2, 0.3, None]), n=1)
        self.timing = worker_pool(r)
        self.run_size = int(r.lognormvariate(math.log(300), 0.9)) + 20
        self.source_share = r.random()
        self.completion_style = r.random() < 0.15
        self.limit = self.budget(700, 0.8, low=150, high=6000)

    def document(self) -> str:
        r = self.rng
        return fill("{doc}", r) if r.random() < 0.6 else self.ctx.grammar.prompt(r, "extraction", self.source_share)

    def session(self) -> Iterator[Query]:
        r = self.rng
        for _ in range(max(10, int(self.run_size * r.uniform(0.5, 1.5)))):
            doc = self.document()
            yield self.ask(self.template + doc)
            if r.random() < self.review_p:
                params: dict[str, Any] = {"max_tokens": 1, "temperature": 0.0, "logit_bias": dict(self.bias)}
                if self.review_logprobs:
                    params["logprobs"] = True
                yield self.ask(self.review + doc, params)

    def pause(self, t: float) -> float:
        return t + self.rng.uniform(1, 20) * 3600


@register
class TenantApp(Persona):
    """An app backend serving many end users through one account: a constant system prompt,
    diverse end-user questions of which popular ones repeat (Zipf), Poisson arrivals, 2-5 API
    keys and several servers in a cloud /24 that other tenants share. Stands for the SaaS
    customers that resell a model inside their product (support bots, writing assistants)."""

    family = "tenant_app"
    weight = 1.2
    lead = 0.3

    def setup(self) -> None:
        r = self.rng
        self.shared_prefixes = cloud_prefixes(r)
        self.account = self.new_account(UA_SERVICE, n_keys=r.randint(2, 5), n_hosts=r.randint(2, 8))
        self.system = system_prompt(r) + " " + fill(r.choice(["Answer questions about {product}.", "Never discuss {topic}.", "Be brief."]), r)
        self.domains = r.sample(DOMAIN_NAMES, r.randint(1, 5))
        self.source_share = r.random()
        self.popular = [self.ctx.grammar.prompt(r, r.choice(self.domains), self.source_share) for _ in range(r.randint(10, 300))]
        s = r.uniform(0.7, 1.4)
        self.popular_weights = [1 / (k + 1) ** s for k in range(len(self.popular))]
        self.repeat_p = r.uniform(0.1, 0.6)
        self.multi_turn_p = r.uniform(0.0, 0.5)
        self.habit = ParamHabit.draw(r)
        self.timing = ServiceTiming.poisson(r, r.lognormvariate(math.log(0.015), 1.0))
        self.limit = self.budget(600, 0.7, low=150, high=3000)

    def session(self) -> Iterator[Query]:
        r, g = self.rng, self.ctx.grammar
        if r.random() < self.repeat_p:
            text = r.choices(self.popular, self.popular_weights)[0]
        else:
            text = g.prompt(r, r.choice(self.domains), self.source_share)
        history = [{"role": "system", "content": self.system}, {"role": "user", "content": text}]
        if r.random() < self.multi_turn_p:
            for _ in range(r.randint(1, 3)):
                history += [{"role": "assistant", "content": g.answer(r, text)}, {"role": "user", "content": g.follow_up(r)}]
        yield Query(self.habit.sample(r), messages=history)


HARNESS_FORMATS = ["{q}", "Question: {q}\nAnswer:", "Q: {q}\nA: Let's think step by step.", "{q}\nPut the final answer after '####'."]


@register
class BenchmarkRunner(Persona):
    """A researcher running a benchmark's test set in order through an eval harness: temperature
    0, a fixed concurrency, sometimes logprobs, 150 to ~1,300 questions, one pass (sometimes a
    second one for another checkpoint). Stands for lm-evaluation-harness or OpenAI simple-evals
    runs over GSM8K, MMLU or HumanEval."""

    scripted_text = True

    family = "benchmark_runner"
    weight = 1.0
    lead = 0.6

    def setup(self) -> None:
        r, g = self.rng, self.ctx.grammar
        self.shared_prefixes = cloud_prefixes(r) if r.random() < 0.4 else None
        self.account = self.new_account(UA_SCRIPT, n_keys=1, n_hosts=r.randint(1, 2))
        domain = r.choice(["math", "math", "code", "qa", None])
        share = r.random()
        fmt = r.choice(HARNESS_FORMATS)
        self.items = [fmt.replace("{q}", g.prompt(r, domain, share)) for _ in range(r.randint(150, 1300))]
        self.habit = ParamHabit.draw(
            r, temperature=0.0, temperature_jitter=0.0, top_p=None, n=1, stream_p=0.0, seed_p=r.choice([0.0, 1.0]),
            logprobs_p=r.choice([0.0, 0.0, 1.0]), top_logprobs=r.choice([0, 1, 5]), max_tokens=r.choice([None, 256, 512, 1024]), max_tokens_spread=0.0,
        )
        self.completion_style = r.random() < 0.3
        self.timing = worker_pool(r)
        self.passes = 1 if r.random() < 0.7 else 2
        self.limit = len(self.items) * self.passes

    def session(self) -> Iterator[Query]:
        for item in self.items:
            yield self.ask(item)

    def pause(self, t: float) -> float:
        return t + self.rng.uniform(1, 30) * 3600


@register
class SharedNatCrowd(CorporateNat):
    """Many unrelated people behind a few shared address blocks: an ISP's or campus' NAT over
    one to four /24s, or a mobile carrier's CGNAT pool that hands each connection a different
    address of its eight /24s. Stands for the residential and mobile populations whose users
    share addresses with strangers (RFC 6598 carrier-grade NAT)."""

    family = "shared_nat"
    weight = 0.5

    def setup(self) -> None:
        r = self.rng
        carrier = r.random() < 0.5
        pool = r.choice(CARRIER_POOLS) if carrier else [Prefix.draw(r, v6_share=0.0) for _ in range(r.randint(1, 4))]
        self.members: list[Persona] = []
        for i in range(r.randint(10, 45)):
            cls = ChatUser if r.random() < 0.85 else PromptDeveloper
            member = cls(f"{self.actor_id}.{i}", r.getrandbits(64), self.ctx, shared_prefixes=pool)
            if carrier:
                member.account.hosts = [r.choice(pool).address(r) for _ in range(r.randint(3, 12))]
            self.members.append(member)
