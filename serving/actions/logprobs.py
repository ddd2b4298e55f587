"""Response side of `perturb`: rounded, noised and truncated logprobs in OpenAI responses (chat,
completions and the Responses API, whole or streamed).

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
from moat.serving.actions.watermark import TextWatermarker

# The fields that make two requests "the same question". Everything else (logit_bias,
# top_logprobs, temperature, n, seed, stream, user, unknown extensions) leaves the noise alone.
# The Responses API's question is in `input`, `instructions`, a stored `prompt` or conversation
# (`previous_response_id`, `conversation`) and its output format (`text`).
CONTENT_FIELDS = ("model", "messages", "prompt", "suffix", "tools", "functions", "response_format", "input", "instructions", "previous_response_id", "conversation", "text")
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
    would have had. With a watermark, the text is rewritten too (see watermark.py); a stream's
    text is held back until the words after it are known, and the rest goes out with the
    choice's finish_reason."""

    def __init__(self, seed: bytes, settings: PerturbSettings, watermark: TextWatermarker | None = None) -> None:
        self.noise = LogprobNoise(seed, settings)
        self.positions: dict[int, int] = {}
        self.part_positions: dict[tuple[int, int], int] = {}  # Responses API: per (output, content) index
        self.watermark = watermark
        self.streaming = False  # set by SSETransformer: text is then held back between chunks
        self._shape: tuple[str | None, str] | None = None  # where the last marked text was

    def choice(self, choice: dict[str, Any]) -> dict[str, Any]:
        if self.watermark is not None:
            choice = self._marked(choice)
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
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
            # A logprobs block we cannot read is dropped, not passed through unperturbed, and
            # not an exception: a proxy must answer, and never with a 5xx.
            return {**choice, "logprobs": None}
        self.positions[index] = start + n
        return {**choice, "logprobs": new}

    def _marked(self, choice: dict[str, Any]) -> dict[str, Any]:
        """The choice with its text watermarked: message.content (chat), delta.content (chat
        stream) or text (completions, whole or streamed)."""
        assert self.watermark is not None
        index = choice["index"] if isinstance(choice.get("index"), int) else 0
        end = choice.get("finish_reason") is not None
        if isinstance(choice.get("message"), dict):
            outer, name = "message", "content"
        elif isinstance(choice.get("delta"), dict):
            outer, name = "delta", "content"
        elif "text" in choice:
            outer, name = None, "text"
        else:
            return choice
        holder = choice if outer is None else choice[outer]
        text = holder.get(name)
        if not isinstance(text, str) and not (self.streaming and end):
            return choice  # a tool call, a refusal: no text to mark
        new = self.watermark.feed(text if isinstance(text, str) else "", index)
        if end or not self.streaming:
            new += self.watermark.flush(index)
        if not isinstance(text, str) and not new:
            return choice
        self._shape = (outer, name)
        holder = {**holder, name: new}
        return holder if outer is None else {**choice, outer: holder}

    def tail(self, template: dict[str, Any]) -> dict[str, Any] | None:
        """A last chunk with the text still held back, for a stream that ended without a
        finish_reason; None when nothing is held."""
        if self.watermark is None or not self.watermark.pending() or self._shape is None:
            return None
        outer, name = self._shape
        choices = []
        for index in sorted(self.watermark.pending()):
            field = {name: self.watermark.flush(index)}
            choices.append({"index": index, **({outer: field} if outer else field), "finish_reason": None})
        return {k: template[k] for k in ("id", "object", "created", "model") if k in template} | {"choices": choices}

    # Responses API: output[i].content[j].logprobs = [{token, logprob, bytes, top_logprobs}], the
    # chat layout; a stream's output_text.delta events carry the new tokens' entries.
    def part(self, part: dict[str, Any], key: tuple[int, int], whole: bool) -> dict[str, Any]:
        """An output_text part (or a delta event) with its logprobs perturbed. `whole`: the list
        starts at the part's first token (a whole response, a done event); else it continues the
        part's stream."""
        lp = part.get("logprobs")
        if not isinstance(lp, list) or not lp:
            return part
        start = 0 if whole else self.part_positions.get(key, 0)
        if not whole:  # dropped or not, these tokens take their positions
            self.part_positions[key] = start + len(lp)
        try:
            new = self.noise.chat_content(lp, start)
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
            return {**part, "logprobs": []}  # unreadable: dropped, as for chat
        return {**part, "logprobs": new}

    def output_item(self, item: dict[str, Any], index: int) -> dict[str, Any]:
        content = item.get("content")
        if not isinstance(content, list):
            return item
        return {**item, "content": [self.part(p, (index, j), whole=True) if isinstance(p, dict) else p for j, p in enumerate(content)]}

    def response(self, response: dict[str, Any]) -> dict[str, Any]:
        output = response.get("output")
        if not isinstance(output, list):
            return response
        return {**response, "output": [self.output_item(item, i) if isinstance(item, dict) else item for i, item in enumerate(output)]}

    def event(self, event: dict[str, Any]) -> dict[str, Any]:
        """A Responses API stream event: deltas continue their part; the done events and the
        final response carry whole parts, with the values the deltas had."""
        key = (_index(event.get("output_index")), _index(event.get("content_index")))
        if event.get("type") == "response.output_text.delta":
            return self.part(event, key, whole=False)
        if event.get("type") == "response.output_text.done":
            return self.part(event, key, whole=True)
        if isinstance(event.get("part"), dict):  # response.content_part.done
            return {**event, "part": self.part(event["part"], key, whole=True)}
        if isinstance(event.get("item"), dict):  # response.output_item.done
            return {**event, "item": self.output_item(event["item"], key[0])}
        if isinstance(event.get("response"), dict):  # response.completed, .incomplete
            return {**event, "response": self.response(event["response"])}
        return event

    def body(self, body: dict[str, Any]) -> dict[str, Any]:
        """A chat.completion, text_completion, chat.completion.chunk, Responses API response or
        stream event with its logprobs perturbed; anything else (an error, a usage-only chunk)
        unchanged."""
        if not isinstance(body, dict):
            return body
        choices = body.get("choices")
        if isinstance(choices, list):
            return {**body, "choices": [self.choice(c) if isinstance(c, dict) else c for c in choices]}
        if body.get("object") == "response":
            return self.response(body)
        if is_response_event(body):
            return self.event(body)
        return body


