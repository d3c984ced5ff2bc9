"""The Gemma 3 Speech API's speech schemas (README: Migrating): its requests as leniently as it took them, each
turned into speechq's strict job request, and its answers, which the original API's routes send unchanged (speechq
only adds keys)."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from api.errors import BadRequest, Unprocessable, validated
from api.uploads import AudioBudget, check_audio, too_large, upload_limit_bytes
from config import Settings
from contract.dialogue import HeardTranscript
from contract.speech import ENCODER_RATES, MAX_SAMPLE_RATE, MEDIA_TYPES, MIN_SAMPLE_RATE
from contract.synthesis import AudioChunk, SynthesisResult, SynthesizeRequest
from contract.transcription import Segment, TranscribeRequest, TranscriptionResult

# --- speech to text ---------------------------------------------------------------------------------

# What a transcription on the original API takes: its options, and speechq's `model`, `task` and `vad_filter`.
# `response_format` and `content_type` are accepted and set aside: the answer is always the JSON
# transcript (as the original's), and the audio's container is sniffed.
TRANSCRIPTION_FIELDS = ("language", "prompt", "temperature", "model", "task", "vad_filter")
# Whisper reads only the last 223 tokens of a prompt, so keeping its end keeps all that it would use.
PROMPT_CHARS = 2_000
FILENAME_CHARS = 255


class EmptyUpload(BadRequest):
    code = "empty_file"


def legacy_transcription(fields: dict[str, Any], filename: object = None) -> TranscribeRequest:
    """The original's transcription options as a job request: nulls and empty strings are defaults, a
    long prompt keeps its end; what no engine can do (a language code that is not one, a temperature
    outside 0–1) is a 422 naming the field."""
    options = {name: fields[name] for name in TRANSCRIPTION_FIELDS if fields.get(name) not in (None, "")}
    if isinstance(options.get("prompt"), str):
        options["prompt"] = options["prompt"][-PROMPT_CHARS:]
    options["filename"] = str(filename or "audio")[-FILENAME_CHARS:]
    return validated(TranscribeRequest, options)


async def legacy_websocket_audio(message: dict[str, Any], settings: Settings, budget: AudioBudget) -> bytes:
    """A WebSocket request's `audio_base64`, decoded as the original did (characters outside the base64
    alphabet, such as the line breaks of MIME base64, are skipped), then capped and probed like an upload."""
    encoded = message.get("audio_base64")
    if not encoded:
        raise Unprocessable("Missing 'audio_base64' field.", param="audio_base64")
    limit = upload_limit_bytes(settings)
    if isinstance(encoded, str) and len(encoded) > 2 * limit:  # a cheap bound before decoding
        raise too_large(limit)
    try:
        audio = base64.b64decode(encoded)
    except (binascii.Error, ValueError, TypeError):
        raise Unprocessable("Invalid base64 data supplied for 'audio_base64'.", param="audio_base64") from None
    if len(audio) > limit:
        raise too_large(limit)
    await check_audio(audio, settings, param="audio_base64", budget=budget)
    return audio


class LegacySegment(BaseModel):
    id: int | None = None
    start: float | None = None
    end: float | None = None
    text: str

    @classmethod
    def of(cls, segment: Segment) -> LegacySegment:
        return cls(id=segment.id, start=segment.start, end=segment.end, text=segment.text)


class LegacyTranscript(BaseModel):
    """`{text, language, segments}`: the answer of `POST /v1/speech-to-text` and the `data` of the
    WebSocket's `transcript` event, whatever `response_format` was asked for (and a dialogue's transcript)."""

    text: str
    language: str | None = None
    segments: list[LegacySegment] = Field(default_factory=list)

    @classmethod
    def of(cls, heard: TranscriptionResult | HeardTranscript) -> LegacyTranscript:
        segments = [LegacySegment.of(segment) for segment in heard.segments]
        return cls(text=heard.text, language=heard.language, segments=segments)


# --- text to speech ---------------------------------------------------------------------------------

# Format names the original passed on that speechq calls otherwise: its Ogg is speechq's Ogg/Opus.
FORMAT_ALIASES = {"ogg": "opus"}


class LegacySpeechRequest(BaseModel):
    """The original's `SpeechSynthesisRequest`, taken as leniently as it was: `text` (or `input`),
    `response_format` (or `format`, `ogg` included), `sample_rate`, `reference_id`, `normalize`,
    `references` (base64 strings; speechq's `{audio, text}` objects too), `top_p`, `stream`. A null is
    the default and a field speechq does not know is ignored; speechq's own synthesis fields (`voice`,
    `model`, `speed`, `seed`, …) are applied as on `/v1/jobs/synthesize`."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    text: str | None = None
    input: str | None = None
    response_format: str | None = None
    format: str | None = None
    sample_rate: int | None = None
    reference_id: str | None = None
    normalize: bool | None = None
    references: list[str | dict[str, Any]] | None = None
    top_p: float | None = None
    stream: bool | None = None

    def _sent(self, first: str, second: str) -> tuple[str, Any]:
        """Of two names for one field, the one the value came by (the first, as the original read them,
        unless it is empty), and its value."""
        value = getattr(self, first)
        return (first, value) if value or getattr(self, second) is None else (second, getattr(self, second))

    @property
    def asked_format(self) -> str | None:
        _, name = self._sent("response_format", "format")
        return name.strip().lower() if name else None

    def job_request(self) -> SynthesizeRequest:
        """The synthesis this asks for, in speechq's terms; a 422 names a field as the client sent it."""
        fields = {
            name: value
            for name, value in (self.model_extra or {}).items()
            if name in SPEECHQ_FIELDS and value is not None
        }
        for name in ("reference_id", "normalize", "top_p"):
            if getattr(self, name) not in (None, ""):  # the original sent no reference for an empty id
                fields[name] = getattr(self, name)
        key, text = self._sent("text", "input")
        if text is not None:
            fields[key] = text
        key, _ = self._sent("response_format", "format")
        fmt = FORMAT_ALIASES.get(self.asked_format, self.asked_format) if self.asked_format else None
        if fmt is not None:
            fields[key] = fmt
        if self.sample_rate is not None:
            fields["sample_rate"] = nearest_rate(fmt or "wav", self.sample_rate)
        if self.references:
            fields["references"] = [{"audio": r, "text": ""} if isinstance(r, str) else r for r in self.references]
        return validated(SynthesizeRequest, fields)

    def answered_format(self, request: SynthesizeRequest) -> str:
        """The format name the answer gives: the original's for an alias (`ogg` stays `ogg`), else speechq's."""
        asked = self.asked_format
        return asked if asked in FORMAT_ALIASES else request.response_format


