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

from moat.models import jit
from moat.models.feature_spec import BLOOM_WORDS, GRAM_WORDS, MAX_WORDS, N_TOKENS, TOKEN_VOCAB

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


SHAPE_WORDS = 6  # words in the shape signature (summary.shape_signature)
_DIGIT_HEAD = 1024  # characters whose digits are counted (summary._char_shares)


def _is_word(c: int) -> bool:
    # The regular expression \w on an ASCII character: a letter, a digit or the underscore.
    return (97 <= c <= 122) or (65 <= c <= 90) or (48 <= c <= 57) or c == 95


def _crc32(data: np.ndarray, n: int) -> np.uint32:
    ones = np.uint32(0xFFFFFFFF)
    return _crc_update(ones, data, 0, n) ^ ones


def _ascii_sketch(text: np.ndarray) -> tuple[int, int, np.ndarray, np.uint32, np.uint64, np.ndarray, np.ndarray, np.ndarray]:
    r"""The whole sketch of an ASCII text (its bytes) but the prompt hash: digits among its first
    characters, its word count (at most MAX_WORDS), its words lower-cased and space-joined
    (bytes), the shape signature, and `_gram_sketch` of the joined words, as
    `summary.text_sketch_reference` computes them with regular expressions. On ASCII, \w is
    [A-Za-z0-9_], lower-casing maps A-Z only, a word of digits is `isdigit` and one starting
    with A-Z `isupper`."""
    digits = 0
    for i in range(min(len(text), _DIGIT_HEAD)):
        if 48 <= text[i] <= 57:
            digits += 1
    lowered = np.empty(len(text), dtype=np.uint8)  # the joined words never outgrow the text
    shape = np.empty(len(text) + SHAPE_WORDS, dtype=np.uint8)
    size = shape_size = n_words = 0
    i = 0
    while i < len(text) and n_words < MAX_WORDS:
        if not _is_word(text[i]):
            i += 1
            continue
        start = i
        while i < len(text) and _is_word(text[i]):
            i += 1
        if n_words:
            lowered[size] = _SPACE
            size += 1
        for j in range(start, i):
            c = text[j]
            lowered[size] = c + 32 if 65 <= c <= 90 else c
            size += 1
        if n_words < SHAPE_WORDS:
            # Numbers masked as #, capitalised names as N, other words lower-cased.
            if n_words:
                shape[shape_size] = _SPACE
                shape_size += 1
            all_digits = True
            for j in range(start, i):
                if not 48 <= text[j] <= 57:
                    all_digits = False
                    break
            if all_digits:
                shape[shape_size] = 35  # '#'
                shape_size += 1
            elif 65 <= text[start] <= 90:
                shape[shape_size] = 78  # 'N'
                shape_size += 1
            else:
                for j in range(start, i):
                    c = text[j]
                    shape[shape_size] = c + 32 if 65 <= c <= 90 else c
                    shape_size += 1
        n_words += 1
    joined = lowered[:size]
    sim, buckets, mask, tokens = gram_kernel(joined, n_words)  # compiled below, as this is
    return digits, n_words, joined, _crc32(shape, shape_size), sim, buckets, mask, tokens


gram_kernel = ascii_kernel = None
if jit.AVAILABLE:  # else summary runs its Python reference
    _nb = jit.types
    _SIGNATURE = _nb.Tuple((_nb.uint64, _nb.intp[::1], _nb.uint64[::1], _nb.uint16[::1]))(_nb.Array(_nb.uint8, 1, "C", readonly=True), _nb.int64)
    # The helpers are rebound to their compiled forms, which the kernels call.
    _crc_update = jit.kernel(inline=True)(_crc_update)
    gram_kernel = jit.kernel([_SIGNATURE])(_gram_sketch)
    _is_word = jit.kernel(inline=True)(_is_word)
    _crc32 = jit.kernel()(_crc32)
    _ASCII_SIGNATURE = _nb.Tuple((_nb.int64, _nb.int64, _nb.uint8[::1], _nb.uint32, _nb.uint64, _nb.intp[::1], _nb.uint64[::1], _nb.uint16[::1]))(_nb.Array(_nb.uint8, 1, "C", readonly=True))
    ascii_kernel = jit.kernel([_ASCII_SIGNATURE])(_ascii_sketch)
