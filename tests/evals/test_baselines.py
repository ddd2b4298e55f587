"""Each baseline separates an obvious attack account from obvious benign accounts."""

from __future__ import annotations

import numpy as np
import pytest

from moat.evals.baselines import BASELINES
from moat.evals.data import EvalData, char_trigrams
from moat.models.events import Event
from moat.models.feature_spec import N_FEATURES, N_OWN
from moat.models.scope_window import Crowd, ScopeState, window
from moat.models.summary import summarize


def build(rows: list[tuple[str, float, str, int, dict]]) -> EvalData:
    """Rows of (account, ts, text, label, params) -> EvalData, features from the real summariser."""
    states: dict[str, ScopeState] = {}
    sims, chars, session = [], [], []
    for i, (acc, ts, text, _, params) in enumerate(rows):
        e = Event.model_validate({"request_id": str(i), "ts": ts, "account_id": acc, "prompt": text, "params": params})
        s = summarize(e)
        sims.append(s.simhash)
        chars.append(char_trigrams(text))
        session.append(window(states.setdefault(acc, ScopeState()), s, Crowd(), "account")[0][-1])
    session_a = np.asarray(session, dtype=np.float32).reshape(-1, N_FEATURES)
    return EvalData(
        labels=np.array([r[3] for r in rows], dtype=np.uint8), accounts=[r[0] for r in rows], families=["x" if r[3] else "b" for r in rows],
        ts=np.array([r[1] for r in rows]), simhash=np.array(sims, dtype=np.uint64), chars=np.asarray(chars), own=session_a[:, :N_OWN].copy(), session=session_a,
    )


def traffic(seed: int) -> EvalData:
    """Benign humans: varied prose, slow. Attacker: a fast machine repeating near-identical
    short probes with logprobs and logit_bias."""
    rng = np.random.default_rng(seed)
    words = "the quick brown fox jumps over lazy dogs while seven wizards quietly judge boxing matches".split()
    rows = []
    for b in range(8):
        t = 1000.0 * b
        for i in range(30):
            t += float(rng.exponential(120))
            text = " ".join(rng.choice(words, size=rng.integers(6, 30)))
            rows.append((f"benign-{b}", t, text, 0, {"temperature": 0.7}))
    t = 500.0
    for i in range(300):
        t += 0.2
        rows.append(("attacker", t, f"Translate to French: the invoice {i % 3}", 1, {"max_tokens": 1, "logprobs": True, "top_logprobs": 5, "logit_bias": {str(i): 100}}))
    rows.sort(key=lambda r: r[1])
    return build(rows)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baseline_separates_obvious_attack(name: str) -> None:
    b = BASELINES[name]() if name != "rate_limit" else BASELINES[name](per_minute=60)
    if b.trained:
        b.fit(traffic(1))
    data = traffic(2)
    scores = b.score(data)
    assert len(scores) == len(data)
    acc = np.array(data.accounts)
    attack_max = scores[acc == "attacker"].max()
    benign_max = max(scores[acc == f"benign-{i}"].max() for i in range(8))
    assert attack_max > benign_max, f"{name}: attacker {attack_max:.3f} vs benign {benign_max:.3f}"


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baseline_is_online(name: str) -> None:
    """Appending future events never changes the scores of earlier ones."""
    b = BASELINES[name]()
    full = traffic(3)
    if b.trained:
        b.fit(traffic(1))
    n = len(full) // 2
    half = EvalData(full.labels[:n], full.accounts[:n], full.families[:n], full.ts[:n], full.simhash[:n], full.chars[:n], full.own[:n], full.session[:n])
    assert np.allclose(b.score(half), b.score(full)[:n])
