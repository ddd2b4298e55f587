"""The `moat` command: a thin dispatcher. Each subcommand imports its stage only when run, so
`moat replay` and `moat serve` never import torch."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, help). The module provides add_arguments(parser) and run(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("moat.data_gen.cli", "simulate labelled benign and extraction traffic"),
    "train": ("moat.training.cli", "train a model bundle on generated traces"),
    "export": ("moat.training.export_cli", "re-export a bundle from a checkpoint or registry version"),
    "replay": ("moat.serving.replay_cli", "score a trace offline with the serving scorer"),
    "serve": ("moat.serving.serve_cli", "start the scoring service (BentoML)"),
    "evaluate": ("moat.evals.cli", "evaluate a model and baselines on held-out traces"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="moat", description="Moat: model-extraction risk scoring")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            parser.error(f"unknown command {argv[0]!r}; valid: {', '.join(COMMANDS)}")
        parser.print_help()
        return 0 if argv else 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    cmd = argparse.ArgumentParser(prog=f"moat {argv[0]}", description=COMMANDS[argv[0]][1])
    module.add_arguments(cmd)
    return int(module.run(cmd.parse_args(argv[1:])) or 0)


if __name__ == "__main__":
    sys.exit(main())
