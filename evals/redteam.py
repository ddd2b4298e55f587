"""Hand-written extraction scripts on real prompts, replayed inside an operator's own traffic.

The simulator writes every attack family Moat trains on, so in-simulator figures cannot say how
Moat meets a pattern nobody showed it. This check writes attackers by hand, the way a person
would script them against an API, from real prompt files (`--prompts`), and places them at
random times inside a trace of real traffic (`--background`, an operator's unlabelled sample
such as calib-spread). Each script is a small class below, on purpose sharing no code with
`moat.data_gen`: a quirk of the simulator cannot make them easy.

No label enters scoring. The scripted families' figures and the background's share of accounts
acted on are label-free, so they may guide development; the background share counts the
sample's own attackers too. Where the background is a labelled dev trace, its benign and attack
accounts are also reported apart: that split is evaluation, never a development signal.

Each scripted actor meets Moat alone: it is scored in a pass of its own over the background
(fresh memory state), so two actors of one family never count as each other's cohort or
campaign, which one attacker would not have. The hydra cohort is one actor of 40 accounts, on
purpose. The background's own figures come from a pass without any scripted actor.

Run: python -m moat.evals.redteam --background ../shared/data/external/calib-spread.jsonl.gz
       --prompts ../shared/data/arena_hard_v0.1_question.jsonl ../shared/data/koala_test_set.jsonl
       [--model DIR] [--actors 6] [--seed 0] --out runs/redteam
It writes report.md (the table), metrics.json and redteam.png (acted on and blocked per family).
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import ipaddress
import json
import math
import random
import re
import statistics
import sys
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from tqdm import tqdm

from moat.data_gen.corpus import load_corpus
from moat.evals.plots import plot_redteam
from moat.models.events import TRACE_LABEL_FIELDS, Event
from moat.models.traces import iter_raw
from moat.serving.settings import ServingSettings

if TYPE_CHECKING:
    from moat.models.bundle import BundleMeta

PREFIX = "redteam-"  # every scripted account id starts with it; no background id may
# Scripted clients send from 10.0.0.0/8, one /24 each, drawn without replacement; a background
# that uses the range is refused, so no scripted account shares an address block with a real
# one. (Not a documentation or benchmarking range: the external traces use those.)
ADDRESSES = ipaddress.ip_network("10.0.0.0/8")
MIN_PROMPTS = 30  # the scripts sample up to 30 distinct prompts
UA_SDK = "OpenAI/Python 1.55.3"
UA_NODE = "OpenAI/NodeJS/4.73.0"
UA_REQUESTS = "python-requests/2.32.3"
UA_BROWSER = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15"
LABEL_NAMES = {0: "benign", 1: "attack"}
FILLERS = ("really", "actually", "just", "exactly", "also", "kindly", "briefly")
ENDINGS = ("?", ".", "!", " Thanks.", " Be concise.", " Answer briefly.")


@dataclass
class Ctx:
    """What a script draws from: its random stream, the prompts, and the background's span."""

    rng: random.Random
    prompts: list[str]
    start: float
    end: float
    _n: int = 0
    _blocks: list[int] = field(default_factory=list)

    def when(self, hours: float) -> float:
        """A start time that leaves `hours` of the span for the actor to run in."""
        return self.rng.uniform(self.start, max(self.start, self.end - hours * 3600))

    def address(self) -> str:
        """A host in a /24 of ADDRESSES that this context has not handed out before."""
        if not self._blocks:
            self._blocks = self.rng.sample(range(ADDRESSES.num_addresses // 256), 64)
        block = ADDRESSES.network_address + 256 * self._blocks.pop()
        return str(block + self.rng.randrange(1, 255))

    def request(
        self, account: str, ts: float, text: str, params: dict[str, Any], user_agent: str, ip: str, *, key: str | None = None, endpoint: str = "/v1/chat/completions", system: str | None = None
    ) -> dict[str, Any]:
        self._n += 1
        event: dict[str, Any] = {
            "request_id": f"{account}-r{self._n}",
            "ts": round(ts, 3),
            "account_id": account,
            "api_key_id": key or f"{account}-key",
            "client_ip": ip,
            "user_agent": user_agent,
            "endpoint": endpoint,
            "model": "frontier-1",
            "params": params,
        }
        if endpoint == "/v1/completions":
            event["prompt"] = text
        else:
            event["messages"] = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
        return event


def word_edit(text: str, rng: random.Random) -> str:
    """A small edit a boundary prober makes: swap, drop or insert a word, change a number or the
    ending. Always applied to the seed, not to the last variant, so variants stay its neighbours."""
    words = text.split()
    if len(words) < 4:
        return text + rng.choice(ENDINGS)
    i = rng.randrange(len(words) - 1)
    kind = rng.randrange(5)
    if kind == 0:
        words[i], words[i + 1] = words[i + 1], words[i]
    elif kind == 1:
        del words[i]
    elif kind == 2:
        words.insert(i, rng.choice(FILLERS))
    elif kind == 3 and re.search(r"\d", words[i]):
        words[i] = re.sub(r"\d+", lambda m: str(int(m.group()) + rng.randint(1, 9)), words[i])
    else:
        return " ".join(words) + rng.choice(ENDINGS)
    return " ".join(words)


@dataclass(frozen=True)
class Script(ABC):
    """One hand-written attacker: `actor` returns the requests of one actor (one account, or
    several for a cohort), in time order."""

    family: str

    @abstractmethod
    def actor(self, ctx: Ctx, name: str) -> list[dict[str, Any]]:
        """The requests of actor `name` (its account ids start with it)."""


@dataclass(frozen=True)
class ParaphraseProbe(Script):
    """Boundary probing: two to five seed prompts, each re-sent hundreds of times as small word
    edits of itself, to map where an answer flips. `gap_s` is the median pause between requests."""

    gap_s: float = 2.0

    def actor(self, ctx: Ctx, name: str) -> list[dict[str, Any]]:
        r = ctx.rng
        seeds = r.sample(ctx.prompts, r.randint(2, 5))
        ip, params = ctx.address(), {"temperature": 0, "max_tokens": r.choice([64, 256])}
        ts = ctx.when(6)
        out = []
        for _ in range(r.randint(120, 300)):
            ts += r.lognormvariate(math.log(self.gap_s), 0.5)
            out.append(ctx.request(name, ts, word_edit(r.choice(seeds), r), params, UA_SDK, ip))
        return out


@dataclass(frozen=True)
class SamplingHarvest(Script):
    """Distribution estimation: each prompt re-sent 5-12 times with n=8 at temperature 1, to
    harvest many samples of the answer distribution per question."""

    def actor(self, ctx: Ctx, name: str) -> list[dict[str, Any]]:
        r = ctx.rng
        ip, ts, out = ctx.address(), ctx.when(6), []
        for prompt in r.sample(ctx.prompts, r.randint(10, 30)):
            for _ in range(r.randint(5, 12)):
                ts += r.uniform(2, 8)
                out.append(ctx.request(name, ts, prompt, {"temperature": 1.0, "n": 8, "max_tokens": 1024}, UA_SDK, ip))
        return out


@dataclass(frozen=True)
class SoftLabelDistill(Script):
    """Soft-label distillation: diverse prompts, each answer with the top 20 logprobs per token,
    the richest training signal a chat API gives."""

    def actor(self, ctx: Ctx, name: str) -> list[dict[str, Any]]:
        r = ctx.rng
        ip, ts, out = ctx.address(), ctx.when(8), []
        params = {"temperature": r.choice([0.7, 1.0]), "logprobs": True, "top_logprobs": 20, "max_tokens": 512}
        for _ in range(r.randint(200, 500)):
            ts += r.expovariate(1 / 4)
            out.append(ctx.request(name, ts, r.choice(ctx.prompts), params, r.choice([UA_SDK, UA_REQUESTS]), ip))
        return out


@dataclass(frozen=True)
class CompletionWalk(Script):
    """A task file walked in order on the completions endpoint, one to four samples per task, as
    a code or text-completion distiller does."""

    def actor(self, ctx: Ctx, name: str) -> list[dict[str, Any]]:
        r = ctx.rng
        ip, ts, out = ctx.address(), ctx.when(8), []
        first = r.randrange(len(ctx.prompts))
        for prompt in (ctx.prompts[first:] + ctx.prompts[:first])[: r.randint(100, 200)]:
            for _ in range(r.randint(1, 4)):
                ts += r.uniform(1, 4)
                out.append(ctx.request(name, ts, prompt, {"temperature": 0.8, "max_tokens": 512, "stop": ["\n\n\n"]}, UA_REQUESTS, ip, endpoint="/v1/completions"))
        return out


@dataclass(frozen=True)
class KeyRotation(Script):
    """Distillation from one account through a dozen API keys taken in turn, so no key's own
    history looks like much."""

    def actor(self, ctx: Ctx, name: str) -> list[dict[str, Any]]:
        r = ctx.rng
        ip, ts, out, keys = ctx.address(), ctx.when(6), [], r.randint(8, 16)
        for i in range(r.randint(200, 400)):
            ts += r.uniform(0.5, 2)
            out.append(ctx.request(name, ts, r.choice(ctx.prompts), {"temperature": 0.7, "max_tokens": 1024}, "aiohttp/3.10.10", ip, key=f"{name}-key{i % keys}"))
        return out


@dataclass(frozen=True)
class LowAndSlow(Script):
    """A browser-like client sending one never-repeated prompt every two to seven minutes all day:
    below any rate limit, with nothing about it but its persistence."""

    def actor(self, ctx: Ctx, name: str) -> list[dict[str, Any]]:
        r = ctx.rng
        ip, ts, out = ctx.address(), ctx.start + r.uniform(0, 3600), []
        for prompt in r.sample(ctx.prompts, len(ctx.prompts)):
            ts += r.uniform(120, 420)
            if ts > ctx.end:
                break
            out.append(ctx.request(name, ts, prompt, {"temperature": 0.7, "stream": True}, UA_BROWSER, ip))
        return out


@dataclass(frozen=True)
class HydraCohort(Script):
    """Forty fresh accounts from forty address blocks within half an hour, one client, one
    prompt pool split between them, 15-30 requests each."""

    def actor(self, ctx: Ctx, name: str) -> list[dict[str, Any]]:
        r = ctx.rng
        pool, start, out, k = r.sample(ctx.prompts, len(ctx.prompts)), ctx.when(4), [], 0
        for a in range(40):
            ts, ip = start + r.uniform(0, 1800), ctx.address()
            for _ in range(r.randint(15, 30)):
                ts += r.uniform(3, 12)
                out.append(ctx.request(f"{name}-{a}", ts, pool[k % len(pool)], {"temperature": 0.7, "max_tokens": 768}, UA_REQUESTS, ip))
                k += 1
        return sorted(out, key=lambda e: e["ts"])


@dataclass(frozen=True)
class WrappedDistill(Script):
    """Distillation dressed as an app backend: a constant system prompt, streaming, a Node SDK,
    Poisson arrivals; the user turns are the prompt file, never repeated."""

    def actor(self, ctx: Ctx, name: str) -> list[dict[str, Any]]:
        r = ctx.rng
        ip, ts, out = ctx.address(), ctx.when(8), []
        system = "You are a helpful assistant. Answer thoroughly and explain your reasoning."
        for prompt in r.sample(ctx.prompts, min(len(ctx.prompts), r.randint(300, 600))):
            ts += r.expovariate(1 / 2)
            out.append(ctx.request(name, ts, prompt, {"temperature": 0.5, "max_tokens": 512, "stream": True}, UA_NODE, ip, system=system))
        return out


# The one registry: each family once, with the variants worth telling apart.
SCRIPTS: tuple[Script, ...] = (
    ParaphraseProbe("paraphrase-probe-machine", gap_s=2.0),
    ParaphraseProbe("paraphrase-probe-human", gap_s=25.0),
    SamplingHarvest("sampling-harvest"),
    SoftLabelDistill("softlabel-distill"),
    CompletionWalk("completion-walk"),
    KeyRotation("key-rotation"),
    LowAndSlow("low-and-slow"),
    HydraCohort("hydra-cohort"),
    WrappedDistill("wrapped-distill"),
)


def write_actor(script: Script, index: int, prompts: list[str], start: float, end: float, seed: int) -> list[dict[str, Any]]:
    """Actor `index` of `script`, in time order. Each (script, actor) draws from its own stream,
    so adding a script or an actor leaves the others' requests as they were."""
    ctx = Ctx(random.Random(f"{seed}:{script.family}:{index}"), prompts, start, end)
    return script.actor(ctx, f"{PREFIX}{script.family}-{index}")


@dataclass
class Outcome:
    """One account through the check."""

    requests: int = 0
    first_action: int | None = None  # 1-based index of its first request answered other than allow
    blocked: bool = False
    max_risk: float = 0.0

    def see(self, action: str, risk: float) -> None:
        """The account's next answer."""
        self.requests += 1
        self.max_risk = max(self.max_risk, risk)
        if action != "allow" and self.first_action is None:
            self.first_action = self.requests
        self.blocked |= action == "block"


@dataclass
class RedTeamResult:
    families: dict[str, list[Outcome]] = field(default_factory=dict)
    background: list[Outcome] = field(default_factory=list)
    # The background's accounts by the label its trace gives them (evaluation only); empty when
    # the background is unlabelled.
    labelled: dict[int, list[Outcome]] = field(default_factory=dict)


def tally(scored: Iterator[tuple[str, str, float]], family: dict[str, str], labels: dict[str, int] | None = None, names: tuple[str, ...] = ()) -> RedTeamResult:
    """Per account outcomes from (account, action, risk) in trace order. `labels`, the
    background's labels by account, only splits the report; `names` are families to list even
    when a script had no time to send anything in the background's span."""
    accounts: dict[str, Outcome] = defaultdict(Outcome)
    for account, action, risk in scored:
        accounts[account].see(action, risk)
    result = RedTeamResult(families={f: [] for f in (*names, *family.values())})
    for account, o in accounts.items():
        if account in family:
            result.families.setdefault(family[account], []).append(o)
        else:
            result.background.append(o)
            if labels and account in labels:
                result.labelled.setdefault(labels[account], []).append(o)
    return result


def read_background(path: Path) -> tuple[list[Event], dict[str, int]]:
    """The background's events, validated, without their trace labels, in time order; and each
    account's label where the trace has them (1 if any of its events is labelled an attack)."""
    events, labels = [], {}
    for lineno, raw in enumerate(iter_raw(path), 1):
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: event {lineno}: not a JSON object")
        if raw.get("label") in (0, 1):
            labels[raw.get("account_id")] = max(labels.get(raw.get("account_id"), 0), raw["label"])
        try:
            event = Event.model_validate({k: v for k, v in raw.items() if k not in TRACE_LABEL_FIELDS})
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ValueError(f"{path}: event {lineno}: {'.'.join(map(str, first['loc'])) or 'event'}: {first['msg']}") from exc
        if event.account_id.startswith(PREFIX):
            raise ValueError(f"{path}: event {lineno}: account id {event.account_id!r} starts with {PREFIX!r}, which the scripted accounts use")
        if event.client_ip and _in_addresses(event.client_ip):
            raise ValueError(f"{path}: event {lineno}: client_ip {event.client_ip} is in {ADDRESSES}, which the scripted clients use")
        events.append(event)
    if not events:
        raise ValueError(f"{path}: no events")
    events.sort(key=lambda e: e.ts)
    return events, labels


def _in_addresses(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip) in ADDRESSES
    except ValueError:  # not an address: the scorer reads it as an opaque key
        return False


def score_pass(background: list[Event], attack: list[dict[str, Any]], model: Path | None) -> Iterator[tuple[str, str, float]]:
    """(account, action, risk) of every request of the background with one actor merged in, in
    time order, from fresh memory state in enforce mode, whatever the environment says."""
    from moat.serving.scorer import Scorer  # onnxruntime only when a check runs

    scorer = Scorer(ServingSettings(mode="enforce", state="memory", time_source="caller"), bundle=model)
    merged = list(heapq.merge(background, (Event.model_validate(e) for e in attack), key=lambda e: e.ts))
    for e, s in zip(merged, scorer.score_stream(merged), strict=True):
        yield e.account_id, s.action, s.risk


def run(background: Path, prompts: list[str], model: Path | None, actors: int, seed: int, progress: bool = True) -> RedTeamResult:
    if len(set(prompts)) < MIN_PROMPTS:
        raise ValueError(f"--prompts: {len(set(prompts))} distinct prompts; the scripts need at least {MIN_PROMPTS}")
    base, labels = read_background(background)
    start, end = base[0].ts, base[-1].ts
    result = tally(score_pass(base, [], model), {}, labels, tuple(s.family for s in SCRIPTS))
    jobs = [(script, i) for script in SCRIPTS for i in range(actors)]
    for script, i in tqdm(jobs, desc="red team passes", unit="actor", disable=not progress):
        attack = write_actor(script, i, prompts, start, end, seed)
        scripted = tally(score_pass(base, attack, model), {e["account_id"]: script.family for e in attack})
        result.families[script.family] += scripted.families.get(script.family, [])
    return result


def background_at_or_above(result: RedTeamResult, outs: list[Outcome]) -> float | None:
    """The median, over these accounts, of the share of background accounts whose highest risk
    is at or above the account's own: where it ranks inside real traffic, whatever thresholds a
    bundle or an operator chose. Thresholds move from bundle to bundle; the rank is what decides
    how many of the operator's own accounts any threshold that catches it would also act on."""
    ranked = sorted(o.max_risk for o in result.background)
    if not ranked or not outs:
        return None
    return statistics.median((len(ranked) - bisect.bisect_left(ranked, o.max_risk)) / len(ranked) for o in outs)


def _row(name: str, outs: list[Outcome], above: float | None = None) -> str:
    rank = "—" if above is None else f"{above:.1%}"
    if not outs:
        return f"| {name} | 0 | — | — | — | — | {rank} |"
    acted = [o for o in outs if o.first_action is not None]
    queries = statistics.median(o.first_action for o in acted) if acted else math.inf
    return (
        f"| {name} | {len(outs)} | {len(acted) / len(outs):.1%} | {sum(o.blocked for o in outs) / len(outs):.1%} | "
        f"{'∞' if math.isinf(queries) else f'{queries:g}'} | {statistics.median(o.max_risk for o in outs):.3f} | {rank} |"
    )


def render(result: RedTeamResult, background: Path, model: str) -> str:
    lines = [
        f"# Red team: hand-written attackers inside {background.name}",
        "",
        f"Model {model}, enforce mode. Each scripted actor is scored alone with the background. Acted on = "
        "ever throttled, perturbed or blocked; queries = median index of the first request acted on, among "
        "accounts acted on. Background: the trace's own accounts scored without any scripted actor, its "
        "attackers among them where it has any. Background at or above: the median share of the background's "
        "accounts whose highest risk reaches the scripted account's (its rank in this traffic, whatever the thresholds).",
        "",
        "| family | accounts | acted on | blocked | queries to first action | median max risk | background at or above |",
        "|---|---|---|---|---|---|---|",
        *(_row(name, result.families[name], background_at_or_above(result, result.families[name])) for name in sorted(result.families)),
        _row("background, every account", result.background),
        *(_row(f"background, labelled {LABEL_NAMES[y]} (evaluation only)", result.labelled[y]) for y in sorted(result.labelled)),
    ]
    return "\n".join(lines) + "\n"


def metrics(result: RedTeamResult) -> dict[str, Any]:
    def summary(outs: list[Outcome]) -> dict[str, Any]:
        if not outs:
            return {"accounts": 0, "acted_on": None, "blocked": None, "median_queries": None, "median_max_risk": None}
        acted = [o.first_action for o in outs if o.first_action is not None]
        return {
            "accounts": len(outs),
            "acted_on": len(acted) / len(outs),
            "blocked": sum(o.blocked for o in outs) / len(outs),
            "median_queries": statistics.median(acted) if acted else None,
            "median_max_risk": statistics.median(o.max_risk for o in outs),
        }

    return {
        "families": {k: {**summary(v), "background_at_or_above": background_at_or_above(result, v)} for k, v in sorted(result.families.items())},
        "background": summary(result.background),
        "background_by_label": {LABEL_NAMES[y]: summary(v) for y, v in sorted(result.labelled.items())},
    }


def add_script_arguments(ap: argparse.ArgumentParser, actors: int, actors_help: str) -> None:
    """The options of every check that replays these scripts through a bundle."""
    ap.add_argument("--prompts", type=Path, nargs="+", required=True, help="real prompt files (JSONL(.gz) or CSV, as --corpus reads)")
    ap.add_argument("--model", type=Path, default=None, help="bundle directory (default: MOAT_MODEL, else the shipped model)")
    ap.add_argument("--actors", type=int, default=actors, help=f"{actors_help} (default: {actors})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--no-progress", action="store_true")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m moat.evals.redteam", description=__doc__.split("\n\n")[0])
    ap.add_argument("--background", type=Path, required=True, help="trace of real traffic to place the attackers in (labels, if any, only split the report)")
    add_script_arguments(ap, 6, "actors per script, each scored alone")
    args = ap.parse_args(argv)
    try:
        prompts = [t for p in args.prompts for t in read_prompts(p)]
        model = bundle_meta(args.model).model_version
        result = run(args.background, prompts, args.model, args.actors, args.seed, progress=not args.no_progress)
    except (ValueError, OSError, EOFError) as exc:  # EOFError: a truncated .gz
        print(f"redteam: error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    report = render(result, args.background, model)
    (args.out / "report.md").write_text(report)
    summary = metrics(result)
    (args.out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_redteam(summary, args.out / "redteam.png")
    print(report)
    return 0


def read_prompts(path: Path) -> list[str]:
    """The prompts of one `--prompts` file (any format `--corpus` reads)."""
    try:
        return load_corpus(path)
    except ValueError as exc:  # load_corpus names its own flag
        raise ValueError(str(exc).replace("--corpus", "--prompts", 1)) from exc


def bundle_meta(model: Path | None) -> BundleMeta:
    """The meta of `--model`, else of the bundle serving would load; a bad one names the flag."""
    from moat.models.bundle import BundleError, load_bundle
    from moat.models.bundle_source import resolve_model

    try:
        return load_bundle(model or resolve_model(ServingSettings().model))[0]
    except (BundleError, OSError) as exc:
        raise ValueError(f"--model: {exc}") from exc


if __name__ == "__main__":
    sys.exit(main())
