"""Golden hashes: the feature rows and the replay scores of fixed traces, pinned bit for bit.

A model is only valid on the vectors it was trained on, and `moat replay` must stay
byte-identical across refactors. Any change to a feature value, to the windowing, or to a
decision of the shipped model changes a hash here. If the change is intended, bump
FEATURE_SPEC_VERSION for a feature change (old bundles then refuse to load) and pin the new
hash that the failure message prints.

tests/data/golden_trace.jsonl is a seeded simulation (tests/data/README.md says how it was made);
the contract example is the repository's own contract/example_trace.jsonl.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from moat.models.featurizer import Featurizer
from moat.models.memory_store import MemoryStore
from moat.models.traces import dumps, iter_events, iter_lines
from moat.serving.replay_cli import replay
from moat.serving.scorer import Scorer
from moat.serving.settings import ServingSettings
from tests.conftest import CONTRACT, ROOT

GOLDEN = ROOT / "tests" / "data" / "golden_trace.jsonl"
EXAMPLE = CONTRACT / "example_trace.jsonl"

# (case, trace, scope windows, sha256 of every window's float16 vectors and tokens in order)
FEATURES = [
    ("golden trace", GOLDEN, 1431, "2c628acd37dfc159c0fe3c861e0a7fd1a044c7d19523a251e640e0f96efa5487"),
    ("contract example", EXAMPLE, 10, "00d22da2781ceb6492a99f712d9bdc2cadf9a0ea1eea6e1cd0905749c4ec7803"),
]
# An operator's calibrated block threshold, below the shipped 0.992 (`moat calibrate` on
# calib-spread sets 0.986 for the shipped bundle; 0.99 here): it blocks more of the golden trace
# (58 requests of 477 against 19), and those blocks must stay pinned too.
OPERATOR_BLOCK = {"block_threshold": 0.99}
# (case, trace, serving settings, events, sha256 of the `moat replay` output lines with the shipped model)
SCORES = [
    ("golden trace", GOLDEN, {}, 477, "e814700c761d83f8ed2173324697cbef7a0c672e05322c7a9d2c031646f5e81d"),
    ("golden trace, operator block threshold", GOLDEN, OPERATOR_BLOCK, 477, "cdc48bb2e9eb82566db3cebcdc539f1581f9af4b901be60cdd2c338b68a534ac"),
    ("contract example", EXAMPLE, {}, 4, "458978c098c7b480d28b7d30b2658d12a91408e3b3d9918dd5849dc43d849be7"),
]


def feature_digest(trace: Path) -> tuple[str, int]:
    """sha256 over each event's scope windows as the model reads them (scope, key, float16
    vectors, token ids), with unbounded state as training uses; and the number of windows."""
    h = hashlib.sha256()
    featurizer = Featurizer(MemoryStore(max_scopes=None, ttl_s=None))
    n = 0
    for event in iter_events(trace):
        for w in featurizer.step(event).windows:
            h.update(f"{w.scope}\0{w.key}\0{len(w.feats)}\0".encode())
            h.update(w.feats.astype("<f2").tobytes())
            h.update(w.tokens.astype("<u2").tobytes())
            n += 1
    return h.hexdigest(), n


def replay_lines(trace: Path, settings: dict | None = None) -> list[str]:
    """What `moat replay TRACE` writes, line by line, with the shipped model and default settings
    (or these)."""
    lines: list[str] = []
    replay(Scorer(ServingSettings(state="memory", **(settings or {}))), iter_lines(trace), lambda score: lines.append(dumps(score) + "\n"))
    return lines


@pytest.fixture(autouse=True)
def default_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's MOAT_MODEL or threshold override must not change the pinned output."""
    for name in ServingSettings.model_fields:
        monkeypatch.delenv(f"MOAT_{name.upper()}", raising=False)


# Where each compiled kernel is bound; None makes its caller run the Python reference, which is
# what an install without numba runs, and must give the same bits.
KERNELS = [
    ("moat.models.summary", "gram_kernel"),
    ("moat.models.summary", "ascii_kernel"),
    ("moat.models.scope_window", "relational_kernel"),
    ("moat.models.scope_window", "push_kernel"),
    ("moat.serving.scorer", "pack_kernel"),
]


@pytest.fixture(params=["compiled", "python"])
def kernels(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "python":
        for module, name in KERNELS:
            monkeypatch.setattr(f"{module}.{name}", None)
    return request.param


@pytest.mark.parametrize("case, trace, windows, expected", FEATURES, ids=[c[0] for c in FEATURES])
def test_feature_rows_are_pinned(case: str, trace: Path, windows: int, expected: str, kernels: str) -> None:
    digest, n = feature_digest(trace)
    assert n == windows, f"{case}: {n} scope windows, expected {windows}"
    assert digest == expected, f"{case}: feature rows changed (sha256 {digest}). If intended, bump FEATURE_SPEC_VERSION and pin this hash."


@pytest.mark.parametrize("case, trace, settings, events, expected", SCORES, ids=[c[0] for c in SCORES])
def test_replay_scores_are_pinned(case: str, trace: Path, settings: dict, events: int, expected: str, kernels: str) -> None:
    lines = replay_lines(trace, settings)
    assert len(lines) == events
    digest = hashlib.sha256("".join(lines).encode()).hexdigest()
    assert digest == expected, f"{case}: `moat replay` output changed (sha256 {digest}). If intended, pin this hash."


def test_golden_trace_exercises_every_action_and_reason() -> None:
    """The pinned scores only guard what the trace reaches: every action level, and the reason
    codes of attacks it holds (a regenerated trace must keep them). Blocks are reached at an
    operator's calibrated block threshold."""
    scores = [json.loads(line) for line in replay_lines(GOLDEN, OPERATOR_BLOCK)]
    assert {s["action"] for s in scores} == {"allow", "throttle", "perturb", "block"}
    reasons = {r for s in scores for r in s["reasons"]}
    assert {"logit_bias_probe", "logprob_harvest", "machine_timing", "novelty_sweep", "long_output_harvest"} <= reasons
