"""Request side of `perturb`: what an OpenAI chat/completions request may ask for.

Each cap closes one channel a logit-recovery or distillation attacker reads through: top
logprobs (how much of the distribution each call reveals), logit_bias (steering chosen tokens
into view), greedy decoding (noiseless argmax probes), n and max_tokens (how much each call
harvests). The body is copied, never changed in place, so a caller can still log the original."""

from __future__ import annotations

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


def perturb_request(body: dict[str, Any], settings: PerturbSettings) -> dict[str, Any]:
    """The request with `settings`' caps applied, for /v1/chat/completions (`messages`) and
    /v1/completions (`prompt`, where `logprobs` is the top-k integer)."""
    if not isinstance(body, dict):
        raise InvalidRequest(f"body: expected a JSON object, got {type(body).__name__}")
    out = dict(body)
    if "messages" in out:
        _cap(out, "top_logprobs", settings.max_top_logprobs)
    else:
        _cap(out, "logprobs", settings.max_top_logprobs)
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
    if settings.max_tokens is not None:
        names = [n for n in ("max_tokens", "max_completion_tokens") if out.get(n) is not None]
        for name in names:
            _cap(out, name, settings.max_tokens)
        if not names:
            out["max_tokens" if "messages" not in out else "max_completion_tokens"] = settings.max_tokens
    return out
