"""Metrics and the cost model on hand-built numbers with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from moat.evals.cost import AttackOutcome, CostModel, cost_multiplier, cost_with_moat, cost_without_moat
from moat.models.metrics import auroc, pr_auc, queries_to_detection, tpr_at_fpr

# (case, labels, scores, AUROC)
AUROC_CASES = [
    ("perfect", [0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], 1.0),
    ("inverted", [0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1], 0.0),
    ("all tied", [0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5], 0.5),
    ("one swap of four pairs", [0, 0, 1, 1], [0.1, 0.6, 0.5, 0.9], 0.75),
]


@pytest.mark.parametrize("case, y, s, expected", AUROC_CASES, ids=[c[0] for c in AUROC_CASES])
def test_auroc(case, y, s, expected) -> None:
    assert auroc(np.array(y), np.array(s)) == pytest.approx(expected)


def test_auroc_matches_scikit_learn() -> None:
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.random(500) + 0.3 * y, 2)  # ties included
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s))
    assert pr_auc(y, s) == pytest.approx(average_precision_score(y, s))


@pytest.mark.parametrize(
    "max_fpr, expected",
    [(0.0, 0.5), (0.25, 0.75), (0.5, 1.0)],
)
def test_tpr_at_fpr(max_fpr, expected) -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.7, 0.95, 0.99, 0.98, 0.9, 0.6])
    assert tpr_at_fpr(y, s, max_fpr) == pytest.approx(expected)


@pytest.mark.parametrize("labels", [[1, 1], [0, 0]], ids=["no benign accounts", "no attack accounts"])
def test_tpr_at_fpr_with_one_class_is_undefined(labels: list[int]) -> None:
    """Without negatives every threshold has FPR 0: a constant score read as a perfect TPR."""
    assert math.isnan(tpr_at_fpr(np.array(labels), np.array([0.2, 0.3]), 0.01))


@pytest.mark.parametrize("flags, expected", [([False, False, True, True], 2), ([True], 0), ([False, False], None), ([], None)])
def test_queries_to_detection(flags, expected) -> None:
    assert queries_to_detection(flags) == expected


def test_cost_model_by_hand() -> None:
    m = CostModel(price_per_query=0.01, account_cost=10.0, throttle_penalty=1.0, rate_limit_per_min=1000)
    # The account is blocked after 70 requests and sends its last 30 into the block (open loop):
    # they cost their price and give nothing; no second account is bought.
    o = AttackOutcome(sent=100, allowed=40, throttled=10, perturbed=20, blocked=30, accounts=1)
    assert cost_without_moat(o, m) == (100 * 0.01 + 10.0, 100.0)
    assert cost_with_moat(o, m) == pytest.approx((100 * 0.01 + 10.0 + 10 * 0.01, 50.0))
    assert cost_multiplier(o, m) == pytest.approx((11.1 / 50) / (11.0 / 100))


def test_clean_yield_and_no_answers() -> None:
    m = CostModel()
    none_answered = AttackOutcome(sent=10, blocked=10, accounts=1)
    assert math.isinf(cost_multiplier(none_answered, m))
    untouched = AttackOutcome(sent=10, allowed=10, accounts=1)
    assert cost_multiplier(untouched, m) == pytest.approx(1.0)
