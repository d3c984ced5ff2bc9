"""Speech to text: the job route and the seed API's `/v1/speech-to-text` (HTTP and WebSocket)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, UploadFile, WebSocket, status
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from api.auth import Principal
from api.deps import IdempotencyKeyDep, PrincipalDep, RequestIdDep, StateDep, serve_websocket
from api.errors import Unprocessable
from api.schemas import JobCreated, job_created
from api.seed_speech import EmptyUpload, SeedTranscript, seed_transcription, seed_websocket_audio
from api.state import AppState
from api.submit import submit, wait_for
from api.transcription_request import transcribe_request
from api.uploads import AudioBudget, read_audio
from contract.dialogue import DialogueRequest
from contract.jobs import JobKind, JobRecord
from contract.results import result_of
from contract.transcription import TranscribeRequest, TranscriptionResult
from media.transcripts import MEDIA_TYPES, render

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
    service_tier: Annotated[str | None, Form()] = None,
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
        service_tier=service_tier,
    )


def sent_fields(**fields: Any) -> dict[str, Any]:
    """The form fields a client sent (FastAPI gives the others as None)."""
    return {name: value for name, value in fields.items() if value is not None}


OptionsDep = Annotated[dict[str, Any], Depends(transcription_options)]
AudioFile = Annotated[UploadFile, File(description="the recording")]


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
    job = await submit_file(state, principal, file, request, request_id=request_id, idempotency_key=idempotency_key)
    return job, request


async def submit_file(
    state: AppState,
    principal: Principal,
    file: UploadFile,
    request: TranscribeRequest,
    *,
    request_id: str | None,
    idempotency_key: str | None = None,
) -> JobRecord:
    """Read, probe and charge the upload, and queue its transcription."""
    budget = AudioBudget(state.redis, state.settings, principal.id)
    audio = await read_audio(file, state.settings, budget=budget)
    return await submit_charged(
        state, request, principal, audio, budget, request_id=request_id, idempotency_key=idempotency_key
    )


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


def formatted(result: TranscriptionResult, response_format: str) -> Response:
    body = render(result, response_format)
    if isinstance(body, str):
        return PlainTextResponse(body, media_type=MEDIA_TYPES[response_format])
    return JSONResponse(body)


@router.post("/v1/jobs/transcribe", status_code=202, tags=["jobs"], response_model=JobCreated)
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


@router.post("/v1/speech-to-text", response_model=SeedTranscript)
async def speech_to_text(
    state: StateDep,
    principal: PrincipalDep,
    rid: RequestIdDep,
    file: AudioFile,
    options: OptionsDep,
    response: Response,
) -> SeedTranscript:
    """The seed endpoint: blocks until the transcript is ready and answers `{text, language, segments}`,
    whatever `response_format` says (the original passed it to Whisper and answered the same object)."""
    if file.size == 0:
        raise EmptyUpload("Uploaded audio file was empty", param="file")
    request = seed_transcription(options, file.filename)
    job = await submit_file(state, principal, file, request, request_id=rid)
    final = await wait_for(state, job)
    response.headers["X-Job-ID"] = job.id
    return SeedTranscript.of(result_of(final, TranscriptionResult))


@router.websocket("/v1/speech-to-text/ws")
async def speech_to_text_ws(websocket: WebSocket) -> None:
    """Request after request on one connection, each `{audio_base64, filename, content_type, language,
    prompt, response_format, temperature}`, each answered by one `{"event": "transcript", "data": {text,
    language, segments}}`, or `{"event": "error", "detail"}` with the connection left open."""
    await serve_websocket(websocket, _transcribe_over_websocket)


async def _transcribe_over_websocket(
    websocket: WebSocket, state: AppState, principal: Principal, message: dict[str, Any]
) -> None:
    if not message.get("audio_base64"):
        raise Unprocessable("Missing 'audio_base64' field.", param="audio_base64")
    request = seed_transcription(message, message.get("filename"))
    budget = AudioBudget(state.redis, state.settings, principal.id)
    audio = await seed_websocket_audio(message, state.settings, budget)
    job = await submit_charged(state, request, principal, audio, budget)
    final = await wait_for(state, job)
    transcript = SeedTranscript.of(result_of(final, TranscriptionResult))
    await websocket.send_json({"event": "transcript", "data": transcript.model_dump(mode="json")})
