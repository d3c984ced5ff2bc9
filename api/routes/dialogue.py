"""Spoken dialogue: the job route, the seed API's `/v1/dialogue` (blocking JSON or NDJSON) and a WebSocket.

The audio goes in, and out come the events of one `dialogue` job: `metadata`, `transcript`,
`assistant_text` (deltas, then the final text), `audio_chunk`… in sentence order, and `done`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, WebSocket, status
from fastapi.responses import JSONResponse, Response, StreamingResponse

from api.auth import Principal
from api.deps import IdempotencyKeyDep, PrincipalDep, RequestIdDep, StateDep, serve_websocket
from api.errors import Unprocessable, validated
from api.routes.synthesis import remote_defaults
from api.routes.transcription import AudioFile, sent_fields, submit_charged
from api.schemas import job_created
from api.state import AppState
from api.submit import follow, stored_audio, wait_for
from api.uploads import AudioBudget, read_audio, websocket_audio
from tasks.jobs import EventType, JobRecord
from tasks.payloads import (
    DialogueRequest,
    GenerationParams,
    InvalidField,
    SynthesizeRequest,
    resolve_synthesis,
    with_defaults,
)

router = APIRouter(tags=["dialogue"])

# The events a dialogue client sees (the job log also has queued, started, progress and result).
CLIENT_EVENTS = {EventType.metadata, EventType.transcript, EventType.assistant_text, EventType.audio_chunk}


async def dialogue_options(
    instructions: Annotated[str | None, Form(description="the system prompt")] = None,
    generation_config: Annotated[str | None, Form(description="JSON: max_tokens, temperature, model, …")] = None,
    synthesis_config: Annotated[str | None, Form(description="JSON: voice, response_format, sample_rate, …")] = None,
    conversation_id: Annotated[str | None, Form(description="keeps the history of earlier turns")] = None,
    language: Annotated[str | None, Form(description="the language spoken, if known")] = None,
) -> dict[str, Any]:
    return sent_fields(
        instructions=instructions,
        generation_config=generation_config,
        synthesis_config=synthesis_config,
        conversation_id=conversation_id,
        language=language,
    )


OptionsDep = Annotated[dict[str, Any], Depends(dialogue_options)]


def _object(value: Any, name: str) -> dict[str, Any]:
    """A JSON object given as such (WebSocket) or as a JSON string (multipart)."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise Unprocessable(f"{name}: not valid JSON ({exc.msg})", param=name) from None
    if not isinstance(value, dict):
        raise Unprocessable(f"{name}: must be a JSON object", param=name)
    return value


def dialogue_request(state: AppState, fields: dict[str, Any], filename: str) -> DialogueRequest:
    """Form or WebSocket fields → a validated dialogue request; a bad field is a 422 naming it
    (`generation_config.temperature`, `synthesis_config.voice`, …)."""
    generation = with_defaults(
        validated(GenerationParams, _object(fields.get("generation_config"), "generation_config"), "generation_config"),
        state.settings.generation_defaults,
    )
    synthesis = _object(fields.get("synthesis_config"), "synthesis_config")
    for spoken in ("text", "input"):
        if spoken in synthesis:
            raise Unprocessable(
                f"synthesis_config.{spoken}: the text spoken is the model's answer", param=f"synthesis_config.{spoken}"
            )
    speech = validated(SynthesizeRequest, {**synthesis, "text": "a"}, "synthesis_config")  # checks the rest
    try:
        speech = resolve_synthesis(speech, state.settings.tts_model, remote_defaults(state))
    except InvalidField as exc:
        raise Unprocessable(f"synthesis_config.{exc}", param=f"synthesis_config.{exc.param}") from None
    return validated(
        DialogueRequest,
        {
            "instructions": fields.get("instructions"),
            "generation_config": generation.model_dump(mode="json"),
            "synthesis_config": speech.model_dump(mode="json", exclude={"text"}),
            "conversation_id": fields.get("conversation_id"),
            "language": fields.get("language"),
            "filename": filename,
        },
    )


async def submit_dialogue(
    state: AppState,
    principal: Principal,
    request: DialogueRequest,
    audio: bytes,
    budget: AudioBudget,
    request_id: str | None,
    idem: str | None = None,
) -> JobRecord:
    return await submit_charged(state, request, principal, audio, budget, request_id=request_id, idempotency_key=idem)


