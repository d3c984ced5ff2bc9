"""OpenAI-compatible `POST /v1/audio/speech`, served by a `synthesize` job: the audio streams back as it is
synthesized (`stream_format: audio`), or as `speech.audio.delta` / `speech.audio.done` server-sent events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sse_starlette import EventSourceResponse, ServerSentEvent

from api.deps import PrincipalDep, RequestIdDep, StateDep
from api.errors import ApiError, error_body, validated
from api.intake.jobs import cancelled_if_abandoned
from api.intake.synthesis import audio_chunks, audio_headers, resolved, started, submit_synthesis
from api.openai.protocol import SpeechAudioDelta, SpeechAudioDone, SpeechUsage
from contract.catalog import ModelRole
from contract.common import registered
from contract.jobs import RequestedTier
from contract.speech import MEDIA_TYPES, AudioFormat
from contract.synthesis import MAX_SPEECH_CHARS, SynthesizeRequest
from contract.webhooks import WebhookFields

router = APIRouter(prefix="/v1/audio", tags=["OpenAI compatible"])

SPEECH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The audio as it is synthesized, in the `response_format`'s media type (`stream_format: "
        "audio`), or `speech.audio.delta` server-sent events, then `speech.audio.done` (`stream_format: sse`)",
        "content": {media: {"schema": {"type": "string", "format": "binary"}} for media in MEDIA_TYPES.values()}
        | {"text/event-stream": {}},  # events, not one document: no schema (as /v1/jobs/{id}/events)
    }
}


class VoiceId(BaseModel):
    id: str = Field(min_length=1, max_length=128)


class SpeechRequest(WebhookFields):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str = Field(min_length=1, max_length=128)
    input: str = Field(min_length=1, max_length=MAX_SPEECH_CHARS)
    voice: str | VoiceId
    instructions: str | None = Field(None, max_length=MAX_SPEECH_CHARS)  # no local engine takes style prompts
    response_format: AudioFormat = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio", "sse"] = "audio"
    service_tier: RequestedTier | None = None

    @field_validator("model", mode="before")
    @classmethod
    def _served(cls, value: object) -> object:
        return registered(value, ModelRole.tts) if isinstance(value, str) else value


@router.post("/speech", response_class=StreamingResponse, responses=SPEECH_RESPONSES)
async def speech(body: SpeechRequest, state: StateDep, principal: PrincipalDep, rid: RequestIdDep) -> Response:
    voice = body.voice.id if isinstance(body.voice, VoiceId) else body.voice
    fields = {"text": body.input, "model": body.model, "voice": voice, "speed": body.speed, **body.webhook_fields()}
    if body.service_tier is not None:
        fields["service_tier"] = body.service_tier
    request = resolved(state, validated(SynthesizeRequest, {**fields, "response_format": body.response_format}))
    job = await submit_synthesis(state, request, principal, rid)
    chunks = await started(audio_chunks(state, job))
    if body.stream_format == "sse":

        async def events() -> AsyncIterator[ServerSentEvent]:
            try:
                async for chunk in chunks:
                    delta = SpeechAudioDelta(audio=chunk.audio)
                    yield ServerSentEvent(data=delta.model_dump_json(), event=delta.type)
            except ApiError as failure:  # the job failed after its first audio: the envelope, as chat streams send it
                yield ServerSentEvent(data=json.dumps(error_body(failure)))
                return
            # Local engines have no tokenizer: input tokens are counted as words, output tokens not at all.
            words = len(body.input.split())
            done = SpeechAudioDone(usage=SpeechUsage(input_tokens=words, output_tokens=0, total_tokens=words))
            yield ServerSentEvent(data=done.model_dump_json(), event=done.type)

        stream = cancelled_if_abandoned(state, job, events())
        return EventSourceResponse(stream, headers={"X-Job-ID": job.id, "Cache-Control": "no-store"})

    async def audio() -> AsyncIterator[bytes]:
        async for chunk in chunks:
            yield chunk.decoded()

    body_stream = cancelled_if_abandoned(state, job, audio())
    return StreamingResponse(
        body_stream, media_type=MEDIA_TYPES[body.response_format], headers=audio_headers(request, job)
    )
