"""Featurise a trace file into per-scope request sequences (numpy; no torch).

Runs the same `Featurizer` as serving over the trace in file order, with an unbounded memory
store, and keeps each scope's per-request vectors in arrival order: what the scorer would have
held for it. Labels travel beside the features; they are never inputs.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from moat.models.events import Event
from moat.models.feature_spec import N_FEATURES, N_TOKENS
from moat.models.featurizer import Featurizer
from moat.models.memory_store import MemoryStore
from moat.models.traces import iter_raw, split_path


@dataclass
class Sequences:
    """All scopes' sequences of one trace, concatenated: rows [offsets[i], offsets[i+1]) are
    scope i's requests in order."""

    feats: np.ndarray  # float16[R, F]
    tokens: np.ndarray  # uint16[R, K]
    labels: np.ndarray  # uint8[R]
    dependent: np.ndarray  # bool[R]: the row's window needed corroboration (ScopeWindow.dependent)
    mirror: np.ndarray  # bool[R]: the row's window mirrors its account's (ScopeWindow.mirrors)
    offsets: np.ndarray  # int64[S + 1]
    scope: list[str]  # per sequence: account / api_key / ip_prefix
    key: list[str]
    family: list[str]  # per sequence: the family of its first request (mixed scopes: the majority party)
    label: np.ndarray  # uint8[S]: 1 if any request of the sequence is extraction
    # Per event, in trace order: which rows (one per scope) hold its windows' last position.
    event_rows: list[list[int]]
    event_account: list[str]
    event_label: np.ndarray
    event_family: list[str]

    def __len__(self) -> int:
        return len(self.scope)

    def length(self, i: int) -> int:
        return int(self.offsets[i + 1] - self.offsets[i])


def trace_file(data_dir: Path, split: str) -> Path:
    """DIR/SPLIT.jsonl[.gz] as `moat generate` writes it, or an error that says how to make it."""
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{data_dir}: no such directory")
    path = split_path(data_dir, split)
    if path is None:
        raise FileNotFoundError(f"{data_dir}: no {split}.jsonl[.gz]; run `moat generate --out {data_dir}` first")
    return path


def featurize_trace(path: str | Path, progress: bool = True, limit: int | None = None) -> Sequences:
    feat = Featurizer(MemoryStore(max_scopes=None, ttl_s=None))
    rows: dict[tuple[str, str], list[int]] = defaultdict(list)
    seq_family: dict[tuple[str, str], str] = {}
    all_feats: list[np.ndarray] = []
    all_tokens: list[np.ndarray] = []
    labels: list[int] = []
    dependent: list[bool] = []
    mirror: list[bool] = []
    event_rows_raw: list[list[tuple[tuple[str, str], int]]] = []
    event_account: list[str] = []
    event_label: list[int] = []
    event_family: list[str] = []
    for i, raw in enumerate(tqdm(iter_raw(path), desc=f"featurise {Path(path).name}", unit=" events", disable=not progress, mininterval=1.0)):
        if limit is not None and i >= limit:
            break
        ev = Event.model_validate(raw)
        step = feat.step(ev)
        mine = []
        for w in step.windows:
            k = (w.scope, w.key)
            r = len(labels)
            all_feats.append(w.feats[-1].copy())  # a copy: a view would pin the window
            all_tokens.append(w.tokens[-1].copy())
            labels.append(int(raw.get("label") or 0))
            dependent.append(w.dependent)
            mirror.append(w.mirrors(step.windows[0]))
            rows[k].append(r)
            seq_family.setdefault(k, raw.get("family") or "unknown")
            mine.append((k, len(rows[k]) - 1))
        event_rows_raw.append(mine)
        event_account.append(ev.account_id)
        event_label.append(int(raw.get("label") or 0))
        event_family.append(raw.get("family") or "unknown")
    feats = np.asarray(all_feats, dtype=np.float16).reshape(-1, N_FEATURES)
    tokens = np.asarray(all_tokens, dtype=np.uint16).reshape(-1, N_TOKENS)
    lab = np.asarray(labels, dtype=np.uint8)
    # Reorder rows so each sequence is contiguous.
    keys = list(rows)
    order = np.fromiter((r for k in keys for r in rows[k]), dtype=np.int64, count=len(lab))
    offsets = np.zeros(len(keys) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(rows[k]) for k in keys])
    seq_index = {k: i for i, k in enumerate(keys)}
    event_rows = [[int(offsets[seq_index[k]] + pos) for k, pos in mine] for mine in event_rows_raw]
    seq_label = np.array([int(lab[rows[k]].max()) for k in keys], dtype=np.uint8)
    return Sequences(
        feats=feats[order], tokens=tokens[order], labels=lab[order], dependent=np.asarray(dependent, dtype=bool)[order],
        mirror=np.asarray(mirror, dtype=bool)[order], offsets=offsets,
        scope=[k[0] for k in keys], key=[k[1] for k in keys], family=[seq_family[k] for k in keys], label=seq_label,
        event_rows=event_rows, event_account=event_account, event_label=np.asarray(event_label, dtype=np.uint8), event_family=event_family,
    )


def row_windows(seqs: Sequences, window: int) -> np.ndarray:
    """For every row, the start row of the serving window that ends at it: int64[R]."""
    starts = np.empty(len(seqs.labels), dtype=np.int64)
    for i in range(len(seqs)):
        a, b = seqs.offsets[i], seqs.offsets[i + 1]
        idx = np.arange(a, b)
        starts[a:b] = np.maximum(idx - window + 1, a)
    return starts
