"""The response actions: request caps, logprob perturbation (whole and streamed), and the
throttle/block replies in the OpenAI error shape."""

from __future__ import annotations

import copy
import json
import math
import random
import re
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from moat.models.policy import ACTIONS as POLICY_ACTIONS
from moat.serving.actions import (
    ACTIONS,
    ActionSettings,
    InvalidRequest,
    PerturbSettings,
    Reply,
    ResponsePerturber,
    SSETransformer,
    ThrottleSettings,
    get_action,
    perturb_request,
    reply_for,
    request_seed,
)
from moat.serving.actions.watermark import PAIRS, TextWatermarker, Watermarker, WatermarkSettings, carriers, keyed_choice

SETTINGS = PerturbSettings(secret="test-key")
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
COMPLETION = {"model": "m", "prompt": "hi"}


# --- request side -------------------------------------------------------------------------

@pytest.mark.parametrize(
    "body, settings, expected",
    [
        ({**CHAT, "top_logprobs": 20, "logprobs": True}, {}, {"top_logprobs": 1}),
        ({**CHAT, "top_logprobs": 0, "logprobs": True}, {}, {"top_logprobs": 0}),
        ({**CHAT, "top_logprobs": 20}, {"max_top_logprobs": 5}, {"top_logprobs": 5}),
        ({**COMPLETION, "logprobs": 5}, {}, {"logprobs": 1}),
        ({**CHAT, "logit_bias": {"50256": -100, "7": 3}}, {}, {"logit_bias": None}),
        ({**CHAT, "logit_bias": {"50256": -100, "7": 3, "9": 80.5}}, {"logit_bias": "clip"}, {"logit_bias": {"50256": -5.0, "7": 3, "9": 5.0}}),
        ({**CHAT, "logit_bias": {"1": 100}}, {"logit_bias": "clip", "logit_bias_clip": 0.5}, {"logit_bias": {"1": 0.5}}),
        ({**CHAT, "temperature": 0}, {}, {"temperature": 0.7}),
        ({**CHAT, "temperature": 0.2}, {"temperature_floor": 1.0}, {"temperature": 1.0}),
        ({**CHAT, "temperature": 1.3}, {}, {"temperature": 1.3}),
        ({**CHAT, "top_p": 0.0, "top_k": 1, "min_p": 0.99}, {}, {"top_p": 0.9, "top_k": None, "min_p": None}),
        ({**CHAT, "top_p": 0.5}, {"top_p_floor": 0.95}, {"top_p": 0.95}),
        ({**CHAT, "top_p": 0.97}, {}, {"top_p": 0.97}),
        (CHAT, {}, {"temperature": None}),
        ({**CHAT, "n": 8}, {}, {"n": 1}),
        ({**CHAT, "n": 8}, {"max_n": 3}, {"n": 3}),
        ({**CHAT, "max_tokens": 100_000}, {}, {"max_tokens": 2048, "max_completion_tokens": None}),
        ({**CHAT, "max_completion_tokens": 100_000}, {}, {"max_completion_tokens": 2048, "max_tokens": None}),
        ({**CHAT, "max_tokens": 16}, {}, {"max_tokens": 16}),
        (CHAT, {}, {"max_completion_tokens": 2048, "max_tokens": None}),
        (COMPLETION, {}, {"max_tokens": 2048}),
        (CHAT, {"max_tokens": None}, {"max_completion_tokens": None, "max_tokens": None}),
    ],
)
def test_request_caps(body: dict[str, Any], settings: dict[str, Any], expected: dict[str, Any]) -> None:
    original = copy.deepcopy(body)
    out = perturb_request(body, PerturbSettings(secret="k", **settings))
    for name, value in expected.items():
        assert out.get(name) == value, name
    assert body == original  # the caller's body is never changed in place
    assert out["messages" if "messages" in body else "prompt"] == original["messages" if "messages" in body else "prompt"]


@pytest.mark.parametrize(
    "body, settings, field",
    [
        ({**CHAT, "temperature": "hot"}, {}, "temperature"),
        ({**CHAT, "n": True}, {}, "n"),
        ({**CHAT, "top_logprobs": "5"}, {}, "top_logprobs"),
        ({**CHAT, "logit_bias": [1, 2]}, {}, "logit_bias"),
        ({**CHAT, "logit_bias": {"12": "big"}}, {"logit_bias": "clip"}, "logit_bias['12']"),
        ([1, 2], {}, "body"),
    ],
)
def test_unreadable_request_names_the_field(body: Any, settings: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequest, match=r"^" + field.replace("[", r"\[")):
        perturb_request(body, PerturbSettings(secret="k", **settings))


