"""Every shell command in README.md and docs/*.md that starts with `moat`, `make`, `python` or
`curl` parses: its subcommand accepts the arguments, its make target exists, its script or module
exists, its URL is a route of the service and its body file ships with the repo."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import shlex
from urllib.parse import urlsplit

import pytest

from moat import cli
from tests.conftest import ROOT
from tests.docs.markdown import CHECKED, README, Command, all_commands

FIGURES_HEADING = "## Every figure comes from a command in the repo"
ROUTES = {"/score", "/score/batch", "/livez", "/readyz", "/metrics"}
BODY_DIRS = ("examples", "contract")
_TARGET = re.compile(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", re.MULTILINE)

COMMANDS = [c for c in all_commands() if c.kind in CHECKED]


def make_targets() -> set[str]:
    return set(_TARGET.findall((ROOT / "Makefile").read_text(encoding="utf-8")))


def parse_moat(args: list[str]) -> None:
    """Parse `moat ARGS` as the dispatcher would, without running the command."""
    if not args or args[0].startswith("-"):  # moat --version, moat --help
        with pytest.raises(SystemExit) as exit_:
            cli.main(args)
        assert exit_.value.code == 0
        return
    assert args[0] in cli.COMMANDS, f"unknown subcommand {args[0]!r}; valid: {', '.join(cli.COMMANDS)}"
    parser = argparse.ArgumentParser(prog=f"moat {args[0]}")
    importlib.import_module(cli.COMMANDS[args[0]][0]).add_arguments(parser)
    try:
        parser.parse_args(args[1:])
    except SystemExit as exit_:  # argparse has printed why on stderr
        if exit_.code != 0 or not {"-h", "--help"} & set(args):
            pytest.fail(f"`moat {' '.join(args)}` does not parse (exit {exit_.code})")


def check_python(args: list[str]) -> None:
    if args[:2] == ["-m", "moat"]:
        parse_moat(args[2:])
    elif args[:1] == ["-m"]:
        assert importlib.util.find_spec(args[1]) is not None, f"no module {args[1]}"
    else:
        script = args[0]
        assert script.endswith(".py") and (ROOT / script).is_file(), f"no script {script}"


def check_make(args: list[str]) -> None:
    targets = [a for a in args if "=" not in a and not a.startswith("-")]
    assert targets, "make without a target"
    missing = set(targets) - make_targets()
    assert not missing, f"Makefile has no target {sorted(missing)}"


def check_curl(args: list[str]) -> None:
    urls = [a for a in args if a.startswith(("http://", "https://", "localhost", "127.0.0.1"))]
    assert len(urls) == 1, f"expected one URL, found {urls}"
    url = urls[0] if "://" in urls[0] else f"http://{urls[0]}"
    assert urlsplit(url).path in ROUTES, f"{url}: not a route of the service ({sorted(ROUTES)})"
    for flag, value in zip(args, args[1:]):
        if flag in ("-d", "--data", "--data-binary") and value.startswith("@"):
            body = value[1:]
            assert body.split("/")[0] in BODY_DIRS and (ROOT / body).is_file(), f"{body}: not a file in {BODY_DIRS}"


CHECKS = {"moat": parse_moat, "make": check_make, "python": check_python, "curl": check_curl}


@pytest.mark.parametrize("command", COMMANDS, ids=[f"{c.source}:{c.kind}" for c in COMMANDS])
def test_command_parses(command: Command) -> None:
    CHECKS[command.kind](list(command.argv[1:]))


def test_every_kind_of_command_is_found() -> None:
    """Guards the extraction itself: if a fence or quoting change hid the commands, the test
    above would pass on nothing."""
    assert {c.kind for c in COMMANDS} == set(CHECKS)
    assert {c.source.split(":")[0] for c in COMMANDS} >= {"README.md", "docs/results.md", "docs/operations.md"}


def figure_commands() -> list[str]:
    """The commands the README's figures section lists, one per table row (`...` elides options)."""
    text = README.read_text(encoding="utf-8")
    assert FIGURES_HEADING in text
    section = text.split(FIGURES_HEADING, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"\| `([^`]+)`", section)


def test_readme_lists_the_figure_commands() -> None:
    assert len(figure_commands()) >= 5


@pytest.mark.parametrize("listed", figure_commands())
def test_figure_command_is_spelled_out_where_it_is_checked(listed: str) -> None:
    """Each command the figures section names appears in full in a shell block of the README or
    docs/, where the test above parses it."""
    words = [w for w in shlex.split(listed) if w != "..."]
    assert any(c.argv[0] == words[0] and set(words) <= set(c.argv) for c in COMMANDS), f"`{listed}` is in no shell block"


@pytest.mark.parametrize(
    "kind, args, ok",
    [
        ("moat", ["replay", "t.jsonl", "-o", "s.jsonl"], True),
        ("moat", ["replay", "t.jsonl"], False),  # -o is required
        ("moat", ["generate", "--out", "d", "--actors", "N"], False),  # a placeholder where an int goes
        ("moat", ["frobnicate"], False),
        ("moat", ["train", "--help"], True),
        ("make", ["eval"], True),
        ("make", ["deploy"], False),
        ("python", ["examples/client.py"], True),
        ("python", ["examples/nope.py"], False),
        ("python", ["-m", "moat", "serve", "--port", "3000"], True),
        ("curl", ["-s", "localhost:3000/score", "-d", "@examples/event.json"], True),
        ("curl", ["-s", "localhost:3000/score", "-d", "@events.json"], False),  # not shipped
        ("curl", ["-s", "localhost:3000/v1/score"], False),
    ],
)
def test_checks_reject_what_does_not_run(kind: str, args: list[str], ok: bool) -> None:
    if ok:
        CHECKS[kind](args)
    else:
        with pytest.raises((AssertionError, pytest.fail.Exception)):
            CHECKS[kind](args)
