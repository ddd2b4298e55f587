"""LightningModule around RiskNet: loss at every position with padding masked; a per-epoch
validation AUROC at the level of the account (the unit an operator acts on).

That per-epoch metric is `val_window_auroc`: each validation account's highest raw logit over
its own account windows, cut every WINDOW requests. It is cheap enough for every epoch and
picks the checkpoint. It is not the run's "account AUROC", which the trainer measures once at
the end as serving scores: a window ending at every request, calibrated, and with the key and
address-block scopes combined (training/calibrate.py). The two usually differ.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytorch_lightning as pl
import torch
from torch.nn import functional as F

from moat.models.metrics import auroc, tpr_at_fpr
from moat.models.network import NetConfig, RiskNet
from moat.training.augment import borrow_benign_decoding, drop_token_bags, jitter_values

# The metric that early stopping and checkpointing follow (see the module's docstring).
MONITOR = "val_window_auroc"


class RiskModule(pl.LightningModule):
    def __init__(
        self, net: dict, lr: float, weight_decay: float, val_seq_labels: list[int] | None = None, jitter_p: float = 0.0, jitter_scale: float = 0.0,
        calibration: dict | None = None, token_drop: float = 0.0, decoding_borrow_p: float = 0.0,
    ) -> None:
        super().__init__()
        # `calibration` (CalibrationTargets as a dict) is unused in training: it is saved with
        # the other hyperparameters so that a checkpoint says what its run calibrated for.
        self.save_hyperparameters(ignore=["val_seq_labels"])
        self.net = RiskNet(NetConfig(**net))
        self.token_drop = token_drop
        self.decoding_borrow_p = decoding_borrow_p
        self.lr, self.weight_decay = lr, weight_decay
        self.jitter_p, self.jitter_scale = jitter_p, jitter_scale
        self.val_seq_labels = val_seq_labels or []
        self._val_max: dict[int, float] = defaultdict(lambda: -1e9)

    def forward(self, feats: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.net(feats, tokens, mask)

    def _loss(self, batch: dict[str, torch.Tensor], augment: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        feats = batch["feats"]
        if augment:
            # Borrow first: the jitter then shifts a borrowed temperature as it would a sent one.
            feats = borrow_benign_decoding(feats, batch["labels"], batch["mask"], self.decoding_borrow_p)
            feats = jitter_values(feats, self.jitter_p, self.jitter_scale)
        tokens = drop_token_bags(batch["tokens"], self.token_drop) if augment else batch["tokens"]
        logits = self(feats, tokens, batch["mask"])
        per_pos = F.binary_cross_entropy_with_logits(logits, batch["labels"], reduction="none")
        loss = (per_pos * batch["mask"]).sum() / batch["mask"].sum().clamp(min=1)
        return loss, logits

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, _ = self._loss(batch, augment=True)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=batch["feats"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, logits = self._loss(batch)
        self.log("val_loss", loss, on_step=False, on_epoch=True, batch_size=batch["feats"].shape[0])
        masked = logits.masked_fill(batch["mask"] == 0, -1e9).max(dim=1).values
        for seq, m in zip(batch["seq"].tolist(), masked.tolist()):
            self._val_max[seq] = max(self._val_max[seq], m)

    def on_validation_epoch_end(self) -> None:
        if self._val_max and self.val_seq_labels:
            seqs = sorted(self._val_max)
            y = np.array([self.val_seq_labels[s] for s in seqs])
            score = np.array([self._val_max[s] for s in seqs])
            if 0 < y.sum() < len(y):
                self.log(MONITOR, auroc(y, score), prog_bar=True)
                self.log("val_window_tpr_at_1pct_fpr", tpr_at_fpr(y, score, 0.01))
        self._val_max.clear()

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        return opt
