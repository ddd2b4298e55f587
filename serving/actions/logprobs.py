"""Response side of `perturb`: rounded, noised and truncated logprobs in OpenAI responses.

The noise is keyed, not fresh. Each value gets Gaussian noise drawn from a keyed hash of
(the request's content, the token's position, the token), where the content is the model and
the prompt and not the sampling or read-out knobs (`request_seed`). So:
- a retried or repeated request gets the same noise, and averaging N repeats gains an
  attacker nothing (with fresh noise its error would shrink as 1/sqrt(N));
- varying logit_bias, top_logprobs, temperature or n does not redraw the noise either, so the
  bias-and-read attack cannot average over many bias values for the same prompt;
- streaming and non-streaming answers to the same request carry the same values, since the
  draw depends on the position, not on how the upstream split the stream into chunks;
- an honest user retrying gets a consistent answer.
Different prompts get independent noise, so the noise is no fixed per-token offset that
an attacker could fit as one more bias vector.

The ranking is never changed: the noised values are sorted and handed back in the model's
own order, so a user who reads the top token, or ranks candidates by logprob, sees exactly the
model's order; only the values are blurred. Every value stays <= 0, and the sampled token's
logprob equals its entry in top_logprobs when it has one."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from typing import Any

from moat.serving.actions.settings import PerturbSettings

# The fields that make two requests "the same question". Everything else (logit_bias,
# top_logprobs, temperature, n, seed, stream, user, unknown extensions) leaves the noise alone.
CONTENT_FIELDS = ("model", "messages", "prompt", "suffix", "tools", "functions", "response_format")
_TWO_64 = float(1 << 64)


def request_seed(secret: bytes, request: dict[str, Any]) -> bytes:
    content = {k: request[k] for k in CONTENT_FIELDS if k in request}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hmac.new(secret, canonical.encode(), hashlib.sha256).digest()


class LogprobNoise:
    """Rounding and keyed Gaussian noise for the logprobs of one response."""

    def __init__(self, seed: bytes, settings: PerturbSettings) -> None:
        self.seed = seed
        self.sigma = settings.noise_nats
        self.step = settings.round_step
        self.cap = settings.max_top_logprobs

    def gauss(self, position: int, token: str) -> float:
        """A standard normal draw fixed by (seed, position, token): Box-Muller on a keyed hash."""
        h = hashlib.blake2b(f"{position}\x00{token}".encode(), key=self.seed[:64], digest_size=16).digest()
        u1 = (int.from_bytes(h[:8], "little") + 1) / (_TWO_64 + 1)  # in (0, 1): log(u1) is finite
        u2 = int.from_bytes(h[8:], "little") / _TWO_64
        return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)

    def value(self, position: int, token: str, logprob: float) -> float:
        x = logprob + self.sigma * self.gauss(position, token) if self.sigma else logprob
        if self.step:
            # round() after the multiply drops float residue such as -0.30000000000000004.
            x = round(round(x / self.step) * self.step, 6)
        return min(x, 0.0)

    def ranked(self, position: int, entries: list[tuple[str, float]]) -> list[float]:
        """Noised values for the first `cap` entries given in the model's order (best first),
        sorted so that the order holds. Only the shown entries are drawn: the top value is then
        its own token's noised logprob, not the largest of several noised values, which would
        sit above the truth on average and spoil an honest user's calibration."""
        return sorted((self.value(position, t, lp) for t, lp in entries[: self.cap]), reverse=True)

    # Chat: choices[i].logprobs.content = [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]
    def chat_content(self, content: list[dict[str, Any]], start: int) -> list[dict[str, Any]]:
        out = []
        for i, item in enumerate(content):
            position = start + i
            tops = sorted(item.get("top_logprobs") or [], key=lambda e: -e["logprob"])
            values = self.ranked(position, [(e["token"], e["logprob"]) for e in tops])
            new_tops = [{**e, "logprob": v} for e, v in zip(tops, values)]
            chosen = next((e["logprob"] for e in new_tops if e["token"] == item["token"]), None)
            if chosen is None:  # sampled below the shown tokens: it stays below them
                chosen = min([self.value(position, item["token"], item["logprob"])] + values[-1:])
            out.append({**item, "logprob": chosen, "top_logprobs": new_tops})
        return out

    # Completions (legacy): choices[i].logprobs = {tokens, token_logprobs, top_logprobs: [{token: lp}], text_offset}
    def legacy(self, logprobs: dict[str, Any], start: int) -> dict[str, Any]:
        tokens = logprobs.get("tokens") or []
        token_lps = list(logprobs.get("token_logprobs") or [])
        tops = list(logprobs.get("top_logprobs") or [])
        for i, token in enumerate(tokens):
            position = start + i
            top = tops[i] if i < len(tops) else None
            if top:
                ordered = sorted(top.items(), key=lambda kv: -kv[1])
                values = self.ranked(position, ordered)
                tops[i] = {t: v for (t, _), v in zip(ordered, values)}
            if i < len(token_lps) and token_lps[i] is not None:  # the first echoed token has none
                shown = tops[i] if top else {}
                token_lps[i] = shown[token] if token in shown else min([self.value(position, token, token_lps[i])] + list(shown.values())[-1:])
        return {**logprobs, "token_logprobs": token_lps, "top_logprobs": tops}


