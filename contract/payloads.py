"""Validated job requests: the API checks them on the way in, the worker reads them back the same way."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from contract.catalog import ModelRole, UnknownModel, registry
from media.speech import (
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
    OPENAI_TTS_MODELS,
    OPENAI_VOICES,
    AudioFormat,
    output_sample_rate,
    speakable,
)

MODEL_NOT_FOUND = "model_not_found"
MAX_STOP_CHARS = 256  # each stop sequence; the text stream holds this much back, so it stays small


def registered(name: str | None, role: ModelRole) -> str | None:
    """`name` if the registry serves it for `role`; else a validation error the API answers with a 404.

    The message is the same for every unknown name, never echoing it: a client learns nothing about
    the worker's files from it.
    """
    if name is not None:
        try:
            registry().lookup(name, role)
        except UnknownModel:
            raise PydanticCustomError(
                MODEL_NOT_FOUND,
                "no {role} model of that name is served here; GET /v1/models lists them",
                {"role": role.value},
            ) from None
    return name


class GenerationParams(BaseModel):
    """Sampling knobs shared by every generation request; names and defaults are the seed API's."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int = Field(512, ge=1, le=4096)
    # The original API's bounds: llama.cpp samples sensibly across them (top-p 0 keeps the top token).
    temperature: float = Field(0.7, ge=0.0)
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
    min_p: float = Field(0.05, ge=0.0)
    typical_p: float = Field(1.0, ge=0.0)
    model: str | None = Field(None, min_length=1, max_length=128)

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


class GenerateRequest(GenerationParams):
    """`generate`: one prompt, answered in the model's chat turn format (an empty one too, as the
    original API allowed)."""

    prompt: str = Field(max_length=200_000)


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

    model: str | None = Field(None, min_length=1, max_length=128)
    language: str | None = Field(None, min_length=2, max_length=8, pattern=r"^[A-Za-z-]+$")
    prompt: str | None = Field(None, max_length=2_000)
    response_format: TranscriptFormat = "json"
    temperature: float = Field(0.0, ge=0.0, le=1.0)
    timestamp_granularities: list[Literal["segment", "word"]] = Field(default_factory=lambda: ["segment"])  # type: ignore[arg-type]
    task: Literal["transcribe", "translate"] = "transcribe"
    vad_filter: bool = False
    filename: str = Field("audio", max_length=255)

    @field_validator("model", mode="before")
    @classmethod
    def _known_model(cls, value: object) -> object:
        return registered(value, ModelRole.stt) if isinstance(value, str) else value

    @property
    def words(self) -> bool:
        return "word" in self.timestamp_granularities


MAX_SPEECH_CHARS = 4_096


class ReferenceAudio(BaseModel):
    """A voice sample for OpenAudio's in-context cloning: the audio (base64) and what it says (empty when
    that is not known, as for the Gemma 3 Speech API's bare base64 references; fish-speech accepts it)."""

    model_config = ConfigDict(extra="forbid")

    audio: str = Field(min_length=1, description="the sample, base64-encoded (wav, mp3, flac)")
    text: str = Field(max_length=2_000)

    @field_validator("audio")
    @classmethod
    def _base64(cls, value: str) -> str:
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("the audio is not valid base64") from None
        return value


class SynthesizeRequest(BaseModel):
    """`synthesize`: text in, audio out. Field names are the seed API's (`text`, alias OpenAI's `input`)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    text: str = Field(min_length=1, max_length=MAX_SPEECH_CHARS, validation_alias=AliasChoices("text", "input"))
    model: str | None = Field(None, min_length=1, max_length=128)
    voice: str | None = Field(None, min_length=1, max_length=128)
    response_format: AudioFormat = Field("wav", validation_alias=AliasChoices("response_format", "format"))
    sample_rate: int | None = Field(None, ge=MIN_SAMPLE_RATE, le=MAX_SAMPLE_RATE)
    speed: float = Field(1.0, ge=0.25, le=4.0)
    normalize: bool = True
    # OpenAudio (fish-speech) only; local engines have no use for them.
    reference_id: str | None = Field(None, min_length=1, max_length=255)
    references: list[ReferenceAudio] = Field(default_factory=list, max_length=8)
    top_p: float | None = Field(None, ge=0.1, le=1.0)
    temperature: float | None = Field(None, ge=0.1, le=1.0)
    repetition_penalty: float | None = Field(None, ge=0.9, le=2.0)
    chunk_length: int | None = Field(None, ge=100, le=300)
    max_new_tokens: int | None = Field(None, ge=1, le=4_096)
    seed: int | None = Field(None, ge=0, le=2**32 - 1)

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the text is blank")
        if not speakable(value):
            raise ValueError("the text has nothing to speak: no letter or digit in any script (only symbols or emoji)")
        return value

    @field_validator("model", mode="before")
    @classmethod
    def _known_model(cls, value: object) -> object:
        return registered(value, ModelRole.tts) if isinstance(value, str) else value


class InvalidField(ValueError):
    """A request that is well-formed but asks for something the chosen engine cannot do."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


