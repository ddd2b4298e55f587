"""The reason rules read a vector's list form (what `reasons` passes them) as they read the
vector itself (what `floor_level` passes them), boundaries included."""

from __future__ import annotations

import numpy as np
import pytest

from moat.models.feature_spec import INDEX, N_FEATURES, SPEC
from moat.serving.reasons import RULES, Cond, floor_level, reasons


def vector(**raw: float) -> np.ndarray:
    """A stored (float16) vector with the given features at their encoded raw values, 0 elsewhere."""
    vec = np.zeros(N_FEATURES, dtype=np.float32)
    for name, value in raw.items():
        vec[INDEX[name]] = SPEC[name].scale(value)
    return vec.astype(np.float16)


# (case, raw feature values, window length, expected reason codes, expected floor)
CASES = [
    ("nothing stands out", {}, 4, [], 0),
    # A zero gap CV and mean gap read as steady machine timing once the window has 8 requests.
    ("steady timing in a window of 8", {}, 8, ["machine_timing"], 0),
    ("five biases on one prompt: probe and the sweep signature", {"lb_variety": 5}, 1, ["logit_bias_probe", "logit_bias_sweep"], 1),
    ("four biases: probe only", {"lb_variety": 4}, 1, ["logit_bias_probe"], 0),
    ("logprobs in four requests of five", {"logprob_share": 0.8}, 5, ["logprob_harvest"], 0),
    ("logprobs in a window of 5", {"logprob_share": 0.9}, 5, ["logprob_harvest"], 0),
    ("logprobs in a window of 4: too short", {"logprob_share": 0.9}, 4, [], 0),
    ("second group of a rule", {"lb_share": 0.5, "param_change_share": 0.5}, 3, ["logit_bias_probe"], 0),
    ("one condition of a group is not enough", {"lb_share": 0.5}, 3, [], 0),
    ("several rules at once", {"n": 2, "campaign": 5, "cohort": 11}, 2, ["long_output_harvest", "cross_account_campaign", "client_cohort"], 0),
    ("campaign and cohort exactly at their bars", {"campaign": 4, "cohort": 10}, 2, ["cross_account_campaign", "client_cohort"], 0),
]


@pytest.mark.parametrize("case, raw, n, codes, floor", CASES, ids=[c[0] for c in CASES])
def test_rules_read_a_list_as_the_vector(case: str, raw: dict[str, float], n: int, codes: list[str], floor: int) -> None:
    vec = vector(**raw)
    assert reasons(vec, n, "account") == [*codes, "scope:account"]
    assert floor_level(vec, n) == floor


CONDITIONS = sorted({(c.feature, c.op, c.raw) for r in RULES for group in r.any_of for c in group})


@pytest.mark.parametrize("feature, op, raw", CONDITIONS, ids=[f"{f} {o} {r:g}" for f, o, r in CONDITIONS])
def test_every_condition_reads_a_stored_value_at_its_bound_as_the_raw_value(feature: str, op: str, raw: float) -> None:
    """A value exactly at the bound, as stored (float16), meets `>=` and `<=` and fails `>`; the
    next float16 on the far side fails. Bounds are counts and shares traffic hits exactly."""
    cond = Cond(feature, op, raw)  # type: ignore[arg-type]
    at = vector(**{feature: raw})
    assert cond.holds(at) == (op != ">"), "a value exactly at the bound"
    beyond = at.copy()
    beyond[INDEX[feature]] = np.nextafter(at[INDEX[feature]], np.float16(-np.inf if op != "<=" else np.inf))
    assert not cond.holds(beyond), "the next stored value on the far side"
