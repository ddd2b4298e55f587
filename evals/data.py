"""Per-event arrays of a trace that metrics and baselines read: labels, accounts, families,
times, prompt text sketches and the same feature vectors the model sees."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moat.models.events import Event
from moat.models.feature_spec import N_OWN, TEXT_LIMIT
from moat.models.summary import newest_text, summarize
from moat.models.traces import iter_raw
from moat.training.sequences import featurize_trace

CHAR_DIM = 256  # hashed character-trigram buckets for PRADA


def char_trigrams(text: str) -> np.ndarray:
    """L2-normalised hashed character-trigram counts (PRADA's input space, adapted to text)."""
    b = np.frombuffer(text[:512].encode("utf-8", "replace"), dtype=np.uint8).astype(np.uint32)
    v = np.zeros(CHAR_DIM, dtype=np.float32)
    if len(b) >= 3:
        tri = (b[:-2] * 65599 + b[1:-1] * 257 + b[2:]) % CHAR_DIM
        v = np.bincount(tri, minlength=CHAR_DIM).astype(np.float32)
        v /= np.linalg.norm(v)
    return v


@dataclass
class EvalData:
    labels: np.ndarray  # uint8[N]
    accounts: list[str]
    families: list[str]
    ts: np.ndarray  # float64[N]
    simhash: np.ndarray  # uint64[N]
    chars: np.ndarray  # float32[N, CHAR_DIM]
    own: np.ndarray  # float32[N, N_OWN]: single-request features
    session: np.ndarray  # float32[N, F]: the account scope's vector (window statistics)

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def from_trace(cls, path: str | Path, progress: bool = False, limit: int | None = None) -> "EvalData":
        seqs = featurize_trace(path, progress=progress, limit=limit)
        sims, chars, ts = [], [], []
        unlabelled = 0
        for i, raw in enumerate(iter_raw(path)):
            if limit is not None and i >= limit:
                break
            unlabelled += "label" not in raw
            ev = Event.model_validate(raw)
            s = summarize(ev)
            sims.append(s.simhash)
            ts.append(s.ts)
            chars.append(char_trigrams(newest_text(ev)[0][:TEXT_LIMIT]))
        if unlabelled:
            # Read as benign, an unlabelled trace evaluated to "no attack accounts" without a word.
            raise ValueError(f"{path}: {unlabelled} of {len(ts)} events have no `label`; evaluation needs a labelled trace (an operator's unlabelled traffic goes to `moat calibrate`)")
        account_rows = np.array([rows[0] for rows in seqs.event_rows], dtype=np.int64)  # scope 0 is the account
        session = seqs.feats[account_rows].astype(np.float32)
        return cls(
            labels=seqs.event_label,
            accounts=seqs.event_account,
            families=seqs.event_family,
            ts=np.asarray(ts),
            simhash=np.asarray(sims, dtype=np.uint64),
            chars=np.asarray(chars, dtype=np.float32).reshape(-1, CHAR_DIM),
            own=session[:, :N_OWN].copy(),
            session=session,
        )
