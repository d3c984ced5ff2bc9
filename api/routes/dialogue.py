"""Spoken dialogue: the job route, the original API's `/v1/dialogue` and a WebSocket.

The audio goes in, and out come the events of one `dialogue` job: `metadata`, `transcript`,
`assistant_text` (deltas, then the final text), `audio_chunk`… in sentence order, and `done`. The job route
and the WebSocket are speechq's own and pass them on as they come. `/v1/dialogue` answers as the Gemma 3
Speech API did (README: Migrating): its lenient form fields, its body, and its stream order — the whole reply in one
`assistant_text`, then the audio — unless the client opts into speechq's sentence-pipelined order.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request, WebSocket
from fastapi.responses import JSONResponse, Response, StreamingResponse

from api.auth import Principal
from api.client_json import load_json
from api.deps import IdempotencyKeyDep, PrincipalDep, RequestIdDep, StateDep, serve_websocket
from api.errors import JobFailure, Unprocessable, validated, websocket_error
from api.intake.jobs import cancelled_if_abandoned, cancelled_if_left, created, follow, stored_audio, wait_for
from api.intake.synthesis import remote_defaults
from api.intake.transcription import AudioFile, sent_fields, submit_charged
from api.legacy.dialogue import (
    LegacyDialogue,
    as_the_original,
    config_object,
    legacy_generation,
    legacy_synthesis,
    opened,
    stream_lines,
)
from api.legacy.speech import EmptyUpload, LegacyAudioChunk
from api.schemas import JobCreated
from api.state import AppState
from api.uploads import AudioBudget, read_audio, websocket_audio
from api.webhooks.forms import WebhookFormDep
from contract.dialogue import DialogueRequest, DialogueResult
from contract.events import event_data
from contract.generation import GenerationParams
from contract.jobs import EventType, JobRecord
from contract.results import result_of
from contract.synthesis import InvalidField, SynthesizeRequest, resolve_synthesis

router = APIRouter(tags=["dialogue"])

# The events a dialogue client sees (the job log also has queued, started, progress and result).
CLIENT_EVENTS = {EventType.metadata, EventType.transcript, EventType.assistant_text, EventType.audio_chunk}


async def dialogue_options(
    webhook: WebhookFormDep,
    instructions: Annotated[str | None, Form(description="the system prompt")] = None,
    generation_config: Annotated[str | None, Form(description="JSON: max_tokens, temperature, model, …")] = None,
    synthesis_config: Annotated[str | None, Form(description="JSON: voice, response_format, sample_rate, …")] = None,
    conversation_id: Annotated[str | None, Form(description="keeps the history of earlier turns")] = None,
    language: Annotated[str | None, Form(description="the language spoken, if known")] = None,
    service_tier: Annotated[
        str | None, Form(description="priority (the default), default, flex or auto: how soon it starts")
    ] = None,
) -> dict[str, Any]:
    return webhook | sent_fields(
        instructions=instructions,
        generation_config=generation_config,
        synthesis_config=synthesis_config,
        conversation_id=conversation_id,
        language=language,
        service_tier=service_tier,
    )


OptionsDep = Annotated[dict[str, Any], Depends(dialogue_options)]


def _object(value: Any, name: str) -> dict[str, Any]:
    """A JSON object given as such (WebSocket) or as a JSON string (multipart)."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        value = load_json(value, name)
    if not isinstance(value, dict):
        raise Unprocessable(f"{name}: must be a JSON object", param=name)
    return value


def dialogue_request(state: AppState, fields: dict[str, Any], filename: str) -> DialogueRequest:
    """Form or WebSocket fields → a validated dialogue request, read strictly (the job route, the
    WebSocket): a bad field is a 422 naming it (`generation_config.temperature`, `synthesis_config.voice`, …)."""
    generation = validated(
        GenerationParams, _object(fields.get("generation_config"), "generation_config"), "generation_config"
    )
    synthesis = _object(fields.get("synthesis_config"), "synthesis_config")
    for spoken in ("text", "input"):
        if spoken in synthesis:
            raise Unprocessable(
                f"synthesis_config.{spoken}: the text spoken is the model's answer", param=f"synthesis_config.{spoken}"
            )
    speech = validated(SynthesizeRequest, {**synthesis, "text": "a"}, "synthesis_config")  # checks the rest
    return _assembled(state, fields, generation, speech, filename)


def _assembled(
    state: AppState, fields: dict[str, Any], generation: GenerationParams, speech: SynthesizeRequest, filename: str
) -> DialogueRequest:
    """The job's request: the generation as sent (the operator's defaults come with the submission) and
    answered by DIALOGUE_MODEL unless it names a model, the speech (its text a placeholder) resolved to an
    engine, a voice and a rate (what none can do is a 422 naming the field)."""
    try:
        speech = resolve_synthesis(speech, state.settings.tts_model, remote_defaults(state))
    except InvalidField as exc:
        raise Unprocessable(f"synthesis_config.{exc}", param=f"synthesis_config.{exc.param}") from None
    config = generation.model_dump(mode="json", exclude_unset=True)
    if generation.model is None:  # a conversation wants replies: an instruct model, not LLM_MODEL's base one
        config["model"] = state.settings.dialogue_model
    return validated(
        DialogueRequest,
        {
            "instructions": fields.get("instructions"),
            "generation_config": config,
            "synthesis_config": speech.model_dump(mode="json", exclude={"text"}),
            "conversation_id": fields.get("conversation_id"),
            "language": fields.get("language"),
            "filename": filename,
            "service_tier": fields.get("service_tier"),
            "webhook_url": fields.get("webhook_url"),
            "webhook_events": fields.get("webhook_events"),
        },
    )


