"""What `perturb` costs the attacker and the honest user, measured on a synthetic softmax.

The attack is the one the simulator's `logit_probe` family stands for (Carlini et al. 2024,
"Stealing Part of a Production Language Model", §5-6): send one prompt many times with a
logit_bias on chosen tokens, read the biased tokens' logprobs next to a reference token's, and
solve for the logit differences z_t - z_ref of the whole vocabulary. Every answer the attacker
reads goes through the real action code (`moat.serving.actions`): its request caps, then a
synthetic model, then its response perturbation. The attacker knows the policy (Kerckhoffs):
it uses the clipped bias when bias is clipped and adapts to however many top logprobs come back.

The honest user asks for top logprobs and reads the top token and its probability. Benign cost
is (1) top-1 agreement, the share of prompts whose shown top token is the model's argmax, and
(2) the change in expected calibration error: on a task where the chance of being right equals
the model's top probability, a user who takes exp(shown top logprob) as its confidence is
perfectly calibrated without perturbation; ECE is computed against that expected correctness,
so sampling noise does not enter and the column is the perturbation's cost alone.

Run: python -m moat.evals.perturbation [--vocab 5000] [--attack-prompts 3] [--benign-prompts 2000]"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from moat.serving.actions import ActionSettings, PerturbSettings, ResponsePerturber, get_action

SECRET = b"evaluation-key"
ATTACK_BIAS = 100.0  # the simulator's logit_probe uses ±100, 50 or random magnitudes
ATTACK_TOP = 20
BENIGN_TOP = 5
ECE_BINS = 15

# Request and response settings that change nothing; each level overrides a few of them.
NO_OP = dict(
    max_top_logprobs=20, logit_bias="clip", logit_bias_clip=100.0, temperature_floor=0.0, max_n=128, max_tokens=None, round_step=0.0, noise_nats=0.0,
    secret=SECRET.decode(),
)


@dataclass(frozen=True)
class Level:
    name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    perturb: bool = True  # False: the `allow` action, the API as it is
    keyed: bool = True  # False: fresh noise on every call (what the keyed seed prevents)
    repeats: int = 1  # the attacker sends each query this many times and averages

    @property
    def settings(self) -> PerturbSettings:
        return PerturbSettings(**{**NO_OP, **self.overrides})


# The documented defaults, whatever MOAT_PERTURB_* says in this environment.
DEFAULT = Level("default", {name: f.default for name, f in PerturbSettings.model_fields.items() if name != "secret"})

DEFAULT_CLIP = Level("default, logit_bias=clip", {**DEFAULT.overrides, "logit_bias": "clip"})

LEVELS = [
    Level("none (allow)", perturb=False),
    Level("round 0.1", {"round_step": 0.1}),
    Level("round 0.1 + noise 0.1", {"round_step": 0.1, "noise_nats": 0.1}),
    Level("round 0.1 + noise 0.3", {"round_step": 0.1, "noise_nats": 0.3}),
    Level("round 0.1 + noise 1.0", {"round_step": 0.1, "noise_nats": 1.0}),
    Level("noise 0.3, keyed, 16 repeats", {"round_step": 0.1, "noise_nats": 0.3}, repeats=16),
    Level("noise 0.3, fresh, 16 repeats", {"round_step": 0.1, "noise_nats": 0.3}, keyed=False, repeats=16),
    Level("logit_bias clipped to 5", {"logit_bias_clip": 5.0}),
    Level("logit_bias dropped", {"logit_bias": "drop"}),
    Level("top_logprobs capped at 1", {"max_top_logprobs": 1}),
    DEFAULT,
    DEFAULT_CLIP,
]


class SyntheticModel:
    """An OpenAI chat endpoint over fixed next-token logits: one logit vector per prompt,
    max_tokens=1, the answer is the argmax."""

    def __init__(self, logits: np.ndarray) -> None:
        self.logits = logits

    def __call__(self, body: dict[str, Any]) -> dict[str, Any]:
        z = self.logits[int(body["messages"][0]["content"].split()[-1])].copy()
        for token, b in (body.get("logit_bias") or {}).items():
            z[int(token)] += b
        lp = z - (z.max() + np.log(np.exp(z - z.max()).sum()))
        k = int(body.get("top_logprobs") or 0)
        m = max(k, 1)
        top = np.argpartition(-lp, m - 1)[:m] if m < len(lp) else np.arange(len(lp))
        top = top[np.argsort(-lp[top], kind="stable")]
        # Served at float32 precision, as vLLM and OpenAI serve them.
        tops = [{"token": str(t), "logprob": float(np.float32(lp[t])), "bytes": None} for t in top[:k]]
        content = [{"token": str(top[0]), "logprob": float(np.float32(lp[top[0]])), "bytes": None, "top_logprobs": tops}]
        choice = {"index": 0, "message": {"role": "assistant", "content": str(top[0])}, "logprobs": {"content": content, "refusal": None}, "finish_reason": "length"}
        return {"id": "cmpl-synthetic", "object": "chat.completion", "created": 0, "model": "synthetic", "choices": [choice]}


class API:
    """The synthetic model behind the action `level` asks for."""

    def __init__(self, model: SyntheticModel, level: Level, rng: np.random.Generator) -> None:
        self.model, self.level, self.rng = model, level, rng
        self.settings = level.settings
        self.action = get_action("perturb" if level.perturb else "allow", ActionSettings(perturb=self.settings))

    def top(self, body: dict[str, Any]) -> dict[int, float]:
        """{token id: shown logprob} of the answer's first position."""
        resp = self.model(self.action.request(body))
        if self.level.perturb and not self.level.keyed:
            resp = ResponsePerturber(self.rng.bytes(32), self.settings).body(resp)
        else:
            resp = self.action.response(body, resp)
        return {int(e["token"]): e["logprob"] for e in resp["choices"][0]["logprobs"]["content"][0]["top_logprobs"]}


