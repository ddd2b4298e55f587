"""Scope windows padded into one network batch, compiled with numba.

`scorer._pack` pads a chunk's windows (about 2.8 a request, each up to WINDOW rows of float16
vectors and uint16 token ids) into float32 and int64 arrays. As a numpy store per window, with
the float16 cast, it cost about 15 us a request; here the windows arrive concatenated and one
loop writes them. A float16 converts to float32 exactly, by moving its bits
(`_half_to_float_bits`, checked on all 65,536 values in tests/serving/test_pack_kernel.py), so
the batch is the one `scorer._pack_reference` builds, bit for bit, which stays for a core-only
install without numba.
"""

from __future__ import annotations

import numpy as np

from moat.models import jit


def _half_to_float_bits(h: np.uint16) -> np.uint32:
    """The float32 bits of the float16 with bits `h` (IEEE 754; exact, NaN payloads kept)."""
    sign = np.uint32(h & 0x8000) << np.uint32(16)
    exponent = (h >> 10) & 0x1F
    mantissa = np.uint32(h & 0x3FF)
    if exponent == 0:
        if mantissa == 0:
            return sign
        # A subnormal half is a normal float: shift its mantissa up to the implicit bit.
        e = 113
        while (mantissa & 0x400) == 0:
            mantissa <<= np.uint32(1)
            e -= 1
        return sign | (np.uint32(e) << np.uint32(23)) | ((mantissa & np.uint32(0x3FF)) << np.uint32(13))
    if exponent == 31:  # infinity or NaN
        return sign | np.uint32(0x7F800000) | (mantissa << np.uint32(13))
    return sign | (np.uint32(exponent + 112) << np.uint32(23)) | (mantissa << np.uint32(13))


def _pack(feats16: np.ndarray, tokens16: np.ndarray, lengths: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Windows of `lengths` rows each, concatenated (`feats16`: their float16 vectors' bits,
    `tokens16`: their token ids), padded to `t` rows: float32 features, int64 tokens, float32
    mask and each window's last real position."""
    b = len(lengths)
    feats = np.zeros((b, t, feats16.shape[1]), dtype=np.float32)
    bits = feats.view(np.uint32)
    tokens = np.zeros((b, t, tokens16.shape[1]), dtype=np.int64)
    mask = np.zeros((b, t), dtype=np.float32)
    last = np.empty(b, dtype=np.intp)
    row = 0
    for i in range(b):
        n = lengths[i]
        for j in range(n):
            for k in range(feats16.shape[1]):
                bits[i, j, k] = _half_to_float_bits(feats16[row, k])
            for k in range(tokens16.shape[1]):
                tokens[i, j, k] = tokens16[row, k]
            mask[i, j] = 1.0
            row += 1
        last[i] = n - 1
    return feats, tokens, mask, last


half_to_float_bits = pack_kernel = None
if jit.AVAILABLE:  # else scorer packs with its numpy reference
    _nb = jit.types

    def _ro(dtype: object, ndim: int) -> object:
        return _nb.Array(dtype, ndim, "C", readonly=True)

    # Rebound to its compiled form, which `_pack` calls; exported for the exhaustive test.
    _half_to_float_bits = half_to_float_bits = jit.kernel([_nb.uint32(_nb.uint16)])(_half_to_float_bits)
    _PACKED = _nb.Tuple((_nb.float32[:, :, ::1], _nb.int64[:, :, ::1], _nb.float32[:, ::1], _nb.intp[::1]))
    pack_kernel = jit.kernel([_PACKED(_ro(_nb.uint16, 2), _ro(_nb.uint16, 2), _ro(_nb.intp, 1), _nb.int64)])(_pack)