def nearest_rate(fmt: str, rate: int) -> int:
    """The rate nearest `rate` that `fmt` can carry (8–96 kHz; Ogg/Opus: 48 kHz only). The original took
    any positive rate (its engine made what it could), so a rate speechq cannot make is moved, not
    refused, and the answer's `sample_rate` says which. A rate that is not positive, or a format speechq
    does not know, is left for validation to refuse."""
    if rate <= 0 or fmt not in ENCODER_RATES:
        return rate
    rate = min(max(rate, MIN_SAMPLE_RATE), MAX_SAMPLE_RATE)
    allowed = ENCODER_RATES[fmt]
    return rate if allowed is None or rate in allowed else min(allowed, key=lambda r: (abs(r - rate), -r))


SPEECHQ_FIELDS = frozenset(SynthesizeRequest.model_fields) - frozenset(LegacySpeechRequest.model_fields)


class LegacyAudioFormat(BaseModel):
    """What the audio is, in the keys (and order) of the original's stream `metadata` event."""

    response_format: str
    media_type: str
    sample_rate: int
    reference_id: str | None = None
    # speechq's additions
    voice: str | None = None
    model: str | None = None
    job_id: str

    @classmethod
    def of(cls, request: SynthesizeRequest, response_format: str, job_id: str) -> LegacyAudioFormat:
        assert request.sample_rate is not None, "a resolved request has its rate"
        return cls(
            response_format=response_format,
            media_type=MEDIA_TYPES[request.response_format],
            sample_rate=request.sample_rate,
            reference_id=request.reference_id,
            voice=request.voice,
            model=request.model,
            job_id=job_id,
        )

    def headers(self) -> dict[str, str]:
        """The original's headers on streamed audio; `x-reference-id` only when there is one (and it can
        travel in a header)."""
        headers = {"x-audio-format": self.response_format, "x-sample-rate": str(self.sample_rate)}
        if self.reference_id and self.reference_id.isascii() and self.reference_id.isprintable():
            headers["x-reference-id"] = self.reference_id
        return headers


class LegacyAudioChunk(BaseModel):
    """An `audio_chunk` as the original API's routes send it: `{audio_base64, index, text, format, sample_rate}` (the
    text-to-speech WebSocket's, as the original's, has only the first three: `spoken_only`)."""

    audio_base64: str
    index: int
    text: str | None
    format: str
    sample_rate: int

    @classmethod
    def of(cls, chunk: AudioChunk, response_format: str | None = None) -> LegacyAudioChunk:
        """`chunk`, its format named `response_format` when the answer uses the original's alias (`ogg`)."""
        return cls(
            audio_base64=chunk.audio,
            index=chunk.index,
            text=chunk.text,
            format=response_format or chunk.format,
            sample_rate=chunk.sample_rate,
        )

    def spoken_only(self) -> dict[str, Any]:
        """The text-to-speech WebSocket's `data`: the original sent only `{audio_base64, index, text}`."""
        return self.model_dump(mode="json", include={"audio_base64", "index", "text"})


class LegacySynthesis(BaseModel):
    """`POST /v1/text-to-speech`'s answer (and the `data` of the WebSocket's `synthesis` event), in the
    original's keys and order, then speechq's."""

    audio_base64: str
    response_format: str
    media_type: str
    sample_rate: int
    reference_id: str | None = None
    # speechq's additions
    voice: str | None = None
    model: str | None = None
    duration: float | None = None
    job_id: str

    @classmethod
    def of(cls, result: SynthesisResult, audio: bytes, response_format: str, job_id: str) -> LegacySynthesis:
        return cls(
            audio_base64=base64.b64encode(audio).decode(),
            response_format=response_format,
            media_type=result.media_type,
            sample_rate=result.sample_rate,
            reference_id=result.reference_id,
            voice=result.voice,
            model=result.model,
            duration=result.duration,
            job_id=job_id,
        )
