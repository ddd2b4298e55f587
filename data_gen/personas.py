"""Benign personas. Several are deliberately hard negatives: they repeat prompts, run at
machine rates, ask for logprobs or set logit_bias, because real customers do."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any

from moat.data_gen.actors import Actor, ParamHabit, Query, register
from moat.data_gen.identity import UA_HUMAN, UA_SCRIPT, UA_SERVICE, Prefix
from moat.data_gen.text import DOMAIN_NAMES, fill, perturb
from moat.data_gen.timing import ActiveHours, HumanTiming, MachineTiming, ServiceTiming

SYSTEM_PROMPTS = [
    "You are a helpful assistant.", "You are {app}'s support assistant. Answer briefly and politely.",
    "You are an expert {job}. Answer precisely.", "Reply in JSON only.", "You are a tutor for {topic}. Be encouraging.",
]


def system_prompt(rng: random.Random) -> str:
    return fill(rng.choice(SYSTEM_PROMPTS).replace("{app}", rng.choice(["Acme", "Docly", "Shopr", "Fintra"])), rng)


@register
class ChatUser(Actor):
    """A person in a chat app: multi-turn conversations, human think times, diurnal activity."""

    family = "chat_user"
    label = 0
    kind = "persona"
    weight = 5.0

    def setup(self) -> None:
        r = self.rng
        self.account = self.new_account(UA_HUMAN, n_hosts=r.randint(1, 3))
        self.timing = HumanTiming.draw(r)
        self.habit = ParamHabit.draw(r)
        self.domains = r.sample(DOMAIN_NAMES, r.randint(1, 4))
        self.turns_mean = r.uniform(1.5, 6)
        self.system = system_prompt(r) if r.random() < 0.4 else None
        self.limit = self.budget(60, 1.0, high=3000)

    def events(self) -> Iterator[dict[str, Any]]:
        r, g = self.rng, self.ctx.grammar
        t = self.timing.hours.next_start(self.start_time(), r)
        n = 0
        while t < self.ctx.end and n < self.limit:
            history: list[dict[str, str]] = [{"role": "system", "content": self.system}] if self.system else []
            turns = 1 + int(r.expovariate(1 / self.turns_mean))
            for turn in range(min(turns, 30)):
                text = g.prompt(r, r.choice(self.domains)) if turn == 0 else g.follow_up(r)
                history.append({"role": "user", "content": text})
                yield self.event(self.account, t, Query(self.habit.sample(r), messages=list(history)))
                n += 1
                history.append({"role": "assistant", "content": g.answer(r, text)})
                t += self.timing.gap(r, t)
                if t >= self.ctx.end or n >= self.limit:
                    return


@register
class PromptDeveloper(Actor):
    """A developer iterating on one prompt: near-duplicates with small edits, bursts, then idle."""

    family = "prompt_developer"
    label = 0
    kind = "persona"
    weight = 3.0

    def setup(self) -> None:
        r = self.rng
        self.account = self.new_account(UA_SCRIPT, n_keys=r.randint(1, 2))
        self.hours = ActiveHours.draw(r)
        self.habit = ParamHabit.draw(r, logprobs_p=r.choice([0.0, 0.0, r.uniform(0.1, 0.8)]))
        self.burst_len = r.uniform(4, 30)
        self.gap_median = r.uniform(8, 90)
        self.edit_strength = r.uniform(0.02, 0.15)
        self.completion_style = r.random() < 0.25
        self.limit = self.budget(200, 0.9, high=5000)

    def events(self) -> Iterator[dict[str, Any]]:
        r, g = self.rng, self.ctx.grammar
        t = self.hours.next_start(self.start_time(), r)
        n = 0
        while t < self.ctx.end and n < self.limit:
            base = g.prompt(r)
            if r.random() < 0.5:
                base = f"{system_prompt(r)}\n\n{base}\n\nInput: {g.prompt(r)}"
            for _ in range(1 + int(r.expovariate(1 / self.burst_len))):
                if r.random() < 0.6:
                    base = perturb(base, r, self.edit_strength)
                if r.random() < 0.1:  # tweak a parameter while debugging
                    self.habit.temperature = r.choice([0.0, 0.3, 0.7, 1.0])
                params = self.habit.sample(r)
                q = Query(params, prompt=base) if self.completion_style else Query(params, messages=[{"role": "user", "content": base}])
                yield self.event(self.account, t, q)
                n += 1
                t += r.lognormvariate(math.log(self.gap_median), 0.8)
                if t >= self.ctx.end or n >= self.limit:
                    return
            t += r.uniform(600, 3 * 3600)
            if not self.hours.is_active(t):
                t = self.hours.next_start(t, r)


@register
class AppBackend(Actor):
    """An application backend: one account serving many end users through several API keys,
    a constant system prompt, and a diurnal Poisson/Gamma arrival rate."""

    family = "app_backend"
    label = 0
    kind = "persona"
    weight = 2.0

    def setup(self) -> None:
        r = self.rng
        self.account = self.new_account(UA_SERVICE, n_keys=r.randint(2, 6), n_prefixes=r.randint(1, 2), n_hosts=r.randint(2, 8))
        self.timing = ServiceTiming.draw(r, rate_per_s=r.lognormvariate(math.log(0.02), 1.0), library=self.ctx.timing)
        self.habit = ParamHabit.draw(r)
        self.system = system_prompt(r) + " " + fill("Company policy: never discuss {topic}.", r)
        self.domains = r.sample(DOMAIN_NAMES, r.randint(1, 3))
        self.multi_turn_p = r.uniform(0.0, 0.6)
        self.limit = self.budget(1500, 1.0, high=15000)

    def events(self) -> Iterator[dict[str, Any]]:
        r, g = self.rng, self.ctx.grammar
        t = self.start_time(0.3)
        n = 0
        while t < self.ctx.end and n < self.limit:
            history = [{"role": "system", "content": self.system}]
            text = g.prompt(r, r.choice(self.domains))
            history.append({"role": "user", "content": text})
            if r.random() < self.multi_turn_p:
                for _ in range(r.randint(1, 3)):
                    history.append({"role": "assistant", "content": g.answer(r, text)})
                    history.append({"role": "user", "content": g.follow_up(r)})
            yield self.event(self.account, t, Query(self.habit.sample(r), messages=history))
            n += 1
            t += self.timing.gap(r, t)


@register
class BatchPipeline(Actor):
    """An enterprise batch job: one template over many documents, at a steady high rate."""

    family = "batch_pipeline"
    label = 0
    kind = "persona"
    weight = 1.5

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
        self.rate = r.lognormvariate(math.log(1.0), 0.8)
        self.run_hour = r.uniform(0, 24)
        self.run_size = int(r.lognormvariate(math.log(600), 0.9))
        self.limit = self.budget(4000, 0.9, high=20000)

    def events(self) -> Iterator[dict[str, Any]]:
        r, g = self.rng, self.ctx.grammar
        timing = MachineTiming.draw(r, self.rate)
        t = self.start_time(0.5)
        n = 0
        while t < self.ctx.end and n < self.limit:
            for _ in range(max(20, int(self.run_size * r.uniform(0.5, 1.5)))):
                doc = fill("{doc}", r) if r.random() < 0.7 else g.prompt(r, "extraction")
                yield self.event(self.account, t, Query(self.habit.sample(r), messages=[{"role": "user", "content": self.template + doc}]))
                n += 1
                t += timing.gap(r, t)
                if t >= self.ctx.end or n >= self.limit:
                    return
            t += r.uniform(6, 30) * 3600


@register
class EvalRunner(Actor):
    """A benchmark runner: a fixed question set at temperature 0, sometimes with logprobs,
    re-run for each new checkpoint or prompt variant."""

    family = "eval_runner"
    label = 0
    kind = "persona"
    weight = 1.5

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
        self.rate = r.lognormvariate(math.log(0.5), 0.8)
        self.limit = self.budget(800, 0.8, high=15000)

    def events(self) -> Iterator[dict[str, Any]]:
        r = self.rng
        timing = MachineTiming.draw(r, self.rate)
        t = self.start_time(0.6)
        n = 0
        while t < self.ctx.end and n < self.limit:
            order = list(self.questions)
            if r.random() < 0.5:
                r.shuffle(order)
            for q in order:
                yield self.event(self.account, t, Query(self.habit.sample(r), messages=[{"role": "user", "content": self.shot_prefix + q}]))
                n += 1
                t += timing.gap(r, t)
                if t >= self.ctx.end or n >= self.limit:
                    return
            t += r.uniform(2, 48) * 3600


@register
class AgentLoop(Actor):
    """An agent or tool loop: long conversations of tool calls and tool results."""

    family = "agent_loop"
    label = 0
    kind = "persona"
    weight = 1.5

    def setup(self) -> None:
        r = self.rng
        self.account = self.new_account(UA_SERVICE, n_keys=r.randint(1, 3), n_hosts=r.randint(1, 3))
        self.system = fill("You are an autonomous agent. Tools: search, calculator, {word}_db, http_get. Goal-directed; call tools as JSON.", r)
        self.habit = ParamHabit.draw(r, temperature=r.choice([0.0, 0.2, 0.7, None]))
        self.steps_mean = r.uniform(4, 30)
        self.step_gap = r.uniform(0.8, 10)
        self.task_gap = r.lognormvariate(math.log(900), 1.0)
        self.limit = self.budget(600, 1.0, high=15000)

    def events(self) -> Iterator[dict[str, Any]]:
        r, g = self.rng, self.ctx.grammar
        t = self.start_time()
        n = 0
        while t < self.ctx.end and n < self.limit:
            history = [{"role": "system", "content": self.system}, {"role": "user", "content": g.prompt(r, "tools")}]
            for _ in range(1 + int(r.expovariate(1 / self.steps_mean))):
                yield self.event(self.account, t, Query(self.habit.sample(r), messages=list(history[-60:])))
                n += 1
                history.append({"role": "assistant", "content": fill('{"tool": "{word}", "args": {"q": "{topic}", "n": {a}}}', r)})
                history.append({"role": "tool", "content": fill("{doc}", r)})
                t += r.lognormvariate(math.log(self.step_gap), 0.6)
                if t >= self.ctx.end or n >= self.limit:
                    return
            t += r.lognormvariate(math.log(self.task_gap), 1.0)


@register
class Labeller(Actor):
    """A classification or labelling pipeline: short prompts, tiny max_tokens, logprobs for
    label confidence, and often a constant logit_bias that restricts output to the labels."""

    family = "labeller"
    label = 0
    kind = "persona"
    weight = 1.3

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

    def events(self) -> Iterator[dict[str, Any]]:
        r, g = self.rng, self.ctx.grammar
        t = self.start_time(0.5)
        n = 0
        while t < self.ctx.end and n < self.limit:
            text = self.instruction + (fill("{review}", r) if r.random() < 0.5 else g.prompt(r))
            params = self.habit.sample(r)
            if self.bias:
                params["logit_bias"] = dict(self.bias)
            q = Query(params, prompt=text) if self.completion_style else Query(params, messages=[{"role": "user", "content": text}])
            yield self.event(self.account, t, q)
            n += 1
            t += self.timing.gap(r, t)


@register
class LogprobResearcher(Actor):
    """Legitimate logprob or calibration research: a prompt set re-queried a few times with
    logprobs, varying temperature and seed, occasionally a logit_bias to suppress a token."""

    family = "logprob_researcher"
    label = 0
    kind = "persona"
    weight = 1.2

    def setup(self) -> None:
        r = self.rng
        self.account = self.new_account(UA_SCRIPT, n_keys=1)
        self.prompts = [self.ctx.grammar.prompt(r) for _ in range(r.randint(15, 250))]
        self.repeats = r.randint(1, 5)
        self.habit = ParamHabit.draw(r, logprobs_p=1.0, top_logprobs=r.randint(3, 20), max_tokens=r.choice([1, 5, 16, 64, 256]))
        self.bias_p = r.uniform(0, 0.3)
        self.rate = r.lognormvariate(math.log(0.3), 0.8)
        self.hours = ActiveHours.draw(r)
        self.completion_style = r.random() < 0.5
        self.limit = self.budget(600, 0.8, high=8000)

    def events(self) -> Iterator[dict[str, Any]]:
        r = self.rng
        timing = MachineTiming.draw(r, self.rate)
        t = self.hours.next_start(self.start_time(), r)
        n = 0
        while t < self.ctx.end and n < self.limit:
            for p in self.prompts:
                for _ in range(self.repeats):
                    params = self.habit.sample(r)
                    params["temperature"] = r.choice([0.0, 0.5, 1.0])
                    if r.random() < self.bias_p:
                        params["logit_bias"] = {str(r.randint(100, 50000)): -100.0}
                    q = Query(params, prompt=p) if self.completion_style else Query(params, messages=[{"role": "user", "content": p}])
                    yield self.event(self.account, t, q)
                    n += 1
                    t += timing.gap(r, t)
                    if t >= self.ctx.end or n >= self.limit:
                        return
            t = self.hours.next_start(t + r.uniform(3600, 48 * 3600), r)


@register
class CorporateNat(Actor):
    """Many employees' accounts behind one corporate NAT prefix: chat users and developers
    whose traffic shares one client IP block (a hard case for per-address limits)."""

    family = "corporate_nat"
    label = 0
    kind = "persona"
    weight = 0.6

    def setup(self) -> None:
        r = self.rng
        self.prefix = Prefix.draw(r, v6_share=0.2)
        self.members: list[Actor] = []
        for i in range(r.randint(5, 40)):
            cls = ChatUser if r.random() < 0.7 else PromptDeveloper
            member = cls(f"{self.actor_id}.{i}", r.getrandbits(64), self.ctx, shared_prefixes=[self.prefix])
            self.members.append(member)

    def events(self) -> Iterator[dict[str, Any]]:
        import heapq

        for ev in heapq.merge(*(m.events() for m in self.members), key=lambda e: e["ts"]):
            ev["family"] = self.family
            ev["actor"] = self.actor_id
            yield ev