# --- response side ------------------------------------------------------------------------

def chat_response(tokens: list[tuple[str, float, list[tuple[str, float]]]], index: int = 0) -> dict[str, Any]:
    content = [
        {"token": t, "logprob": lp, "bytes": list(t.encode()), "top_logprobs": [{"token": a, "logprob": b, "bytes": list(a.encode())} for a, b in tops]}
        for t, lp, tops in tokens
    ]
    return {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": index, "message": {"role": "assistant", "content": "".join(t for t, _, _ in tokens)}, "logprobs": {"content": content, "refusal": None}, "finish_reason": "stop"}],
    }


def many_tokens(n: int, k: int = 5) -> list[tuple[str, float, list[tuple[str, float]]]]:
    """n positions, each with k top entries in the model's order; the chosen token is the first."""
    out = []
    for i in range(n):
        tops = [(f"w{i}_{j}", -0.05 - 0.37 * j - 0.011 * (i % 13)) for j in range(k)]
        out.append((tops[0][0], tops[0][1], tops))
    return out


def perturbed_content(settings: PerturbSettings, request: dict[str, Any], response: dict[str, Any]) -> list[dict[str, Any]]:
    return get_action("perturb", ActionSettings(perturb=settings)).response(request, response)["choices"][0]["logprobs"]["content"]


@pytest.mark.parametrize("step", [0.1, 0.25, 0.5])
def test_rounding_alone_moves_each_value_at_most_half_a_step(step: float) -> None:
    s = PerturbSettings(secret="k", noise_nats=0.0, round_step=step, max_top_logprobs=5)
    resp = chat_response(many_tokens(200))
    out = perturbed_content(s, CHAT, resp)
    for before, after in zip(resp["choices"][0]["logprobs"]["content"], out):
        for b, a in zip(before["top_logprobs"], after["top_logprobs"]):
            assert a["token"] == b["token"]  # without noise the order cannot change
            assert abs(a["logprob"] - b["logprob"]) <= step / 2 + 1e-9
            assert math.isclose(a["logprob"] / step, round(a["logprob"] / step), abs_tol=1e-6)
            assert a["logprob"] <= 0.0


@pytest.mark.parametrize("sigma", [0.1, 0.3, 1.0])
def test_noise_has_the_configured_scale(sigma: float) -> None:
    s = PerturbSettings(secret="k", noise_nats=sigma, round_step=0.0, max_top_logprobs=1)
    # One top entry per position so the order-keeping sort does not mix draws; logprobs far
    # below 0 so the clamp at 0 does not cut the noise.
    resp = chat_response([(f"t{i}", -20.0, [(f"t{i}", -20.0)]) for i in range(3000)])
    shifts = [e["logprob"] + 20.0 for e in perturbed_content(s, CHAT, resp)]
    mean = sum(shifts) / len(shifts)
    sd = math.sqrt(sum((x - mean) ** 2 for x in shifts) / len(shifts))
    assert abs(mean) < 4 * sigma / math.sqrt(len(shifts))
    assert 0.93 * sigma < sd < 1.07 * sigma


@pytest.mark.parametrize("cap, sigma", [(1, 0.3), (3, 0.3), (5, 1.0), (0, 0.3)])
def test_top_logprobs_are_truncated_ordered_and_consistent(cap: int, sigma: float) -> None:
    s = PerturbSettings(secret="k", noise_nats=sigma, max_top_logprobs=cap)
    resp = chat_response(many_tokens(300, k=5))
    for before, item in zip(resp["choices"][0]["logprobs"]["content"], perturbed_content(s, CHAT, resp)):
        tops = item["top_logprobs"]
        assert [e["token"] for e in tops] == [e["token"] for e in before["top_logprobs"][:cap]]  # the model's ranking, cut
        assert [e["logprob"] for e in tops] == sorted((e["logprob"] for e in tops), reverse=True)
        assert all(e["logprob"] <= 0.0 for e in tops) and item["logprob"] <= 0.0
        if tops:
            assert item["logprob"] == tops[0]["logprob"]  # the chosen token is the first entry here
        assert item["bytes"] == before["bytes"]


def test_a_sampled_token_below_the_shown_ones_stays_below_them() -> None:
    s = PerturbSettings(secret="k", noise_nats=1.0, max_top_logprobs=2)
    tokens = [(f"low{i}", -1.2, [(f"a{i}", -0.9), (f"b{i}", -1.0), (f"low{i}", -1.2)]) for i in range(300)]
    for item in perturbed_content(s, CHAT, chat_response(tokens)):
        assert item["logprob"] <= item["top_logprobs"][-1]["logprob"]