def _request(prompt: int, bias: dict[int, float] | None = None, top: int = ATTACK_TOP, temperature: float = 0.0) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "synthetic", "messages": [{"role": "user", "content": f"prompt {prompt}"}], "max_tokens": 1,
                            "logprobs": True, "top_logprobs": top, "temperature": temperature}
    if bias:
        body["logit_bias"] = {str(t): b for t, b in bias.items()}
    return body


def _averaged(api: API, body: dict[str, Any], repeats: int) -> dict[int, float]:
    """Each token's mean shown logprob over `repeats` sends of the same query."""
    seen: dict[int, list[float]] = {}
    for _ in range(repeats):
        for t, lp in api.top(body).items():
            seen.setdefault(t, []).append(lp)
    return {t: float(np.mean(v)) for t, v in seen.items()}


def _top1(api: API, prompt: int, t: int, lp_ref0: float, max_bias: float, repeats: int) -> float | None:
    """z_t - z_ref from the top-1 logprob alone (Carlini et al. §6): bias t until it is the top
    token without saturating (p' well below 1, so its logprob still carries digits), then solve
    p' = e^(z_t+B) / (S - e^z_t + e^(z_t+B)) with log S = -lp_ref0, taking z_ref = 0.
    None when even the largest allowed bias does not bring t into view."""
    lo, hi, b = 0.0, max_bias, max_bias
    for _ in range(16):
        shown = _averaged(api, _request(prompt, {t: b}), repeats)
        if t not in shown:
            if b == max_bias:
                return None
            lo = b
        else:
            lp = shown[t]
            if lp < -0.01 or hi - lo < 0.1:
                lp = min(lp, -1e-12)
                return float(lp - lp_ref0 - np.log(np.exp(b) * -np.expm1(lp) + np.exp(lp)))
            hi = b
        b = (lo + hi) / 2
    return None


def attack(api: API, prompt: int, vocab: int, repeats: int = 1) -> tuple[int, dict[int, float]]:
    """The reference token and the recovered z_t - z_ref for every token the attack saw."""
    base = _averaged(api, _request(prompt), repeats)
    ref = max(base, key=base.get)
    lp_ref0 = base[ref]
    diff = {t: lp - lp_ref0 for t, lp in base.items()}
    s = api.settings
    # The bias the server will apply (the attacker knows the policy); dropped bias is no bias.
    bias = ATTACK_BIAS if not api.level.perturb else 0.0 if s.logit_bias == "drop" else min(ATTACK_BIAS, s.logit_bias_clip)
    batch = max(len(base) - 1, 1)  # the reference stays in view when one slot is left for it
    targets = [t for t in range(vocab) if t not in diff]
    for i in range(0, len(targets), batch):
        chunk = targets[i: i + batch]
        shown = _averaged(api, _request(prompt, {t: ATTACK_BIAS for t in chunk}), repeats)
        if ref in shown:
            # Same normaliser for every shown token: the difference is exact, less the bias.
            for t, lp in shown.items():
                if t not in diff:
                    diff[t] = lp - shown[ref] - (bias if t in chunk else 0.0)
        elif len(chunk) == 1:
            solved = _top1(api, prompt, chunk[0], lp_ref0, bias, repeats)
            if solved is not None:
                diff[chunk[0]] = solved
    return ref, diff


@dataclass(frozen=True)
class AttackResult:
    rmse: float  # nats, over the vocabulary; unrecovered tokens take the best constant guess
    relative: float  # rmse / std of the true differences: 0 exact, 1 no better than a constant
    coverage: float  # share of the vocabulary the attack recovered


