"""Validated job requests: the API checks them on the way in, the worker reads them back the same way."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tasks.catalog import CATALOG, is_known_llm, is_known_stt


class GenerationParams(BaseModel):
    """Sampling knobs shared by every generation request; names and defaults are the seed API's."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int = Field(512, ge=1, le=4096)
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    top_k: int = Field(40, ge=0)
    repeat_penalty: float = Field(1.1, gt=0.0, le=10.0)
    stop: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list, max_length=16)
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    min_p: float = Field(0.05, ge=0.0, le=1.0)
    typical_p: float = Field(1.0, gt=0.0, le=1.0)
    model: str | None = Field(None, min_length=1, max_length=512)

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str | None) -> str | None:
        if value is not None and not is_known_llm(value):
            known = ", ".join(name for name, entry in CATALOG.items() if entry.role == "llm")
            raise ValueError(f"unknown model {value!r}; use one of {known}, a .gguf path or owner/repo[:file]")
        return value


class GenerateRequest(GenerationParams):
    """`generate`: one prompt, answered in the model's chat turn format."""

    prompt: str = Field(min_length=1, max_length=200_000)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=200_000)


class ChatRequest(GenerationParams):
    """`chat`: a conversation; the reply continues it."""

    messages: list[ChatMessage] = Field(min_length=1, max_length=256)


class CompletionRequest(GenerationParams):
    """`completion`: raw text continuation, no template."""

    prompt: str = Field(min_length=1, max_length=200_000)


TranscriptFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]


class TranscribeRequest(BaseModel):
    """`transcribe`: the audio travels beside the job (its input key); these are the options."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, min_length=1, max_length=512)
    language: str | None = Field(None, min_length=2, max_length=8, pattern=r"^[A-Za-z-]+$")
    prompt: str | None = Field(None, max_length=2_000)
    response_format: TranscriptFormat = "json"
    temperature: float = Field(0.0, ge=0.0, le=1.0)
    timestamp_granularities: list[Literal["segment", "word"]] = Field(default_factory=lambda: ["segment"])  # type: ignore[arg-type]
    task: Literal["transcribe", "translate"] = "transcribe"
    vad_filter: bool = False
    filename: str = Field("audio", max_length=255)

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str | None) -> str | None:
        if value is not None and not is_known_stt(value):
            known = ", ".join(name for name, entry in CATALOG.items() if entry.role == "stt")
            raise ValueError(f"unknown model {value!r}; use whisper-1, {known}, or a model folder path")
        return value

    @property
    def words(self) -> bool:
        return "word" in self.timestamp_granularities
