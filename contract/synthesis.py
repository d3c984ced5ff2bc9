"""The `synthesize` job: its request (and how the API resolves it to one engine, voice and rate), its
result, and its `audio_chunk` event."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from contract.catalog import ModelRole, registry
from contract.common import registered
from contract.jobs import RequestedTier
from contract.speech import (
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
    OPENAI_TTS_MODELS,
    OPENAI_VOICES,
    AudioFormat,
    output_sample_rate,
    speakable,
)
from contract.webhooks import WebhookFields

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


class SpeechOptions(BaseModel):
    """How text is spoken: all of a `synthesize` request but its text. A dialogue holds them (resolved by
    the API to one engine, voice and rate) to speak each sentence of its answer the same way."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)

    model: str | None = Field(None, min_length=1, max_length=128)
    voice: str | None = Field(None, min_length=1, max_length=128)
    response_format: AudioFormat = Field("wav", validation_alias=AliasChoices("response_format", "format"))
    sample_rate: int | None = Field(None, ge=MIN_SAMPLE_RATE, le=MAX_SAMPLE_RATE)
    speed: float = Field(1.0, ge=0.25, le=4.0)
    normalize: bool = True
    service_tier: RequestedTier | None = None
    # OpenAudio (fish-speech) only; local engines have no use for them.
    reference_id: str | None = Field(None, min_length=1, max_length=255)
    references: list[ReferenceAudio] = Field(default_factory=list, max_length=8)
    top_p: float | None = Field(None, ge=0.1, le=1.0)
    temperature: float | None = Field(None, ge=0.1, le=1.0)
    repetition_penalty: float | None = Field(None, ge=0.9, le=2.0)
    chunk_length: int | None = Field(None, ge=100, le=300)
    max_new_tokens: int | None = Field(None, ge=1, le=4_096)
    seed: int | None = Field(None, ge=0, le=2**32 - 1)

    @field_validator("model", mode="before")
    @classmethod
    def _known_model(cls, value: object) -> object:
        return registered(value, ModelRole.tts) if isinstance(value, str) else value


class SynthesizeRequest(SpeechOptions, WebhookFields):
    """`synthesize`: text in, audio out. Field names are the seed API's (`text`, alias OpenAI's `input`)."""

    text: str = Field(min_length=1, max_length=MAX_SPEECH_CHARS, validation_alias=AliasChoices("text", "input"))

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the text is blank")
        if not speakable(value):
            raise ValueError("the text has nothing to speak: no letter or digit in any script (only symbols or emoji)")
        return value

    @classmethod
    def of(cls, options: SpeechOptions, text: str, **changes: Any) -> SynthesizeRequest:
        """`options` speaking `text` (and any of their fields changed)."""
        return cls.model_validate({**options.model_dump(exclude_unset=True), **changes, "text": text})


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


class AudioChunk(BaseModel):
    """`audio_chunk`: the next piece of the encoded audio (one sentence's, or the encoder's tail), in order;
    a synthesis and a dialogue send the same."""

    index: int
    audio: str = Field(description="the bytes, base64-encoded")
    format: AudioFormat
    sample_rate: int
    end: float = Field(description="seconds of audio sent so far, this chunk included")
    text: str | None = Field(description="the sentence it speaks; none for the encoder's tail")

    @classmethod
    def of(cls, index: int, data: bytes, fmt: str, sample_rate: int, end: float, text: str | None) -> AudioChunk:
        return cls(
            index=index,
            audio=base64.b64encode(data).decode(),
            format=fmt,
            sample_rate=sample_rate,
            end=round(end, 3),
            text=text,
        )

    def decoded(self) -> bytes:
        return base64.b64decode(self.audio)


class SynthesisTimings(BaseModel):
    seconds: float
    first_chunk_seconds: float | None
    real_time_factor: float


class SynthesisResult(BaseModel):
    """The result of a `synthesize` job; the audio itself is at `GET /v1/jobs/{id}/result`."""

    model_config = ConfigDict(extra="forbid")

    # `format` before speechq unified the name with the request's and the dialogue's (records kept by a
    # worker of that version are still read).
    response_format: AudioFormat = Field(validation_alias=AliasChoices("response_format", "format"))
    media_type: str
    sample_rate: int
    duration: float
    bytes: int
    chunks: int
    model: str
    voice: str | None
    reference_id: str | None
    characters: int
    timings: SynthesisTimings
