"""The gram half of a text sketch, compiled with numba: the CRC-32 of each word unigram and
bigram of a text's first GRAM_WORDS words, their SimHash, novelty buckets and bloom bits, and
the hashed token ids.

`summary.text_sketch` runs this for every text the sketch cache has not seen. In Python the
grams' hashes and a handful of numpy calls on arrays of about a hundred values cost about 40 us
(more than the word scan); here it is one loop. The Python functions in `summary`
(`_gram_hashes`, `simhash` and the bloom and token lines of `text_sketch`) stay the reference:
`tests/models/test_fast_paths.py` compares the two on texts where they could part, and they are
what runs where numba is not installed (a core-only install).
"""

from __future__ import annotations

import numpy as np

from moat.models.feature_spec import BLOOM_WORDS, N_TOKENS, TOKEN_VOCAB

try:
    import numba
except ImportError:  # a core-only install: summary uses its Python reference
    numba = None

GRAM_WORDS = 64  # words whose unigrams and bigrams are hashed (here and in summary's reference)
_SPACE = 32
_MIX = np.uint64(0x9E3779B97F4A7C15)


def _crc_table() -> np.ndarray:
    """zlib's CRC-32 (reflected polynomial 0xEDB88320) one byte at a time."""
    table = np.zeros(256, dtype=np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        table[i] = c
    return table


CRC_TABLE = _crc_table()


def _crc_update(crc: np.uint32, data: np.ndarray, start: int, end: int) -> np.uint32:
    # The running (not yet inverted) CRC over data[start:end]: a bigram continues its first
    # word's running CRC instead of hashing that word again.
    for i in range(start, end):
        crc = CRC_TABLE[(crc ^ data[i]) & np.uint32(0xFF)] ^ (crc >> np.uint32(8))
    return crc


def _gram_sketch(lowered: np.ndarray, n_tokens: int) -> tuple[np.uint64, np.ndarray, np.ndarray, np.ndarray]:
    """(SimHash, buckets, bloom mask, token ids) of the space-joined lower-cased words
    `lowered` (UTF-8 bytes), as `summary.text_sketch` computes them from `_gram_hashes`."""
    # The words: the first GRAM_WORDS pieces of bytes.split(b" "), none when there are no tokens.
    starts = np.empty(GRAM_WORDS, dtype=np.int64)
    ends = np.empty(GRAM_WORDS, dtype=np.int64)
    m = 0
    if n_tokens > 0:
        start = 0
        for i in range(len(lowered) + 1):
            if i == len(lowered) or lowered[i] == _SPACE:
                starts[m], ends[m] = start, i
                m += 1
                start = i + 1
                if m == GRAM_WORDS:
                    break
    n = 2 * m - 1 if m else 0
    hashes = np.empty(n, dtype=np.uint64)
    ones = np.uint32(0xFFFFFFFF)
    for i in range(m):
        running = _crc_update(ones, lowered, starts[i], ends[i])
        hashes[i] = running ^ ones
        if i + 1 < m:
            # The bigram "word_i word_i+1": word_i's running CRC over the space and word_i+1.
            pair = _crc_update(running, lowered, ends[i], ends[i + 1])
            hashes[m + i] = pair ^ ones
    # SimHash: bit b is set where more than half the mixed gram hashes have it.
    counts = np.zeros(64, dtype=np.int64)
    for h in hashes:
        x = (h | (h << np.uint64(32))) * _MIX
        for b in range(64):
            counts[b] += (x >> np.uint64(b)) & np.uint64(1)
    sim = np.uint64(0)
    for b in range(64):
        if counts[b] > n // 2:
            sim |= np.uint64(1) << np.uint64(b)
    buckets = np.empty(n, dtype=np.intp)
    mask = np.zeros(BLOOM_WORDS, dtype=np.uint64)
    for i in range(n):
        bucket = hashes[i] % np.uint64(BLOOM_WORDS * 64)
        buckets[i] = bucket
        mask[bucket >> np.uint64(6)] |= np.uint64(1) << (bucket & np.uint64(63))
    tokens = np.zeros(N_TOKENS, dtype=np.uint16)
    for i in range(min(N_TOKENS, n_tokens, n)):
        tokens[i] = 1 + hashes[i] % np.uint64(TOKEN_VOCAB - 1)
    return sim, buckets, mask, tokens


gram_kernel = None
if numba is not None:
    _nb = numba.types
    _SIGNATURE = _nb.Tuple((_nb.uint64, _nb.intp[::1], _nb.uint64[::1], _nb.uint16[::1]))(_nb.Array(_nb.uint8, 1, "C", readonly=True), _nb.int64)
    _crc_update = numba.njit(inline="always", cache=True)(_crc_update)
    gram_kernel = numba.njit([_SIGNATURE], cache=True, nogil=True)(_gram_sketch)
