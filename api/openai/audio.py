"""OpenAI-compatible `/v1/audio/transcriptions` and `/v1/audio/translations`, served by `transcribe` jobs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from api.auth import Principal
from api.deps import PrincipalDep, RequestIdDep, StateDep
from api.errors import Unprocessable
from api.intake.jobs import wait_for
from api.intake.transcription import AudioFile, OptionsDep, formatted, submit_upload
from api.state import AppState
from contract.results import result_of
from contract.transcription import TranscriptionResult

router = APIRouter(prefix="/v1/audio", tags=["OpenAI compatible"])


async def _serve(
    state: AppState, principal: Principal, rid: str, http: Request, file: AudioFile, options: dict[str, Any]
) -> Response:
    model = options.get("model")
    if model is None:
        raise Unprocessable("model: Field required", param="model")
    job, request, _ = await submit_upload(state, principal, file, options, request_id=rid)
    final = await wait_for(state, job, client=http)
    response = formatted(result_of(final, TranscriptionResult), request.response_format)
    response.headers["X-Job-ID"] = job.id
    return response


@router.post("/transcriptions", response_model=None)
async def transcriptions(
    state: StateDep, principal: PrincipalDep, rid: RequestIdDep, http: Request, file: AudioFile, options: OptionsDep
) -> Response:
    return await _serve(state, principal, rid, http, file, {**options, "task": "transcribe"})


@router.post("/translations", response_model=None)
async def translations(
    state: StateDep, principal: PrincipalDep, rid: RequestIdDep, http: Request, file: AudioFile, options: OptionsDep
) -> Response:
    # Translation is always into English: a source-language hint or word timestamps do not apply.
    options = {k: v for k, v in options.items() if k not in ("language", "timestamp_granularities")}
    return await _serve(state, principal, rid, http, file, {**options, "task": "translate"})
