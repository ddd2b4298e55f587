"""Reading the README and docs/ as the tests see them: the files, their shell commands, their
Python blocks."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import ROOT

DOCS = ROOT / "docs"
README = ROOT / "README.md"
# docs/features.md is generated from the feature spec by its own tool; it is read like the rest.
MARKDOWN = [README, *sorted(DOCS.glob("*.md"))]
CHECKED = ("moat", "make", "python", "curl")

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.DOTALL | re.MULTILINE)
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_OPERATORS = {"|", "||", "&&", ";"}


@dataclass(frozen=True)
class Command:
    """One simple command of a shell line: `argv` without leading VAR=value assignments."""

    source: str  # file:line, for test ids and messages
    line: str  # the whole shell line it came from
    argv: tuple[str, ...]

    @property
    def kind(self) -> str:
        return self.argv[0] if self.argv else ""


def fenced(path: Path, languages: tuple[str, ...]) -> list[tuple[int, str]]:
    """(first line number, body) of each fenced block in one of `languages`."""
    text = path.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start(2)) + 1, m.group(2)) for m in _FENCE.finditer(text) if m.group(1) in languages]


def shell_lines(path: Path) -> list[tuple[str, str]]:
    """(file:line, line) for each command line of the ```bash and ```sh blocks, continuations joined."""
    lines = []
    for first, body in fenced(path, ("bash", "sh")):
        pending, start = "", 0
        for offset, raw in enumerate(body.splitlines()):
            if not pending:
                start = first + offset
            if raw.endswith("\\"):
                pending += raw[:-1] + " "
                continue
            line, pending = (pending + raw).strip(), ""
            if line and not line.startswith("#"):
                lines.append((f"{path.relative_to(ROOT)}:{start}", line))
    return lines


def commands(path: Path) -> list[Command]:
    out = []
    for source, line in shell_lines(path):
        segment: list[str] = []
        for token in [*shlex.split(line, comments=True), ";"]:
            if token not in _OPERATORS:
                segment.append(token)
                continue
            while segment and _ASSIGNMENT.match(segment[0]):
                segment.pop(0)
            if segment:
                out.append(Command(source, line, tuple(segment)))
            segment = []
    return out


def all_commands() -> list[Command]:
    return [c for path in MARKDOWN for c in commands(path)]
