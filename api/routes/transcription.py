"""Speech to text: the job route and the original API's `/v1/speech-to-text` (HTTP and WebSocket)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import JSONResponse, Response

from api.auth import Principal
from api.deps import IdempotencyKeyDep, PrincipalDep, RequestIdDep, StateDep, serve_websocket
from api.errors import Unprocessable
from api.intake.jobs import cancelled_if_left, created, wait_for
from api.intake.transcription import AudioFile, OptionsDep, submit_charged, submit_file, submit_upload
from api.legacy.speech import EmptyUpload, LegacyTranscript, legacy_transcription, legacy_websocket_audio
from api.schemas import JobCreated
from api.state import AppState
from api.uploads import AudioBudget
from contract.results import result_of
from contract.transcription import TranscriptionResult

router = APIRouter(tags=["speech to text"])


@router.post("/v1/jobs/transcribe", status_code=202, tags=["jobs"], response_model=JobCreated)
async def create_transcription_job(
    state: StateDep,
    principal: PrincipalDep,
    rid: RequestIdDep,
    file: AudioFile,
    options: OptionsDep,
    idem: IdempotencyKeyDep = None,
) -> JSONResponse:
    job, _, replayed = await submit_upload(state, principal, file, options, request_id=rid, idempotency_key=idem)
    return created(job, replayed)


@router.post("/v1/speech-to-text", response_model=LegacyTranscript)
async def speech_to_text(
    state: StateDep,
    principal: PrincipalDep,
    rid: RequestIdDep,
    file: AudioFile,
    options: OptionsDep,
    http: Request,
    response: Response,
) -> LegacyTranscript:
    """The original endpoint: blocks until the transcript is ready and answers `{text, language, segments}`,
    whatever `response_format` says (the original passed it to Whisper and answered the same object)."""
    if file.size == 0:
        raise EmptyUpload("Uploaded audio file was empty", param="file")
    request = legacy_transcription(options, file.filename)
    job, _ = await submit_file(state, principal, file, request, request_id=rid)
    final = await wait_for(state, job, client=http)
    response.headers["X-Job-ID"] = job.id
    return LegacyTranscript.of(result_of(final, TranscriptionResult))


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
    request = legacy_transcription(message, message.get("filename"))
    budget = AudioBudget(state.redis, state.settings, principal.id)
    audio = await legacy_websocket_audio(message, state.settings, budget)
    job, _ = await submit_charged(state, request, principal, audio, budget)
    async with cancelled_if_left(state, job):
        final = await wait_for(state, job)
    transcript = LegacyTranscript.of(result_of(final, TranscriptionResult))
    await websocket.send_json({"event": "transcript", "data": transcript.model_dump(mode="json")})