def _index(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def is_response_event(obj: Any) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("type"), str) and obj["type"].startswith("response.")


class SSETransformer:
    """Perturbs a text/event-stream as it passes through a proxy: bytes in, bytes out, in any
    chunking. `data:` lines holding JSON with choices are rewritten; every other line (comments,
    `event:`, `data: [DONE]`, blank separators) passes byte for byte."""

    def __init__(self, perturber: ResponsePerturber) -> None:
        self.perturber = perturber
        perturber.streaming = True
        self._buf = b""
        self._last: dict[str, Any] = {}  # the last chunk rewritten, a template for a tail chunk

    def line(self, line: bytes) -> bytes:
        """One line, with its ending if it has one."""
        body = line.rstrip(b"\r\n")
        ending = line[len(body):]
        if not body.startswith(b"data:"):
            return line
        payload = body[5:].lstrip(b" ")
        if payload == b"[DONE]":
            tail = self.perturber.tail(self._last)
            return line if tail is None else self._data(tail, b"\n\n") + line
        # Most chunks of a stream without logprobs need no parse, unless the text is marked.
        if b'"logprobs"' not in payload and self.perturber.watermark is None:
            return line
        try:
            obj = json.loads(payload)
        except ValueError:  # a non-JSON payload: not ours to touch
            return line
        if is_response_event(obj):
            return self._data(self.perturber.body(obj), ending)
        if not isinstance(obj, dict) or not isinstance(obj.get("choices"), list):
            return line
        self._last = obj
        return self._data(self.perturber.body(obj), ending)

    @staticmethod
    def _data(obj: dict[str, Any], ending: bytes) -> bytes:
        return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + ending

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
