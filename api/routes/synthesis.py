"""Text to speech: the job route, the seed API's `/v1/text-to-speech` (HTTP and WebSocket), and the
helpers the OpenAI `/v1/audio/speech` route shares: resolving a request and streaming its audio."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, WebSocket
from fastapi.responses import JSONResponse, Response, StreamingResponse

from api.auth import Principal
from api.deps import IdempotencyKeyDep, PrincipalDep, RequestIdDep, StateDep, serve_websocket
from api.errors import GatewayTimeout, Unprocessable, validated
from api.routes.jobs import accepted
from api.schemas import JobCreated
from api.seed_speech import SeedAudioChunk, SeedAudioFormat, SeedSpeechRequest, SeedSynthesis
from api.state import AppState
from api.submit import follow, raise_for_failure, stored_audio, submit, wait_for
from contract.jobs import EventType, JobKind, JobRecord
from contract.results import result_of
from contract.synthesis import AudioChunk, InvalidField, SynthesisResult, SynthesizeRequest, resolve_synthesis

router = APIRouter(tags=["text to speech"])


def remote_defaults(state: AppState) -> dict[str, Any]:
    """What OpenAudio requests get when they leave these out (OPENAUDIO_DEFAULT_*)."""
    s = state.settings
    return {"response_format": s.openaudio_default_format, "sample_rate": s.openaudio_default_sample_rate}


def resolved(state: AppState, request: SynthesizeRequest) -> SynthesizeRequest:
    """Engine, voice and sample rate filled in; what no engine can do is a 422 naming the field."""
    try:
        return resolve_synthesis(request, state.settings.tts_model, remote_defaults(state))
    except InvalidField as exc:
        raise Unprocessable(str(exc), param=exc.param) from None


async def submit_synthesis(
    state: AppState, request: SynthesizeRequest, principal: Principal, request_id: str | None
) -> JobRecord:
    job, _ = await submit(state, JobKind.synthesize, request, principal, request_id=request_id)
    return job


async def audio_chunks(state: AppState, job: JobRecord) -> AsyncIterator[AudioChunk]:
    """The job's `audio_chunk` events as they come; raises the job's failure, if it fails, at the end."""
    async for event in follow(state, job.id):
        if event.type == EventType.audio_chunk:
            yield AudioChunk.model_validate(event.data)
    final = await state.store.get(job.id, owner=job.owner)
    if final is None:
        raise GatewayTimeout(f"job {job.id} expired before it finished")
    raise_for_failure(final)


async def started(chunks: AsyncIterator[AudioChunk]) -> AsyncIterator[AudioChunk]:
    """Wait for the first chunk before answering, so a job that fails early is an HTTP error, not an
    empty 200; later failures cut the stream short, which the client sees as an incomplete body."""
    first = await anext(chunks, None)

    async def rest() -> AsyncIterator[AudioChunk]:
        if first is not None:
            yield first
        async for chunk in chunks:
            yield chunk

    return rest()


def audio_headers(request: SynthesizeRequest, job: JobRecord) -> dict[str, str]:
    return {
        "x-audio-format": request.response_format,
        "x-sample-rate": str(request.sample_rate),
        "X-Job-ID": job.id,
        "Cache-Control": "no-store",
    }


@router.post("/v1/jobs/synthesize", status_code=202, tags=["jobs"], response_model=JobCreated)
async def create_synthesis_job(
    body: SynthesizeRequest, state: StateDep, principal: PrincipalDep, rid: RequestIdDep, idem: IdempotencyKeyDep = None
) -> JSONResponse:
    """Queue a synthesis; the audio is at `GET /v1/jobs/{id}/result`, chunks arrive as `audio_chunk` events."""
    return await accepted(state, JobKind.synthesize, resolved(state, body), principal, rid, idem)


@router.post("/v1/text-to-speech", response_model=SeedSynthesis)
async def text_to_speech(
    body: SeedSpeechRequest, state: StateDep, principal: PrincipalDep, rid: RequestIdDep, response: Response
) -> Response | SeedSynthesis:
    """The seed endpoint: `{audio_base64, response_format, media_type, sample_rate, reference_id}`, or with
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

        described = SeedAudioFormat.of(request, answered_format, job.id)
        headers = {**audio_headers(request, job), **described.headers()}
        return StreamingResponse(audio(), media_type=described.media_type, headers=headers)
    final = await wait_for(state, job)
    response.headers["X-Job-ID"] = job.id
    return await seed_synthesis(state, final, answered_format)


async def seed_synthesis(state: AppState, job: JobRecord, response_format: str) -> SeedSynthesis:
    result = result_of(job, SynthesisResult)
    return SeedSynthesis.of(result, await stored_audio(state.store, job), response_format, job.id)


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
    body = validated(SeedSpeechRequest, {k: v for k, v in message.items() if k != "stream"})
    request = resolved(state, body.job_request())
    answered_format = body.answered_format(request)
    job = await submit_synthesis(state, request, principal, None)
    if not streaming:
        final = await wait_for(state, job)
        synthesis = await seed_synthesis(state, final, answered_format)
        # The original left `reference_id` out of this event when there was none.
        await websocket.send_json({"event": "synthesis", "data": synthesis.model_dump(mode="json", exclude_none=True)})
        return
    metadata = SeedAudioFormat.of(request, answered_format, job.id)
    await websocket.send_json({"event": "metadata", "data": metadata.model_dump(mode="json", exclude_none=True)})
    async for chunk in audio_chunks(state, job):
        await websocket.send_json({"event": "audio_chunk", "data": SeedAudioChunk.of(chunk).spoken_only()})
    ended = await state.store.get(job.id, owner=principal.id)
    assert ended is not None
    result = result_of(ended, SynthesisResult)
    done: dict[str, object] = {"duration": result.duration, "chunks": result.chunks, "bytes": result.bytes}
    # This event has always named the format `format` (the result now says `response_format`).
    done |= {"sample_rate": result.sample_rate, "format": result.response_format}
    await websocket.send_json({"event": "done", "data": {"job_id": job.id, **done}})
