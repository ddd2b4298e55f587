"""Training-time augmentation against parameter shortcuts.

The simulator draws each actor's parameter habits (temperature, max_tokens, top_logprobs,
logit_bias size, ...) from ranges the team chose, so a model can separate families by an exact
value instead of by behaviour. Real clients send values nobody drew. Shifting those value
features by one random offset per window (the same client habit, at a value the model has not
memorised) makes the sequence signatures (a prompt re-sent with many different biases, near
duplicates, sweeps) carry the decision.

Which features are parameter values, and how an absent parameter is encoded, come from the
feature spec (`param`, `absent`, the `*_set` presence flags). Only values the client sent move:
presence flags and absent values are left alone, so the augmentation never invents a parameter
the client did not send.
"""

from __future__ import annotations

import torch

from moat.models.feature_spec import FEATURES, INDEX, SPEC, presence_flag

PARAM_FEATURES = tuple(f.name for f in FEATURES if f.param)
_COLS = [INDEX[name] for name in PARAM_FEATURES]
# A value was sent when its presence column (its `*_set` flag, else the value itself) differs
# from that column's encoding of an absent field.
_PRESENCE = [presence_flag(name) or name for name in PARAM_FEATURES]
_PRESENCE_COLS = [INDEX[name] for name in _PRESENCE]
_PRESENCE_ABSENT = [SPEC[name].absent for name in _PRESENCE]


def jitter_values(feats: torch.Tensor, p: float, scale: float) -> torch.Tensor:
    """A copy of feats[B, T, F] where, for each window and each parameter-value feature with
    probability `p`, the feature's sent entries are shifted by one offset drawn from
    U(-scale, scale) (kept above 0, so a value without a presence flag stays sent)."""
    if p <= 0 or scale <= 0:
        return feats
    b = feats.shape[0]
    cols = feats[:, :, _COLS]
    sent = feats[:, :, _PRESENCE_COLS] != torch.tensor(_PRESENCE_ABSENT, dtype=feats.dtype, device=feats.device)
    picked = torch.rand(b, 1, len(_COLS), device=feats.device) < p
    shift = (torch.rand(b, 1, len(_COLS), device=feats.device) * 2 - 1) * scale
    out = feats.clone()
    out[:, :, _COLS] = torch.where(picked & sent, (cols + shift).clamp(min=1e-3), cols)
    return out


def drop_token_bags(tokens: torch.Tensor, p: float) -> torch.Tensor:
    """tokens[B, T, K] with every token of a window set to padding with probability `p`.

    The simulator writes from one grammar, so its hashed words are a quirk of that grammar: a
    model free to lean on them scores real prompts by the accidental buckets their words hash
    into. Windows without words make the behavioural features carry the decision, and the
    words only add to it."""
    if p <= 0:
        return tokens
    keep = torch.rand(tokens.shape[0], 1, 1, device=tokens.device) >= p
    return tokens * keep


# Decoding and output choices a client makes for free: a distiller can decode greedily or at
# the API default, cap or not cap its answers, stream, pin a seed, add stop strings, and ask
# for logprobs whether it needs them or not. The simulator's benign scripts set more of them
# than its attackers do (eval harnesses decode at temperature 0 and cap their answers;
# researchers read logprobs), so a model is free to learn "a client that sets these is benign",
# which an attacker satisfies at no cost: hand-written attackers on real prompts
# (python -m moat.evals.redteam) dropped from risk 0.99 to 0.1-0.3 by sending a temperature
# and a max_tokens. What extraction does need stays out of this list: logit_bias, n. And a
# window that carries logit_bias keeps its own choices (`borrow_benign_decoding`): a logit-bias
# probe needs its logprobs and its one-token answers, and a benign classifier that biases its
# label tokens differs from it in exactly those.
DECODING_FEATURES = (
    "temperature", "temperature_set", "top_p_set", "max_tokens", "max_tokens_set", "seed_set", "stop_set", "stream",
    "logprobs", "top_logprobs", "logprob_share",
)
_DECODING_COLS = [INDEX[name] for name in DECODING_FEATURES]
_LB_SHARE = INDEX["lb_share"]


def borrow_benign_decoding(feats: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, p: float) -> torch.Tensor:
    """A copy of feats[B, T, F] where each attack window (its last real request labelled 1) that
    sent no logit_bias, with probability `p`, carries the decoding choices of a benign window drawn from the same
    batch (that window's last real request) on every real request: the attacker who copies a
    benign client's decoding habit, labelled as the attacker it still is. Only that direction:
    a window ending in a benign request keeps its own habits, which are real.

    Limits: the choice is per window, so in a shared scope (a key, an address block) whose rows
    mix parties, a window ending in an attack request overwrites its benign rows too. And the
    features computed from the whole parameter dict (`param_change`, `param_change_share`, the
    cohort fingerprint) are left as featurised: an attacker that varied its temperature keeps
    showing a change, so this copy is a little easier than the real evasion."""
    if p <= 0:
        return feats
    b = mask.shape[0]
    # cumsum reaches the row count first at the last real row, on either padding side (argmax
    # takes the first match); a window of padding only is neither an attacker nor a donor.
    last = (mask.cumsum(1) == mask.sum(1, keepdim=True)).float().argmax(1)
    rows = torch.arange(b, device=feats.device)
    real = mask.sum(1) > 0
    attack = (labels[rows, last] * mask[rows, last] > 0.5) & real
    benign = torch.nonzero(~attack & real).flatten()
    if len(benign) == 0:
        return feats
    biased = feats[rows, last, _LB_SHARE] > 0  # any request of the window sent a logit_bias
    picked = attack & ~biased & (torch.rand(b, device=feats.device) < p)
    if not picked.any():
        return feats
    donors = benign[torch.randint(len(benign), (b,), device=feats.device)]
    habit = feats[donors, last[donors]][:, _DECODING_COLS]  # [B, len(DECODING_FEATURES)]
    out = feats.clone()
    cols = out[:, :, _DECODING_COLS]
    out[:, :, _DECODING_COLS] = torch.where(picked[:, None, None] & (mask[:, :, None] > 0), habit[:, None, :].expand_as(cols), cols)
    return out
