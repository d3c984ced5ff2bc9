"""OpenAI-compatible `/v1/audio/transcriptions` and `/v1/audio/translations`, served by `transcribe` jobs. With
`stream=true` a transcription answers `transcript.text.delta` server-sent events as the job decodes its segments,
then `transcript.text.done`; `whisper-1` ignores `stream`, as it does at OpenAI."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response
from pydantic import BaseModel
from sse_starlette import EventSourceResponse, ServerSentEvent

from api.auth import Principal
from api.deps import PrincipalDep, RequestIdDep, StateDep
from api.errors import ApiError, ClientGone, GatewayTimeout, Unprocessable, error_body, raise_for_failure
from api.intake.jobs import DISCONNECT_SECONDS, abandon, cancelled_if_abandoned, follow, wait_for
from api.intake.transcription import AudioFile, OptionsDep, formatted, submit_upload
from api.state import AppState
from contract.catalog import OPENAI_WHISPER_ALIASES
from contract.jobs import EventType, JobRecord
from contract.results import result_of
from contract.transcription import Segment, TranscribeRequest, TranscriptionResult

router = APIRouter(prefix="/v1/audio", tags=["OpenAI compatible"])

WHISPER_FRAMES_PER_SECOND = 50  # Whisper's encoder reads 30 s of audio as 1,500 positions

TRANSCRIPTION_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The transcript in its `response_format`; with `stream=true` (any model but `whisper-1`), "
        "`transcript.text.delta` server-sent events as segments are decoded, then `transcript.text.done`",
        "content": {
            "application/json": {"schema": {}},  # json and verbose_json
            "text/plain": {"schema": {"type": "string"}},
            "application/x-subrip": {"schema": {"type": "string"}},
            "text/vtt": {"schema": {"type": "string"}},
            "text/event-stream": {},  # events, not one document: no schema
        },
    }
}


class InputTokenDetails(BaseModel):
    audio_tokens: int


class TranscriptUsage(BaseModel):
    """OpenAI's token usage (the only kind a streamed transcription's may be): the audio as Whisper's encoder
    reads it in, the text tokens it decoded out (words where the engine reports no tokens)."""

    type: Literal["tokens"] = "tokens"
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_token_details: InputTokenDetails

    @classmethod
    def of(cls, result: TranscriptionResult) -> TranscriptUsage:
        audio = math.ceil(result.duration * WHISPER_FRAMES_PER_SECOND)
        tokens = [len(segment.tokens) for segment in result.segments if segment.tokens is not None]
        text = sum(tokens) if tokens else len(result.text.split())
        details = InputTokenDetails(audio_tokens=audio)
        return cls(input_tokens=audio, output_tokens=text, total_tokens=audio + text, input_token_details=details)


class TranscriptTextDelta(BaseModel):
    """`transcript.text.delta`: the text a decoded segment adds to the transcript."""

    type: Literal["transcript.text.delta"] = "transcript.text.delta"
    delta: str


class TranscriptTextDone(BaseModel):
    """`transcript.text.done`: the whole transcript (the deltas joined), last."""

    type: Literal["transcript.text.done"] = "transcript.text.done"
    text: str
    usage: TranscriptUsage


TranscriptEvent = TranscriptTextDelta | TranscriptTextDone


class JoinedText:
    """The transcript as the engine joins it (`" ".join(segment texts).strip()`), a segment at a time: `add`
    answers what a segment adds to it, holding back trailing spaces, which the strip would take away."""

    def __init__(self) -> None:
        self.sent = ""
        self.held = ""
        self.segments = 0

    def add(self, text: str) -> str:
        addition = (" " if self.segments else "") + text
        self.segments += 1
        if not self.sent:
            addition = addition.lstrip()
        pending = self.held + addition
        piece = pending.rstrip()
        self.held = pending[len(piece) :]
        self.sent += piece
        return piece

    def rest(self, text: str) -> str:
        """What `text`, the job's transcript, has beyond what was sent (all of it, from an engine that sent no
        segments)."""
        return text[len(self.sent) :] if text.startswith(self.sent) else ""


async def _submitted(
    state: AppState, principal: Principal, rid: str, file: AudioFile, options: dict[str, Any]
) -> tuple[JobRecord, TranscribeRequest]:
    if options.get("model") is None:
        raise Unprocessable("model: Field required", param="model")
    job, request, _ = await submit_upload(state, principal, file, options, request_id=rid)
    return job, request


async def _serve(
    state: AppState, principal: Principal, rid: str, http: Request, file: AudioFile, options: dict[str, Any]
) -> Response:
    job, request = await _submitted(state, principal, rid, file, options)
    final = await wait_for(state, job, client=http)
    response = formatted(result_of(final, TranscriptionResult), request.response_format)
    response.headers["X-Job-ID"] = job.id
    return response


async def _transcript(state: AppState, job: JobRecord) -> AsyncIterator[TranscriptEvent]:
    """The job's transcript as OpenAI's stream: a delta per segment as the worker decodes it, then `done`. A job
    that does not succeed raises its failure (an `ApiError`) where the stream would end."""
    joined = JoinedText()
    next_id = 0
    async for event in follow(state, job.id):
        if event.type == EventType.segment:
            segment = Segment.model_validate(event.data)
            if segment.id < next_id:  # a redelivered attempt decoding again what was already sent
                continue
            next_id = segment.id + 1
            if delta := joined.add(segment.text):
                yield TranscriptTextDelta(delta=delta)
    final = await state.store.get(job.id, owner=job.owner)
    if final is None:
        raise GatewayTimeout(f"job {job.id} expired before it finished")
    raise_for_failure(final)
    result = result_of(final, TranscriptionResult)
    if rest := joined.rest(result.text):
        yield TranscriptTextDelta(delta=rest)
    yield TranscriptTextDone(text=result.text, usage=TranscriptUsage.of(result))


async def _opening(
    state: AppState, job: JobRecord, events: AsyncIterator[TranscriptEvent], client: Request
) -> TranscriptEvent:
    """The stream's first event, read before answering, so that a job failing before any text (audio that does
    not decode) is the usual HTTP error; a client that goes away meanwhile cancels the job."""

    async def first() -> TranscriptEvent:
        return await anext(events)

    reader = asyncio.create_task(first(), name=f"speechq-first-{job.id}")
    try:
        while not reader.done():
            if await client.is_disconnected():
                await abandon(state, job)
                raise ClientGone(f"the client went away; job {job.id} was cancelled")
            await asyncio.wait({reader}, timeout=DISCONNECT_SECONDS)
        return reader.result()
    finally:
        reader.cancel()


async def _streamed(
    state: AppState, principal: Principal, rid: str, http: Request, file: AudioFile, options: dict[str, Any]
) -> EventSourceResponse:
    job, _ = await _submitted(state, principal, rid, file, options)
    events = _transcript(state, job)
    opening = await _opening(state, job, events, http)

    async def sse() -> AsyncIterator[ServerSentEvent]:
        try:
            yield ServerSentEvent(data=opening.model_dump_json(), event=opening.type)
            async for event in events:
                yield ServerSentEvent(data=event.model_dump_json(), event=event.type)
        except ApiError as failure:  # the job failed after its first text: the envelope, as chat streams send it
            yield ServerSentEvent(data=json.dumps(error_body(failure)))

    stream = cancelled_if_abandoned(state, job, sse())
    return EventSourceResponse(stream, ping=15, headers={"X-Job-ID": job.id, "Cache-Control": "no-store"})


@router.post("/transcriptions", response_model=None, responses=TRANSCRIPTION_RESPONSES)
async def transcriptions(
    state: StateDep,
    principal: PrincipalDep,
    rid: RequestIdDep,
    http: Request,
    file: AudioFile,
    options: OptionsDep,
    stream: Annotated[bool, Form(description="server-sent events as the transcript is decoded")] = False,
) -> Response:
    options = {**options, "task": "transcribe"}
    # OpenAI's whisper-1 ignores `stream` and answers the whole transcript; its alias here does the same.
    if stream and options.get("model") not in OPENAI_WHISPER_ALIASES:
        return await _streamed(state, principal, rid, http, file, options)
    return await _serve(state, principal, rid, http, file, options)


@router.post("/translations", response_model=None)
async def translations(
    state: StateDep, principal: PrincipalDep, rid: RequestIdDep, http: Request, file: AudioFile, options: OptionsDep
) -> Response:
    # Translation is always into English: a source-language hint or word timestamps do not apply.
    options = {k: v for k, v in options.items() if k not in ("language", "timestamp_granularities")}
    return await _serve(state, principal, rid, http, file, {**options, "task": "translate"})