def resolve_synthesis(
    request: SynthesizeRequest, default_model: str, remote_defaults: dict[str, Any] | None = None
) -> SynthesizeRequest:
    """Fill in the engine, voice and output rate, so the worker runs exactly what was accepted.

    OpenAI model names are served by `default_model`; an OpenAI voice name by the engine's voice of that
    name, else its default voice; OpenAudio takes any voice as a reference id on its server, and
    `remote_defaults` (OPENAUDIO_DEFAULT_FORMAT / _SAMPLE_RATE) fill the fields a request left out.
    """
    model = request.model if request.model and request.model not in OPENAI_TTS_MODELS else default_model
    entry = registry().get(model)
    if entry is None or entry.role != ModelRole.tts:
        raise InvalidField("model", f"TTS_MODEL {model!r} is not a text-to-speech model")
    if entry.any_voice and remote_defaults:
        unset = {k: v for k, v in remote_defaults.items() if k not in request.model_fields_set and v is not None}
        request = request.model_copy(update=unset)
    voice = request.voice
    reference_id = request.reference_id
    if entry.any_voice:
        if reference_id is None and voice is not None and voice not in OPENAI_VOICES and voice not in entry.voices:
            reference_id = voice
        voice = reference_id or entry.voices[0]
    else:
        if request.references:
            raise InvalidField("references", f"reference audio needs openaudio-s1-mini; {model} has fixed voices")
        if reference_id is not None:
            if reference_id not in entry.voices:
                raise InvalidField(
                    "reference_id", f"{model} has no voice {reference_id!r}; voices: {', '.join(entry.voices)}"
                )
            voice = voice or reference_id
        if voice is None or (voice in OPENAI_VOICES and voice not in entry.voices):
            voice = entry.voices[0]
        if voice not in entry.voices:
            raise InvalidField("voice", f"unknown voice {voice!r} for {model}; voices: {', '.join(entry.voices)}")
    assert entry.sample_rate is not None
    try:
        rate = output_sample_rate(request.response_format, request.sample_rate, entry.sample_rate)
    except ValueError as exc:
        raise InvalidField("sample_rate", str(exc)) from None
    return request.model_copy(
        update={"model": model, "voice": voice, "reference_id": reference_id, "sample_rate": rate}
    )


class DialogueRequest(BaseModel):
    """`dialogue`: the audio travels beside the job; these steer its three stages.

    `synthesis_config` holds a resolved `SynthesizeRequest` without its text (the API fills in the
    engine, voice and rate), so every sentence is spoken the same way.
    """

    model_config = ConfigDict(extra="forbid")

    instructions: str | None = Field(None, max_length=8_000)
    generation_config: GenerationParams = Field(default_factory=GenerationParams)
    synthesis_config: dict[str, Any] = Field(default_factory=dict)
    conversation_id: str | None = Field(None, pattern=r"^[A-Za-z0-9._:\-]{1,128}$")
    language: str | None = Field(None, min_length=2, max_length=8, pattern=r"^[A-Za-z-]+$")
    filename: str = Field("audio", max_length=255)

    def speech(self, text: str) -> SynthesizeRequest:
        """The synthesis of one sentence, as raw PCM at the dialogue's rate (the dialogue encodes it)."""
        return SynthesizeRequest.model_validate({**self.synthesis_config, "text": text, "response_format": "pcm"})
