"""The request event: pydantic models that mirror contract/event.schema.json.

Every package speaks this vocabulary. Validation errors name the offending field, and unknown
top-level fields are ignored (the contract says so), while unknown sampling parameters are
kept: gateways forward many OpenAI-style options that Moat does not read.

Parsing is strict, because whatever Moat cannot score it answers `allow` (fail open): an input
that slips past validation and then breaks a feature is a way past Moat. So

- nothing is coerced: `"ts": "1764500005"`, `"ts": true`, `"logprobs": "yes"` and
  `"logit_bias": {"1": "5"}` are errors. The one conversion is the contract's own: JSON Schema
  counts `5.0` as an integer, so an integral float is read as that integer;
- an optional field may be left out but not sent as `null` (the contract allows no nulls);
- floats must be finite, and every number is bounded where it is parsed. Out-of-range values
  are rejected, never clipped. Where the contract gives no bound, the bounds below are Moat's:
  far outside any real request, and tight enough that every feature stays finite;
- identifiers (every length-bounded string) must be valid Unicode, with no lone surrogates:
  they key the state stores and are echoed in the answer, both of which need UTF-8. Prompt
  text may hold anything; the featurizer reads it with replacement.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator
from pydantic_core import PydanticCustomError

# Bounds the contract leaves open (see the module docstring).
MAX_TS = 253_402_300_799.0  # 9999-12-31T23:59:59Z, the last second a datetime can show
MAX_OUTPUT_TOKENS = 10**7  # max_tokens: two orders above the largest context window sold today
MAX_LOGIT_BIAS = 1024  # logit_bias entries (OpenAI accepts 300)
SEED_RANGE = (-(2**63), 2**63 - 1)  # a signed 64-bit seed, as the OpenAI API takes it
# Characters of one prompt, message or stop string: four times the service's default body
# limit (1 MiB), so that it never rejects what the body limit lets through; it bounds direct
# (trace) callers.
MAX_TEXT_CHARS = 1 << 22
MAX_LABEL_CHARS = 256  # trace-only family and actor names
# The ground-truth fields of a trace file (Event.label, .family, .actor): what a caller drops to
# score a labelled trace as unlabelled traffic.
TRACE_LABEL_FIELDS = ("label", "family", "actor")

Role = Literal["system", "developer", "user", "assistant", "tool"]


def _integral(value: Any) -> Any:
    """JSON Schema's integers include integral floats (5.0); anything else goes to strict int."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _text(value: str) -> str:
    # Checked here, not as a max_length constraint: a constrained str must convert to UTF-8 and
    # so refuses lone surrogates, which a user's prompt may hold and the featurizer reads fine.
    if len(value) > MAX_TEXT_CHARS:
        raise PydanticCustomError("string_too_long", "String should have at most {max_length} characters", {"max_length": MAX_TEXT_CHARS})
    return value


def _stop_kind(value: Any) -> str:
    return "text" if isinstance(value, str) else "list"


# An integer field is Annotated[int, Field(bounds), INTEGRAL], in that order: bounds placed
# after the validator are still checked, but reach the JSON schema (/docs.json) as unknown
# keywords instead of minimum and maximum.
INTEGRAL = BeforeValidator(_integral)
Text = Annotated[str, AfterValidator(_text)]
# One stop string, or up to 16 of them; an error names the form it was read as.
Stop = Annotated[Annotated[Text, Tag("text")] | Annotated[list[Text], Field(max_length=16), Tag("list")], Discriminator(_stop_kind)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        # Runs only on fields the input carries: a left-out field keeps its default.
        if value is None:
            raise PydanticCustomError("not_null", "may be left out, but not null")
        return value


class Message(_Strict):
    model_config = ConfigDict(extra="ignore")

    role: Role
    content: Text


class Params(_Strict):
    model_config = ConfigDict(extra="allow")

    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: Annotated[int, Field(ge=1, le=MAX_OUTPUT_TOKENS), INTEGRAL] | None = None
    n: Annotated[int, Field(ge=1, le=128), INTEGRAL] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20), INTEGRAL] | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = Field(default=None, max_length=MAX_LOGIT_BIAS)
    seed: Annotated[int, Field(ge=SEED_RANGE[0], le=SEED_RANGE[1]), INTEGRAL] | None = None
    stream: bool | None = None
    stop: Stop | None = None


class Event(_Strict):
    # The JSON schema (published in /docs.json) states the text requirement as the contract does.
    model_config = ConfigDict(extra="ignore", json_schema_extra={"anyOf": [{"required": ["messages"]}, {"required": ["prompt"]}]})

    request_id: str = Field(min_length=1, max_length=128)
    ts: float = Field(ge=0, le=MAX_TS)
    account_id: str = Field(min_length=1, max_length=256)
    api_key_id: str | None = Field(default=None, max_length=256)
    client_ip: str | None = Field(default=None, max_length=64)
    user_agent: str | None = Field(default=None, max_length=1024)
    endpoint: str = Field(default="/v1/chat/completions", max_length=256)
    model: str | None = Field(default=None, max_length=256)
    messages: list[Message] | None = Field(default=None, max_length=1024)
    prompt: Text | None = None
    params: Params = Field(default_factory=Params)
    # Ground truth, present only in trace files; never read by featurisation.
    label: Annotated[int, Field(ge=0, le=1), INTEGRAL] | None = None
    family: str | None = Field(default=None, max_length=MAX_LABEL_CHARS)
    actor: str | None = Field(default=None, max_length=MAX_LABEL_CHARS)

    @model_validator(mode="after")
    def _needs_text(self) -> "Event":
        if self.messages is None and self.prompt is None:
            raise ValueError("one of 'messages' or 'prompt' is required")
        return self