async def client_events(state: AppState, job: JobRecord) -> AsyncIterator[dict[str, Any]]:
    """The dialogue's events as clients see them: `{event, data}`, ending with `done` (status and result)."""
    async for event in follow(state, job.id):
        if event.type == EventType.audio_chunk:
            data = event.data
            chunk = {"index": data["index"], "audio_base64": data["audio"], "text": data.get("text")}
            yield {
                "event": "audio_chunk",
                "data": {**chunk, "format": data["format"], "sample_rate": data["sample_rate"]},
            }
        elif event.type in CLIENT_EVENTS or event.type == EventType.error:
            yield {"event": event.type, "data": event.data}
        elif event.type == EventType.done:
            final = await state.store.get(job.id, owner=job.owner)
            result = (final.result or {}) if final is not None else {}
            yield {"event": "done", "data": {"job_id": job.id, **event.data, **result}}


def dialogue_body(job: JobRecord, audio: bytes) -> dict[str, Any]:
    result = job.result or {}
    return {
        "transcript": result.get("transcript"),
        "response_text": result.get("response_text"),
        "audio_base64": base64.b64encode(audio).decode(),
        "response_format": result.get("response_format"),
        "media_type": result.get("media_type"),
        "sample_rate": result.get("sample_rate"),
        "reference_id": result.get("reference_id"),
        "conversation_id": result.get("conversation_id"),
        "job_id": job.id,
    }


@router.post("/v1/jobs/dialogue", status_code=202, tags=["jobs"])
async def create_dialogue_job(
    state: StateDep,
    principal: PrincipalDep,
    rid: RequestIdDep,
    file: AudioFile,
    options: OptionsDep,
    idem: IdempotencyKeyDep = None,
) -> JSONResponse:
    request = dialogue_request(state, options, file.filename or "audio")
    budget = AudioBudget(state.redis, state.settings, principal.id)
    audio = await read_audio(file, state.settings, budget=budget)
    job = await submit_dialogue(state, principal, request, audio, budget, rid, idem)
    body = job_created(job).model_dump(mode="json")
    return JSONResponse(body, status_code=status.HTTP_202_ACCEPTED, headers={"Location": f"/v1/jobs/{job.id}"})


@router.post("/v1/dialogue", response_model=None)
async def dialogue(
    state: StateDep,
    principal: PrincipalDep,
    rid: RequestIdDep,
    file: AudioFile,
    options: OptionsDep,
    stream_audio: Annotated[bool, Form(description="answer with NDJSON events as they happen")] = False,
) -> Response:
    """The seed endpoint: `{transcript, response_text, audio_base64, …}`, or NDJSON events with `stream_audio`."""
    request = dialogue_request(state, options, file.filename or "audio")
    budget = AudioBudget(state.redis, state.settings, principal.id)
    audio = await read_audio(file, state.settings, budget=budget)
    job = await submit_dialogue(state, principal, request, audio, budget, rid)
    if stream_audio:

        async def lines() -> AsyncIterator[bytes]:
            async for message in client_events(state, job):
                yield (json.dumps(message) + "\n").encode()

        return StreamingResponse(lines(), media_type="application/x-ndjson", headers={"X-Job-ID": job.id})
    final = await wait_for(state, job)
    audio = await stored_audio(state.store, final)
    return JSONResponse(dialogue_body(final, audio), headers={"X-Job-ID": job.id})


@router.websocket("/v1/dialogue/ws")
async def dialogue_ws(websocket: WebSocket) -> None:
    """Send one JSON message with `audio_base64` (and the fields of `/v1/dialogue`); get its events back."""
    await serve_websocket(websocket, _dialogue_over_websocket)


async def _dialogue_over_websocket(
    websocket: WebSocket, state: AppState, principal: Principal, message: dict[str, Any]
) -> None:
    request = dialogue_request(state, message, str(message.get("filename") or "audio"))
    budget = AudioBudget(state.redis, state.settings, principal.id)
    audio = await websocket_audio(message, state.settings, budget=budget)
    job = await submit_dialogue(state, principal, request, audio, budget, None)
    async for event in client_events(state, job):
        await websocket.send_json(event)
