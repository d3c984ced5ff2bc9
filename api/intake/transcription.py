"""A transcription's intake: its options (form fields or a batch line's body) as a validated `TranscribeRequest`,
the upload read, probed and charged, and the job queued; and a transcript answered in its format. The
transcription routes, the OpenAI audio routes, dialogue and the batch planner share it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, File, Form, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from api.auth import Principal
from api.errors import validated
from api.intake.jobs import submit
from api.state import AppState
from api.uploads import AudioBudget, read_audio
from api.webhooks.forms import WebhookFormDep
from contract.dialogue import DialogueRequest
from contract.jobs import JobKind, JobRecord
from contract.transcription import TranscribeRequest, TranscriptionResult
from media.transcripts import MEDIA_TYPES, render


def transcribe_request(fields: dict[str, Any]) -> TranscribeRequest:
    """Fields (those given as None were not sent) → a validated request; a bad one is a 422 naming it."""
    return validated(TranscribeRequest, {name: value for name, value in fields.items() if value is not None})


async def transcription_options(
    webhook: WebhookFormDep,
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
    return webhook | sent_fields(
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
) -> tuple[JobRecord, TranscribeRequest, bool]:
    """Validate the options, read, probe and charge the upload, and queue the transcription; the job, the
    request, and whether an Idempotency-Key replayed an existing job."""
    request = transcribe_request({**options, "filename": file.filename or "audio"})
    job, replayed = await submit_file(
        state, principal, file, request, request_id=request_id, idempotency_key=idempotency_key
    )
    return job, request, replayed


async def submit_file(
    state: AppState,
    principal: Principal,
    file: UploadFile,
    request: TranscribeRequest,
    *,
    request_id: str | None,
    idempotency_key: str | None = None,
) -> tuple[JobRecord, bool]:
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
) -> tuple[JobRecord, bool]:
    """Queue the transcription (or dialogue); audio charged to the budget is given back if no new job
    came of it. Returns the job and whether an Idempotency-Key replayed an existing one."""
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
    return job, replayed


def formatted(result: TranscriptionResult, response_format: str) -> Response:
    body = render(result, response_format)
    if isinstance(body, str):
        return PlainTextResponse(body, media_type=MEDIA_TYPES[response_format])
    return JSONResponse(body)
