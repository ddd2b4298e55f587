"""A scope's state as Redis keeps it: one string of fixed-size slots, each sealed with an AEAD.

    [head][row slot 0] ... [row slot WINDOW-1][previous bloom]

The head holds the request count, the two decayed rates, the bloom count and the current
novelty bloom. Row slot j holds the request whose sequence number q (1 for the scope's first
request) has (q - 1) % WINDOW == j, so the latest WINDOW requests overwrite the oldest in place.
The previous novelty bloom exists once a scope has rotated (64+ requests) and most scopes never
store it. Once a window is full, a write replaces the head and the new row's slot in place
(SETRANGE): about 400 bytes whatever the window holds; while it fills, the value is written whole.

Each slot is nonce (12 bytes) | AES-256-GCM ciphertext | tag (16 bytes), under a key derived
from the deployment secret with its own personalisation. The associated data is the Redis key
name and the slot's role (for a row, its sequence number), so a value copied to another key, or
a row moved to another slot, does not authenticate: it reads as corrupt state. Nonces count up
from a random 96-bit start per process: one process never repeats one, and two collide only if
their ranges overlap (about P^2 * N / 2^96 for P processes sealing N slots each: never, in
practice; random nonces would near 2^-32 after 2^32 writes under one key). The head's nonce is
the scope's version: it changes with every write, so comparing it detects a writer in between.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import secrets
import struct

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from moat.models.feature_spec import BLOOM_WORDS, WINDOW
from moat.models.scope_window import ROW, ScopeState
from moat.models.state import TS_MAX, TS_MIN

HEAD = struct.Struct("<qddi")  # total, ewma_1h, ewma_1d, bloom_count; the current bloom follows
NONCE, TAG = 12, 16
BLOOM_BYTES = BLOOM_WORDS * 8
HEAD_SLOT = NONCE + HEAD.size + BLOOM_BYTES + TAG
ROW_SLOT = NONCE + ROW.itemsize + TAG
PREV_AT = HEAD_SLOT + WINDOW * ROW_SLOT
PREV_SLOT = NONCE + BLOOM_BYTES + TAG
# What state_version hashes besides the row and head formats: a change here is a new layout.
LAYOUT = f"slots(head,{WINDOW}xrow,prev)/aes-256-gcm/ad=key+role"
_COUNTER_SPACE = 1 << 96


class CorruptState(ValueError):
    """Stored bytes that are not a scope of this layout under this key and secret."""


class Sealer:
    """AES-256-GCM under a key derived from the deployment secret (a personalisation of its own,
    so it shares nothing with the Keyer's MAC key)."""

    def __init__(self, secret: bytes) -> None:
        self._aead = AESGCM(hashlib.blake2b(secret, digest_size=32, person=b"moat-aead").digest())
        self._nonces = itertools.count(int.from_bytes(secrets.token_bytes(NONCE), "big"))

    def seal(self, plain: bytes, ad: bytes) -> bytes:
        nonce = (next(self._nonces) % _COUNTER_SPACE).to_bytes(NONCE, "big")
        return nonce + self._aead.encrypt(nonce, plain, ad)

    def open(self, sealed: bytes, ad: bytes) -> bytes:
        try:
            return self._aead.decrypt(sealed[:NONCE], sealed[NONCE:], ad)
        except InvalidTag:
            raise CorruptState("a slot does not authenticate under this key name and secret") from None


def _head_ad(key: bytes) -> bytes:
    return key + b"\0head"


def _row_ad(key: bytes, seq: int) -> bytes:
    return key + b"\0row" + seq.to_bytes(8, "little")


def _prev_ad(key: bytes) -> bytes:
    return key + b"\0prev"


def version(stored: bytes | None) -> bytes:
    """What the store script compares (GETRANGE 0 11): the head's nonce, b"" for no value."""
    return stored[:NONCE] if stored else b""


def row_offset(seq: int) -> int:
    return HEAD_SLOT + ((seq - 1) % WINDOW) * ROW_SLOT


def decode(sealer: Sealer, key: bytes, stored: bytes | None) -> ScopeState:
    """The scope's state from its stored string (None: a new scope). CorruptState when any slot
    it needs is missing, does not authenticate, or holds values no writer of this layout makes;
    checked before anything is used, so a bad value is never half-read."""
    state = ScopeState()
    if stored is None:
        return state
    size = len(stored)
    if not (HEAD_SLOT <= size <= PREV_AT and (size - HEAD_SLOT) % ROW_SLOT == 0) and size != PREV_AT + PREV_SLOT:
        raise CorruptState(f"{len(stored)} bytes is not a scope of this layout")
    head = sealer.open(stored[:HEAD_SLOT], _head_ad(key))
    total, ewma_1h, ewma_1d, bloom_count = HEAD.unpack_from(head)
    if total < 0 or not (math.isfinite(ewma_1h) and math.isfinite(ewma_1d)):
        raise CorruptState(f"head total {total}, rates {ewma_1h}, {ewma_1d}")
    n = min(total, WINDOW)
    seqs = range(total - n + 1, total + 1)
    if any(row_offset(q) + ROW_SLOT > len(stored) for q in seqs):
        raise CorruptState(f"{len(stored)} bytes cannot hold the latest {n} of {total} rows")
    rows = np.frombuffer(b"".join(sealer.open(stored[row_offset(q) : row_offset(q) + ROW_SLOT], _row_ad(key, q)) for q in seqs), dtype=ROW)
    # The store clamps every time it keeps; anything else would make later gaps infinite.
    if n and not ((rows["ts"] >= TS_MIN) & (rows["ts"] <= TS_MAX)).all():
        raise CorruptState(f"row times outside {TS_MIN}..{TS_MAX}")
    state.total, state.ewma_1h, state.ewma_1d, state.bloom_count = total, ewma_1h, ewma_1d, bloom_count
    state.bloom_cur = np.frombuffer(head, dtype=np.uint64, count=BLOOM_WORDS, offset=HEAD.size).copy()
    if len(stored) == PREV_AT + PREV_SLOT:
        state.bloom_prev = np.frombuffer(sealer.open(stored[PREV_AT:], _prev_ad(key)), dtype=np.uint64).copy()
    if n:
        state.rows = rows.copy()
        state.n = n
    return state


def writes(sealer: Sealer, key: bytes, before: ScopeState, after: ScopeState, fresh: bool) -> tuple[bool, list[tuple[int, bytes]]]:
    """What to store for `after`, the state `before` became: (whole, [(offset, bytes)]).

    A value that keeps its length is patched in place (SETRANGE): the head, the slots of the rows
    appended since, the previous bloom when it rotated. A value that grows (a window still
    filling, a first rotation) or replaces an unreadable one (`fresh`) is written whole, one part
    at offset 0: Redis grows a string in place by doubling its allocation, which kept a scope of
    one request in about twice its bytes."""
    head = HEAD.pack(after.total, after.ewma_1h, after.ewma_1d, after.bloom_count) + after.bloom_cur.tobytes()
    out = [(0, sealer.seal(head, _head_ad(key)))]
    grows = fresh or after.n > before.n or (after.bloom_prev is not None and before.bloom_prev is None)
    first = after.total - after.n + 1 if grows else max(before.total, after.total - after.n) + 1
    for q in range(first, after.total + 1):
        i = after.n - 1 - (after.total - q)
        out.append((row_offset(q), sealer.seal(after.rows[i : i + 1].tobytes(), _row_ad(key, q))))  # a slice: a record scalar's tobytes is slow
    rotated = after.bloom_prev is not None and (before.bloom_prev is None or not np.array_equal(after.bloom_prev, before.bloom_prev))
    if after.bloom_prev is not None and (grows or rotated):
        out.append((PREV_AT, sealer.seal(after.bloom_prev.tobytes(), _prev_ad(key))))
    if not grows:
        return False, out
    value = bytearray(max(offset + len(data) for offset, data in out))
    for offset, data in out:
        value[offset : offset + len(data)] = data
    return True, [(0, bytes(value))]
