"""The shared interface of every simulated actor, and the decorator that registers a family.

An actor is one real party: a person, a company's backend, an attacker. Each instance draws
its own behavioural parameters from distributions in `setup()` (never fixed constants) and
then yields its requests in time order from `events()`. Families register through `register`;
`moat.data_gen.registry` imports every family module and lists them. This module imports no
family module, so personas and attacks build on it without an import circle.
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from moat.data_gen.identity import Account, Prefix
from moat.data_gen.text import PromptGrammar
from moat.data_gen.text_habit import TextHabit
from moat.data_gen.timing import TimingLibrary

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


@dataclass(frozen=True)
class SimContext:
    """What every actor of one simulation shares: the time span and the text and timing sources."""

    start: float
    end: float
    grammar: PromptGrammar
    timing: TimingLibrary | None = None


# (temperature, max_tokens, stream) of a few chat front-ends, the first the most common.
FRONTEND_PRESETS = [(0.7, None, True), (0.7, None, True), (0.8, 1024, True), (1.0, None, True), (None, None, True), (0.7, 2048, False), (0.5, 4096, True)]


def habit_share(rng: random.Random, low: float) -> float:
    """How often a client that uses an optional field sends it. Real clients are code or a
    front-end: a field is almost always sent on every request or never, and only some clients
    flip it per request. Flipping it at random on most requests made parameter changes look
    normal in the simulator (half of all windows) while real traffic barely has them."""
    return 1.0 if rng.random() < 0.8 else rng.uniform(low, 1.0)


@dataclass
class ParamHabit:
    """An actor's habits for sampling parameters: which fields it sends and how they vary."""

    temperature: float | None
    temperature_jitter: float
    max_tokens: int | None
    max_tokens_spread: float
    top_p: float | None
    logprobs_p: float
    top_logprobs: int | None
    seed_p: float
    stop_p: float
    stream_p: float
    n: int

    @classmethod
    def draw(cls, rng: random.Random, **overrides: Any) -> "ParamHabit":
        habit = cls(
            temperature=None if rng.random() < 0.3 else rng.choice([0.0, 0.2, 0.5, 0.7, 0.8, 1.0, round(rng.uniform(0, 1.3), 2)]),
            temperature_jitter=0.0 if rng.random() < 0.8 else rng.uniform(0.02, 0.3),
            max_tokens=None if rng.random() < 0.35 else int(rng.choice([64, 128, 256, 512, 1024, 2048, 4096, rng.randint(16, 4000)])),
            max_tokens_spread=0.0 if rng.random() < 0.85 else rng.uniform(0.1, 1.0),
            top_p=None if rng.random() < 0.85 else round(rng.uniform(0.5, 1.0), 2),
            logprobs_p=0.0 if rng.random() < 0.9 else habit_share(rng, 0.05),
            top_logprobs=rng.randint(0, 5),
            seed_p=0.0 if rng.random() < 0.85 else habit_share(rng, 0.2),
            stop_p=0.0 if rng.random() < 0.8 else habit_share(rng, 0.2),
            stream_p=0.0 if rng.random() < 0.5 else habit_share(rng, 0.3),
            n=1 if rng.random() < 0.95 else rng.randint(2, 4),
        )
        for key, value in overrides.items():
            setattr(habit, key, value)
        return habit

    @classmethod
    def frontend(cls, rng: random.Random) -> "ParamHabit":
        """The fixed parameters of a chat front-end: every user of one app sends the same ones
        on every request, so its users share a client fingerprint."""
        temperature, max_tokens, stream = rng.choice(FRONTEND_PRESETS)
        return cls(
            temperature=temperature, temperature_jitter=0.0, max_tokens=max_tokens, max_tokens_spread=0.0, top_p=None, logprobs_p=0.0,
            top_logprobs=None, seed_p=0.0, stop_p=0.0, stream_p=1.0 if stream else 0.0, n=1,
        )

    def sample(self, rng: random.Random) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if self.temperature is not None:
            t = self.temperature + (rng.gauss(0, self.temperature_jitter) if self.temperature_jitter else 0.0)
            params["temperature"] = round(min(max(t, 0.0), 2.0), 2)
        if self.top_p is not None:
            params["top_p"] = self.top_p
        if self.max_tokens is not None:
            m = self.max_tokens
            if self.max_tokens_spread:
                m = int(m * math.exp(rng.gauss(0, self.max_tokens_spread)))
            params["max_tokens"] = max(1, m)
        if self.n > 1:
            params["n"] = self.n
        if self.logprobs_p and rng.random() < self.logprobs_p:
            params["logprobs"] = True
            if self.top_logprobs:
                params["top_logprobs"] = self.top_logprobs
        if self.seed_p and rng.random() < self.seed_p:
            params["seed"] = rng.randint(0, 2**31 - 1)
        if self.stop_p and rng.random() < self.stop_p:
            params["stop"] = rng.choice(["\n\n", "###", ["</s>", "\nUser:"], "END"])
        if self.stream_p and rng.random() < self.stream_p:
            params["stream"] = True
        return params


