"""Parameter-value jitter: shifts only values the client sent, one offset per window; never
invents a parameter, never moves an absent value, a flag, a text or a relational feature."""

from __future__ import annotations

import pytest
import torch

from moat.models.feature_spec import INDEX, N_FEATURES, SPEC, presence_flag
from moat.training.augment import DECODING_FEATURES, PARAM_FEATURES, borrow_benign_decoding, drop_token_bags, jitter_values

PARAMS = [INDEX[name] for name in PARAM_FEATURES]
OTHERS = [i for i in range(N_FEATURES) if i not in PARAMS]


def batch(b: int = 64, t: int = 16) -> torch.Tensor:
    """Random windows with the parameter fields set as a client would send them: temperature
    sent on even positions only (absent on odd ones, encoded as the spec says), no logit_bias
    and no n anywhere, max_tokens sent as one constant habit."""
    torch.manual_seed(0)
    feats = torch.rand(b, t, N_FEATURES)
    sent = torch.arange(t) % 2 == 0
    feats[:, :, INDEX["temperature_set"]] = sent.float()
    feats[:, ~sent, INDEX["temperature"]] = SPEC["temperature"].absent
    for name in ("n", "logit_bias_size", "logit_bias_max", "logit_bias_spread"):
        feats[:, :, INDEX[name]] = SPEC[name].absent
    feats[:, :, INDEX["max_tokens_set"]] = 1.0
    feats[:, :, INDEX["max_tokens"]] = 0.4
    return feats


@pytest.mark.parametrize("p, scale", [(1.0, 0.3), (0.5, 0.1), (0.0, 0.3), (1.0, 0.0)])
def test_jitter(p: float, scale: float) -> None:
    feats = batch()
    out = jitter_values(feats, p, scale)
    assert torch.equal(out[:, :, OTHERS], feats[:, :, OTHERS])  # flags, text, relational features: untouched
    for name in ("n", "logit_bias_size", "logit_bias_max", "logit_bias_spread"):
        assert torch.equal(out[:, :, INDEX[name]], feats[:, :, INDEX[name]]), f"absent {name} moved"
    t = INDEX["temperature"]
    assert torch.equal(out[:, 1::2, t], feats[:, 1::2, t])  # an absent temperature stays at its absent encoding
    delta = out[:, :, PARAMS] - feats[:, :, PARAMS]
    assert delta.abs().max() <= scale + 1e-6
    mt = out[:, :, INDEX["max_tokens"]]
    assert torch.allclose(mt, mt[:, :1].expand_as(mt))  # one offset per window: a habit stays constant
    moved = (mt[:, 0] != 0.4).float().mean().item()
    if p == 0 or scale == 0:
        assert moved == 0
    else:
        assert moved == pytest.approx(p, abs=0.2)
        assert (mt > 0).all() and (out[:, ::2, t] > 0).all()  # a sent value stays sent (above an absent 0)


def test_every_sent_parameter_moves_and_nothing_else() -> None:
    feats = torch.rand(32, 16, N_FEATURES) * 0.8 + 0.1  # every value present and away from 0
    for name in PARAM_FEATURES:
        if (flag := presence_flag(name)) is not None:
            feats[:, :, INDEX[flag]] = 1.0
    out = jitter_values(feats, 1.0, 0.2)
    changed = {i for i in range(N_FEATURES) if not torch.equal(out[:, :, i], feats[:, :, i])}
    assert changed == set(PARAMS)


@pytest.mark.parametrize(("p", "low", "high"), [(0.0, 0.0, 0.0), (0.3, 0.2, 0.4), (1.0, 1.0, 1.0)])
def test_token_bags_drop_whole_windows_at_the_set_rate(p: float, low: float, high: float) -> None:
    torch.manual_seed(0)
    tokens = torch.randint(1, 4096, (2000, 16, 8))
    out = drop_token_bags(tokens, p)
    dropped = (out == 0).flatten(1).all(1)
    kept = (out == tokens).flatten(1).all(1)
    # A window keeps all its words or loses all of them: never a partial bag.
    assert bool((dropped | kept).all())
    assert low <= dropped.float().mean().item() <= high


DECODING = [INDEX[name] for name in DECODING_FEATURES]


def labelled_batch(labels: list[int], t: int = 6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Windows whose decoding columns hold a per-window value (its index), every label constant
    over the window, and the second window padded after its third request."""
    torch.manual_seed(1)
    b = len(labels)
    feats = torch.rand(b, t, N_FEATURES)
    feats[:, :, DECODING] = torch.arange(b, dtype=torch.float)[:, None, None]
    mask = torch.ones(b, t)
    mask[1, 3:] = 0
    return feats, torch.tensor(labels, dtype=torch.float)[:, None].expand(b, t).clone(), mask


@pytest.mark.parametrize(
    ("labels", "p", "borrowers"),
    [
        ([1, 1, 0, 0], 1.0, {0, 1}),  # every attack window takes a benign habit
        ([1, 1, 0, 0], 0.0, set()),  # off
        ([0, 0, 0, 0], 1.0, set()),  # benign windows keep their own, real habits
        ([1, 1, 1, 1], 1.0, set()),  # no benign window to borrow from: nothing changes
    ],
)
def test_attack_windows_borrow_a_benign_windows_decoding_habit(labels: list[int], p: float, borrowers: set[int]) -> None:
    feats, lab, mask = labelled_batch(labels)
    out = borrow_benign_decoding(feats, lab, mask, p)
    others = [i for i in range(N_FEATURES) if i not in DECODING]
    assert torch.equal(out[:, :, others], feats[:, :, others]), "only the decoding columns may change"
    benign = {i for i, y in enumerate(labels) if y == 0}
    for w in range(len(labels)):
        real = mask[w] > 0
        habit = out[w, real][:, DECODING]
        if w in borrowers:
            # One benign window's habit on every real request of the window (a constant habit).
            assert int(habit[0, 0].item()) in benign and torch.equal(habit, habit[:1].expand_as(habit))
            assert torch.equal(out[w, ~real], feats[w, ~real]), "padding was written"
        else:
            assert torch.equal(out[w], feats[w])


def test_borrowing_happens_at_the_set_rate() -> None:
    feats, lab, mask = labelled_batch([1] * 1000 + [0] * 10)
    out = borrow_benign_decoding(feats, lab, mask, 0.3)
    moved = (out[:1000] != feats[:1000]).flatten(1).any(1).float().mean().item()
    assert 0.25 <= moved <= 0.35