def legacy_dialogue_request(
    state: AppState, fields: dict[str, Any], filename: str
) -> tuple[DialogueRequest, str | None]:
    """The form of `/v1/dialogue`, read as the original read it: both configs parsed, then checked."""
    generation = config_object(fields.get("generation_config"), "generation_config")
    synthesis = config_object(fields.get("synthesis_config"), "synthesis_config")
    speech, response_format = legacy_synthesis(synthesis)
    return _assembled(state, fields, legacy_generation(generation), speech, filename), response_format


async def client_events(state: AppState, job: JobRecord) -> AsyncIterator[dict[str, Any]]:
    """The dialogue's events as clients see them: `{event, data}` (a failure as every WebSocket's error
    message), ending with `done` (status and result)."""
    async for event in follow(state, job.id):
        if event.type == EventType.audio_chunk:
            chunk = LegacyAudioChunk.of(event_data(EventType.audio_chunk, event.data))
            yield {"event": "audio_chunk", "data": chunk.model_dump()}
        elif event.type in CLIENT_EVENTS:
            yield {"event": event.type, "data": event_data(event.type, event.data).model_dump(mode="json")}
        elif event.type == EventType.error:
            yield websocket_error(JobFailure(event_data(EventType.error, event.data).failure())).message
        elif event.type == EventType.done:
            done = event_data(EventType.done, event.data)
            final = await state.store.get(job.id, owner=job.owner)
            result: dict[str, Any] = {}
            if final is not None and final.result is not None:
                result = result_of(final, DialogueResult).model_dump(mode="json")
            yield {"event": "done", "data": {"job_id": job.id, **done.model_dump(mode="json"), **result}}


@router.post("/v1/jobs/dialogue", status_code=202, tags=["jobs"], response_model=JobCreated)
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
    job, replayed = await submit_charged(state, request, principal, audio, budget, request_id=rid, idempotency_key=idem)
    return created(job, replayed)


@router.post("/v1/dialogue", response_model=LegacyDialogue)
async def dialogue(
    state: StateDep,
    principal: PrincipalDep,
    rid: RequestIdDep,
    http: Request,
    file: AudioFile,
    options: OptionsDep,
    stream_audio: Annotated[bool, Form(description="answer with one JSON event per line")] = False,
    pipelined: Annotated[
        bool,
        Form(
            description="speechq's order for `stream_audio`: `assistant_text` deltas and each sentence's audio as "
            "they are made (the first sentence is heard while the model still writes), then the final text"
        ),
    ] = False,
) -> Response:
    """The original endpoint, as the Gemma 3 Speech API answered it: `{transcript: {text, language, segments},
    response_text, audio_base64, response_format, media_type, sample_rate, reference_id}`; with
    `stream_audio`, lines `{"event", "data"}` (`application/json`): `metadata`, `transcript`, one
    `assistant_text` with the whole reply, `audio_chunk`…, `done`. A failure before the first line is an
    HTTP error. `pipelined=true` streams in speechq's order instead (`application/x-ndjson`)."""
    if file.size == 0:
        raise EmptyUpload("Uploaded audio file was empty", param="file")  # checked first, as the original did
    request, response_format = legacy_dialogue_request(state, options, file.filename or "audio")
    budget = AudioBudget(state.redis, state.settings, principal.id)
    audio = await read_audio(file, state.settings, budget=budget)
    job, _ = await submit_charged(state, request, principal, audio, budget, request_id=rid)
    headers = {"X-Job-ID": job.id}
    if stream_audio:
        lines = stream_lines(state, job, response_format, pipelined=pipelined)
        opening = await opened(state, job, lines, first="transcript" if pipelined else "audio_chunk")

        async def body() -> AsyncIterator[bytes]:
            async for line in opening:
                yield (json.dumps(line) + "\n").encode()

        media_type = "application/x-ndjson" if pipelined else "application/json"
        return StreamingResponse(cancelled_if_abandoned(state, job, body()), media_type=media_type, headers=headers)
    with as_the_original():
        final = await wait_for(state, job, client=http)
    answer = LegacyDialogue.of(final, await stored_audio(state.store, final), response_format)
    return JSONResponse(answer.model_dump(mode="json"), headers=headers)


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
    job, _ = await submit_charged(state, request, principal, audio, budget)
    async with cancelled_if_left(state, job):
        async for event in client_events(state, job):
            await websocket.send_json(event)
