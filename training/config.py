"""Training configuration: pydantic settings with MOAT_TRAIN_* environment overrides, and an
optional --config file (JSON or TOML) whose values override the defaults."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class TrainConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MOAT_TRAIN_", extra="forbid")

    hidden: int = 32
    layers: int = 2
    heads: int = 4
    ffn: int = 64
    dropout: float = 0.1
    lr: float = 2e-3
    weight_decay: float = 0.01
    batch_size: int = 64
    max_epochs: int = 12
    windows_per_epoch: int = 6000
    patience: int = 3
    seed: int = 0
    # Scope windows other than the account are down-weighted: they mix parties.
    shared_scope_weight: float = 0.5
    # Per window, each parameter-value feature is shifted with this probability by up to
    # +-jitter_scale (training/augment.py): against exact-value shortcuts.
    jitter_p: float = 0.3
    jitter_scale: float = 0.3
    # Own risk before a dependent scope's risk counts (serving's MOAT_CORROBORATION default).
    corroboration: float = 0.5
    # Action targets on validation benign accounts (ever blocked / ever not allowed).
    target_block_fpr: float = 0.001
    target_action_fpr: float = 0.01
    target_perturb_fpr: float = 0.005
    devices: int | str = "auto"
    accelerator: str = "auto"
    strategy: str = "auto"
    num_workers: int = 0
    experiment: str = "moat"

    @classmethod
    def load(cls, path: str | Path | None, quick: bool = False) -> "TrainConfig":
        values: dict = {}
        if path:
            p = Path(path)
            text = p.read_text(encoding="utf-8")
            values = tomllib.loads(text) if p.suffix == ".toml" else json.loads(text)
        if quick:
            values = {"max_epochs": 2, "windows_per_epoch": 600, "patience": 1, **values}
        return cls(**values)
