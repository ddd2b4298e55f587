"""Each feature computed by hand on small made-up sessions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from moat.models.events import Event
from moat.models.feature_spec import FEATURES, N_FEATURES, WINDOW
from moat.models.scope_window import Crowd, ScopeState, window
from moat.models.summary import Summary, ip_prefix, summarize, ua_group

I = {f.name: i for i, f in enumerate(FEATURES)}


def ev(i: int, ts: float, text: str = "hello world", account: str = "acct", **params) -> Event:
    return Event.model_validate({"request_id": f"r{i}", "ts": ts, "account_id": account, "client_ip": "10.1.2.3", "messages": [{"role": "user", "content": text}], "params": params})


def run(events: list[Event], campaign: int = 1, cohort: int = 1) -> np.ndarray:
    """Feature vectors of the account scope, one per event."""
    state = ScopeState()
    rows = [window(state, summarize(e), Crowd(campaign, cohort), "account")[0][-1] for e in events]
    return np.asarray(rows)


# (case, events, feature, index of event, expected value)
CASES = [
    ("first request has no history", [ev(0, 0.0)], "first_in_scope", 0, 1.0),
    ("second request has history", [ev(0, 0.0), ev(1, 10.0)], "first_in_scope", 1, 0.0),
    ("gap to previous", [ev(0, 0.0), ev(1, 10.0)], "dt_prev", 1, math.log1p(10) / 12),
    ("mean gap over k", [ev(i, 5.0 * i) for i in range(4)], "dt_mean_k", 3, math.log1p(15 / 3) / 12),
    ("regular gaps have zero CV", [ev(i, 5.0 * i, f"q {i} alpha") for i in range(5)], "gap_cv", 4, 0.0),
    ("irregular gaps", [ev(0, 0.0), ev(1, 1.0), ev(2, 11.0)], "gap_cv", 2, (np.std([1, 10]) / 5.5) / 3),
    ("requests in last minute", [ev(0, 0.0), ev(1, 50.0), ev(2, 100.0)], "rate_1m", 2, math.log1p(2) / 4),
    ("identical prompt repeated", [ev(i, float(i), "same prompt here") for i in range(3)], "exact_repeat_share", 2, 1.0),
    ("identical prompt is a near duplicate", [ev(i, float(i), "same prompt here") for i in range(3)], "near_dup_share", 2, 1.0),
    ("identical previous prompt: sim_prev 1", [ev(0, 0.0, "a b c d"), ev(1, 1.0, "a b c d")], "sim_prev", 1, 1.0),
    ("distinct prompts", [ev(0, 0.0, "alpha beta"), ev(1, 1.0, "gamma delta"), ev(2, 2.0, "alpha beta")], "distinct_share", 2, 2 / 3),
    ("all-new words are novel", [ev(0, 0.0, "alpha beta"), ev(1, 1.0, "gamma delta")], "novelty", 1, 1.0),
    ("seen words are not novel", [ev(0, 0.0, "alpha beta"), ev(1, 1.0, "alpha beta")], "novelty", 1, 0.0),
    ("template repeated with new values", [ev(0, 0.0, "Translate to French: 12 Berlin"), ev(1, 1.0, "Translate to French: 99 Paris")], "template_share", 1, 1.0),
    ("different templates", [ev(0, 0.0, "Translate to French: 12 Berlin"), ev(1, 1.0, "Summarize this ticket please now")], "template_share", 1, 0.0),
    ("parameter changed", [ev(0, 0.0, temperature=0.0), ev(1, 1.0, temperature=0.7)], "param_change", 1, 1.0),
    ("parameter unchanged", [ev(0, 0.0, temperature=0.7), ev(1, 1.0, temperature=0.7)], "param_change", 1, 0.0),
    ("logit_bias varied over one prompt", [ev(i, float(i), "probe", logit_bias={str(i): 100}) for i in range(3)], "lb_variety", 2, math.log1p(3) / 5),
    ("constant logit_bias", [ev(i, float(i), f"text {i}", logit_bias={"5": 100}) for i in range(3)], "lb_variety", 2, math.log1p(1) / 5),
    ("logprob share", [ev(0, 0.0, logprobs=True), ev(1, 1.0), ev(2, 2.0, logprobs=True)], "logprob_share", 2, 2 / 3),
    ("max_tokens", [ev(0, 0.0, max_tokens=1)], "max_tokens", 0, math.log1p(1) / 9),
    ("top_logprobs", [ev(0, 0.0, logprobs=True, top_logprobs=5)], "top_logprobs", 0, 0.25),
    ("n", [ev(0, 0.0, n=128)], "n", 0, 1.0),
    ("temperature absent", [ev(0, 0.0)], "temperature_set", 0, 0.0),
    ("logit_bias size", [ev(0, 0.0, logit_bias={"1": 100, "2": -100})], "logit_bias_size", 0, math.log1p(2) / 6),
    ("logit_bias range", [ev(0, 0.0, logit_bias={"1": 50, "2": -100})], "logit_bias_max", 0, 1.0),
    ("scope flag", [ev(0, 0.0)], "scope_account", 0, 1.0),
    ("prompt characters", [ev(0, 0.0, "abcd")], "prompt_chars", 0, math.log1p(4) / 12),
    ("newest message characters", [ev(0, 0.0, "abcdefghij")], "last_chars", 0, math.log1p(10) / 10),
    ("one message", [ev(0, 0.0)], "n_messages", 0, math.log1p(1) / 5),
    ("no system prompt", [ev(0, 0.0)], "has_system", 0, 0.0),
    ("chat endpoint", [ev(0, 0.0)], "is_completion", 0, 0.0),
    ("digits", [ev(0, 0.0, "ab12")], "digit_share", 0, 0.5),
    ("non-ASCII", [ev(0, 0.0, "éé ab")], "nonascii_share", 0, 0.4),
    ("seed sent", [ev(0, 0.0, seed=7)], "seed_set", 0, 1.0),
    ("stop sent", [ev(0, 0.0, stop="###")], "stop_set", 0, 1.0),
    ("stream", [ev(0, 0.0, stream=True)], "stream", 0, 1.0),
    ("top_p sent", [ev(0, 0.0, top_p=0.9)], "top_p_set", 0, 1.0),
    ("temperature value", [ev(0, 0.0, temperature=1.0)], "temperature", 0, 0.5),
    ("logit_bias spread", [ev(0, 0.0, logit_bias={"1": 100, "2": -100})], "logit_bias_spread", 0, 1.0),
    ("no user agent", [ev(0, 0.0)], "ua_none", 0, 1.0),
    ("hourly EWMA after two quick requests", [ev(0, 0.0), ev(1, 0.0)], "rate_1h", 1, math.log1p(2) / 8),
    ("best match in the window", [ev(0, 0.0, "alpha beta gamma"), ev(1, 1.0, "delta epsilon"), ev(2, 2.0, "alpha beta gamma")], "sim_max", 2, 1.0),
    ("share of parameter changes", [ev(0, 0.0, temperature=0.1), ev(1, 1.0, temperature=0.2), ev(2, 2.0, temperature=0.2)], "param_change_share", 2, 1 / 3),
    ("share with logit_bias", [ev(0, 0.0, logit_bias={"1": 1}), ev(1, 1.0), ev(2, 2.0)], "lb_share", 2, 1 / 3),
    ("total count", [ev(i, float(i)) for i in range(3)], "total", 2, math.log1p(3) / 12),
]


@pytest.mark.parametrize("case, events, feature, at, expected", CASES, ids=[c[0] for c in CASES])
def test_feature_by_hand(case: str, events: list[Event], feature: str, at: int, expected: float) -> None:
    got = run(events)[at, I[feature]]
    assert got == pytest.approx(expected, abs=2e-3), case  # vectors are stored as float16


@pytest.mark.parametrize("campaign, expected", [(1, 0.0), (5, math.log1p(4) / 5), (50, math.log1p(49) / 5)])
def test_campaign_feature(campaign: int, expected: float) -> None:
    assert run([ev(0, 0.0)], campaign=campaign)[0, I["campaign"]] == pytest.approx(expected, abs=2e-3)


# The two sketches feed their own columns: a cohort count must not leak into campaign or back.
@pytest.mark.parametrize("campaign, cohort", [(1, 1), (1, 30), (30, 1), (7, 12)])
@pytest.mark.parametrize("n_events", [1, 3])
def test_cohort_feature(campaign: int, cohort: int, n_events: int) -> None:
    row = run([ev(i, 10.0 * i) for i in range(n_events)], campaign=campaign, cohort=cohort)[-1]
    assert row[I["cohort"]] == pytest.approx(math.log1p(cohort - 1) / 5, abs=2e-3)
    assert row[I["campaign"]] == pytest.approx(math.log1p(campaign - 1) / 5, abs=2e-3)


@pytest.mark.parametrize(
    "ip, prefix",
    [("198.51.100.23", "198.51.100.0/24"), ("2001:db8:abcd:12::1", "2001:db8:abcd::/48"), ("not-an-ip", None), (None, None), ("", None)],
)
def test_ip_prefix(ip: str | None, prefix: str | None) -> None:
    assert ip_prefix(ip) == prefix


@pytest.mark.parametrize(
    "ua, group",
    [("OpenAI/Python 1.30.0", "sdk"), ("Mozilla/5.0 (Macintosh)", "browser"), ("curl/8.1.0", "cli"), ("python-requests/2.31", "http_lib"), ("langchain/0.2 OpenAI/Python 1.0", "framework"), ("acme-worker/2", "custom"), (None, "none")],
)
def test_user_agent_groups(ua: str | None, group: str) -> None:
    assert ua_group(ua) == group


def test_window_is_bounded_and_ordered() -> None:
    state = ScopeState()
    for i in range(WINDOW * 3):
        feats, tokens = window(state, summarize(ev(i, float(i), f"prompt {i}")), Crowd(), "account")
    assert feats.shape == (WINDOW, N_FEATURES) and tokens.shape[0] == WINDOW
    assert state.n == WINDOW and len(state.rows) == WINDOW
    assert list(state.history()["ts"]) == [float(i) for i in range(WINDOW * 2, WINDOW * 3)]


def test_storage_grows_with_use() -> None:
    small, full = ScopeState(), ScopeState()
    window(small, summarize(ev(0, 0.0)), Crowd(), "account")
    for i in range(WINDOW):
        window(full, summarize(ev(i, float(i))), Crowd(), "account")
    assert small.nbytes() < full.nbytes()


@pytest.mark.parametrize(
    "text",
    ["x" * 1_000_000, "lone \ud800 surrogate", "control \x00\x01\x1b[31m chars", "混合 Ünïcødé 🙂 текст", ""],
    ids=["1MB", "surrogate", "control", "unicode", "empty"],
)
def test_hostile_text_is_summarised(text: str) -> None:
    s = summarize(ev(0, 0.0, text))
    assert np.isfinite(s.own).all()


def test_summary_holds_no_raw_text() -> None:
    secret = "my secret prompt about zebras"
    s = summarize(ev(0, 0.0, secret))
    for name in Summary.__slots__:
        value = getattr(s, name)
        assert not (isinstance(value, str) and "zebra" in value), name


def test_ground_truth_fields_never_change_features() -> None:
    base = {"request_id": "r", "ts": 1.0, "account_id": "a", "prompt": "hello there", "params": {"max_tokens": 3}}
    a = run([Event.model_validate(base)])
    b = run([Event.model_validate({**base, "label": 1, "family": "logit_probe", "actor": "x"})])
    assert np.array_equal(a, b)


def _fp(text: str = "hello", account: str = "acct", ua: str | None = "OpenAI/Python 1.40.0", model: str | None = "m1", **params) -> int:
    e = ev(0, 0.0, text, account, **params).model_copy(update={"user_agent": ua, "model": model})
    return summarize(e).client_fp


# (case, the other request's fingerprint, same as _fp(temperature=0.7, seed=1)?). One tool sends
# one fingerprint whatever the prompt, account or seed; a different client or habit is another.
FINGERPRINT_CASES = [
    ("another prompt and account", lambda: _fp("other text", "acct2", temperature=0.7, seed=1), True),
    ("another seed value", lambda: _fp(temperature=0.7, seed=99), True),
    ("no seed", lambda: _fp(temperature=0.7), False),
    ("another temperature", lambda: _fp(temperature=0.8, seed=1), False),
    ("another user agent release", lambda: _fp(ua="OpenAI/Python 1.39.0", temperature=0.7, seed=1), False),
    ("another model", lambda: _fp(model="m2", temperature=0.7, seed=1), False),
    ("no user agent", lambda: _fp(ua=None, temperature=0.7, seed=1), False),
    ("streaming", lambda: _fp(temperature=0.7, seed=1, stream=True), False),
]


@pytest.mark.parametrize("case, other, same", FINGERPRINT_CASES, ids=[c[0] for c in FINGERPRINT_CASES])
def test_client_fingerprint(case: str, other, same: bool) -> None:
    base = _fp(temperature=0.7, seed=1)
    assert base != 0
    assert (other() == base) is same
