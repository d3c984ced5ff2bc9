"""OpenAI chat and text completion request/response shapes (and the speech stream's events), as the
official client sends and reads them.

`usage` is the generation result's own `Usage` (`contract.generation`), which has OpenAI's fields.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from contract.common import omitted_when_none
from contract.generation import ChatMessage, GenerationResult, Usage
from contract.jobs import RequestedTier, ServiceTier
from contract.webhooks import WebhookFields


class StreamOptions(BaseModel):
    include_usage: bool = False


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    text: str | None = None


class OpenAIMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None

    def to_chat(self) -> ChatMessage:
        if isinstance(self.content, list):
            if any(part.type != "text" for part in self.content):
                raise ValueError("only text content parts are supported")
            text = "".join(part.text or "" for part in self.content)
        else:
            text = self.content or ""
        return ChatMessage(role="system" if self.role == "developer" else self.role, content=text)


class SamplingFields(WebhookFields):
    """Fields common to both endpoints; unset ones fall back to speechq's defaults."""

    model_config = ConfigDict(
        extra="ignore", allow_inf_nan=False
    )  # the client sends fields we do not use (user, logit_bias, …)

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=4096)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    n: int = Field(1, ge=1, le=1, description="only one choice per request")
    stream: bool = False
    stream_options: StreamOptions | None = None
    service_tier: RequestedTier | None = None

    def sampling(self, max_tokens: int | None) -> dict[str, Any]:
        fields = {
            "model": self.model,
            "max_tokens": max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stop": self.stop,
            "seed": self.seed,
            "frequency_penalty": self.frequency_penalty,
            "presence_penalty": self.presence_penalty,
            "service_tier": self.service_tier,
            **self.webhook_fields(),
        }
        # OpenAI's semantics: no repetition penalty beyond the frequency and presence penalties sent.
        return {"repeat_penalty": 1.0} | {name: value for name, value in fields.items() if value is not None}


class ResponseFormat(BaseModel):
    """OpenAI's `response_format`: `{"type": "text"}`, `json_object` or `json_schema` (with its schema)."""

    model_config = ConfigDict(extra="allow")

    type: str


class ChatCompletionRequest(SamplingFields):
    messages: list[OpenAIMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=4096)
    response_format: ResponseFormat | None = Field(None, description='only {"type": "text"} is supported')

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, value: ResponseFormat | None) -> ResponseFormat | None:
        # Nothing constrains the sampler to a grammar, so a JSON reply could not be promised: refuse it
        # rather than answer free text to a client that will parse it.
        if value is not None and value.type != "text":
            raise ValueError(
                'only {"type": "text"} is supported; json_object and json_schema replies cannot be guaranteed'
            )
        return value


class CompletionRequestOpenAI(SamplingFields):
    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("exactly one prompt per request")
        return value


class ChatCompletionMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatCompletionChoice(BaseModel):
    index: int = 0
    message: ChatCompletionMessage
    finish_reason: str
    logprobs: None = None


class ChatCompletionResponse(BaseModel):
    """OpenAI's `chat.completion` object: a finished `chat` job."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: Usage
    service_tier: ServiceTier | None = omitted_when_none()  # the tier the job ran at

    @classmethod
    def of(
        cls, job_id: str, model: str, created: int, result: GenerationResult, tier: ServiceTier | None = None
    ) -> ChatCompletionResponse:
        message = ChatCompletionMessage(content=result.text)
        choice = ChatCompletionChoice(message=message, finish_reason=result.finish_reason)
        return cls(
            id=f"chatcmpl-{job_id}",
            created=created,
            model=model,
            choices=[choice],
            usage=result.usage,
            service_tier=tier,
        )


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: str
    logprobs: None = None


class CompletionResponse(BaseModel):
    """OpenAI's `text_completion` object: a finished `completion` job."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    service_tier: ServiceTier | None = omitted_when_none()

    @classmethod
    def of(
        cls, job_id: str, model: str, created: int, result: GenerationResult, tier: ServiceTier | None = None
    ) -> CompletionResponse:
        choice = CompletionChoice(text=result.text, finish_reason=result.finish_reason)
        return cls(
            id=f"cmpl-{job_id}", created=created, model=model, choices=[choice], usage=result.usage, service_tier=tier
        )


class ChatDelta(BaseModel):
    """What a chunk adds to the reply: the role once, in the first chunk, then text; nothing in the last."""

    role: Literal["assistant"] | None = omitted_when_none()
    content: str | None = omitted_when_none()


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """OpenAI's `chat.completion.chunk`, streamed as server-sent events: a delta per chunk, the
    `finish_reason` in the last, then (with `stream_options.include_usage`) one with `usage` and no choices."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = omitted_when_none()
    service_tier: ServiceTier | None = omitted_when_none()


class CompletionChunkChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: str | None = None
    logprobs: None = None


class CompletionChunk(BaseModel):
    """A streamed `text_completion`: OpenAI sends the same object as the whole answer, a piece of text per
    chunk, and (with `stream_options.include_usage`) a last one with `usage` and no choices."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChunkChoice]
    usage: Usage | None = omitted_when_none()


class SpeechUsage(BaseModel):
    input_tokens: int
    output_tokens: int
    total_tokens: int


class SpeechAudioDelta(BaseModel):
    """`speech.audio.delta` (`POST /v1/audio/speech` with `stream_format: sse`): the next piece of the audio."""

    type: Literal["speech.audio.delta"] = "speech.audio.delta"
    audio: str = Field(description="the bytes, base64-encoded")


class SpeechAudioDone(BaseModel):
    """`speech.audio.done`: the audio is whole."""

    type: Literal["speech.audio.done"] = "speech.audio.done"
    usage: SpeechUsage


def now() -> int:
    return int(time.time())
