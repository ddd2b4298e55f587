"""Streaming reader and writer for trace files (JSON Lines, optionally gzip-compressed)."""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from moat.models.events import Event


def _open(path: Path, mode: str) -> IO[str]:
    if path.suffix == ".gz":
        # mtime=0 keeps gzip output byte-identical across runs with the same content.
        raw = gzip.GzipFile(filename="", mode=mode[0] + "b", fileobj=open(path, mode[0] + "b"), mtime=0)
        return io.TextIOWrapper(raw, encoding="utf-8", newline="\n")
    return open(path, mode, encoding="utf-8", newline="\n")


def iter_lines(path: str | Path) -> Iterator[str]:
    """Yield each non-empty line's JSON text (for callers that validate straight from JSON)."""
    with _open(Path(path), "rt") as fh:
        for line in fh:
            if line.strip():
                yield line


def iter_raw(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield each line as a dict, without validation (fast path for trusted, generated traces)."""
    with _open(Path(path), "rt") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc


def iter_events(path: str | Path) -> Iterator[Event]:
    """Yield validated events; a bad line raises with its line number and the field at fault."""
    for lineno, raw in enumerate(iter_raw(path), 1):
        try:
            yield Event.model_validate(raw)
        except ValueError as exc:
            raise ValueError(f"{path}: event {lineno}: {exc}") from exc


def dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


class TraceWriter:
    """Writes dict records as JSON Lines; `.gz` paths are compressed deterministically."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = _open(self.path, "wt")
        self.count = 0

    def write(self, record: dict[str, Any]) -> None:
        self._fh.write(dumps(record))
        self._fh.write("\n")
        self.count += 1

    def write_all(self, records: Iterable[dict[str, Any]]) -> None:
        for record in records:
            self.write(record)

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "TraceWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def split_path(data_dir: Path, split: str) -> Path | None:
    """`DIR/SPLIT.jsonl` or `DIR/SPLIT.jsonl.gz` as `moat generate` writes them; None if neither."""
    for name in (f"{split}.jsonl", f"{split}.jsonl.gz"):
        if (data_dir / name).is_file():
            return data_dir / name
    return None
