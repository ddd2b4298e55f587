"""Serving configuration: pydantic settings, overridable with MOAT_* environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from moat.models.bundle import DEFAULT_BUNDLE


class ServingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MOAT_", extra="ignore")

    # A bundle directory, `models:/moat-risk@champion` (MLflow registry) or `bentoml:TAG`.
    model: str = str(DEFAULT_BUNDLE)
    mode: Literal["enforce", "shadow"] = "enforce"
    state: str = "memory"  # or redis://host:port/db
    max_scopes: int = Field(default=1_000_000, ge=1)
    scope_ttl_s: float = Field(default=86400.0, gt=0)
    cooldown_s: float = Field(default=900.0, ge=0, description="hysteresis: how long perturb/block is held")
    corroboration: float | None = Field(default=None, ge=0, le=1, description="own risk needed before a dependent scope (address block, partial key) may act; default: the bundle's")
    throttle_threshold: float | None = Field(default=None, ge=0, le=1.0001)
    perturb_threshold: float | None = Field(default=None, ge=0, le=1.0001)
    block_threshold: float | None = Field(default=None, ge=0, le=1.0001)
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    max_batch: int = Field(default=1000, ge=1)
    onnx_threads: int = Field(default=1, ge=1)
    redis_timeout_s: float = Field(default=0.05, gt=0)
    redis_retry_s: float = Field(default=5.0, ge=0, description="after a Redis fault, use local state this long before retrying")
