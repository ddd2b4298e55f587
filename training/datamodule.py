"""LightningDataModule: scope sequences cut into windows, sampled balanced across families."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from moat.models.feature_spec import WINDOW
from moat.training.sequences import Sequences, featurize_trace, trace_file


class WindowDataset(Dataset):
    """Item i is rows [start_i, end_i) of one scope sequence: features, tokens, labels."""

    def __init__(self, seqs: Sequences, spans: np.ndarray, seq_ids: np.ndarray) -> None:
        self.seqs, self.spans, self.seq_ids = seqs, spans, seq_ids

    def __len__(self) -> int:
        return len(self.spans)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        a, b = self.spans[i]
        s = self.seqs
        return s.feats[a:b], s.tokens[a:b], s.labels[a:b], int(self.seq_ids[i])


def collate(items: list) -> dict[str, torch.Tensor]:
    t = max(len(x[0]) for x in items)
    b = len(items)
    f = items[0][0].shape[1]
    k = items[0][1].shape[1]
    feats = torch.zeros(b, t, f)
    tokens = torch.zeros(b, t, k, dtype=torch.long)
    labels = torch.zeros(b, t)
    mask = torch.zeros(b, t)
    for i, (fe, to, la, _) in enumerate(items):
        n = len(fe)
        feats[i, :n] = torch.from_numpy(fe.astype(np.float32))
        tokens[i, :n] = torch.from_numpy(to.astype(np.int64))
        labels[i, :n] = torch.from_numpy(la.astype(np.float32))
        mask[i, :n] = 1.0
    return {"feats": feats, "tokens": tokens, "labels": labels, "mask": mask, "seq": torch.tensor([x[3] for x in items])}


def cut_windows(seqs: Sequences, stride: int, scopes: tuple[str, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Windows of up to WINDOW rows ending every `stride` rows and at each sequence's end."""
    spans, ids = [], []
    for i in range(len(seqs)):
        if scopes and seqs.scope[i] not in scopes:
            continue
        a, b = int(seqs.offsets[i]), int(seqs.offsets[i + 1])
        ends = sorted(set(range(a + min(WINDOW, b - a), b + 1, stride)) | {b})
        for e in ends:
            spans.append((max(a, e - WINDOW), e))
            ids.append(i)
    return np.asarray(spans, dtype=np.int64).reshape(-1, 2), np.asarray(ids, dtype=np.int64)


def balanced_weights(seqs: Sequences, seq_ids: np.ndarray, shared_scope_weight: float) -> np.ndarray:
    """Each family gets equal total weight, each sequence equal weight within its family, so a
    single high-volume actor or a populous persona cannot dominate."""
    per_seq = Counter(seq_ids.tolist())
    fam_seqs: Counter = Counter()
    for i in per_seq:
        fam_seqs[seqs.family[i]] += 1
    w = np.empty(len(seq_ids), dtype=np.float64)
    for j, i in enumerate(seq_ids):
        scope_w = 1.0 if seqs.scope[i] == "account" else shared_scope_weight
        w[j] = scope_w / (per_seq[i] * fam_seqs[seqs.family[i]])
    return w / w.sum()


class TraceDataModule(pl.LightningDataModule):
    def __init__(self, data_dir: str | Path, batch_size: int, windows_per_epoch: int, shared_scope_weight: float, seed: int, num_workers: int = 0, progress: bool = True) -> None:
        super().__init__()
        self.data_dir = Path(data_dir)
        self.batch_size = batch_size
        self.windows_per_epoch = windows_per_epoch
        self.shared_scope_weight = shared_scope_weight
        self.seed = seed
        self.num_workers = num_workers
        self.progress = progress
        self.train: Sequences | None = None
        self.val: Sequences | None = None

    trace_path = staticmethod(trace_file)

    def setup(self, stage: str | None = None) -> None:
        if self.train is None:
            self.train = featurize_trace(trace_file(self.data_dir, "train"), self.progress)
            self.val = featurize_trace(trace_file(self.data_dir, "val"), self.progress)

    def train_dataloader(self) -> DataLoader:
        assert self.train is not None
        spans, ids = cut_windows(self.train, stride=WINDOW // 2)
        weights = balanced_weights(self.train, ids, self.shared_scope_weight)
        gen = torch.Generator().manual_seed(self.seed)
        sampler = WeightedRandomSampler(torch.from_numpy(weights), num_samples=self.windows_per_epoch, replacement=True, generator=gen)
        return DataLoader(WindowDataset(self.train, spans, ids), batch_size=self.batch_size, sampler=sampler, collate_fn=collate, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        assert self.val is not None
        spans, ids = cut_windows(self.val, stride=WINDOW, scopes=("account",))
        return DataLoader(WindowDataset(self.val, spans, ids), batch_size=256, shuffle=False, collate_fn=collate, num_workers=self.num_workers)