@pytest.mark.parametrize(
    "other, same_noise",
    [
        ({**CHAT, "logit_bias": {"5": 100}, "top_logprobs": 20, "temperature": 0, "n": 4, "seed": 7, "user": "x", "stream": True}, True),
        ({**CHAT, "messages": [{"role": "user", "content": "hi "}]}, False),
        ({**CHAT, "model": "other"}, False),
    ],
)
def test_noise_is_keyed_by_content_not_by_knobs(other: dict[str, Any], same_noise: bool) -> None:
    resp = chat_response(many_tokens(50))
    first = perturbed_content(SETTINGS, CHAT, resp)
    assert perturbed_content(SETTINGS, CHAT, resp) == first  # a retry sees the same values
    assert (perturbed_content(SETTINGS, other, resp) == first) is same_noise
    assert perturbed_content(PerturbSettings(secret="other-key"), CHAT, resp) != first


def legacy_response(n: int, k: int = 5, echo_first: bool = False) -> dict[str, Any]:
    tokens = [f" w{i}" for i in range(n)]
    tops = [{f" w{i}" if j == 0 else f" x{i}_{j}": -0.1 - 0.5 * j for j in range(k)} for i in range(n)]
    token_lps: list[float | None] = [-0.1] * n
    if echo_first:
        token_lps[0], tops[0] = None, None
    lp = {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops, "text_offset": list(range(n))}
    return {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m", "choices": [{"index": 0, "text": "".join(tokens), "logprobs": lp, "finish_reason": "length"}]}


@pytest.mark.parametrize("echo_first", [False, True])
def test_legacy_completions_logprobs(echo_first: bool) -> None:
    s = PerturbSettings(secret="k", max_top_logprobs=2)
    resp = legacy_response(40, echo_first=echo_first)
    out = get_action("perturb", ActionSettings(perturb=s)).response(COMPLETION, resp)["choices"][0]["logprobs"]
    assert out["tokens"] == resp["choices"][0]["logprobs"]["tokens"] and out["text_offset"] == list(range(40))
    for i, (token, lp, top) in enumerate(zip(out["tokens"], out["token_logprobs"], out["top_logprobs"])):
        if echo_first and i == 0:
            assert lp is None and top is None
            continue
        assert len(top) == 2 and list(top.values()) == sorted(top.values(), reverse=True)
        assert lp == top[token] and lp <= 0.0


@pytest.mark.parametrize(
    "body",
    [
        {"error": {"message": "upstream", "type": "server_error", "param": None, "code": None}},
        {"object": "chat.completion", "choices": [{"index": 0, "message": {"content": "x"}, "logprobs": None}]},
        {"object": "chat.completion.chunk", "choices": [], "usage": {"total_tokens": 3}},
    ],
)
def test_bodies_without_logprobs_pass_unchanged(body: dict[str, Any]) -> None:
    assert get_action("perturb", ActionSettings(perturb=SETTINGS)).response(CHAT, copy.deepcopy(body)) == body


@pytest.mark.parametrize(
    "logprobs",
    [{"content": [{"token": "a"}]}, {"content": [{"token": "a", "logprob": -1, "top_logprobs": [{"logprob": -1}]}]}, {"tokens": ["a"], "token_logprobs": "x", "top_logprobs": [5]}],
)
def test_unreadable_logprobs_are_dropped_not_passed_or_raised(logprobs: dict[str, Any]) -> None:
    body = {"object": "chat.completion", "choices": [{"index": 0, "message": {"content": "a"}, "logprobs": logprobs}]}
    out = get_action("perturb", ActionSettings(perturb=SETTINGS)).response(CHAT, body)
    assert out["choices"][0]["logprobs"] is None


# --- streaming ----------------------------------------------------------------------------

def chat_chunks(resp: dict[str, Any]) -> list[dict[str, Any]]:
    """The chat.completion as a stream: a role chunk, one chunk per token, a finish chunk."""
    base = {"id": resp["id"], "object": "chat.completion.chunk", "created": 1, "model": "m"}
    out = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]}]
    for item in resp["choices"][0]["logprobs"]["content"]:
        out.append({**base, "choices": [{"index": 0, "delta": {"content": item["token"]}, "logprobs": {"content": [item], "refusal": None}, "finish_reason": None}]})
    out.append({**base, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]})
    return out