class ResponsePerturber:
    """Perturbs the choices of one request's response, whole or chunk by chunk. Positions are
    counted per choice index across chunks, so a stream gets the values the whole response
    would have had."""

    def __init__(self, seed: bytes, settings: PerturbSettings) -> None:
        self.noise = LogprobNoise(seed, settings)
        self.positions: dict[int, int] = {}

    def choice(self, choice: dict[str, Any]) -> dict[str, Any]:
        lp = choice.get("logprobs")
        if not isinstance(lp, dict):
            return choice
        index = choice.get("index", 0)
        start = self.positions.get(index, 0)
        try:
            if lp.get("content") is not None:
                new = {**lp, "content": self.noise.chat_content(lp["content"], start)}
                n = len(lp["content"])
            elif lp.get("tokens") is not None:
                new = self.noise.legacy(lp, start)
                n = len(lp["tokens"])
            else:
                return choice
        except (KeyError, TypeError, ValueError, AttributeError):
            # A logprobs block we cannot read is dropped, not passed through unperturbed, and
            # not an exception: a proxy must answer, and never with a 5xx.
            return {**choice, "logprobs": None}
        self.positions[index] = start + n
        return {**choice, "logprobs": new}

    def body(self, body: dict[str, Any]) -> dict[str, Any]:
        """A chat.completion, text_completion or chat.completion.chunk with its logprobs perturbed;
        anything else (an error, a usage-only chunk) unchanged."""
        choices = body.get("choices") if isinstance(body, dict) else None
        if not isinstance(choices, list):
            return body
        return {**body, "choices": [self.choice(c) if isinstance(c, dict) else c for c in choices]}


class SSETransformer:
    """Perturbs a text/event-stream as it passes through a proxy: bytes in, bytes out, in any
    chunking. `data:` lines holding JSON with choices are rewritten; every other line (comments,
    `event:`, `data: [DONE]`, blank separators) passes byte for byte."""

    def __init__(self, perturber: ResponsePerturber) -> None:
        self.perturber = perturber
        self._buf = b""

    def line(self, line: bytes) -> bytes:
        """One line, with its ending if it has one."""
        body = line.rstrip(b"\r\n")
        ending = line[len(body):]
        if not body.startswith(b"data:"):
            return line
        payload = body[5:].lstrip(b" ")
        if b'"logprobs"' not in payload:  # most chunks of a stream without logprobs: no parse
            return line
        try:
            obj = json.loads(payload)
        except ValueError:  # [DONE] or a non-JSON payload: not ours to touch
            return line
        if not isinstance(obj, dict) or not isinstance(obj.get("choices"), list):
            return line
        return b"data: " + json.dumps(self.perturber.body(obj), ensure_ascii=False, separators=(",", ":")).encode() + ending

    def feed(self, chunk: bytes) -> bytes:
        """The complete lines of buffered + `chunk`, transformed; a partial last line waits."""
        data = self._buf + chunk
        cut = data.rfind(b"\n") + 1
        self._buf = data[cut:]
        return b"".join(self.line(ln) for ln in data[:cut].splitlines(keepends=True))

    def flush(self) -> bytes:
        """Whatever is left at the end of the stream (a last line without a newline)."""
        rest, self._buf = self._buf, b""
        return self.line(rest) if rest else b""
