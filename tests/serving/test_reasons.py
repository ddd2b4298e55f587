"""Each reason code fires on a window that shows its signal and stays quiet just short of it.
Vectors are built from raw values (requests, seconds, shares) through the feature spec's
scales and stored as float16, as serving reads them."""

from __future__ import annotations

import numpy as np
import pytest

from moat.models.feature_spec import INDEX, N_FEATURES, SPEC
from moat.serving.reasons import RULES, floor_level, reasons

# Human pace, so machine_timing stays quiet unless a case sets the timing.
QUIET = {"dt_prev": 600.0, "dt_mean_k": 600.0, "gap_cv": 1.5}


def vector(raw: dict[str, float]) -> np.ndarray:
    v = np.zeros(N_FEATURES, dtype=np.float16)
    for name, x in {**QUIET, **raw}.items():
        v[INDEX[name]] = SPEC[name].scale(x)
    return v


# (case, code, raw feature values, window length, fires)
CASES = [
    ("one prompt, four biases", "logit_bias_probe", {"lb_variety": 4}, 6, True),
    ("biases with changing parameters", "logit_bias_probe", {"lb_share": 0.6, "param_change_share": 0.6}, 6, True),
    ("two biases over one prompt", "logit_bias_probe", {"lb_variety": 2}, 6, False),
    ("biases, parameters mostly fixed", "logit_bias_probe", {"lb_share": 0.6, "param_change_share": 0.3}, 6, False),
    ("logprobs on nine in ten", "logprob_harvest", {"logprob_share": 0.9}, 8, True),
    ("logprobs on seven in ten", "logprob_harvest", {"logprob_share": 0.7}, 8, False),
    ("logprobs, window too short", "logprob_harvest", {"logprob_share": 1.0}, 4, False),
    ("near duplicates in a burst", "near_duplicate_burst", {"near_dup_share": 0.5, "rate_1m": 6}, 8, True),
    ("near duplicates, slowly", "near_duplicate_burst", {"near_dup_share": 0.5, "rate_1m": 2}, 8, False),
    ("a burst of different prompts", "near_duplicate_burst", {"near_dup_share": 0.3, "rate_1m": 6}, 8, False),
    ("every prompt new", "novelty_sweep", {"novelty": 0.8, "distinct_share": 1.0}, 12, True),
    ("new prompts of familiar words", "novelty_sweep", {"novelty": 0.4, "distinct_share": 1.0}, 12, False),
    ("novelty, window too short", "novelty_sweep", {"novelty": 0.8, "distinct_share": 1.0}, 9, False),
    ("one template, new values", "template_sweep", {"template_share": 0.8, "distinct_share": 1.0}, 12, True),
    ("one template, repeated values", "template_sweep", {"template_share": 0.8, "distinct_share": 0.7}, 12, False),
    ("steady 5 s gaps", "machine_timing", {"gap_cv": 0.1, "dt_mean_k": 5.0}, 10, True),
    ("steady but slow", "machine_timing", {"gap_cv": 0.1, "dt_mean_k": 120.0}, 10, False),
    ("fast but irregular", "machine_timing", {"gap_cv": 0.9, "dt_mean_k": 5.0}, 10, False),
    ("steady, window too short", "machine_timing", {"gap_cv": 0.1, "dt_mean_k": 5.0}, 6, False),
    ("300 requests in the hour", "high_volume", {"rate_1h": 300.0}, 16, True),
    ("100 requests in the hour", "high_volume", {"rate_1h": 100.0}, 16, False),
    ("max_tokens 4000", "long_output_harvest", {"max_tokens": 4000}, 3, True),
    ("two samples per query", "long_output_harvest", {"n": 2}, 3, True),
    ("max_tokens 1000, one sample", "long_output_harvest", {"max_tokens": 1000, "n": 1}, 3, False),
    ("six other accounts", "cross_account_campaign", {"campaign": 6}, 2, True),
    ("two other accounts", "cross_account_campaign", {"campaign": 2}, 2, False),
    ("a cohort of twenty", "client_cohort", {"cohort": 20}, 2, True),
    ("a front-end's few users", "client_cohort", {"cohort": 5}, 2, False),
    ("six biases on one prompt", "logit_bias_sweep", {"lb_variety": 6}, 8, True),
    ("two biases on one prompt", "logit_bias_sweep", {"lb_variety": 2}, 8, False),
]
# A signature is a stronger form of another code, which fires with it.
ALSO = {"logit_bias_sweep": ["logit_bias_probe"]}


@pytest.mark.parametrize("case, code, raw, n, fires", CASES, ids=[c[0] for c in CASES])
def test_reason(case: str, code: str, raw: dict[str, float], n: int, fires: bool) -> None:
    got = reasons(vector(raw), n, "api_key")
    assert got[-1] == "scope:api_key"
    # A firing case shows its signal alone: no other code may fire on it.
    expected = [r.code for r in RULES if r.code == code or r.code in ALSO.get(code, [])] if fires else []
    assert got[:-1] == expected, case


# (case, raw features, window length, floor): only a signature sets a floor, and only when it fires.
FLOORS = [
    ("quiet window", {}, 16, 0),
    ("a sweep", {"lb_variety": 6}, 8, 1),
    ("a probe short of a sweep", {"lb_variety": 3}, 8, 0),
    ("other strong signals set no floor", {"rate_1h": 500.0, "campaign": 20, "cohort": 30, "logprob_share": 1.0}, 16, 0),
]


@pytest.mark.parametrize("case, raw, n, floor", FLOORS, ids=[c[0] for c in FLOORS])
def test_floor_level(case: str, raw: dict[str, float], n: int, floor: int) -> None:
    assert floor_level(vector(raw), n) == floor


def test_quiet_vector_fires_nothing() -> None:
    assert reasons(vector({}), 16, "account") == ["scope:account"]


@pytest.mark.parametrize("code", [r.code for r in RULES])
def test_every_code_has_a_firing_and_a_quiet_case(code: str) -> None:
    assert {fires for _, c, _, _, fires in CASES if c == code} == {True, False}