def sse(chunks: list[dict[str, Any]], eol: bytes) -> bytes:
    lines = [b": keep-alive" + eol + eol]
    for c in chunks:
        lines.append(b"data: " + json.dumps(c).encode() + eol + eol)
    lines.append(b"event: ping" + eol + b"data: not json" + eol + eol + b"data: [DONE]" + eol + eol)
    return b"".join(lines)


def run_stream(stream: SSETransformer, raw: bytes, piece: int) -> bytes:
    out = b"".join(stream.feed(raw[i: i + piece]) for i in range(0, len(raw), piece))
    return out + stream.flush()


@pytest.mark.parametrize("piece", [1, 7, 64, 100_000])
@pytest.mark.parametrize("eol", [b"\n", b"\r\n"])
def test_stream_carries_the_values_of_the_whole_response(piece: int, eol: bytes) -> None:
    s = PerturbSettings(secret="k", max_top_logprobs=2, noise_nats=0.5)
    resp = chat_response(many_tokens(60))
    action = get_action("perturb", ActionSettings(perturb=s))
    raw = sse(chat_chunks(resp), eol)
    out = run_stream(action.stream(CHAT), raw, piece)

    in_lines, out_lines = raw.split(eol), out.split(eol)
    assert len(in_lines) == len(out_lines)
    streamed = []
    for a, b in zip(in_lines, out_lines):
        if a.startswith(b"data: {"):
            streamed.extend((json.loads(b[6:])["choices"][0]["logprobs"] or {}).get("content") or [])
        else:
            assert a == b  # comments, events, non-JSON data, [DONE] and separators pass byte for byte
    assert streamed == action.response(CHAT, resp)["choices"][0]["logprobs"]["content"]


def test_stream_without_trailing_newline_is_flushed() -> None:
    stream = get_action("perturb", ActionSettings(perturb=SETTINGS)).stream(CHAT)
    last = json.dumps(chat_chunks(chat_response(many_tokens(1)))[1]).encode()
    assert stream.feed(b"data: " + last[:10]) == b""
    out = stream.feed(last[10:]) + stream.flush()
    assert json.loads(out[6:])["choices"][0]["logprobs"]["content"][0]["top_logprobs"][0]["logprob"] <= 0.0


@pytest.mark.parametrize("name", ["allow", "throttle", "block"])
def test_other_actions_leave_bodies_and_streams_alone(name: str) -> None:
    action = get_action(name, ActionSettings(perturb=SETTINGS))
    resp = chat_response(many_tokens(5))
    raw = sse(chat_chunks(resp), b"\n")
    assert action.request({**CHAT, "top_logprobs": 20}) == {**CHAT, "top_logprobs": 20}
    assert action.response(CHAT, resp) == resp
    assert run_stream(action.stream(CHAT), raw, 13) == raw


def test_streamed_legacy_completion_matches_whole() -> None:
    s = PerturbSettings(secret="k", max_top_logprobs=3, noise_nats=0.4)
    resp = legacy_response(20)
    action = get_action("perturb", ActionSettings(perturb=s))
    lp = resp["choices"][0]["logprobs"]
    chunks = [
        {**resp, "choices": [{"index": 0, "text": t, "logprobs": {"tokens": [t], "token_logprobs": [lp["token_logprobs"][i]], "top_logprobs": [lp["top_logprobs"][i]], "text_offset": [i]}, "finish_reason": None}]}
        for i, t in enumerate(lp["tokens"])
    ]
    out = run_stream(action.stream(COMPLETION), sse(chunks, b"\n"), 50)
    streamed = [json.loads(line[6:])["choices"][0]["logprobs"]["top_logprobs"][0] for line in out.split(b"\n") if line.startswith(b"data: {")]
    assert streamed == action.response(COMPLETION, resp)["choices"][0]["logprobs"]["top_logprobs"]


def test_positions_are_counted_per_choice() -> None:
    s = PerturbSettings(secret="k", max_top_logprobs=1)
    a, b = chat_response(many_tokens(3), index=0), chat_response(many_tokens(3), index=1)
    both = {**a, "choices": a["choices"] + b["choices"]}
    out = ResponsePerturber(request_seed(b"k", CHAT), s).body(both)
    assert out["choices"][0]["logprobs"] == out["choices"][1]["logprobs"]  # same tokens at the same positions


# --- replies ------------------------------------------------------------------------------

class OpenAIErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    error: OpenAIErrorDetail


