"""The `generate`, `chat` and `completion` jobs: their requests, their result and their `token` event."""

from __future__ import annotations

from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from contract.catalog import ModelRole
from contract.common import registered
from contract.jobs import RequestedTier
from contract.webhooks import WebhookFields

MAX_STOP_CHARS = 256  # each stop sequence; the text stream holds this much back, so it stays small


class GenerationParams(BaseModel):
    """Sampling knobs shared by every generation request; names and defaults are the original API's."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    max_tokens: int = Field(512, ge=1, le=4096)
    # The original API's bounds: llama.cpp samples sensibly across them (top-p 0 keeps the top token).
    temperature: float = Field(0.7, ge=0.0, le=100.0)
    top_p: float = Field(0.95, ge=0.0, le=1.0)
    top_k: int = Field(40, ge=0, le=1_000_000)
    repeat_penalty: float = Field(1.1, gt=0.0, le=10.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    """OpenAI's: subtracted from a token's logit once per time it appeared in the last 64 generated."""
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    """OpenAI's: subtracted from a token's logit if it appeared in the last 64 generated."""
    stop: list[Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]] = Field(
        default_factory=list, max_length=16
    )
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    min_p: float = Field(0.05, ge=0.0, le=100.0)
    typical_p: float = Field(1.0, ge=0.0, le=100.0)
    model: str | None = Field(None, min_length=1, max_length=128)
    service_tier: RequestedTier | None = None
    """OpenAI's: how soon the job starts when workers are busy (`tasks/scheduler.py`); unset: the route's default."""

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @field_validator("model", mode="before")
    @classmethod
    def _known_model(cls, value: object) -> object:
        return registered(value, ModelRole.llm) if isinstance(value, str) else value


P = TypeVar("P", bound=GenerationParams)


def with_defaults(params: P, defaults: dict[str, object]) -> P:
    """The fields a client left out take the operator's defaults; what it sent stays as sent."""
    unset = {name: value for name, value in defaults.items() if name not in params.model_fields_set}
    return params.model_copy(update=unset)


class GenerateRequest(GenerationParams, WebhookFields):
    """`generate`: one prompt, answered in the model's chat turn format (an empty one too, as the
    original API allowed)."""

    prompt: str = Field(max_length=200_000)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=200_000)


class ChatRequest(GenerationParams, WebhookFields):
    """`chat`: a conversation; the reply continues it."""

    messages: list[ChatMessage] = Field(min_length=1, max_length=256)


class CompletionRequest(GenerationParams, WebhookFields):
    """`completion`: raw text continuation, no template."""

    prompt: str = Field(min_length=1, max_length=200_000)


class Token(BaseModel):
    """`token`: a text delta (a few tokens' worth when the worker gathers them)."""

    text: str


class Usage(BaseModel):
    """Tokens read and written, in OpenAI's names (its `usage` object is this one)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


class GenerationTimings(BaseModel):
    seconds: float
    first_token_seconds: float | None
    tokens_per_second: float | None


class GenerationResult(BaseModel):
    """The result of a `generate`, `chat` or `completion` job."""

    model_config = ConfigDict(extra="forbid")

    text: str
    model: str
    finish_reason: str  # stop, length (llama.cpp's names, which are OpenAI's)
    usage: Usage
    timings: GenerationTimings
