"""The feature spec: every model input, with its definition and why it signals extraction.

One list, `FEATURES`, is the single definition that the summary, the scope window, the reason
codes, training's augmentation and docs/features.md all read. Changing a feature's meaning or
order means bumping FEATURE_SPEC_VERSION, which makes old bundles refuse to load.
"""

from __future__ import annotations

from dataclasses import dataclass

FEATURE_SPEC_VERSION = "1"
WINDOW = 16  # requests of history the model reads per scope; longer horizons enter via the
# running aggregates (EWMA rates, novelty blooms, scope totals) inside each vector
N_TOKENS = 8  # hashed token ids kept per request (the first words carry the task)
TOKEN_VOCAB = 4096  # hashed token buckets; id 0 is padding
BLOOM_WORDS = 16  # 16 x 64 bits per novelty generation
BLOOM_ROTATE = 64  # requests per novelty generation: novelty looks back 64-128 requests
TEXT_LIMIT = 4096  # characters of a prompt used for sketches: features truncate, never fail
SCOPES = ("account", "api_key", "ip_prefix")
UA_GROUPS = ("sdk", "http_lib", "cli", "browser", "framework", "custom", "none")


@dataclass(frozen=True)
class FeatureDef:
    name: str
    definition: str
    why: str


FEATURES: list[FeatureDef] = [
    # Request facts (from the request alone).
    FeatureDef("prompt_chars", "log1p(characters of all message contents or the prompt) / 12", "distillation asks long, self-contained prompts; chat turns are short"),
    FeatureDef("last_chars", "log1p(characters of the newest user message) / 10", "separates a fresh query from a follow-up in a long history"),
    FeatureDef("n_messages", "log1p(number of messages) / 5", "real conversations grow; harvesting sends single-turn queries"),
    FeatureDef("has_system", "1 if a system or developer message is present", "apps carry a constant system prompt; often absent in scripted harvesting"),
    FeatureDef("tool_share", "share of messages with role tool", "agent loops are benign high-rate traffic"),
    FeatureDef("is_completion", "1 for the legacy completions endpoint (prompt field)", "logit probing favours raw completions"),
    FeatureDef("temperature", "temperature / 2, or 0.5 when absent", "temperature 0 or fixed values mark scripted clients"),
    FeatureDef("temperature_set", "1 if temperature was sent", "SDK defaults vs explicit sampling control"),
    FeatureDef("top_p_set", "1 if top_p was sent", "explicit sampling control"),
    FeatureDef("max_tokens", "log1p(max_tokens) / 9, 0 when absent", "max_tokens=1 reads one distribution; huge budgets harvest long outputs"),
    FeatureDef("max_tokens_set", "1 if max_tokens was sent", "explicit output control"),
    FeatureDef("n", "log(n) / log(128)", "n > 1 harvests several samples per query"),
    FeatureDef("logprobs", "1 if logprobs requested", "logprobs leak the output distribution"),
    FeatureDef("top_logprobs", "top_logprobs / 20", "more alternatives leak more of the distribution"),
    FeatureDef("logit_bias_size", "log1p(entries in logit_bias) / 6", "large or changing biases probe the logit vector"),
    FeatureDef("logit_bias_max", "max |bias| / 100", "±100 biases force or ban tokens for probing"),
    FeatureDef("logit_bias_spread", "std of bias values / 100", "random bias magnitudes mark evasive probes"),
    FeatureDef("seed_set", "1 if seed was sent", "reproducible sampling, common in harvesting and in evals"),
    FeatureDef("stop_set", "1 if stop was sent", "scripted clients"),
    FeatureDef("stream", "1 if stream was requested", "interactive apps stream; batch harvesting rarely does"),
    FeatureDef("digit_share", "share of digits in the newest text", "documents and sweeps over numbers"),
    FeatureDef("nonascii_share", "share of non-ASCII characters in the newest text", "language coverage sweeps"),
    *[FeatureDef(f"ua_{g}", f"1 if the user agent is of group '{g}'", "client kind; weak alone (attackers use SDKs too)") for g in UA_GROUPS],
    # Relational features (the request against its scope's history).
    FeatureDef("first_in_scope", "1 if the scope has no earlier request", "anchors the start of a sequence"),
    FeatureDef("dt_prev", "log1p(seconds since the previous request) / 12", "machine pace vs human think time"),
    FeatureDef("dt_mean_k", "log1p(mean gap over the last 8 requests) / 12", "sustained pace"),
    FeatureDef("gap_cv", "coefficient of variation of gaps in the window, clipped to 3, / 3", "steady machine timing has a low CV"),
    FeatureDef("rate_1m", "log1p(requests in the last 60 s within the window) / 4", "short bursts"),
    FeatureDef("rate_1h", "log1p(EWMA request count, 1 h time constant) / 8", "sustained volume over an hour"),
    FeatureDef("rate_1d", "log1p(EWMA request count, 1 day time constant) / 10", "daily volume; harvesting needs thousands"),
    FeatureDef("total", "log1p(requests ever seen in this scope) / 12", "scope age in requests"),
    FeatureDef("sim_prev", "SimHash similarity to the previous prompt, rescaled so 0.5 -> 0", "near-duplicate iteration or probing"),
    FeatureDef("sim_max", "max SimHash similarity to any prompt in the window, rescaled", "perturbation of earlier seeds (active learning)"),
    FeatureDef("near_dup_share", "share of window prompts with similarity >= 0.9", "near-duplicate bursts"),
    FeatureDef("exact_repeat_share", "share of window prompts identical to this one", "same prompt re-asked (probing, evals)"),
    FeatureDef("distinct_share", "distinct prompts in window (with this one) / its size", "every query new: dataset replay and sweeps"),
    FeatureDef("novelty", "share of the prompt's word n-gram buckets unseen in the last 64-128 requests", "coverage-seeking traffic keeps finding new content"),
    FeatureDef("template_share", "share of window prompts with this prompt's shape signature", "template reuse: batch jobs and coverage sweeps"),
    FeatureDef("param_change", "1 if the parameter signature differs from the previous request", "parameter probing"),
    FeatureDef("param_change_share", "share of window requests whose parameter signature differs from their predecessor", "systematic parameter variation"),
    FeatureDef("lb_variety", "log1p(distinct logit_bias values among window requests with this exact prompt) / 5", "logit probing varies bias over one prompt"),
    FeatureDef("lb_share", "share of window requests with a logit_bias", "sustained bias use"),
    FeatureDef("logprob_share", "share of window requests asking for logprobs", "sustained distribution harvesting"),
    FeatureDef("campaign", "log1p(distinct accounts sending this template in the last hour, minus one) / 5", "one campaign spread over many accounts"),
    *[FeatureDef(f"scope_{s}", f"1 if this window is the '{s}' scope", "lets one model read account, key and address windows") for s in SCOPES],
]
N_FEATURES = len(FEATURES)
INDEX = {f.name: i for i, f in enumerate(FEATURES)}
N_OWN = INDEX["first_in_scope"]  # features [0, N_OWN) come from the request alone
# Relational features that are 1 for a scope's first request (no history: everything is new).
SCOPE_INDEX = {sc: INDEX[f"scope_{sc}"] for sc in SCOPES}
SCOPE_FLAG_COLUMNS = list(SCOPE_INDEX.values())
FIRST_REQUEST_ONES = [INDEX[n] for n in ("first_in_scope", "dt_prev", "dt_mean_k", "distinct_share", "novelty", "template_share")]