@pytest.mark.parametrize(
    "name, retry_after, status, code, headers",
    [
        ("throttle", 30, 429, "rate_limit_exceeded", {"Retry-After": "30"}),
        ("throttle", 7, 429, "rate_limit_exceeded", {"Retry-After": "7"}),
        ("block", 30, 403, "access_denied", {}),
    ],
)
def test_short_circuit_replies_have_the_openai_error_shape(name: str, retry_after: int, status: int, code: str, headers: dict[str, str]) -> None:
    reply = reply_for(name, ActionSettings(perturb=SETTINGS, throttle=ThrottleSettings(retry_after_s=retry_after)))
    assert reply is not None and reply.status == status
    err = OpenAIError.model_validate_json(reply.body)
    assert err.error.code == code and err.error.message
    assert reply.headers["Content-Type"] == "application/json"
    for k, v in headers.items():
        assert reply.headers[k] == v
    if "Retry-After" not in headers:
        assert "Retry-After" not in reply.headers  # a block is not a "come back later"


@pytest.mark.parametrize("name", sorted(POLICY_ACTIONS))
def test_every_policy_action_is_registered_and_never_5xx(name: str) -> None:
    assert set(ACTIONS) == set(POLICY_ACTIONS)
    reply = get_action(name, ActionSettings(perturb=SETTINGS)).reply()
    assert reply is None if name in ("allow", "perturb") else 400 <= reply.status < 500


@pytest.mark.parametrize("status", [200, 302, 500, 503])
def test_a_reply_cannot_be_anything_but_4xx(status: int) -> None:
    with pytest.raises(ValueError, match="^status"):
        Reply(status, {}, b"")


def test_unknown_action_names_the_field() -> None:
    with pytest.raises(ValueError, match="^action: unknown 'slow'"):
        get_action("slow")


@pytest.mark.parametrize(
    "env, field, value",
    [
        ({"MOAT_PERTURB_MAX_TOP_LOGPROBS": "3"}, "max_top_logprobs", 3),
        ({"MOAT_PERTURB_LOGIT_BIAS": "clip"}, "logit_bias", "clip"),
        ({"MOAT_PERTURB_NOISE_NATS": "0.5"}, "noise_nats", 0.5),
        ({"MOAT_THROTTLE_RETRY_AFTER_S": "120"}, "retry_after_s", 120),
    ],
)
def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], field: str, value: Any) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = ActionSettings()
    assert getattr(s.throttle if field == "retry_after_s" else s.perturb, field) == value


def test_default_secret_is_one_per_process() -> None:
    # A gateway building settings per request must still give a retry the same noise.
    resp = chat_response(many_tokens(20))
    a = get_action("perturb").response(CHAT, resp)
    b = get_action("perturb").response(CHAT, resp)
    assert a == b


# --- the keyed text watermark (perturb, when enabled) --------------------------------------

WM_KEY = "watermark-test-key-0123456789"
WM_ON = ActionSettings(perturb=SETTINGS, watermark=WatermarkSettings(enabled=True, secret=WM_KEY))
# Prose with carriers of every kind: two- and three-word wordings, one-word ones, contractions,
# and places that must not change (code, a clause-final "they are", "kind of you").
PROSE = (
    "First of all, I do not think you are right. In the meantime, everyone knows a lot of things; "
    "it was kind of you, and they are. Maybe we can't go toward it, although no one would mind. "
    "Use `do not` in code:\n```\nmaybe often = 1\n```\nThey’re usually fine and don’t care. DO NOT STOP."
)


def keyed_wordings(text: str) -> list[tuple[int, str, int]]:
    return [(c.pair, c.previous, c.variant) for c in carriers(text)]


def test_every_carrier_takes_the_keys_wording_and_nothing_else_changes() -> None:
    marked = Watermarker(WM_KEY.encode()).apply(PROSE)
    found = carriers(marked)
    assert len(found) == len(carriers(PROSE)) >= 12
    assert all(c.variant == keyed_choice(WM_KEY.encode(), c.pair, c.previous) for c in found)
    # Code, a contraction that would end a clause, and "kind of you" are left as they were.
    assert "`do not`" in marked and "maybe often = 1" in marked and "and they are." in marked and "kind of you" in marked
    # With every wording written as its pair's number, the two texts are the same character
    # for character: nothing but carriers changed.
    assert pair_numbers(marked) == pair_numbers(PROSE)


