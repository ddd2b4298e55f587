"""Training configuration: pydantic settings with MOAT_TRAIN_* environment overrides, and an
optional --config file (JSON or TOML) whose values override the defaults.

The network's shape is the `net` section, validated as `NetConfig` itself (its one definition):
`{"net": {"hidden": 64}}` in a file, MOAT_TRAIN_NET__HIDDEN=64 in the environment."""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

from pydantic import ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from moat.models.network import NetConfig
from moat.training.calibrate import CalibrationTargets

ENV_PREFIX = "MOAT_TRAIN_"
# The settings of `net` that training chooses (the rest are the feature spec's input sizes).
NET_CHOICES = tuple(f.name for f in fields(NetConfig) if f.name not in NetConfig.INPUT_FIELDS)


class ConfigError(ValueError):
    """A training configuration that cannot be used; the message is one line naming the field."""


class TrainConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid")

    net: NetConfig = NetConfig()
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
    # Share of training windows whose hashed words are all dropped (training/augment.py).
    token_drop: float = 0.3
    # Share of attack windows given a benign window's decoding and output choices (temperature,
    # top_p, max_tokens, seed, stop, stream, logprobs; augment.DECODING_FEATURES) on every
    # request, unless the window sent a logit_bias (training/augment.py): a free habit must not
    # clear an attacker. Benign
    # windows keep their own habits, so the simulator's real difference (scripts decode cold)
    # is still there to learn, only no longer enough on its own.
    decoding_borrow_p: float = 0.3
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

    @model_validator(mode="before")
    @classmethod
    def _net_choices_live_under_net(cls, values: Any) -> Any:
        # These were top-level fields before `net` held them: say where they went, rather than
        # reject a file's key as merely unknown or silently ignore an old environment variable.
        for name in NET_CHOICES:
            if (isinstance(values, dict) and name in values) or f"{ENV_PREFIX}{name.upper()}" in os.environ:
                raise ValueError(f"{name} is now net.{name} (a file's \"net\" section, or {ENV_PREFIX}NET__{name.upper()})")
        return values

    @field_validator("net")
    @classmethod
    def _net_inputs_follow_the_feature_spec(cls, net: NetConfig) -> NetConfig:
        spec = NetConfig()
        for name in NetConfig.INPUT_FIELDS:
            if getattr(net, name) != getattr(spec, name):
                raise ValueError(f"{name} is the feature spec's ({getattr(spec, name)}), not a training choice")
        return net

    def calibration_targets(self) -> CalibrationTargets:
        return CalibrationTargets(
            corroboration=self.corroboration, target_block_fpr=self.target_block_fpr,
            target_perturb_fpr=self.target_perturb_fpr, target_action_fpr=self.target_action_fpr,
        )

    @classmethod
    def load(cls, path: str | Path | None, quick: bool = False) -> "TrainConfig":
        """Defaults, then MOAT_TRAIN_* variables, then the file at `path`; ConfigError if bad."""
        values: dict = {}
        if path:
            p = Path(path)
            try:
                text = p.read_text(encoding="utf-8")
                values = tomllib.loads(text) if p.suffix == ".toml" else json.loads(text)
            except (OSError, ValueError) as exc:  # JSON and TOML syntax errors are ValueErrors
                raise ConfigError(f"{p}: {exc}") from exc
            if not isinstance(values, dict):
                raise ConfigError(f"{p}: expected an object of TrainConfig fields")
        if quick:
            values = {"max_epochs": 2, "windows_per_epoch": 600, "patience": 1, **values}
        try:
            return cls(**values)
        except ValidationError as exc:
            raise ConfigError(one_line(exc)) from exc


def one_line(exc: ValidationError) -> str:
    """Each error as `field: message`, without pydantic's "Value error, " and help links."""

    def message(e: Any) -> str:
        return str(e["ctx"]["error"]) if e["type"] == "value_error" else e["msg"]

    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {message(e)}" if e["loc"] else message(e) for e in exc.errors())
