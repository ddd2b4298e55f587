"""Who sends a request: accounts, API keys, client addresses and user agents.

Benign and attack actors draw from the same pools with overlapping weights, so no single
identity field separates them (attackers run the official SDKs too; developers use curl).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

USER_AGENTS = {
    "openai-python": ["OpenAI/Python 1.{v}.0", "AsyncOpenAI/Python 1.{v}.2"],
    "openai-node": ["OpenAI/JS 4.{v}.1"],
    "python-requests": ["python-requests/2.{v}.0"],
    "httpx": ["python-httpx/0.{v}.0"],
    "aiohttp": ["Python/3.11 aiohttp/3.{v}.1"],
    "curl": ["curl/8.{v}.0"],
    "go": ["Go-http-client/2.0"],
    "browser": [
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/12{v}.0 Safari/537.36",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_{v}) AppleWebKit/605.1.15 Version/17.{v} Safari/605.1.15",
    ],
    "langchain": ["langchain/0.{v}.3 OpenAI/Python 1.{v}.0"],
    "custom": ["{app}/1.{v} (+https://example.com)", "{app}-worker/2.{v}"],
}
UA_FAMILIES = sorted(USER_AGENTS)
APP_NAMES = ["acme", "helpdesk", "docbot", "tutorly", "scribe", "lexio", "codepal", "quill", "nimbus", "ranger"]
MODELS = ["frontier-1", "frontier-1-mini", "frontier-2", "frontier-2-reasoning"]
# Most traffic goes to a provider's flagship model, as on real APIs: so that many unrelated
# clients share a model (and with it a client fingerprint), not a quarter of them each.
MODEL_WEIGHTS = [0.55, 0.25, 0.12, 0.08]
LATEST_VERSION = 40


def client_version(rng: random.Random) -> int:
    """A client release: most installs run one of the last few (auto-updating browsers, pinned
    SDK majors), with a long tail of old ones. Real user-agent strings are concentrated like
    this, so many unrelated people send the exact same one; a uniform draw over 41 releases made
    every exact user agent nearly unique and a shared one suspicious by itself."""
    return LATEST_VERSION - min(int(rng.expovariate(0.45)), LATEST_VERSION)


def model_choice(rng: random.Random) -> str:
    return rng.choices(MODELS, weights=MODEL_WEIGHTS)[0]


def user_agent(rng: random.Random, weights: dict[str, float]) -> str | None:
    """A user agent from the given family weights; the key 'none' means no header at all."""
    names = list(weights)
    family = rng.choices(names, weights=[weights[n] for n in names])[0]
    if family == "none":
        return None
    template = rng.choice(USER_AGENTS[family])
    return template.replace("{v}", str(client_version(rng))).replace("{app}", rng.choice(APP_NAMES))


def hex_id(rng: random.Random, prefix: str, n: int = 10) -> str:
    return f"{prefix}{rng.getrandbits(4 * n):0{n}x}"


@dataclass(frozen=True)
class Prefix:
    """An address block an actor sends from: an IPv4 /24 or an IPv6 /48."""

    v6: bool
    parts: tuple[int, ...]

    @classmethod
    def draw(cls, rng: random.Random, v6_share: float = 0.15) -> "Prefix":
        if rng.random() < v6_share:
            return cls(True, (0x2001, rng.randint(0x200, 0xFFFF), rng.randint(0, 0xFFFF)))
        # Avoid reserved first octets; the rest is uniform so prefixes rarely collide by chance.
        return cls(False, (rng.choice([23, 34, 45, 52, 64, 81, 98, 104, 141, 172, 185, 203]), rng.randint(0, 255), rng.randint(0, 255)))

    def address(self, rng: random.Random) -> str:
        if self.v6:
            tail = ":".join(f"{rng.randint(0, 0xFFFF):x}" for _ in range(5))
            return ":".join(f"{p:x}" for p in self.parts) + ":" + tail
        return ".".join(str(p) for p in self.parts) + f".{rng.randint(1, 254)}"


@dataclass
class Account:
    """One account as the gateway sees it: its keys, the addresses it uses, its client."""

    account_id: str
    keys: list[str]
    prefixes: list[Prefix]
    user_agent: str | None
    model: str
    hosts: list[str] = field(default_factory=list)

    @classmethod
    def draw(
        cls,
        rng: random.Random,
        ua_weights: dict[str, float],
        n_keys: int = 1,
        prefixes: list[Prefix] | None = None,
        n_hosts: int = 1,
    ) -> "Account":
        prefixes = prefixes or [Prefix.draw(rng)]
        hosts = [rng.choice(prefixes).address(rng) for _ in range(n_hosts)]
        return cls(
            account_id=hex_id(rng, "acct_"),
            keys=[hex_id(rng, "key_", 8) for _ in range(n_keys)],
            prefixes=prefixes,
            user_agent=user_agent(rng, ua_weights),
            model=model_choice(rng),
            hosts=hosts,
        )

    def host(self, rng: random.Random) -> str:
        return rng.choice(self.hosts)


def _fixed_pool(seed: int, n: int) -> list[Prefix]:
    rng = random.Random(seed)
    return [Prefix.draw(rng, v6_share=0.0) for _ in range(n)]


# Address blocks that many unrelated parties share: a cloud region's egress /24s (tenants'
# backends and attackers' rented servers alike) and mobile carriers' NAT pools (CGNAT hands a
# subscriber a different address of the pool per connection). Fixed, not drawn per actor, so
# that benign tenants, NAT crowds and attackers of one trace really do meet in the same blocks.
CLOUD_PREFIXES = _fixed_pool(0xC10D, 12)
CARRIER_POOLS = [_fixed_pool(0xCA00 + i, 8) for i in range(3)]


# Weights over user-agent families. They overlap on purpose (see module docstring).
UA_HUMAN = {"browser": 4, "openai-python": 2, "curl": 0.5, "langchain": 0.5, "custom": 1, "none": 0.3}
UA_SERVICE = {"openai-python": 3, "openai-node": 2, "httpx": 1, "aiohttp": 1, "go": 1, "custom": 2, "langchain": 1, "python-requests": 1}
UA_BROWSER = {"browser": 8, "none": 0.2, "custom": 0.3}  # a chat front-end's or a browser extension's traffic
UA_SCRIPT = {"openai-python": 3, "python-requests": 2, "httpx": 1.5, "aiohttp": 1, "curl": 0.7, "go": 0.7, "custom": 1, "none": 0.5, "browser": 0.4}