def pair_numbers(text: str) -> str:
    for number, pair in enumerate(PAIRS):
        for variant in sorted(pair.variants, key=len, reverse=True):
            pattern = re.escape(variant).replace("'", "['’]")
            text = re.sub(rf"\b{pattern}\b", f"<{number}>", text, flags=re.IGNORECASE)
    return text


@pytest.mark.parametrize("original, expected", [("Do not", "Don't"), ("DO NOT", "DON'T"), ("don’t", "do not"), ("Don’t", "Do not")])
def test_case_and_apostrophe_style_are_kept(original: str, expected: str) -> None:
    # The key below picks "don't" after "we" and "do not" after "they" (asserted, so a change
    # of the hash shows here rather than as a puzzling case failure).
    key = b"case-key"
    choice = {"we": keyed_choice(key, 0, "we"), "they": keyed_choice(key, 0, "they")}
    subject = "We" if expected.lower().startswith("don") else "They"
    assert choice[subject.lower()] == (1 if subject == "We" else 0), choice
    assert Watermarker(key).apply(f"{subject} {original} go.") == f"{subject} {expected.replace(chr(39), '’') if '’' in original else expected} go."


@pytest.mark.parametrize("seed", range(8))
def test_streamed_text_is_marked_exactly_like_the_whole(seed: int) -> None:
    marker = Watermarker(WM_KEY.encode())
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(PROSE)), rng.randint(1, 60)))
    stream = TextWatermarker(marker)
    pieces = [PROSE[a:b] for a, b in zip([0, *cuts], [*cuts, len(PROSE)])]
    assert "".join(stream.feed(p) for p in pieces) + stream.flush() == marker.apply(PROSE)


def prose_chat(text: str) -> dict[str, Any]:
    return {"id": "c1", "object": "chat.completion", "created": 1, "model": "m", "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": "stop"}]}


def prose_chunks(text: str, piece: int) -> list[dict[str, Any]]:
    base = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    out = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": text[i : i + piece]}, "logprobs": None, "finish_reason": None}]} for i in range(0, len(text), piece)]
    return out + [{**base, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]}]


def streamed_text(raw: bytes) -> str:
    return "".join((json.loads(line[6:])["choices"][0]["delta"].get("content") or "") for line in raw.split(b"\n") if line.startswith(b"data: {"))


@pytest.mark.parametrize("piece", [1, 5, 33, 10_000])
def test_perturb_marks_whole_and_streamed_answers_alike(piece: int) -> None:
    action = get_action("perturb", WM_ON)
    whole = action.response(CHAT, prose_chat(PROSE))["choices"][0]["message"]["content"]
    assert whole == Watermarker(WM_KEY.encode()).apply(PROSE) != PROSE
    assert streamed_text(run_stream(action.stream(CHAT), sse(prose_chunks(PROSE, piece), b"\n"), 17)) == whole


def test_text_held_at_a_stream_without_finish_reason_goes_out_before_done() -> None:
    action = get_action("perturb", WM_ON)
    chunks = prose_chunks(PROSE, 40)[:-1]  # no finish_reason chunk
    out = run_stream(action.stream(CHAT), sse(chunks, b"\n"), 64)
    assert streamed_text(out) == Watermarker(WM_KEY.encode()).apply(PROSE)
    assert out.rstrip().endswith(b"data: [DONE]")


