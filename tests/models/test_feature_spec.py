"""The feature spec is the one definition: its scales, absent values and parameter marks match
what summarisation produces, and docs/features.md is generated from it."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from moat.models.events import Event
from moat.models.feature_spec import FEATURES, INDEX, N_FEATURES, N_OWN, SPEC, Scale, presence_flag, render_markdown
from moat.models.summary import summarize
from tests.conftest import ROOT

REGENERATE = ".venv/bin/python -m moat.models.feature_spec > docs/features.md"


def test_docs_features_md_is_generated_from_the_spec() -> None:
    docs = (ROOT / "docs" / "features.md").read_text(encoding="utf-8")
    assert docs == render_markdown(), f"docs/features.md is out of date with models/feature_spec.py; regenerate it: {REGENERATE}"


def test_module_prints_the_markdown() -> None:
    out = subprocess.run([sys.executable, "-m", "moat.models.feature_spec"], capture_output=True, text=True, encoding="utf-8", check=True).stdout
    assert out == render_markdown()


def test_markdown_has_one_row_per_feature() -> None:
    rows = [line for line in render_markdown().splitlines() if line.startswith("| ") and not line.startswith("| #")]
    assert len(rows) == N_FEATURES
    for f, row in zip(FEATURES, rows):
        cells = row.split(" | ")
        assert cells[1] == f"`{f.name}`" and cells[3] == f.scale.formula(), row
        assert len(cells) == 7, f"a '|' in {f.name}'s text breaks the table: {row}"


def test_feature_table_is_complete() -> None:
    assert len(FEATURES) == N_FEATURES == len({f.name for f in FEATURES})
    for f in FEATURES:
        assert f.definition and f.why, f.name


# (scale, raw value, encoded value)
SCALES = [
    (Scale("log1p", 12), math.e**12 - 1, 1.0),
    (Scale("log1p", 5), 0, 0.0),
    (Scale("log", 128), 128, 1.0),
    (Scale("log", 128), 1, 0.0),
    (Scale("linear", 20), 5, 0.25),
    (Scale("linear", 3, cap=3.0), 0.5, 0.5 / 3),
    (Scale("linear", 3, cap=3.0), 12.0, 1.0),
    (Scale("flag"), True, 1.0),
    (Scale("flag"), False, 0.0),
    (Scale("share"), 0.37, 0.37),
]


@pytest.mark.parametrize("scale, raw, encoded", SCALES, ids=[f"{s.formula()} of {r}" for s, r, _ in SCALES])
def test_scale_encodes(scale: Scale, raw: float, encoded: float) -> None:
    assert scale(raw) == pytest.approx(encoded, abs=1e-12)
    assert scale.encode(raw) == scale(raw)


def test_param_features() -> None:
    params = {f.name for f in FEATURES if f.param}
    assert params == {"temperature", "max_tokens", "n", "top_logprobs", "logit_bias_size", "logit_bias_max", "logit_bias_spread"}
    assert all(SPEC[name].absent is not None and INDEX[name] < N_OWN for name in params)


@pytest.mark.parametrize("name, flag", [("temperature", "temperature_set"), ("max_tokens", "max_tokens_set"), ("n", None), ("logit_bias_size", None), ("top_p", "top_p_set")])
def test_presence_flag(name: str, flag: str | None) -> None:
    assert presence_flag(name) == flag


@pytest.mark.parametrize("f", [f for f in FEATURES if f.absent is not None], ids=lambda f: f.name)
def test_absent_value_is_what_a_bare_request_encodes(f) -> None:
    """A request with no sampling parameters and no user agent encodes exactly `absent`; the
    augmentation relies on it to recognise values the client did not send."""
    bare = summarize(Event.model_validate({"request_id": "r", "ts": 0.0, "account_id": "a", "messages": [{"role": "user", "content": "hi"}]}))
    assert bare.own[INDEX[f.name]] == f.absent
    assert float(np.float16(f.absent)) == f.absent  # stored vectors are float16: the comparison must stay exact


# (feature, params sent, raw value the spec encodes): a sent value goes through the feature's scale.
SENT = [
    ("temperature", {"temperature": 0.0}, 0.0),
    ("temperature", {"temperature": 1.4}, 1.4),
    ("max_tokens", {"max_tokens": 256}, 256),
    ("n", {"n": 4}, 4),
    ("top_logprobs", {"logprobs": True, "top_logprobs": 5}, 5),
    ("logit_bias_size", {"logit_bias": {"1": 100, "2": -40, "3": 10}}, 3),
    ("logit_bias_max", {"logit_bias": {"1": 30, "2": -40}}, 40.0),
    ("logit_bias_spread", {"logit_bias": {"1": 30, "2": -30}}, 30.0),
    ("temperature_set", {"temperature": 0.0}, True),
    ("stream", {"stream": False}, False),
]


@pytest.mark.parametrize("name, params, raw", SENT, ids=[f"{c[0]} {c[1]}" for c in SENT])
def test_sent_value_is_encoded_by_its_scale(name: str, params: dict, raw: float) -> None:
    s = summarize(Event.model_validate({"request_id": "r", "ts": 0.0, "account_id": "a", "messages": [{"role": "user", "content": "hi"}], "params": params}))
    assert s.own[INDEX[name]] == np.float32(SPEC[name].scale(raw))
