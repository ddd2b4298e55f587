"""Privacy at rest: what Redis holds after scoring names no account or key, and holds no
unkeyed fingerprint of a prompt; keyed fingerprints leave every feature as it was."""

from __future__ import annotations

import hashlib
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

from moat.models.events import Event
from moat.models.featurizer import Featurizer
from moat.models.memory_store import MemoryStore
from moat.models.state import Keyer
from moat.models.summary import summarize
from moat.models.traces import iter_raw
from moat.serving.scorer import Scorer
from moat.serving.settings import ServingSettings
from moat.serving.state.redis_store import RedisStore

ACCOUNT, API_KEY, IP = "acct-alice-7731", "key-bob-0042", "198.51.100.23"
PROMPTS = ["Your one-time code is 482913", "Translate to French: the invoice is overdue", "What is the capital of France? Answer:"]


def _events() -> list[Event]:
    return [
        Event.model_validate({
            "request_id": f"r{i}", "ts": 1_764_500_000.0 + i, "account_id": ACCOUNT, "api_key_id": API_KEY, "client_ip": IP,
            "prompt": PROMPTS[i % len(PROMPTS)], "params": {"max_tokens": 5, "logit_bias": {"42": 5}} if i % 2 else {"max_tokens": 5},
        })
        for i in range(12)
    ]


def redis_cli_scan(url: str) -> list[str]:
    binary = shutil.which("redis-cli")
    if binary is None:
        pytest.fail("redis-cli is not installed (apt-get install redis-tools; .ci/run does this)")
    return subprocess.run([binary, "-u", url, "--scan"], capture_output=True, text=True, check=True).stdout.split()


def test_redis_holds_no_raw_ids_and_no_unkeyed_prompt_fingerprint(redis_url: str) -> None:
    """The issue's repro: key names held the raw account and API key ids, and rows held the
    prompts' CRC32, so guessed prompts (a one-time code) were confirmed from a dump."""
    sc = Scorer(ServingSettings(state=redis_url, time_source="caller"))
    for e in _events():
        sc.score(e)
    store = sc.store
    assert isinstance(store, RedisStore)
    keys = redis_cli_scan(redis_url)
    assert len(keys) > 5
    ids = [ACCOUNT, API_KEY, IP, "198.51.100.0"]
    assert not [k for k in keys if any(i in k for i in ids)]
    values = b"".join(store.client.dump(k) or b"" for k in keys)  # every type, as stored
    assert not [i for i in ids if i.encode() in values]
    summaries = [summarize(e) for e in _events()]
    for attr in ["prompt_hash", "shape", "lb_hash", "param_hash"]:
        crcs = {getattr(s, attr) for s in summaries} - {0}
        assert crcs and not [c for c in crcs if c.to_bytes(4, "little") in values], f"{attr}: an unkeyed CRC32 is stored"
        assert not [k for k in keys if any(str(c) in k for c in crcs)]


SECRETS = [
    # (case, secret of the first store, of the second, same key names, the secret kept in Redis)
    ("generated once, shared by replicas", None, None, True, True),
    ("configured, the same on both", b"s" * 32, b"s" * 32, True, False),
    ("configured, different", b"s" * 32, b"t" * 32, False, False),
]


@pytest.mark.parametrize("case, first, second, same, stored", SECRETS, ids=[c[0] for c in SECRETS])
def test_key_names_follow_the_deployment_secret(redis_url: str, case: str, first: bytes | None, second: bytes | None, same: bool, stored: bool) -> None:
    a, b = RedisStore(redis_url, secret=first), RedisStore(redis_url, secret=second)
    assert (a.redis_key("h", "account", ACCOUNT) == b.redis_key("h", "account", ACCOUNT)) is same
    assert (a.client.exists(a.secret_key) == 1) is stored


def test_the_secret_setting_reaches_the_store(redis_url: str) -> None:
    secret = secrets.token_hex(16)
    sc = Scorer(ServingSettings(state=redis_url, state_secret=secret))
    assert isinstance(sc.store, RedisStore)
    assert sc.store.redis_key("h", "account", ACCOUNT) == RedisStore(redis_url, secret=secret.encode()).redis_key("h", "account", ACCOUNT)
    assert not sc.store.client.exists(sc.store.secret_key)


def _feature_digest(store: MemoryStore, trace: Path) -> str:
    h = hashlib.sha256()
    featurizer = Featurizer(store)
    for raw in iter_raw(trace):
        for w in featurizer.step(Event.model_validate(raw)).windows:
            h.update(f"{w.scope}\0{w.key}\0".encode() + w.feats.astype("<f2").tobytes() + w.tokens.astype("<u2").tobytes())
    return h.hexdigest()


def test_keyed_fingerprints_leave_the_features_unchanged(small_traces: Path) -> None:
    """Fingerprints are compared for equality only, so keying them changes no feature row."""
    plain = _feature_digest(MemoryStore(max_scopes=None, ttl_s=None), small_traces / "test.jsonl")
    keyed = _feature_digest(MemoryStore(max_scopes=None, ttl_s=None, keyer=Keyer(secrets.token_bytes(32))), small_traces / "test.jsonl")
    assert keyed == plain


@pytest.mark.parametrize("value", [0, 1, 0xFFFFFFFF, 123456])
def test_a_keyed_fingerprint_keeps_zero_as_none_and_is_never_the_crc(value: int) -> None:
    keyer = Keyer(b"k" * 32)
    out = keyer.fingerprint(value)
    assert 0 <= out < 2**32 and (out == 0) is (value == 0)
    assert out == keyer.fingerprint(value) and (value == 0 or out != Keyer(b"j" * 32).fingerprint(value))