@pytest.mark.parametrize("choice", [
    {"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": [{"id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}, "finish_reason": "tool_calls"},
    {"index": 0, "message": {"role": "assistant", "content": "", "refusal": "no"}, "finish_reason": "stop"},
])
def test_answers_without_text_are_left_alone(choice: dict[str, Any]) -> None:
    body = {**prose_chat(""), "choices": [choice]}
    assert get_action("perturb", WM_ON).response(CHAT, body) == body


def test_legacy_completion_text_is_marked() -> None:
    body = {"id": "c", "object": "text_completion", "created": 1, "model": "m", "choices": [{"index": 0, "text": PROSE, "logprobs": None, "finish_reason": "stop"}]}
    assert get_action("perturb", WM_ON).response(COMPLETION, body)["choices"][0]["text"] == Watermarker(WM_KEY.encode()).apply(PROSE)


@pytest.mark.parametrize("settings, marked", [(ActionSettings(perturb=SETTINGS), False), (WM_ON, True)])
def test_the_watermark_is_off_by_default(settings: ActionSettings, marked: bool) -> None:
    out = get_action("perturb", settings).response(CHAT, prose_chat(PROSE))["choices"][0]["message"]["content"]
    assert (out != PROSE) == marked
    assert get_action("allow", WM_ON).response(CHAT, prose_chat(PROSE))["choices"][0]["message"]["content"] == PROSE


@pytest.mark.parametrize("env, error", [({"MOAT_WATERMARK_ENABLED": "true"}, "MOAT_WATERMARK_SECRET"), ({"MOAT_WATERMARK_ENABLED": "true", "MOAT_WATERMARK_SECRET": "short"}, "16\\+ characters"), ({}, None)])
def test_watermark_settings_need_a_stable_secret(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], error: str | None) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    if error is None:
        assert WatermarkSettings().enabled is False
        return
    with pytest.raises(ValidationError, match=error):
        WatermarkSettings()


# --- the Responses API ----------------------------------------------------------------------

RESPONSES = {"model": "m", "input": "hi", "include": ["message.output_text.logprobs"]}


# (path, body, fields expected after the caps; None: absent). Only a path tells a Responses
# request from an embeddings one (both send `input`); a field an API does not know is never added.
SHAPED = [
    ("/v1/responses", {**RESPONSES, "top_logprobs": 20}, {"top_logprobs": 1, "max_output_tokens": 2048, "max_tokens": None, "max_completion_tokens": None, "logprobs": None}),
    ("/v1/responses", {**RESPONSES, "max_output_tokens": 100_000, "temperature": 0}, {"max_output_tokens": 2048, "temperature": 0.7}),
    # A stored answer could be fetched again, unscored and exact: one that asks for logprobs is not stored.
    ("/v1/responses", {**RESPONSES, "store": True, "background": True}, {"store": False, "background": None}),
    ("/v1/responses", {"model": "m", "input": "hi", "top_logprobs": 3}, {"store": False}),
    ("/v1/responses", {"model": "m", "input": "hi", "background": True}, {"store": None, "background": True}),
    ("/v1/responses", {**RESPONSES, "background": True, "background_options": {"completion_window": "2h"}}, {"store": False, "background": None, "background_options": None}),
    # A conversation keeps its items whatever `store` says: no logprobs asked of it.
    ("/v1/responses", {**RESPONSES, "conversation": "conv_1", "top_logprobs": 5}, {"top_logprobs": None, "include": [], "store": None}),
    ("/v1/responses", {"model": "m", "input": "hi", "conversation": "conv_1", "top_logprobs": 5}, {"top_logprobs": None, "store": None, "include": None}),
    ("/v1/embeddings", {"model": "m", "input": "hi"}, {"max_tokens": None, "max_output_tokens": None, "max_completion_tokens": None}),
    (None, {"model": "m", "input": "hi", "top_logprobs": 9}, {"top_logprobs": 1, "max_tokens": None, "max_output_tokens": None}),
    ("/v1/chat/completions", {**CHAT, "top_logprobs": 9}, {"top_logprobs": 1, "max_completion_tokens": 2048, "max_tokens": None}),
    ("/openai/deployments/d/completions?api-version=1", {**COMPLETION, "logprobs": 5}, {"logprobs": 1, "max_tokens": 2048}),
]


@pytest.mark.parametrize("path, body, expected", SHAPED)
def test_request_caps_follow_the_api(path: str | None, body: dict[str, Any], expected: dict[str, Any]) -> None:
    out = perturb_request(body, SETTINGS, path)
    for name, value in expected.items():
        assert out.get(name) == value, name
        if value is None:
            assert name not in out, f"{name}: sent as null"  # a null field can be refused too


def responses_body(tokens: list[tuple[str, float, list[tuple[str, float]]]]) -> dict[str, Any]:
    logprobs = chat_response(tokens)["choices"][0]["logprobs"]["content"]
    part = {"type": "output_text", "text": "".join(t for t, _, _ in tokens), "annotations": [], "logprobs": logprobs}
    return {"id": "resp_1", "object": "response", "model": "m", "output": [{"type": "reasoning", "id": "rs_1", "summary": []}, {"type": "message", "id": "msg_1", "role": "assistant", "content": [part]}]}


def responses_events(body: dict[str, Any], per_delta: int) -> list[dict[str, Any]]:
    """The response as a stream: deltas of `per_delta` tokens, the done events, the completed response."""
    part = body["output"][1]["content"][0]
    lps = part["logprobs"]
    out: list[dict[str, Any]] = [{"type": "response.created", "response": {**body, "output": []}}]
    for a in range(0, len(lps), per_delta):
        out.append({"type": "response.output_text.delta", "output_index": 1, "content_index": 0, "delta": "".join(e["token"] for e in lps[a : a + per_delta]), "logprobs": lps[a : a + per_delta]})
    out.append({"type": "response.output_text.done", "output_index": 1, "content_index": 0, "text": part["text"], "logprobs": lps})
    out.append({"type": "response.content_part.done", "output_index": 1, "content_index": 0, "part": part})
    out.append({"type": "response.output_item.done", "output_index": 1, "item": body["output"][1]})
    out.append({"type": "response.completed", "response": body})
    return out


def test_responses_api_logprobs_are_perturbed() -> None:
    s = PerturbSettings(secret="k", max_top_logprobs=1, noise_nats=0.5)
    body = responses_body(many_tokens(20))
    got = ResponsePerturber(request_seed(b"k", RESPONSES), s).body(body)["output"][1]["content"][0]["logprobs"]
    want = ResponsePerturber(request_seed(b"k", CHAT), s).body(chat_response(many_tokens(20)))["choices"][0]["logprobs"]["content"]
    original = body["output"][1]["content"][0]["logprobs"]
    assert len(got) == len(original)
    assert all(len(e["top_logprobs"]) == 1 for e in got)  # truncated to the cap
    assert [e["logprob"] for e in got] != [e["logprob"] for e in original]
    assert all(round(e["logprob"] / 0.1, 6).is_integer() for e in got)  # rounded to the step
    assert len(want) == len(got)  # the chat layout, read the same way


@pytest.mark.parametrize("per_delta", [1, 3, 20])
def test_responses_api_stream_carries_the_values_of_the_whole_response(per_delta: int) -> None:
    s = PerturbSettings(secret="k", max_top_logprobs=2, noise_nats=0.5)
    body = responses_body(many_tokens(20))
    whole = ResponsePerturber(request_seed(b"k", RESPONSES), s).body(body)["output"][1]["content"][0]["logprobs"]
    stream = SSETransformer(ResponsePerturber(request_seed(b"k", RESPONSES), s))
    raw = b"".join(b"event: " + e["type"].encode() + b"\ndata: " + json.dumps(e).encode() + b"\n\n" for e in responses_events(body, per_delta))
    events = [json.loads(line[6:]) for line in run_stream(stream, raw, 50).split(b"\n") if line.startswith(b"data: ")]
    deltas = [x for e in events if e["type"] == "response.output_text.delta" for x in e["logprobs"]]
    done = {e["type"]: e for e in events}
    assert whole != body["output"][1]["content"][0]["logprobs"]
    assert deltas == whole
    assert done["response.output_text.done"]["logprobs"] == whole
    assert done["response.content_part.done"]["part"]["logprobs"] == whole
    assert done["response.output_item.done"]["item"]["content"][0]["logprobs"] == whole
    assert done["response.completed"]["response"]["output"][1]["content"][0]["logprobs"] == whole


# (a field of a Responses request that changes, whether the noise must change): the question is
# in `input`, `instructions` or a stored conversation, as it is in chat's `messages`.
RESPONSES_SEEDS = [
    ({"input": "Tell me a poem"}, True),
    ({"instructions": "Answer in French"}, True),
    ({"previous_response_id": "resp_2"}, True),
    ({"top_logprobs": 3}, False),
    ({"temperature": 0.2}, False),
]


@pytest.mark.parametrize("change, differs", RESPONSES_SEEDS)
def test_responses_noise_is_keyed_by_the_question(change: dict[str, Any], differs: bool) -> None:
    s = PerturbSettings(secret="k", noise_nats=1.0, round_step=0)
    body = responses_body(many_tokens(8))
    base = {**RESPONSES, "previous_response_id": "resp_1"}

    def values(request: dict[str, Any]) -> list[float]:
        return [e["logprob"] for e in ResponsePerturber(request_seed(b"k", request), s).body(body)["output"][1]["content"][0]["logprobs"]]

    assert (values(base) != values({**base, **change})) is differs


def test_logprobs_too_large_for_a_float_are_dropped_not_a_failure() -> None:
    """JSON allows -1e400 written as an integer; it was an OverflowError, a 500 from the proxy."""
    s = PerturbSettings(secret="k")
    huge = [(t, -(10**400), [(a, -(10**400)) for a, _ in tops]) for t, _, tops in many_tokens(2)]
    body = responses_body(huge)
    assert ResponsePerturber(request_seed(b"k", RESPONSES), s).body(body)["output"][1]["content"][0]["logprobs"] == []
    assert ResponsePerturber(request_seed(b"k", CHAT), s).body(chat_response(huge))["choices"][0]["logprobs"] is None
