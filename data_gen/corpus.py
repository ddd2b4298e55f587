"""Prompt text from real files (`--corpus PATH`): JSONL(.gz) or CSV, whichever field holds a prompt."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

# Field names that hold user-written prompt text in the public data sets we read.
_TEXT_FIELDS = ("prompt", "turns", "question", "instruction", "text", "content")


def _texts_from_record(record: dict) -> list[str]:
    for field in _TEXT_FIELDS:
        value = record.get(field)
        if isinstance(value, str) and value.strip():
            return [value]
        if isinstance(value, list):
            return [v for v in value if isinstance(v, str) and v.strip()]
    return []


def load_corpus(path: str | Path) -> list[str]:
    """Read prompts from a file; raise a one-line error if the file holds none."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--corpus {path}: no such file")
    opener = gzip.open if path.suffix == ".gz" else open
    texts: list[str] = []
    name = path.name.removesuffix(".gz")
    with opener(path, "rt", encoding="utf-8") as fh:  # type: ignore[operator]
        if name.endswith(".csv"):
            for row in csv.DictReader(fh):
                texts.extend(_texts_from_record(row))
        else:
            for line in fh:
                if line.strip():
                    texts.extend(_texts_from_record(json.loads(line)))
    if not texts:
        raise ValueError(f"--corpus {path}: found no prompt text (looked for fields {', '.join(_TEXT_FIELDS)})")
    return texts
