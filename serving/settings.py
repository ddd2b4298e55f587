"""Serving configuration: pydantic settings, overridable with MOAT_* environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
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
    # The GPU tier: "cuda" runs the network on onnxruntime-gpu's CUDA provider (batches from
    # /score/batch and replay are large there); "auto" uses it when installed. CPU stays the default.
    onnx_provider: Literal["cpu", "cuda", "auto"] = "cpu"
    replay_chunk: int = Field(default=128, ge=1, le=65536, description="events per network batch in moat replay and evaluate (larger on a GPU)")
    redis_timeout_s: float = Field(default=0.05, gt=0)
    redis_retry_s: float = Field(default=5.0, ge=0, description="after a Redis fault, use local state this long before retrying")
    redis_cluster: bool = Field(default=False, description="MOAT_STATE names a node of a Redis Cluster (hash-tagged keys, one call per node touched)")
    # Time (docs/operations.md, "Time"): "server" trusts the caller's ts only within
    # max_clock_skew_s of this server's clock and uses the server's time otherwise; "caller"
    # trusts ts as given, for replaying recorded traces (`moat replay` uses it).
    time_source: Literal["server", "caller"] = "server"
    max_clock_skew_s: float = Field(default=300.0, ge=0)
    campaign_max_templates: int = Field(default=200_000, ge=1, description="prompt templates the in-process campaign sketch keeps (LRU)")
    campaign_max_accounts: int = Field(default=2000, ge=1, description="distinct accounts counted per template")
    # Keys Redis key names and stored prompt fingerprints (HMAC). Unset: generated once and kept
    # in Redis, shared by all replicas; set it to keep the secret out of the store.
    state_secret: SecretStr | None = Field(default=None, min_length=16)
