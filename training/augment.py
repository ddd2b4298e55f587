"""Training-time augmentation against parameter shortcuts.

The simulator draws each actor's parameter habits (temperature, max_tokens, top_logprobs,
logit_bias size, ...) from ranges the team chose, so a model can separate families by an exact
value instead of by behaviour. Real clients send values nobody drew. Shifting those value
features by one random offset per window (the same client habit, at a value the model has not
memorised) makes the sequence signatures (a prompt re-sent with many different biases, near
duplicates, sweeps) carry the decision. Presence flags and absent values (0) are left alone, so
the augmentation never invents a parameter the client did not send.
"""

from __future__ import annotations

import torch

from moat.models.feature_spec import FEATURES

# Request features that hold a parameter's or a text's magnitude (scaled to about [0, 1]).
VALUE_FEATURES = (
    "prompt_chars", "last_chars", "n_messages", "temperature", "max_tokens", "n", "top_logprobs",
    "logit_bias_size", "logit_bias_max", "logit_bias_spread", "digit_share", "nonascii_share",
)
_COLS = [next(i for i, f in enumerate(FEATURES) if f.name == name) for name in VALUE_FEATURES]


def jitter_values(feats: torch.Tensor, p: float, scale: float) -> torch.Tensor:
    """A copy of feats[B, T, F] where, for each window and each value feature with probability
    `p`, the feature's non-zero entries are shifted by one offset drawn from U(-scale, scale)
    (kept above 0, so a sent parameter stays sent)."""
    if p <= 0 or scale <= 0:
        return feats
    b = feats.shape[0]
    cols = feats[:, :, _COLS]
    picked = torch.rand(b, 1, len(_COLS), device=feats.device) < p
    shift = (torch.rand(b, 1, len(_COLS), device=feats.device) * 2 - 1) * scale
    out = feats.clone()
    out[:, :, _COLS] = torch.where(picked & (cols > 0), (cols + shift).clamp(min=1e-3), cols)
    return out
