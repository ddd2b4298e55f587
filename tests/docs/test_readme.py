"""The README documents every feature, reason code and simulated family, and starts with the
two commands."""

from __future__ import annotations

import pytest

from moat.data_gen.actors import registry
from moat.models.feature_spec import FEATURES
from moat.serving.reasons import RULES
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_starts_with_the_two_commands() -> None:
    block = README.split("```", 2)[1]
    assert "make run" in block and "make test" in block


@pytest.mark.parametrize("name", [f.name for f in FEATURES] + [r.code for r in RULES] + sorted(registry()))
def test_documented(name: str) -> None:
    assert f"`{name}`" in README
