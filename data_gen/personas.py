"""Benign personas. Several are deliberately hard negatives: they repeat prompts, run at
machine rates, ask for logprobs or set logit_bias, because real customers do.

Most personas work in sessions (a conversation, a burst of edits, a batch run) and share one
loop in `Persona`; each says only what a session asks, how fast, and what it does in between.
"""

from __future__ import annotations

import heapq
import math
from abc import abstractmethod
from collections.abc import Iterator
from typing import Any, ClassVar

from moat.data_gen.actors import Actor, ParamHabit, Query, register
from moat.data_gen.identity import UA_HUMAN, UA_SCRIPT, UA_SERVICE, Account, Prefix
from moat.data_gen.text import DOMAIN_NAMES, fill, perturb, system_prompt
from moat.data_gen.timing import ActiveHours, HumanTiming, LogNormalTiming, MachineTiming, ServiceTiming, Timing


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
        self.habit = ParamHabit.draw(r)
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
