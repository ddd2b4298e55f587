"""Checks of `moat train` and `moat export` arguments that need nothing heavy.

They run before torch and Lightning are imported (over 15 s on a cold machine), so that a typo
in a path fails at once, in one line naming the option.
"""

from __future__ import annotations

from pathlib import Path

from moat.models.bundle import BundleError
from moat.models.bundle_source import parse_registry_uri
from moat.training.sequences import trace_file

CONFIG_SUFFIXES = (".json", ".toml")
BUNDLE_MARKER = "meta.json"


class ArgumentError(ValueError):
    """A bad command-line argument; the message is one line that starts with the option."""


def check_data_dir(data_dir: Path, splits: tuple[str, ...]) -> None:
    for split in splits:
        try:
            trace_file(data_dir, split)
        except FileNotFoundError as exc:
            raise ArgumentError(f"--data {exc}") from exc


def check_config_file(path: Path | None) -> None:
    if path is None:
        return
    if path.suffix not in CONFIG_SUFFIXES:
        raise ArgumentError(f"--config {path}: expected a .json or .toml file")
    if not path.is_file():
        raise ArgumentError(f"--config {path}: no such file")


def check_out_dir(out: Path) -> None:
    """The bundle directory may be new, empty, or a bundle to replace; anything else holds files
    that a bundle written among them would be mistaken for, or mistaken with."""
    if out.exists() and not out.is_dir():
        raise ArgumentError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / BUNDLE_MARKER).is_file():
        raise ArgumentError(f"--out {out}: a non-empty directory that is not a bundle (no {BUNDLE_MARKER}); choose a new directory")


def check_checkpoint(path: Path) -> None:
    if not path.is_file():
        raise ArgumentError(f"--checkpoint {path}: no such file")


def check_registry_uri(uri: str) -> None:
    try:
        parse_registry_uri(uri)
    except BundleError as exc:
        raise ArgumentError(f"--registry {exc}") from exc
