"""Request side of `perturb`: what an OpenAI chat, completions or responses request may ask for.

Each cap closes one channel a logit-recovery or distillation attacker reads through: top
logprobs (how much of the distribution each call reveals), logit_bias (steering chosen tokens
into view), greedy decoding (noiseless argmax probes), n and max_tokens (how much each call
harvests). The body is copied, never changed in place, so a caller can still log the original."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from moat.serving.actions.settings import PerturbSettings


class InvalidRequest(ValueError):
    """A request body the caps cannot read; the message names the field. A gateway answers 400."""


def _number(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(f"{name}: expected a number, got {type(value).__name__}")
    return value


def _cap(body: dict[str, Any], name: str, cap: int) -> None:
    value = _number(body, name)
    if value is not None and value > cap:
        body[name] = cap


def _logit_bias(body: dict[str, Any], settings: PerturbSettings) -> None:
    bias = body.get("logit_bias")
    if bias is None:
        return
    if not isinstance(bias, dict):
        raise InvalidRequest(f"logit_bias: expected an object of token id to bias, got {type(bias).__name__}")
    if settings.logit_bias == "drop":
        del body["logit_bias"]
        return
    m = settings.logit_bias_clip
    clipped = {}
    for token, value in bias.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidRequest(f"logit_bias[{token!r}]: expected a number, got {type(value).__name__}")
        clipped[token] = min(max(value, -m), m)
    body["logit_bias"] = clipped


@dataclass(frozen=True)
class Shape:
    """Where one OpenAI API reads the knobs `perturb` caps."""

    top_k: str  # how many top logprobs each token shows
    length: tuple[str, ...]  # output-length fields, capped where present
    default_length: str | None  # set to the cap when none of them is; None: add nothing
    # The Responses API stores an answer for a later GET, which Moat does not score and would
    # hand back with exact logprobs: a request that asks for logprobs is not stored.
    unstored_logprobs: bool = False


SHAPES = {
    "chat": Shape("top_logprobs", ("max_tokens", "max_completion_tokens"), "max_completion_tokens"),
    # Legacy completions: `logprobs` is the top-k integer.
    "completions": Shape("logprobs", ("max_tokens", "max_completion_tokens"), "max_tokens"),
    "responses": Shape("top_logprobs", ("max_output_tokens",), "max_output_tokens", unstored_logprobs=True),
    # An API the proxy does not know (embeddings, a vendor's own): cap what is there and add
    # nothing, since an unknown field can make the upstream refuse the request.
    "other": Shape("top_logprobs", ("max_tokens", "max_completion_tokens", "max_output_tokens"), None),
}
# Path endings, most specific first (every chat path also ends in /completions).
PATHS = (("/chat/completions", "chat"), ("/responses", "responses"), ("/completions", "completions"))


LOGPROBS = "message.output_text.logprobs"  # how a Responses request asks for logprobs


def _asks_logprobs(body: dict[str, Any]) -> bool:
    include = body.get("include")
    return bool(body.get("top_logprobs")) or (isinstance(include, list) and LOGPROBS in include)


def _api(path: str) -> str | None:
    """The generation API a path ends in (query and trailing slash aside), else None."""
    end = path.split("?", 1)[0].rstrip("/")
    return next((name for suffix, name in PATHS if end.endswith(suffix)), None)


def generates(path: str) -> bool:
    """Whether a path is one of the generation APIs (chat, completions, responses)."""
    return _api(path) is not None


def request_shape(body: dict[str, Any], path: str | None = None) -> Shape:
    """The API a request is for: by its path where the caller knows it, else by its body."""
    if path is not None:
        return SHAPES[_api(path) or "other"]
    return SHAPES["chat" if "messages" in body else "completions" if "prompt" in body else "other"]


def perturb_request(body: dict[str, Any], settings: PerturbSettings, path: str | None = None) -> dict[str, Any]:
    """The request with `settings`' caps applied, for /v1/chat/completions (`messages`),
    /v1/completions (`prompt`, where `logprobs` is the top-k integer) and /v1/responses (`input`,
    which only a path names: embeddings use `input` too)."""
    if not isinstance(body, dict):
        raise InvalidRequest(f"body: expected a JSON object, got {type(body).__name__}")
    out = dict(body)
    shape = request_shape(out, path)
    _cap(out, shape.top_k, settings.max_top_logprobs)
    _logit_bias(out, settings)
    temperature = _number(out, "temperature")
    # An absent temperature means 1.0 for OpenAI and for vLLM, already above any sane floor.
    if temperature is not None and temperature < settings.temperature_floor:
        out["temperature"] = settings.temperature_floor
    # top_p near 0 or top_k 1 decode greedily at any temperature: the floor must hold for them too.
    top_p = _number(out, "top_p")
    if top_p is not None and top_p < settings.top_p_floor:
        out["top_p"] = settings.top_p_floor
    out.pop("top_k", None)
    out.pop("min_p", None)  # vLLM's: near 1 it keeps only the likeliest token
    _cap(out, "n", settings.max_n)
    if shape.unstored_logprobs and _asks_logprobs(out):
        if out.get("conversation") is not None:
            # Its items are kept in the conversation whatever `store` says, and can be listed
            # with their logprobs unscored: no logprobs for such a request.
            out.pop("top_logprobs", None)
            if isinstance(out.get("include"), list):
                out["include"] = [x for x in out["include"] if x != LOGPROBS]
        else:
            out["store"] = False
            for name in ("background", "background_options"):  # run only on a stored response
                out.pop(name, None)
    if settings.max_tokens is not None:
        names = [n for n in shape.length if out.get(n) is not None]
        for name in names:
            _cap(out, name, settings.max_tokens)
        if not names and shape.default_length is not None:
            out[shape.default_length] = settings.max_tokens
    return out
