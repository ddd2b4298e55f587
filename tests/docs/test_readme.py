"""The README is a short quickstart that starts with the two commands; docs/ documents every
feature, reason code and simulated family; links resolve; the cost figure carries its caveat;
history stays in CHANGELOG.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from moat.data_gen.registry import registry
from moat.models.feature_spec import FEATURES
from moat.serving.reasons import RULES
from tests.conftest import ROOT
from tests.docs.markdown import DOCS, MARKDOWN, README

MAX_README_LINES = 250
COST = "cost multiplier"
COST_NAME = "estimated cost multiplier (against an open-loop attacker)"
_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
# A commit hash: 7-40 hex characters with at least one letter and one digit, not part of a
# longer word (a model version such as moat-39967fbc33a7 is part of one).
_HASH = re.compile(r"(?<![\w-])(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}(?![\w-])")
_DIARY = re.compile(r"\b(minutes|hours) (later|earlier)\b|\bthis session\b|\bpreviously\b", re.IGNORECASE)


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def test_readme_starts_with_the_two_commands() -> None:
    block = read(README).split("```", 2)[1]
    assert "make run" in block and "make test" in block


def test_readme_is_short() -> None:
    lines = read(README).count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; move detail into docs/"


# Each name must appear, in backticks, in the document that owns it.
DOCUMENTED = [("features.md", f.name) for f in FEATURES] + [("policy.md", r.code) for r in RULES] + [("simulator.md", family) for family in sorted(registry())]


@pytest.mark.parametrize("doc, name", DOCUMENTED, ids=[f"{d}:{n}" for d, n in DOCUMENTED])
def test_documented(doc: str, name: str) -> None:
    assert f"`{name}`" in read(DOCS / doc), f"`{name}` is not documented in docs/{doc}"


@pytest.mark.parametrize("path", MARKDOWN + [ROOT / "CHANGELOG.md"], ids=lambda p: p.name)
def test_relative_links_resolve(path: Path) -> None:
    targets = [t for t in _LINK.findall(read(path)) if "://" not in t]
    missing = [t for t in targets if not (path.parent / t).exists()]
    assert not missing, f"{path.name} links to missing files: {missing}"


def test_readme_links_every_doc() -> None:
    text = read(README)
    unlinked = [p.name for p in sorted(DOCS.glob("*.md")) if f"(docs/{p.name})" not in text]
    assert not unlinked, f"README.md does not link {unlinked}"


@pytest.mark.parametrize("path", MARKDOWN + [ROOT / "CHANGELOG.md"], ids=lambda p: p.name)
def test_cost_multiplier_is_named_an_open_loop_estimate(path: Path) -> None:
    text = " ".join(read(path).lower().split())  # a name may wrap across lines
    assert text.count(COST) == text.count(COST_NAME), f"{path.name}: say '{COST_NAME}'"


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: p.name)
def test_history_stays_in_the_changelog(path: Path) -> None:
    text = read(path)
    found = _HASH.findall(text) + [m.group(0) for m in _DIARY.finditer(text)]
    assert not found, f"{path.name} holds history {found}; it belongs in CHANGELOG.md"


_REPO_PATH = re.compile(r"`((?:models|serving|training|evals|data_gen|tests|benchmarks|examples|contract|configs|docs)/[\w./-]*[\w/])(?:[:`])")


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: p.name)
def test_named_repo_paths_exist(path: Path) -> None:
    """Files named in backticks (`models/policy.py: combined_risk`) survive renames of the code."""
    named = set(_REPO_PATH.findall(read(path)))
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"{path.name} names files that do not exist: {missing}"