def attack_error(logits: np.ndarray, level: Level, prompts: int, seed: int) -> AttackResult:
    rng = np.random.default_rng(seed)
    api = API(SyntheticModel(logits), level, rng)
    vocab = logits.shape[1]
    errs, rels, covs = [], [], []
    for p in range(prompts):
        ref, diff = attack(api, p, vocab, level.repeats)
        true = logits[p] - logits[p, ref]
        mask = np.zeros(vocab, bool)
        got = np.array([t for t in diff if t != ref], dtype=int)
        mask[got] = True
        est = np.empty(vocab)
        est[got] = [diff[t] for t in got]
        others = ~mask
        others[ref] = False
        # An attacker with no reading of a token can do no better than the best constant, which
        # we grant it (the mean of the true values it missed): the kindest imputation.
        est[others] = true[others].mean() if others.any() else 0.0
        keep = np.arange(vocab) != ref
        rmse = float(np.sqrt(np.mean((est[keep] - true[keep]) ** 2)))
        errs.append(rmse)
        rels.append(rmse / float(true[keep].std()))
        covs.append(mask[keep].mean())
    return AttackResult(float(np.mean(errs)), float(np.mean(rels)), float(np.mean(covs)))


@dataclass(frozen=True)
class BenignResult:
    top1: float  # share of prompts whose shown top token is the argmax
    ece: float  # expected calibration error of exp(shown top logprob) against the top probability
    mean_abs_shift: float  # mean |shown - true| top logprob, nats


def benign_cost(logits: np.ndarray, level: Level, seed: int) -> BenignResult:
    api = API(SyntheticModel(logits), level, np.random.default_rng(seed))
    agree, conf = [], []
    lp_true = logits - logits.max(1, keepdims=True)
    lp_true = lp_true - np.log(np.exp(lp_true).sum(1, keepdims=True))
    for p in range(logits.shape[0]):
        # An honest user: sampling at temperature 1, five top logprobs.
        shown = api.top(_request(p, top=BENIGN_TOP, temperature=1.0))
        best = max(shown, key=shown.get)
        agree.append(best == int(np.argmax(logits[p])))
        conf.append(shown[best])
    conf_lp = np.array(conf)
    true_lp = lp_true.max(1)
    return BenignResult(float(np.mean(agree)), expected_ece(np.exp(conf_lp), np.exp(true_lp)), float(np.mean(np.abs(conf_lp - true_lp))))


def expected_ece(confidence: np.ndarray, p_correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """Binned ECE with each item's chance of being right in place of a 0/1 outcome."""
    idx = np.minimum((confidence * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.mean() * abs(confidence[m].mean() - p_correct[m].mean())
    return total


def synthetic_logits(prompts: int, vocab: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian logits with a scale drawn per prompt (1 to 5 nats), from flat distributions
    (top probability a few percent) to peaked ones (top probability above 0.9)."""
    return rng.standard_normal((prompts, vocab)) * rng.uniform(1.0, 5.0, (prompts, 1))


@dataclass(frozen=True)
class Row:
    level: Level
    attack: AttackResult
    benign: BenignResult


def evaluate(levels: list[Level], vocab: int, attack_prompts: int, benign_prompts: int, seed: int) -> list[Row]:
    rng = np.random.default_rng(seed)
    attack_logits = synthetic_logits(attack_prompts, vocab, rng)
    benign_logits = synthetic_logits(benign_prompts, vocab, rng)
    return [Row(lv, attack_error(attack_logits, lv, attack_prompts, seed), benign_cost(benign_logits, lv, seed)) for lv in levels]


def table(rows: list[Row]) -> str:
    base = rows[0]
    head = "| level | attack RMSE (nats) | relative error | × vs none | coverage | benign top-1 | ΔECE | mean abs. shift (nats) |"
    lines = [head, "|---|" + "---:|" * (head.count("|") - 2)]
    for r in rows:
        factor = r.attack.rmse / max(base.attack.rmse, 1e-12)
        lines.append(
            f"| {r.level.name} | {r.attack.rmse:.3g} | {r.attack.relative:.3f} | {factor:.3g} | {r.attack.coverage:.1%} | {r.benign.top1:.2%} "
            f"| {r.benign.ece - base.benign.ece:+.4f} | {r.benign.mean_abs_shift:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m moat.evals.perturbation", description=__doc__.split("\n\n")[0])
    ap.add_argument("--vocab", type=int, default=5000, help="vocabulary size of the synthetic softmax (default: %(default)s)")
    ap.add_argument("--attack-prompts", type=int, default=3, help="prompts whose logits the attacker recovers (default: %(default)s)")
    ap.add_argument("--benign-prompts", type=int, default=2000, help="prompts the honest user asks (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the logits and of fresh noise (default: %(default)s)")
    args = ap.parse_args(argv)
    for name in ("vocab", "attack_prompts", "benign_prompts"):
        if getattr(args, name) < (2 if name == "vocab" else 1):
            print(f"error: --{name.replace('_', '-')} must be at least {2 if name == 'vocab' else 1}", file=sys.stderr)
            return 2
    print(table(evaluate(LEVELS, args.vocab, args.attack_prompts, args.benign_prompts, args.seed)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
