"""A synthesis's intake: a request resolved (engine, voice, rate), its job queued, and its audio followed as it
is made. The synthesis routes, the OpenAI speech route and dialogue share it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from api.auth import Principal
from api.errors import GatewayTimeout, Unprocessable, raise_for_failure
from api.intake.jobs import follow, submit
from api.state import AppState
from contract.jobs import EventType, JobKind, JobRecord
from contract.synthesis import AudioChunk, InvalidField, SynthesizeRequest, resolve_synthesis


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
