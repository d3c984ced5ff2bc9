"""Text to speech: the job route and the original API's `/v1/text-to-speech` (HTTP and WebSocket)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import JSONResponse, Response, StreamingResponse

from api.auth import Principal
from api.deps import IdempotencyKeyDep, PrincipalDep, RequestIdDep, StateDep, serve_websocket
from api.errors import Unprocessable, validated
from api.intake.jobs import accepted, cancelled_if_abandoned, cancelled_if_left, stored_audio, wait_for
from api.intake.synthesis import audio_chunks, audio_headers, resolved, started, submit_synthesis
from api.legacy.speech import LegacyAudioChunk, LegacyAudioFormat, LegacySpeechRequest, LegacySynthesis
from api.schemas import JobCreated
from api.state import AppState
from contract.jobs import JobKind, JobRecord
from contract.results import result_of
from contract.speech import MEDIA_TYPES
from contract.synthesis import SynthesisResult, SynthesizeRequest

router = APIRouter(tags=["text to speech"])


@router.post("/v1/jobs/synthesize", status_code=202, tags=["jobs"], response_model=JobCreated)
async def create_synthesis_job(
    body: SynthesizeRequest, state: StateDep, principal: PrincipalDep, rid: RequestIdDep, idem: IdempotencyKeyDep = None
) -> JSONResponse:
    """Queue a synthesis; the audio is at `GET /v1/jobs/{id}/result`, chunks arrive as `audio_chunk` events."""
    return await accepted(state, JobKind.synthesize, resolved(state, body), principal, rid, idem)


# With `stream: true` the answer is the audio itself, as it is made.
STREAMED_AUDIO: dict[int | str, dict[str, Any]] = {
    200: {"content": {media: {"schema": {"type": "string", "format": "binary"}} for media in MEDIA_TYPES.values()}}
}


@router.post("/v1/text-to-speech", response_model=LegacySynthesis, responses=STREAMED_AUDIO)
async def text_to_speech(
    body: LegacySpeechRequest,
    state: StateDep,
    principal: PrincipalDep,
    rid: RequestIdDep,
    http: Request,
    response: Response,
) -> Response | LegacySynthesis:
    """The original endpoint: `{audio_base64, response_format, media_type, sample_rate, reference_id}`, or with
    `stream` the raw audio bytes as they are synthesized (headers `x-audio-format`, `x-sample-rate`, and
    `x-reference-id` when there is one)."""
    request = resolved(state, body.job_request())
    answered_format = body.answered_format(request)
    job = await submit_synthesis(state, request, principal, rid)
    if body.stream:
        chunks = await started(audio_chunks(state, job))

        async def audio() -> AsyncIterator[bytes]:
            async for chunk in chunks:
                yield chunk.decoded()

        described = LegacyAudioFormat.of(request, answered_format, job.id)
        headers = {**audio_headers(request, job), **described.headers()}
        stream = cancelled_if_abandoned(state, job, audio())
        return StreamingResponse(stream, media_type=described.media_type, headers=headers)
    final = await wait_for(state, job, client=http)
    response.headers["X-Job-ID"] = job.id
    return await legacy_synthesis(state, final, answered_format)


async def legacy_synthesis(state: AppState, job: JobRecord, response_format: str) -> LegacySynthesis:
    result = result_of(job, SynthesisResult)
    return LegacySynthesis.of(result, await stored_audio(state.store, job), response_format, job.id)


@router.websocket("/v1/text-to-speech/ws")
async def text_to_speech_ws(websocket: WebSocket) -> None:
    """Request after request on one connection, each `{text, stream, format, sample_rate, reference_id,
    normalize, references, top_p}`: with `stream` (the default) `metadata`, `audio_chunk`…, `done`; with
    `"stream": false` one `synthesis` event; a refused request gets an `error` event and the connection
    stays open."""
    await serve_websocket(websocket, _synthesize_over_websocket)


async def _synthesize_over_websocket(
    websocket: WebSocket, state: AppState, principal: Principal, message: dict[str, Any]
) -> None:
    if not (message.get("text") or message.get("input")):
        raise Unprocessable("Missing 'text' field.", param="text")
    # The original read `stream` by its truth, absent meaning true: null, false and 0 ask for one event.
    streaming = bool(message.get("stream", True))
    body = validated(LegacySpeechRequest, {k: v for k, v in message.items() if k != "stream"})
    request = resolved(state, body.job_request())
    answered_format = body.answered_format(request)
    job = await submit_synthesis(state, request, principal, None)
    if not streaming:
        async with cancelled_if_left(state, job):
            final = await wait_for(state, job)
        synthesis = await legacy_synthesis(state, final, answered_format)
        # The original left `reference_id` out of this event when there was none.
        await websocket.send_json({"event": "synthesis", "data": synthesis.model_dump(mode="json", exclude_none=True)})
        return
    metadata = LegacyAudioFormat.of(request, answered_format, job.id)
    async with cancelled_if_left(state, job):
        await websocket.send_json({"event": "metadata", "data": metadata.model_dump(mode="json", exclude_none=True)})
        async for chunk in audio_chunks(state, job):
            await websocket.send_json({"event": "audio_chunk", "data": LegacyAudioChunk.of(chunk).spoken_only()})
    ended = await state.store.get(job.id, owner=principal.id)
    assert ended is not None
    result = result_of(ended, SynthesisResult)
    done: dict[str, object] = {"duration": result.duration, "chunks": result.chunks, "bytes": result.bytes}
    # This event has always named the format `format` (the result now says `response_format`).
    done |= {"sample_rate": result.sample_rate, "format": result.response_format}
    await websocket.send_json({"event": "done", "data": {"job_id": job.id, **done}})
