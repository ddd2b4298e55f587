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


def labelled_batch(labels: list[int], t: int = 6, biased: frozenset[int] = frozenset()) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Windows whose decoding columns hold 100 * window + 10 * position + column (so a value says
    where it came from), every label constant over the window's real rows and 0 on padding (as
    collate writes it). Window 1 is padded after its third request, window 2 before its third,
    and window 3 is padding only. Windows in `biased` sent a logit_bias: lb_share > 0 on their last
    real row, where the window's share is read. Every other window holds a stale lb_share on its
    padding rows, which must not count."""
    torch.manual_seed(1)
    b = len(labels)
    feats = torch.rand(b, t, N_FEATURES)
    w, pos, col = torch.meshgrid(torch.arange(b), torch.arange(t), torch.arange(len(DECODING)), indexing="ij")
    feats[:, :, DECODING] = (100 * w + 10 * pos + col).float()
    mask = torch.ones(b, t)
    mask[1, 3:] = 0
    mask[2, :2] = 0
    mask[3, :] = 0
    lb = INDEX["lb_share"]
    feats[:, :, lb] = torch.where(mask > 0, 0.0, 0.7)
    for v in biased:
        feats[v, last_real(mask[v]), lb] = 0.5
    lab = torch.tensor(labels, dtype=torch.float)[:, None].expand(b, t) * mask
    return feats, lab, mask


def last_real(mask_row: torch.Tensor) -> int:
    return int(torch.nonzero(mask_row).flatten()[-1])


@pytest.mark.parametrize(
    ("labels", "p", "borrowers", "biased"),
    [
        ([1, 1, 0, 1, 0, 0], 1.0, {0, 1}, set()),  # every attack window takes a benign habit; padding-only 3 neither borrows nor lends
        ([1, 1, 1, 0, 0, 0], 1.0, {0, 1, 2}, set()),  # a left-padded attack window borrows on its real rows only
        ([0, 1, 0, 0, 1, 0], 1.0, {1, 4}, set()),  # donors include left- and right-padded benign windows
        ([1, 0, 1, 0, 1, 1], 1.0, {0, 2, 4, 5}, set()),  # the only donor is right-padded: its last real row, not its first or the window's end
        ([1, 1, 0, 0, 0, 0], 0.0, set(), set()),  # off
        ([0, 0, 0, 0, 0, 0], 1.0, set(), set()),  # benign windows keep their own, real habits
        ([1, 1, 1, 1, 1, 1], 1.0, set(), set()),  # no benign window to borrow from: nothing changes
        ([1, 1, 0, 0, 1, 0], 1.0, {1}, {0, 4}),  # a logit-bias probe keeps its logprobs and one-token answers
        ([1, 1, 1, 0, 0, 0], 1.0, {0}, {1, 2}),  # read on the last real row, whichever side the padding is
        ([1, 0, 0, 0, 0, 0], 1.0, {0}, {2}),  # a biased benign window still lends its habit
    ],
)
def test_attack_windows_borrow_a_benign_windows_last_decoding_habit(labels: list[int], p: float, borrowers: set[int], biased: set[int]) -> None:
    feats, lab, mask = labelled_batch(labels, biased=frozenset(biased))
    out = borrow_benign_decoding(feats, lab, mask, p)
    others = [i for i in range(N_FEATURES) if i not in DECODING]
    assert torch.equal(out[:, :, others], feats[:, :, others]), "only the decoding columns may change"
    donors = {w: feats[w, last_real(mask[w])][DECODING] for w, y in enumerate(labels) if y == 0 and mask[w].any()}
    for w in range(len(labels)):
        real = mask[w] > 0
        if w not in borrowers:
            assert torch.equal(out[w], feats[w])
            continue
        habit = out[w, real][:, DECODING]
        # Every real row carries every decoding column of one benign window's last real request.
        assert any(torch.equal(habit, d.expand_as(habit)) for d in donors.values()), habit
        assert torch.equal(out[w, ~real], feats[w, ~real]), "padding was written"


def test_borrowing_happens_at_the_set_rate() -> None:
    feats, lab, mask = labelled_batch([1] * 1000 + [0] * 10)
    out = borrow_benign_decoding(feats, lab, mask, 0.3)
    moved = (out[:1000] != feats[:1000]).flatten(1).any(1).float().mean().item()
    assert 0.25 <= moved <= 0.35


@pytest.mark.parametrize(
    ("feature", "borrowed"),
    [
        # Free choices: an attacker copies a benign client's at no cost.
        ("temperature", True), ("max_tokens", True), ("max_tokens_set", True), ("stream", True), ("seed_set", True),
        ("logprobs", True), ("top_logprobs", True), ("logprob_share", True),
        # What extraction needs, or behaviour: borrowing it would erase the signature itself.
        ("logit_bias_size", False), ("lb_variety", False), ("n", False), ("near_dup_share", False), ("rate_1m", False), ("scope_account", False),
    ],
)
def test_free_choices_are_borrowed_and_extraction_signatures_are_not(feature: str, borrowed: bool) -> None:
    assert (feature in DECODING_FEATURES) is borrowed