@dataclass
class Query:
    """What an actor asks next: chat messages or a completion prompt, with its parameters."""

    params: dict[str, Any]
    messages: list[dict[str, str]] | None = None
    prompt: str | None = None

    @property
    def endpoint(self) -> str:
        return CHAT if self.messages is not None else COMPLETIONS


class Actor(ABC):
    """One simulated party. Subclasses name their family and label and implement `events()`."""

    family: ClassVar[str]
    label: ClassVar[int]
    kind: ClassVar[str]  # "persona" or "attack"
    weight: ClassVar[float] = 1.0  # relative share among actors of its kind
    source: ClassVar[str] = ""
    # Whether one hand writes every account's prompts (a script behind many accounts) or each
    # account is its own writer (the people of a crowd or an office).
    one_writer: ClassVar[bool] = False
    # Whether code writes the prompts (the same opener or paste on every one) or a person (some
    # requests opened or pasted, others not): data_gen/text_habit.py.
    scripted_text: ClassVar[bool] = False

    def __init__(self, actor_id: str, seed: int, ctx: SimContext, shared_prefixes: list[Prefix] | None = None) -> None:
        self.actor_id = actor_id
        self.rng = random.Random(seed)
        self.ctx = ctx
        self.shared_prefixes = shared_prefixes
        self._seq = 0
        self._habit_seed = seed ^ 0x7E47
        self._habits: dict[str, TextHabit] = {}
        self.setup()

    def setup(self) -> None:
        """Draw this actor's behavioural parameters."""

    @abstractmethod
    def events(self) -> Iterator[dict[str, Any]]:
        """Yield this actor's request events in time order."""

    def text_habit(self, account_id: str) -> TextHabit:
        """How the writer of this account writes (data_gen/text_habit.py)."""
        writer = self.actor_id if self.one_writer else account_id
        habit = self._habits.get(writer)
        if habit is None:
            # Its own generator: drawn beside the family's behaviour without shifting the draws
            # that `setup()` and `events()` make from `self.rng`.
            habit = self._habits[writer] = TextHabit.draw(random.Random(f"{self._habit_seed}:{writer}"), script=self.scripted_text)
        return habit

    # Helpers shared by all actors.
    def new_account(self, ua_weights: dict[str, float], n_keys: int = 1, n_prefixes: int = 1, n_hosts: int = 1) -> Account:
        prefixes = self.shared_prefixes or [Prefix.draw(self.rng) for _ in range(n_prefixes)]
        return Account.draw(self.rng, ua_weights, n_keys=n_keys, prefixes=prefixes, n_hosts=n_hosts)

    def start_time(self, lead: float = 0.7) -> float:
        return self.ctx.start + self.rng.uniform(0, lead * (self.ctx.end - self.ctx.start))

    def budget(self, median: float, sigma: float = 0.8, low: int = 5, high: int = 20000) -> int:
        return int(min(max(self.rng.lognormvariate(math.log(median), sigma), low), high))

    def event(self, account: Account, ts: float, query: Query, key: str | None = None) -> dict[str, Any]:
        self._seq += 1
        ev: dict[str, Any] = {
            "request_id": f"{self.actor_id}-{self._seq}",
            "ts": round(ts, 3),
            "account_id": account.account_id,
        }
        key = key or self.rng.choice(account.keys)
        if key:
            ev["api_key_id"] = key
        ev["client_ip"] = account.host(self.rng)
        if account.user_agent is not None:
            ev["user_agent"] = account.user_agent
        ev["endpoint"] = query.endpoint
        ev["model"] = account.model
        habit = self.text_habit(account.account_id)
        if query.messages is not None:
            ev["messages"] = query.messages if habit.plain else [self._written(m, habit) for m in query.messages]
        else:
            ev["prompt"] = habit.rewrite(query.prompt) if query.prompt is not None else None
        ev["params"] = query.params
        ev["label"] = self.label
        ev["family"] = self.family
        ev["actor"] = self.actor_id
        return ev

    @staticmethod
    def _written(message: dict[str, str], habit: TextHabit) -> dict[str, str]:
        # A new dict: the actor keeps its history as the grammar wrote it, and every request
        # rewrites it the same way (the habit is a pure function of the text).
        if message.get("role") in ("user", "assistant") and isinstance(message.get("content"), str):
            content = habit.rewrite(message["content"]) if message["role"] == "user" else habit.rewrite_reply(message["content"])
            return {**message, "content": content}
        return message


_REGISTERED: dict[str, type[Actor]] = {}


ActorClass = TypeVar("ActorClass", bound=type[Actor])


def register(cls: ActorClass) -> ActorClass:
    """Class decorator: make a family known to `registered()` under its `family` name."""
    if cls.family in _REGISTERED:
        raise ValueError(f"family {cls.family!r} registered twice")
    _REGISTERED[cls.family] = cls
    return cls


def registered() -> dict[str, type[Actor]]:
    """The families registered so far, in registration order: only those whose modules have been
    imported. `moat.data_gen.registry.registry()` imports them all first."""
    return dict(_REGISTERED)
