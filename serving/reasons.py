"""Short machine-readable reason codes: which signals stand out in the window that drove a
decision. Each rule reads the driving scope's newest feature vector; the table below is the
documentation (the README lists it)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from moat.models.feature_spec import FEATURES

_I = {f.name: i for i, f in enumerate(FEATURES)}


@dataclass(frozen=True)
class ReasonRule:
    code: str
    meaning: str
    test: Callable[[np.ndarray, int], bool]  # (feature vector, window length) -> fires


def _f(v: np.ndarray, name: str) -> float:
    return float(v[_I[name]])


RULES: list[ReasonRule] = [
    ReasonRule("logit_bias_probe", "one prompt repeated with several different logit_bias values",
               lambda v, n: _f(v, "lb_variety") >= math.log1p(3) / 5 or (_f(v, "lb_share") >= 0.5 and _f(v, "param_change_share") >= 0.5)),
    ReasonRule("logprob_harvest", "most recent requests ask for logprobs",
               lambda v, n: n >= 5 and _f(v, "logprob_share") >= 0.8),
    ReasonRule("near_duplicate_burst", "many near-duplicate prompts in a short time",
               lambda v, n: n >= 5 and _f(v, "near_dup_share") >= 0.4 and _f(v, "rate_1m") >= math.log1p(4) / 4),
    ReasonRule("novelty_sweep", "nearly every prompt is new content: coverage-seeking traffic",
               lambda v, n: n >= 10 and _f(v, "novelty") >= 0.6 and _f(v, "distinct_share") >= 0.9),
    ReasonRule("template_sweep", "one prompt template filled with ever-changing values",
               lambda v, n: n >= 10 and _f(v, "template_share") >= 0.6 and _f(v, "distinct_share") >= 0.9),
    ReasonRule("machine_timing", "steady, machine-like gaps between requests",
               lambda v, n: n >= 8 and _f(v, "gap_cv") <= 0.5 / 3 and _f(v, "dt_mean_k") <= math.log1p(30) / 12),
    ReasonRule("high_volume", "sustained volume over the last hour",
               lambda v, n: _f(v, "rate_1h") >= math.log1p(200) / 8),
    ReasonRule("long_output_harvest", "large output budgets or several samples per query",
               lambda v, n: _f(v, "max_tokens") >= math.log1p(2000) / 9 or _f(v, "n") > 0),
    ReasonRule("cross_account_campaign", "the same prompt template from many accounts within the hour",
               lambda v, n: _f(v, "campaign") >= math.log1p(4) / 5),
]


def reasons(vec: np.ndarray, window_len: int, scope: str) -> list[str]:
    out = [r.code for r in RULES if r.test(vec, window_len)]
    out.append(f"scope:{scope}")
    return out
