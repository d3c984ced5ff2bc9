"""The `transcribe` job: its request, its result (the transcript) and its `segment` event."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from contract.catalog import ModelRole
from contract.common import omitted_when_none, registered
from contract.jobs import RequestedTier
from contract.webhooks import WebhookFields

TranscriptFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]


class TranscribeRequest(WebhookFields):
    """`transcribe`: the audio travels beside the job (its input key); these are the options."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str | None = Field(None, min_length=1, max_length=128)
    language: str | None = Field(None, min_length=2, max_length=8, pattern=r"^[A-Za-z-]+$")
    prompt: str | None = Field(None, max_length=2_000)
    response_format: TranscriptFormat = "json"
    temperature: float = Field(0.0, ge=0.0, le=1.0)
    timestamp_granularities: list[Literal["segment", "word"]] = Field(default_factory=lambda: ["segment"])  # type: ignore[arg-type]
    task: Literal["transcribe", "translate"] = "transcribe"
    vad_filter: bool = False
    service_tier: RequestedTier | None = None
    filename: str = Field("audio", max_length=255)

    @field_validator("model", mode="before")
    @classmethod
    def _known_model(cls, value: object) -> object:
        return registered(value, ModelRole.stt) if isinstance(value, str) else value

    @property
    def words(self) -> bool:
        return "word" in self.timestamp_granularities


class Segment(BaseModel):
    """`segment`: a stretch of the transcript as soon as it is decoded (and the dialogue's transcript)."""

    id: int
    start: float
    end: float
    text: str


class Word(BaseModel):
    word: str
    start: float
    end: float
    probability: float | None = omitted_when_none()  # faster-whisper's; openai-whisper has none


class TranscriptSegment(Segment):
    """A segment in the result: Whisper's decoding details, and its words when they were asked for.
    A remote service's own keys are passed on as it sent them."""

    model_config = ConfigDict(extra="allow")

    seek: int | None = omitted_when_none()
    tokens: list[int] | None = omitted_when_none()
    temperature: float | None = omitted_when_none()
    avg_logprob: float | None = omitted_when_none()
    compression_ratio: float | None = omitted_when_none()
    no_speech_prob: float | None = omitted_when_none()
    words: list[Word] | None = omitted_when_none()

    def brief(self) -> Segment:
        return Segment(id=self.id, start=self.start, end=self.end, text=self.text)


class TranscriptionTimings(BaseModel):
    seconds: float
    real_time_factor: float | None = omitted_when_none()
    decode_seconds: float | None = omitted_when_none()  # decoding the upload, on this host's engines
    # The batched decoder (workers/stt_batch.py): the most chunks one step decoded with this recording's, its
    # own and other transcriptions', and the most transcriptions that shared one of its steps (1: alone).
    batch_size: int | None = omitted_when_none()
    batch_jobs: int | None = omitted_when_none()


class TranscriptionResult(BaseModel):
    """The result of a `transcribe` job; `response_format` only changes how routes render it."""

    model_config = ConfigDict(extra="forbid")

    text: str
    language: str
    language_probability: float | None = omitted_when_none()
    duration: float
    task: Literal["transcribe", "translate"]
    segments: list[TranscriptSegment]
    words: list[Word] | None = omitted_when_none()  # with timestamp_granularities=word
    model: str
    engine: str | None = omitted_when_none()  # set when it is not the model's usual one (openai-whisper)
    timings: TranscriptionTimings
