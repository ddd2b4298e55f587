"""The stored row: one per request of a scope's history, as the memory store keeps it and the
Redis store writes it (its dtype is part of the Redis state version). `scope_window` computes
and appends rows; `window_kernel` reads and writes the same bytes compiled."""

from __future__ import annotations

import numpy as np

from moat.models.feature_spec import N_FEATURES, N_TOKENS

ROW = np.dtype([
    ("vec", np.float16, (N_FEATURES,)),
    ("tokens", np.uint16, (N_TOKENS,)),
    ("ts", np.float64),
    ("simhash", np.uint64),
    ("shape", np.uint32),
    ("prompt", np.uint32),
    ("lb", np.uint32),
    ("param", np.uint32),
    ("flags", np.uint8),  # bit 0: logprobs, bit 1: logit_bias, bit 2: param changed from predecessor
])  # fmt: skip
TAIL_FROM = ROW.fields["tokens"][1]  # byte offset where a row's non-feature fields start
# A row's fields after its tokens, as a packed record of their own bytes: what
# `scope_window.row_meta` gives, row after row, and the compiled kernels read.
ROW_TAIL = np.dtype(
    {
        "names": [f for f in ROW.names if ROW.fields[f][1] > TAIL_FROM],
        "formats": [ROW.fields[f][0] for f in ROW.names if ROW.fields[f][1] > TAIL_FROM],
        "offsets": [ROW.fields[f][1] - TAIL_FROM for f in ROW.names if ROW.fields[f][1] > TAIL_FROM],
        "itemsize": ROW.itemsize - TAIL_FROM,
    }
)
