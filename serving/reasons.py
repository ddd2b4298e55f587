"""Short machine-readable reason codes: which signals stand out in the window that drove a
decision. Each rule reads the driving scope's newest feature vector; the table below is the
documentation (the README lists it).

Thresholds are written in each feature's own units (requests, seconds, distinct biases) and
encoded through the feature spec's scale, so a rule cannot drift from how a feature is encoded.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from moat.models.feature_spec import INDEX, SPEC

_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt}


@dataclass(frozen=True)
class Cond:
    """`feature op raw`, with `raw` in the feature's own units, compared with the encoded value."""

    feature: str
    op: Literal[">=", "<=", ">"]
    raw: float
    _index: int = field(init=False, repr=False, compare=False)
    _bound: float = field(init=False, repr=False, compare=False)
    _test: Callable[[float, float], bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", INDEX[self.feature])
        # The rules read the stored vector (float16, from float32), so the bound is rounded the
        # same way: a raw value exactly at the bound (4 logprob requests of 5: 0.8) then holds.
        # In float64, six bounds sat just above their own stored value and missed it.
        object.__setattr__(self, "_bound", float(np.float16(np.float32(SPEC[self.feature].scale(self.raw)))))
        object.__setattr__(self, "_test", _OPS[self.op])

    def holds(self, vec: np.ndarray | list[float]) -> bool:
        """`vec`: the window's newest vector, or that vector's `tolist()` (cheaper to index when
        many conditions read it)."""
        return self._test(float(vec[self._index]), self._bound)


@dataclass(frozen=True)
class ReasonRule:
    """Fires on a window of at least `min_window` requests when every condition of any one of
    the groups in `any_of` holds."""

    code: str
    meaning: str
    any_of: tuple[tuple[Cond, ...], ...]
    min_window: int = 1
    # A signature: a pattern precise enough to act on by itself, whatever the model's risk. The
    # action on the account's own scopes is at least this level (1: throttle) while it fires.
    floor: int = 0

    def fires(self, vec: np.ndarray | list[float], window_len: int) -> bool:
        if window_len < self.min_window:
            return False
        # any(all(...)) as plain loops: this runs for every scored scope, and the generator
        # frames cost more than the comparisons.
        for group in self.any_of:
            for c in group:
                if not c.holds(vec):
                    break
            else:
                return True
        return False


RULES: list[ReasonRule] = [
    ReasonRule("logit_bias_probe", "one prompt repeated with several different logit_bias values",
               ((Cond("lb_variety", ">=", 3),), (Cond("lb_share", ">=", 0.5), Cond("param_change_share", ">=", 0.5)))),
    # Carlini et al. 2024 recover the logit vector by re-sending one prompt with many different
    # biases; no benign client we know of does that (a classifier biases the same few label
    # tokens every time). A learned model's confidence on it varied between trainings, so the
    # signature is a floor, not a feature the model may weigh down.
    ReasonRule("logit_bias_sweep", "one prompt sent with five or more different logit_bias sets: the logit-recovery signature",
               ((Cond("lb_variety", ">=", 5),),), floor=1),
    ReasonRule("logprob_harvest", "most recent requests ask for logprobs",
               ((Cond("logprob_share", ">=", 0.8),),), min_window=5),
    ReasonRule("near_duplicate_burst", "many near-duplicate prompts in a short time",
               ((Cond("near_dup_share", ">=", 0.4), Cond("rate_1m", ">=", 4)),), min_window=5),
    ReasonRule("novelty_sweep", "nearly every prompt is new content: coverage-seeking traffic",
               ((Cond("novelty", ">=", 0.6), Cond("distinct_share", ">=", 0.9)),), min_window=10),
    ReasonRule("template_sweep", "one prompt template filled with ever-changing values",
               ((Cond("template_share", ">=", 0.6), Cond("distinct_share", ">=", 0.9)),), min_window=10),
    ReasonRule("machine_timing", "steady, machine-like gaps between requests",
               ((Cond("gap_cv", "<=", 0.5), Cond("dt_mean_k", "<=", 30)),), min_window=8),
    ReasonRule("high_volume", "sustained volume over the last hour",
               ((Cond("rate_1h", ">=", 200),),)),
    ReasonRule("long_output_harvest", "large output budgets or several samples per query",
               ((Cond("max_tokens", ">=", 2000),), (Cond("n", ">", 1),))),
    ReasonRule("cross_account_campaign", "the same prompt template from many accounts within the hour",
               ((Cond("campaign", ">=", 4),),)),
    # Higher than campaign's bar: the users of one popular front-end share a fingerprint too.
    ReasonRule("client_cohort", "many accounts sending with one exact client fingerprint within the hour",
               ((Cond("cohort", ">=", 10),),)),
]


SIGNATURES = [r for r in RULES if r.floor]


def floor_level(vec: np.ndarray, window_len: int) -> int:
    """The lowest action level the signatures demand of this window (0: none fires)."""
    # A plain loop: this runs for every own scope of every request, and a generator with
    # max(default=) cost more than the one rule it checks.
    level = 0
    for r in SIGNATURES:
        if r.floor > level and r.fires(vec, window_len):
            level = r.floor
    return level


def reasons(vec: np.ndarray, window_len: int, scope: str) -> list[str]:
    values = vec.tolist()  # one conversion for the dozen or so conditions read below
    out = [r.code for r in RULES if r.fires(values, window_len)]
    out.append(f"scope:{scope}")
    return out
