"""OpenAI-compatible `/v1/audio/transcriptions` and `/v1/audio/translations`, served by `transcribe` jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import Response

from api.deps import PrincipalDep, RequestIdDep, StateDep
from api.errors import ModelNotFound
from api.routes.transcription import Granularities, formatted, submit_transcription, transcribe_request
from api.state import AppState
from api.submit import wait_for
from api.uploads import read_audio
from tasks.catalog import is_known_stt

router = APIRouter(prefix="/v1/audio", tags=["OpenAI compatible"])


async def _serve(
    state: AppState,
    principal: PrincipalDep,
    rid: str,
    file: UploadFile,
    *,
    task: str,
    model: str,
    language: str | None,
    prompt: str | None,
    response_format: str | None,
    temperature: float | None,
    timestamp_granularities: list[str] | None,
) -> Response:
    if not is_known_stt(model):
        raise ModelNotFound(f"The model `{model}` does not exist", param="model")
    request = transcribe_request(
        model=model,
        language=language,
        prompt=prompt,
        response_format=response_format,
        temperature=temperature,
        timestamp_granularities=timestamp_granularities,
        task=task,
        filename=file.filename or "audio",
    )
    audio = await read_audio(file, state.settings)
    job = await submit_transcription(state, request, audio, principal, request_id=rid)
    final = await wait_for(state, job)
    assert final.result is not None
    response = formatted(final.result, request.response_format)
    response.headers["X-Job-ID"] = job.id
    return response


@router.post("/transcriptions", response_model=None)
async def transcriptions(
    state: StateDep,
    principal: PrincipalDep,
    rid: RequestIdDep,
    file: Annotated[UploadFile, File()],
    model: Annotated[str, Form()],
    language: Annotated[str | None, Form()] = None,
    prompt: Annotated[str | None, Form()] = None,
    response_format: Annotated[str | None, Form()] = None,
    temperature: Annotated[float | None, Form()] = None,
    timestamp_granularities: Granularities = None,
) -> Response:
    return await _serve(
        state,
        principal,
        rid,
        file,
        task="transcribe",
        model=model,
        language=language,
        prompt=prompt,
        response_format=response_format,
        temperature=temperature,
        timestamp_granularities=timestamp_granularities,
    )


@router.post("/translations", response_model=None)
async def translations(
    state: StateDep,
    principal: PrincipalDep,
    rid: RequestIdDep,
    file: Annotated[UploadFile, File()],
    model: Annotated[str, Form()],
    prompt: Annotated[str | None, Form()] = None,
    response_format: Annotated[str | None, Form()] = None,
    temperature: Annotated[float | None, Form()] = None,
) -> Response:
    return await _serve(
        state,
        principal,
        rid,
        file,
        task="translate",
        model=model,
        language=None,
        prompt=prompt,
        response_format=response_format,
        temperature=temperature,
        timestamp_granularities=None,
    )
