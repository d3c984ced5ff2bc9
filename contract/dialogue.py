"""The `dialogue` job: its request, its result, and the events it adds to its stages' (`metadata`,
`transcript`, `assistant_text`; its `audio_chunk` is a synthesis's)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from contract.generation import GenerationParams, Usage
from contract.jobs import RequestedTier
from contract.speech import AudioFormat
from contract.synthesis import SpeechOptions, SynthesizeRequest
from contract.transcription import Segment
from contract.webhooks import WebhookFields


class DialogueRequest(WebhookFields):
    """`dialogue`: the audio travels beside the job; these steer its three stages.

    `synthesis_config` is a resolved `SynthesizeRequest` without its text (the API fills in the engine,
    voice and rate), so every sentence is spoken the same way.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    instructions: str | None = Field(None, max_length=8_000)
    generation_config: GenerationParams = Field(default_factory=GenerationParams)
    synthesis_config: SpeechOptions = Field(default_factory=SpeechOptions)
    conversation_id: str | None = Field(None, pattern=r"^[A-Za-z0-9._:\-]{1,128}$")
    language: str | None = Field(None, min_length=2, max_length=8, pattern=r"^[A-Za-z-]+$")
    filename: str = Field("audio", max_length=255)
    service_tier: RequestedTier | None = None
    """The dialogue's and its stages' tier; unset: `priority` (a person is waiting on every stage)."""

    def speech(self, text: str) -> SynthesizeRequest:
        """The synthesis of one sentence, as raw PCM at the dialogue's rate (the dialogue encodes it)."""
        return SynthesizeRequest.of(self.synthesis_config, text, response_format="pcm")


class DialogueMetadata(BaseModel):
    """`metadata`, the dialogue's first event: what it will use and what its audio will be."""

    job_id: str
    conversation_id: str | None
    llm: str | None
    tts: str | None
    voice: str | None
    reference_id: str | None
    response_format: AudioFormat
    media_type: str
    sample_rate: int


class HeardTranscript(BaseModel):
    """`transcript`: what was heard, once the transcription stage ends."""

    text: str
    language: str | None
    segments: list[Segment]


class AssistantDelta(BaseModel):
    """`assistant_text` while the answer is written: the text added."""

    delta: str


class AssistantFinal(BaseModel):
    """`assistant_text` once the answer is whole: all of it."""

    text: str
    final: Literal[True] = True


class DialogueModels(BaseModel):
    stt: str | None
    llm: str | None
    tts: str | None


class DialogueTimings(BaseModel):
    seconds: float
    first_audio_seconds: float | None


class DialogueResult(BaseModel):
    """The result of a `dialogue` job; its audio is at `GET /v1/jobs/{id}/audio`."""

    model_config = ConfigDict(extra="forbid")

    transcript: str
    language: str | None
    segments: list[Segment]
    response_text: str
    response_format: AudioFormat
    media_type: str
    sample_rate: int
    reference_id: str | None
    voice: str | None
    duration: float
    chunks: int
    conversation_id: str | None
    models: DialogueModels
    usage: Usage | None
    timings: DialogueTimings
