"""Privacy at rest in Redis: after scoring known prompts, nothing stored confirms them (no
SimHash, no hashed token ids, no novelty bloom words, no plaintext row), and a state value
moved to another key does not authenticate: it is read as corrupt state, a fresh scope."""

from __future__ import annotations

import logging

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from moat.models.events import Event
from moat.models.featurizer import Featurizer
from moat.models.memory_store import MemoryStore
from moat.models.state import Keyer
from moat.models.summary import summarize
from moat.serving.state import redis_store
from moat.serving.state.redis_store import RedisStore
from moat.serving.state.sealed_scope import CorruptState, Sealer, decode

SECRET = b"a deployment secret of 32 bytes!"
PROMPTS = ["Your one-time code is 482913", "Your one-time code is 771205", "Translate to French: the invoice is overdue"]


def _events(account: str = "acct-alice-7731", n: int = 20) -> list[Event]:
    return [
        Event.model_validate({
            "request_id": f"{account}-{i}", "ts": 1_764_500_000.0 + 3 * i, "account_id": account, "api_key_id": f"key-{account}",
            "client_ip": "198.51.100.23", "prompt": PROMPTS[i % len(PROMPTS)], "params": {"max_tokens": 5, "logit_bias": {"42": 5}} if i % 2 else {"max_tokens": 5},
        })
        for i in range(n)
    ]


def _dump(store: RedisStore) -> tuple[bytes, bytes]:
    """Every stored byte (DUMP, whatever the type), and the scope state values alone."""
    keys = list(store.client.scan_iter("*"))
    everything = b"\0".join(store.client.dump(k) or b"" for k in keys)
    states = b"\0".join(store.client.get(k) or b"" for k in keys if b":s:" in k)
    return everything, states


def test_redis_holds_nothing_that_confirms_a_scored_prompt(redis_url: str) -> None:
    """Issue 11's leftover: rows held the SimHash, the hashed token ids and the novelty bloom bits
    unkeyed, so a guessed prompt (a one-time code) could be confirmed from a dump. The same
    requests through memory state give what would be stored in the clear; none of it is in Redis."""
    store = RedisStore(redis_url, secret=SECRET)
    clear = MemoryStore(max_scopes=None, ttl_s=None, keyer=Keyer(SECRET))
    for featurizer in (Featurizer(store), Featurizer(clear)):
        for e in _events():
            featurizer.step(e)
    everything, states = _dump(store)
    assert len(states) > 3 * 2000  # three scopes of 20 requests each are there
    summaries = [summarize(e) for e in _events()]
    simhashes = {s.simhash.to_bytes(8, "little") for s in summaries}
    token_blocks = {s.tokens.astype("<u2").tobytes() for s in summaries}
    plain_rows = {r.tobytes() for e in clear._scopes.values() for r in e.state.history()}
    bloom_words = {w.tobytes() for e in clear._scopes.values() for w in e.state.bloom_cur if w}
    assert simhashes and token_blocks and plain_rows and bloom_words
    assert not [h for h in simhashes if h in everything], "a prompt's SimHash is stored"
    assert not [t for t in token_blocks if t in everything], "a prompt's hashed token ids are stored"
    assert not [r for r in plain_rows if r in everything], "a row is stored in the clear"
    assert not [w for w in bloom_words if w in states], "a novelty bloom word is stored in the clear"
    assert not [p for p in PROMPTS if p.encode() in everything]


def _state_key(store: RedisStore, account: str) -> str:
    return store.redis_key("s", "account", account)


def test_a_state_value_copied_to_another_key_is_a_fresh_scope(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """The key name is the associated data: a copy of one account's history put under another's
    key does not authenticate, so it is never read as that account's history."""
    writer = RedisStore(redis_url, secret=SECRET)
    for account in ("mallory", "alice"):
        for e in _events(account, 5):
            Featurizer(writer).step(e)
    writer.client.set(_state_key(writer, "alice"), writer.client.get(_state_key(writer, "mallory")))
    reader = RedisStore(redis_url, secret=SECRET)  # another replica: it reads what is stored
    with caplog.at_level(logging.WARNING, logger=redis_store.__name__):
        step = Featurizer(reader).step(_events("alice", 6)[-1])
    assert any("does not authenticate" in r.message for r in caplog.records)
    assert len(step.windows[0].feats) == 1  # alice's account scope starts over: one request
    for account, total in (("alice", 1), ("mallory", 5)):
        name = _state_key(reader, account)
        assert decode(reader.sealer(), name.encode(), reader.client.get(name)).total == total


def test_the_cipher_key_is_derived_apart_from_the_keyers() -> None:
    """One secret, two uses: keyed names (BLAKE2b MAC) and sealing (AES-GCM) get keys derived
    with different personalisations, so neither stands in for the other."""
    nonce = bytes(12)
    under_mac_key = nonce + AESGCM(Keyer(SECRET)._key).encrypt(nonce, b"x" * 16, b"ad")
    with pytest.raises(CorruptState, match="does not authenticate"):
        Sealer(SECRET).open(under_mac_key, b"ad")
    assert Sealer(SECRET).open(Sealer(SECRET).seal(b"x" * 16, b"ad"), b"ad") == b"x" * 16
