"""The feature spec: every model input, with its definition, scale, absent value and why it
signals extraction.

One list, `FEATURES`, is the single definition that the summary, the scope window, the reason
codes, training's augmentation and docs/features.md all read. Changing a feature's meaning,
scale or order means bumping FEATURE_SPEC_VERSION, which makes old bundles refuse to load.

`python -m moat.models.feature_spec > docs/features.md` regenerates the feature documentation.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

FEATURE_SPEC_VERSION = "2"
WINDOW = 16  # requests of history the model reads per scope; longer horizons enter via the
# running aggregates (EWMA rates, novelty blooms, scope totals) inside each vector
N_TOKENS = 8  # hashed token ids kept per request (the first words carry the task)
TOKEN_VOCAB = 4096  # hashed token buckets; id 0 is padding
BLOOM_WORDS = 16  # 16 x 64 bits per novelty generation
BLOOM_ROTATE = 64  # requests per novelty generation: novelty looks back 64-128 requests
TEXT_LIMIT = 4096  # characters of a prompt used for sketches: features truncate, never fail
MAX_WORDS = 256  # words of the newest text kept for the prompt hash and the shape signature
GRAM_WORDS = 64  # the first words whose unigrams and bigrams are hashed
SCOPES = ("account", "api_key", "ip_prefix")
UA_GROUPS = ("sdk", "http_lib", "cli", "browser", "framework", "custom", "none")


@dataclass(frozen=True)
class Scale:
    """How a feature's raw value becomes the model input, so that inputs lie in about [0, 1].

    flag: a yes/no fact as 0 or 1. share: a value already in [0, 1], used as is.
    linear: min(raw, cap) / divisor. log1p: log1p(raw) / divisor. log: log(raw) / log(divisor),
    for a raw value of at least 1 (so `divisor` is the raw value that encodes as 1).
    """

    kind: Literal["flag", "share", "linear", "log1p", "log"]
    divisor: float = 1.0
    cap: float | None = None
    encode: Callable[[float], float] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # One plain function per scale, chosen once: every request encodes some 40 values, and
        # dispatching on `kind` each time cost several times the arithmetic. The formulas must
        # stay exactly these float operations: stored vectors (and the golden hashes in
        # tests/models/test_golden_features.py) depend on every bit.
        d, cap, log_d = self.divisor, self.cap, math.log(self.divisor)
        fn = {
            "flag": float,
            "share": float,
            "linear": (lambda x: x / d) if cap is None else (lambda x: min(x, cap) / d),
            "log1p": lambda x: math.log1p(x) / d,
            "log": lambda x: math.log(x) / log_d,
        }[self.kind]
        object.__setattr__(self, "encode", fn)

    def __call__(self, raw: float) -> float:
        return self.encode(raw)

    def formula(self) -> str:
        """The scale as a formula of the raw value x, for the docs."""
        d = f"{self.divisor:g}"
        if self.kind == "log1p":
            return f"log1p(x) / {d}"
        if self.kind == "linear":
            return f"min(x, {self.cap:g}) / {d}" if self.cap is not None else f"x / {d}"
        if self.kind == "log":
            return f"log(x) / log({d})"
        return "0 or 1" if self.kind == "flag" else "x (in [0, 1])"


FLAG = Scale("flag")
SHARE = Scale("share")


def log1p(divisor: float) -> Scale:
    return Scale("log1p", divisor)


@dataclass(frozen=True)
class FeatureDef:
    """One model input. `definition` is the raw value, `scale` how it is encoded. `absent` is
    the encoded value when the request does not carry the field (None: the feature always has a
    value). `param` marks a parameter value the client chooses (not a presence flag), which
    training may jitter when the client sent it."""

    name: str
    definition: str
    scale: Scale
    why: str
    absent: float | None = None
    param: bool = False


FEATURES: list[FeatureDef] = [
    # Request facts (from the request alone).
    FeatureDef("prompt_chars", "characters of all message contents or the prompt", log1p(12), "distillation asks long, self-contained prompts; chat turns are short"),
    FeatureDef("last_chars", "characters of the newest user message", log1p(10), "separates a fresh query from a follow-up in a long history"),
    FeatureDef("n_messages", "number of messages (0 for the completions endpoint)", log1p(5), "real conversations grow; harvesting sends single-turn queries"),
    FeatureDef("has_system", "a system or developer message is present", FLAG, "apps carry a constant system prompt; often absent in scripted harvesting"),
    FeatureDef("tool_share", "share of messages with role tool", SHARE, "agent loops are benign high-rate traffic"),
    FeatureDef("is_completion", "the legacy completions endpoint (prompt field)", FLAG, "logit probing favours raw completions"),
    FeatureDef("temperature", "temperature", Scale("linear", 2), "temperature 0 or fixed values mark scripted clients", absent=0.5, param=True),
    FeatureDef("temperature_set", "temperature was sent", FLAG, "SDK defaults vs explicit sampling control", absent=0.0),
    FeatureDef("top_p_set", "top_p was sent", FLAG, "explicit sampling control", absent=0.0),
    FeatureDef("max_tokens", "max_tokens", log1p(9), "max_tokens=1 reads one distribution; huge budgets harvest long outputs", absent=0.0, param=True),
    FeatureDef("max_tokens_set", "max_tokens was sent", FLAG, "explicit output control", absent=0.0),
    FeatureDef("n", "n, the samples per query", Scale("log", 128), "n > 1 harvests several samples per query", absent=0.0, param=True),
    FeatureDef("logprobs", "logprobs requested", FLAG, "logprobs leak the output distribution", absent=0.0),
    FeatureDef("top_logprobs", "top_logprobs", Scale("linear", 20), "more alternatives leak more of the distribution", absent=0.0, param=True),
    FeatureDef("logit_bias_size", "entries in logit_bias", log1p(6), "large or changing biases probe the logit vector", absent=0.0, param=True),
    FeatureDef("logit_bias_max", "largest absolute bias in logit_bias", Scale("linear", 100), "±100 biases force or ban tokens for probing", absent=0.0, param=True),
    FeatureDef("logit_bias_spread", "standard deviation of the bias values", Scale("linear", 100), "random bias magnitudes mark evasive probes", absent=0.0, param=True),
    FeatureDef("seed_set", "seed was sent", FLAG, "reproducible sampling, common in harvesting and in evals", absent=0.0),
    FeatureDef("stop_set", "stop was sent", FLAG, "scripted clients", absent=0.0),
    FeatureDef("stream", "stream was requested", FLAG, "interactive apps stream; batch harvesting rarely does", absent=0.0),
    FeatureDef("digit_share", "share of digits in the newest text", SHARE, "documents and sweeps over numbers"),
    FeatureDef("nonascii_share", "share of non-ASCII characters in the newest text", SHARE, "language coverage sweeps"),
    *[FeatureDef(f"ua_{g}", f"the user agent is of group '{g}'", FLAG, "client kind; weak alone (attackers use SDKs too)", absent=float(g == "none")) for g in UA_GROUPS],
    # Relational features (the request against its scope's history).
    FeatureDef("first_in_scope", "the scope has no earlier request", FLAG, "anchors the start of a sequence"),
    FeatureDef("dt_prev", "seconds since the previous request (input 1 for a scope's first request)", log1p(12), "machine pace vs human think time"),
    FeatureDef("dt_mean_k", "mean gap over the last 8 requests, in seconds (input 1 for a scope's first request)", log1p(12), "sustained pace"),
    FeatureDef("gap_cv", "coefficient of variation of gaps in the window", Scale("linear", 3, cap=3.0), "steady machine timing has a low CV"),
    FeatureDef("rate_1m", "requests in the last 60 s within the window, this one included", log1p(4), "short bursts"),
    FeatureDef("rate_1h", "EWMA request count, 1 h time constant", log1p(8), "sustained volume over an hour"),
    FeatureDef("rate_1d", "EWMA request count, 1 day time constant", log1p(10), "daily volume; harvesting needs thousands"),
    FeatureDef("total", "requests ever seen in this scope, this one included", log1p(12), "scope age in requests"),
    FeatureDef("sim_prev", "SimHash similarity to the previous prompt above chance: 2 × (similarity − 0.5), at least 0", SHARE, "near-duplicate iteration or probing"),
    FeatureDef("sim_max", "max SimHash similarity to any prompt in the window, above chance as for sim_prev", SHARE, "perturbation of earlier seeds (active learning)"),
    FeatureDef("near_dup_share", "share of window prompts with similarity >= 0.9", SHARE, "near-duplicate bursts"),
    FeatureDef("exact_repeat_share", "share of window prompts identical to this one", SHARE, "same prompt re-asked (probing, evals)"),
    FeatureDef("distinct_share", "distinct prompts in window (with this one) / its size", SHARE, "every query new: dataset replay and sweeps"),
    FeatureDef("novelty", "share of the prompt's word n-gram buckets unseen in the last 64-128 requests", SHARE, "coverage-seeking traffic keeps finding new content"),
    FeatureDef("template_share", "share of window prompts with this prompt's shape signature", SHARE, "template reuse: batch jobs and coverage sweeps"),
    FeatureDef("param_change", "the parameter signature differs from the previous request", FLAG, "parameter probing"),
    FeatureDef("param_change_share", "share of window requests whose parameter signature differs from their predecessor", SHARE, "systematic parameter variation"),
    FeatureDef("lb_variety", "distinct logit_bias values among window requests with this exact prompt (0 without a logit_bias)", log1p(5), "logit probing varies bias over one prompt"),
    FeatureDef("lb_share", "share of window requests with a logit_bias", SHARE, "sustained bias use"),
    FeatureDef("logprob_share", "share of window requests asking for logprobs", SHARE, "sustained distribution harvesting"),
    FeatureDef("campaign", "other accounts sending this template in the last hour", log1p(5), "one campaign spread over many accounts"),
    FeatureDef("cohort", "other accounts sending with this exact client fingerprint (user agent, endpoint, model, parameter values) in the last hour", log1p(5), "a sybil cohort: fresh accounts run by one tool and one script"),
    *[FeatureDef(f"scope_{s}", f"this window is the '{s}' scope", FLAG, "lets one model read account, key and address windows") for s in SCOPES],
]
N_FEATURES = len(FEATURES)
INDEX = {f.name: i for i, f in enumerate(FEATURES)}
SPEC = {f.name: f for f in FEATURES}
N_OWN = INDEX["first_in_scope"]  # features [0, N_OWN) come from the request alone
SCOPE_INDEX = {sc: INDEX[f"scope_{sc}"] for sc in SCOPES}
SCOPE_FLAG_COLUMNS = list(SCOPE_INDEX.values())
# Relational features that are 1 for a scope's first request (no history: everything is new).
FIRST_REQUEST_ONES = [INDEX[n] for n in ("first_in_scope", "dt_prev", "dt_mean_k", "distinct_share", "novelty", "template_share")]


def presence_flag(name: str) -> str | None:
    """The flag that says whether the request carried feature `name`'s field (`temperature` ->
    `temperature_set`), or None when the value itself shows it (its absent encoding)."""
    flag = f"{name}_set"
    return flag if flag in INDEX else None


def render_markdown() -> str:
    """docs/features.md: the feature table, generated from FEATURES."""
    lines = [
        f"# Features (spec version {FEATURE_SPEC_VERSION})",
        "",
        "<!-- Generated from models/feature_spec.py by `python -m moat.models.feature_spec > docs/features.md`; do not edit by hand. -->",
        "",
        "`summarize(event)` (`models/summary.py`) runs once per request and keeps no raw text: numeric",
        "facts, parameter flags, client facts, a 64-bit SimHash, a shape signature (first words with",
        "numbers and names masked), hashed token ids and n-gram buckets. `window(state, summary,",
        "crowd, scope)` (`models/scope_window.py`) computes the request's relational features against",
        f"the scope's last {WINDOW} requests plus O(1) running aggregates, appends it, and returns the",
        "window the network reads. Each request is one vector of the features below, stored as float16,",
        f"with {N_TOKENS} hashed token ids.",
        "",
        "*scale* turns the raw value x of *definition* into the model input. *absent* is the input when",
        "the request does not carry the field (blank: the feature always has a value). *param* marks a",
        "parameter value the client chooses; training shifts those values by a random offset per",
        "window when they were sent (`training/augment.py`) and leaves absent values alone.",
        "",
        "| # | feature | definition | scale | absent | param | why it signals extraction |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, f in enumerate(FEATURES):
        absent = "" if f.absent is None else f"{f.absent:g}"
        cells = [str(i), f"`{f.name}`", f.definition, f.scale.formula(), absent, "yes" if f.param else "", f.why]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render_markdown())
