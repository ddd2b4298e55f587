"""Settings of the response actions: pydantic settings, overridable with MOAT_PERTURB_* and
MOAT_THROTTLE_* environment variables. The defaults are the ones `python -m
moat.evals.perturbation` measures: they put the logit-recovery attack's error above the
spread of the logits themselves while an honest user's top-1 token is unchanged."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from moat.serving.actions.watermark import WatermarkSettings

# One per process, not one per settings object: a gateway that builds settings per request
# must still give a retried request the same noise.
_PROCESS_SECRET = secrets.token_hex(32)


class PerturbSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MOAT_PERTURB_", extra="ignore")

    # Request side.
    max_top_logprobs: int = Field(default=1, ge=0, le=20, description="cap on top_logprobs (chat) and on the legacy completions `logprobs` integer")
    logit_bias: Literal["drop", "clip"] = Field(
        default="drop",
        description="drop: remove logit_bias (defeats the bias-and-read attack); clip: keep it within ±logit_bias_clip, "
        "which still lets an attacker recover tokens within that margin of the top one by flipping the argmax",
    )
    logit_bias_clip: float = Field(default=5.0, ge=0, le=100, description="largest |bias| kept when logit_bias=clip")
    temperature_floor: float = Field(default=0.7, ge=0, le=2, description="a lower temperature is raised to this; greedy decoding makes argmax probes noiseless")
    top_p_floor: float = Field(default=0.9, ge=0, le=1, description="a lower top_p is raised to this, and top_k and min_p (extensions some servers read) dropped: each can force greedy decoding too")
    max_n: int = Field(default=1, ge=1, description="cap on n (completions per request)")
    max_tokens: int | None = Field(default=2048, ge=1, description="cap on max_tokens / max_completion_tokens, set when absent; None: no cap")

    # Response side.
    round_step: float = Field(default=0.1, ge=0, le=5, description="logprobs are rounded to a multiple of this many nats; 0: no rounding")
    noise_nats: float = Field(default=0.3, ge=0, le=10, description="standard deviation of the Gaussian noise added to each logprob, in nats; 0: no noise")
    secret: SecretStr = Field(
        default=SecretStr(_PROCESS_SECRET),
        description="key of the noise: share it across replicas so a retried request gets the same noise wherever it lands; default: random, one per process",
    )


class ThrottleSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MOAT_THROTTLE_", extra="ignore")

    retry_after_s: int = Field(default=30, ge=1, le=86400, description="Retry-After (whole seconds) on a throttled request")


@dataclass(frozen=True)
class ActionSettings:
    """The groups, read from the environment when not given; tests pass their own."""

    perturb: PerturbSettings = field(default_factory=PerturbSettings)
    throttle: ThrottleSettings = field(default_factory=ThrottleSettings)
    watermark: WatermarkSettings = field(default_factory=WatermarkSettings)  # off by default
