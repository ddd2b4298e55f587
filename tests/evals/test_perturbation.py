"""The perturbation evaluation: the logit-recovery attack works on the plain API, and the
default `perturb` settings defeat it while the honest user's top token stays right."""

from __future__ import annotations

import numpy as np
import pytest

from moat.evals.perturbation import DEFAULT, LEVELS, Level, attack_error, benign_cost, expected_ece, main, synthetic_logits

VOCAB = 400
NONE = LEVELS[0]


@pytest.fixture(scope="module")
def logits() -> np.ndarray:
    return synthetic_logits(2, VOCAB, np.random.default_rng(3))


@pytest.fixture(scope="module")
def benign_logits() -> np.ndarray:
    return synthetic_logits(400, VOCAB, np.random.default_rng(4))


@pytest.mark.parametrize(
    "level",
    [NONE, Level("top_logprobs capped at 1", {"max_top_logprobs": 1}), Level("top 3", {"max_top_logprobs": 3})],
)
def test_attack_recovers_logits_exactly_without_noise(logits: np.ndarray, level: Level) -> None:
    # The cap alone does not stop it: the top-1 solver reads one token per query (Carlini §6).
    r = attack_error(logits, level, prompts=2, seed=0)
    assert r.coverage == 1.0
    assert r.rmse < 1e-4


def test_default_level_grows_attacker_error_tenfold_and_keeps_the_top_token(logits: np.ndarray, benign_logits: np.ndarray) -> None:
    base = attack_error(logits, NONE, prompts=2, seed=0)
    r = attack_error(logits, DEFAULT, prompts=2, seed=0)
    assert r.rmse >= 10 * max(base.rmse, 1e-3)
    # Measured against the spread of the logits, not only against float precision: the attacker
    # does no better than a constant guess for the tokens it never saw.
    assert r.relative > 0.9
    b = benign_cost(benign_logits, DEFAULT, seed=0)
    assert b.top1 >= 0.99
    assert b.ece < 0.05


@pytest.mark.parametrize("keyed, shrinks", [(True, False), (False, True)])
def test_repeats_average_away_fresh_noise_but_not_keyed_noise(logits: np.ndarray, keyed: bool, shrinks: bool) -> None:
    one = attack_error(logits, Level("n", {"noise_nats": 0.5}, keyed=keyed), prompts=1, seed=0)
    many = attack_error(logits, Level("n16", {"noise_nats": 0.5}, keyed=keyed, repeats=16), prompts=1, seed=0)
    assert (many.rmse < 0.5 * one.rmse) is shrinks


@pytest.mark.parametrize(
    "conf, p, expected",
    [
        ([0.9, 0.5, 0.1], [0.9, 0.5, 0.1], 0.0),
        ([0.95, 0.95], [0.75, 0.75], 0.2),
        ([0.05, 0.95], [0.15, 0.85], 0.1),  # two bins, each off by 0.1, half the mass each
    ],
)
def test_expected_ece(conf: list[float], p: list[float], expected: float) -> None:
    assert expected_ece(np.array(conf), np.array(p)) == pytest.approx(expected)


@pytest.mark.parametrize("argv", [["--vocab", "1"], ["--attack-prompts", "0"], ["--benign-prompts", "-3"]])
def test_bad_arguments_exit_2_naming_the_flag(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert argv[0] in capsys.readouterr().err


def test_table_prints_every_level(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--vocab", "50", "--attack-prompts", "1", "--benign-prompts", "20"]) == 0
    out = capsys.readouterr().out
    for level in LEVELS:
        assert f"| {level.name} |" in out
