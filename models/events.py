"""The request event: pydantic models that mirror contract/event.schema.json.

Every package speaks this vocabulary. Validation errors name the offending field, and unknown
top-level fields are ignored (the contract says so), while unknown sampling parameters are
kept: gateways forward many OpenAI-style options that Moat does not read.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Role = Literal["system", "developer", "user", "assistant", "tool"]


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Role
    content: str


class Params(BaseModel):
    model_config = ConfigDict(extra="allow")

    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    n: int | None = Field(default=None, ge=1, le=128)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    logit_bias: dict[str, float] | None = None
    seed: int | None = None
    stream: bool | None = None
    stop: str | list[str] | None = None

    @model_validator(mode="after")
    def _check_ranges(self) -> "Params":
        if self.logit_bias is not None:
            for token, bias in self.logit_bias.items():
                if not -100 <= bias <= 100:
                    raise ValueError(f"logit_bias[{token!r}] must be within [-100, 100]")
        if isinstance(self.stop, list) and len(self.stop) > 16:
            raise ValueError("stop may hold at most 16 strings")
        return self


class Event(BaseModel):
    model_config = ConfigDict(extra="ignore")

    request_id: str = Field(min_length=1, max_length=128)
    ts: float
    account_id: str = Field(min_length=1, max_length=256)
    api_key_id: str | None = Field(default=None, max_length=256)
    client_ip: str | None = Field(default=None, max_length=64)
    user_agent: str | None = Field(default=None, max_length=1024)
    endpoint: str = Field(default="/v1/chat/completions", max_length=256)
    model: str | None = Field(default=None, max_length=256)
    messages: list[Message] | None = Field(default=None, max_length=1024)
    prompt: str | None = None
    params: Params = Field(default_factory=Params)
    # Ground truth, present only in trace files; never read by featurisation.
    label: Literal[0, 1] | None = None
    family: str | None = None
    actor: str | None = None

    @model_validator(mode="after")
    def _needs_text(self) -> "Event":
        if self.messages is None and self.prompt is None:
            raise ValueError("one of 'messages' or 'prompt' is required")
        return self
