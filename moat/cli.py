"""The `moat` command: a thin dispatcher. Each subcommand imports its stage only when run, so
`moat replay` and `moat serve` never import torch."""

from __future__ import annotations

import argparse
import importlib
import sys

from moat import __version__

# subcommand -> (module, help). The module provides add_arguments(parser) and run(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("moat.data_gen.cli", "simulate labelled benign and extraction traffic"),
    "train": ("moat.training.cli", "train a model bundle on generated traces"),
    "export": ("moat.training.export_cli", "re-export a bundle from a checkpoint or registry version"),
    "replay": ("moat.serving.replay_cli", "score a trace offline with the serving scorer"),
    "serve": ("moat.serving.serve_cli", "start the scoring service (BentoML)"),
    "proxy": ("moat.serving.proxy_cli", "OpenAI-compatible reverse proxy: score every request and apply the action (plus Envoy/LiteLLM decision endpoints)"),
    "calibrate": ("moat.serving.calibrate_cli", "choose thresholds on the operator's own unlabelled traffic (a new bundle version)"),
    "evaluate": ("moat.evals.cli", "evaluate a model and baselines on held-out traces"),
}


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is nothing to show: a flag's False, an
    unset None (its help says what happens instead), or a help text that already names it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        # Identity, not equality, for False: a default of 0 (e.g. --seed) must still show.
        if action.default is None or action.default is False or action.default in ("", []) or "default" in help_text:
            return help_text
        return super()._get_help_string(action) or ""


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moat", description="Moat: model-extraction risk scoring")
    parser.add_argument("--version", action="version", version=f"moat {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def command_parser(name: str) -> argparse.ArgumentParser:
    """The full parser of one subcommand (imports its module, not its stage)."""
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"moat {name}", description=COMMANDS[name][1], formatter_class=DefaultsHelpFormatter)
    module.add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in COMMANDS:
        module = importlib.import_module(COMMANDS[argv[0]][0])
        return int(module.run(command_parser(argv[0]).parse_args(argv[1:])) or 0)
    parser = _top_parser()
    if argv and not argv[0].startswith("-"):
        parser.error(f"unknown command {argv[0]!r}; valid: {', '.join(COMMANDS)}")
    parser.parse_args(argv)  # -h and --version print and exit here; other options are errors
    parser.print_help()
    return 2  # no command given


if __name__ == "__main__":
    sys.exit(main())
