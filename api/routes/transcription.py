"""Speech to text: the job route and the seed API's `/v1/speech-to-text` (HTTP and WebSocket)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, UploadFile, WebSocket, status
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from api.auth import Principal
from api.deps import IdempotencyKeyDep, PrincipalDep, RequestIdDep, StateDep, serve_websocket
from api.errors import GatewayTimeout, validated
from api.schemas import job_created
from api.state import AppState
from api.submit import follow, raise_for_failure, submit, wait_for
from api.uploads import AudioBudget, read_audio, websocket_audio
from tasks.jobs import EventType, JobKind, JobRecord
from tasks.payloads import DialogueRequest, TranscribeRequest
from tasks.transcripts import MEDIA_TYPES, render, to_seed

router = APIRouter(tags=["speech to text"])


async def transcription_options(
    model: Annotated[str | None, Form()] = None,
    language: Annotated[str | None, Form()] = None,
    prompt: Annotated[str | None, Form()] = None,
    response_format: Annotated[str | None, Form()] = None,
    temperature: Annotated[float | None, Form()] = None,
    timestamp_granularities: Annotated[list[str] | None, Form(alias="timestamp_granularities[]")] = None,
    task: Annotated[str | None, Form()] = None,
    vad_filter: Annotated[bool | None, Form()] = None,
) -> dict[str, Any]:
    """The form fields every transcription route accepts, those that were sent."""
    return sent_fields(
        model=model,
        language=language,
        prompt=prompt,
        response_format=response_format,
        temperature=temperature,
        timestamp_granularities=timestamp_granularities,
        task=task,
        vad_filter=vad_filter,
    )


def sent_fields(**fields: Any) -> dict[str, Any]:
    """The form fields a client sent (FastAPI gives the others as None)."""
    return {name: value for name, value in fields.items() if value is not None}


OptionsDep = Annotated[dict[str, Any], Depends(transcription_options)]
AudioFile = Annotated[UploadFile, File(description="the recording")]


def transcribe_request(fields: dict[str, Any]) -> TranscribeRequest:
    """Fields → a validated request; a bad one is a 422 naming it."""
    return validated(TranscribeRequest, sent_fields(**fields))


async def submit_upload(
    state: AppState,
    principal: Principal,
    file: UploadFile,
    options: dict[str, Any],
    *,
    request_id: str | None,
    idempotency_key: str | None = None,
) -> tuple[JobRecord, TranscribeRequest]:
    """Validate the options, read, probe and charge the upload, and queue the transcription."""
    request = transcribe_request({**options, "filename": file.filename or "audio"})
    budget = AudioBudget(state.redis, state.settings, principal.id)
    audio = await read_audio(file, state.settings, budget=budget)
    job = await submit_charged(
        state, request, principal, audio, budget, request_id=request_id, idempotency_key=idempotency_key
    )
    return job, request


async def submit_charged(
    state: AppState,
    request: TranscribeRequest | DialogueRequest,
    principal: Principal,
    audio: bytes,
    budget: AudioBudget,
    *,
    request_id: str | None = None,
    idempotency_key: str | None = None,
) -> JobRecord:
    """Queue the transcription (or dialogue); audio charged to the budget is given back if no new job
    came of it."""
    kind = JobKind.transcribe if isinstance(request, TranscribeRequest) else JobKind.dialogue
    try:
        job, replayed = await submit(
            state,
            kind,
            request,
            principal,
            request_id=request_id,
            idempotency_key=idempotency_key,
            input_file=audio,
        )
    except Exception:  # refused (quota, queue full) or Redis away: nothing was queued
        await budget.refund()
        raise
    if replayed:
        await budget.refund()
    return job


def formatted(result: dict[str, Any], response_format: str, seed: bool = False) -> Response:
    body = render(result, response_format)
    if isinstance(body, str):
        return PlainTextResponse(body, media_type=MEDIA_TYPES[response_format])
    return JSONResponse(to_seed(result) if seed else body)


@router.post("/v1/jobs/transcribe", status_code=202, tags=["jobs"])
async def create_transcription_job(
    state: StateDep,
    principal: PrincipalDep,
    rid: RequestIdDep,
    file: AudioFile,
    options: OptionsDep,
    idem: IdempotencyKeyDep = None,
) -> JSONResponse:
    job, _ = await submit_upload(state, principal, file, options, request_id=rid, idempotency_key=idem)
    body = job_created(job).model_dump(mode="json")
    return JSONResponse(body, status_code=status.HTTP_202_ACCEPTED, headers={"Location": f"/v1/jobs/{job.id}"})


@router.post("/v1/speech-to-text", response_model=None)
async def speech_to_text(
    state: StateDep, principal: PrincipalDep, rid: RequestIdDep, file: AudioFile, options: OptionsDep
) -> Response:
    """The seed endpoint: blocks until the transcript is ready; `{text, language, segments}`."""
    job, request = await submit_upload(state, principal, file, options, request_id=rid)
    final = await wait_for(state, job)
    assert final.result is not None
    return formatted(final.result, request.response_format, seed=True)


@router.websocket("/v1/speech-to-text/ws")
async def speech_to_text_ws(websocket: WebSocket) -> None:
    """Send one JSON request; get `segment` events as they are decoded, then one `transcript` event."""
    await serve_websocket(websocket, _transcribe_over_websocket)


async def _transcribe_over_websocket(
    websocket: WebSocket, state: AppState, principal: Principal, message: dict[str, Any]
) -> None:
    fields = ("language", "prompt", "response_format", "temperature")
    request = transcribe_request(
        {**{k: message.get(k) for k in fields}, "filename": message.get("filename") or "audio"}
    )
    budget = AudioBudget(state.redis, state.settings, principal.id)
    audio = await websocket_audio(message, state.settings, budget=budget)
    job = await submit_charged(state, request, principal, audio, budget)
    async for event in follow(state, job.id):
        if event.type == EventType.segment:
            await websocket.send_json({"event": "segment", "data": event.data})
    final = await state.store.get(job.id, owner=principal.id)
    if final is None:
        raise GatewayTimeout(f"job {job.id} expired before it finished")
    raise_for_failure(final)
    assert final.result is not None
    await websocket.send_json({"event": "transcript", "data": render_for_ws(final.result, request)})


def render_for_ws(result: dict[str, Any], request: TranscribeRequest) -> Any:
    body = render(result, request.response_format)
    return body if isinstance(body, str) else {**to_seed(result), **body}
