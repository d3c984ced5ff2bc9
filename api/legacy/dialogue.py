"""The Gemma 3 Speech API's `POST /v1/dialogue` (README: Migrating): its form read as leniently as the original read
it, its answer, and its stream order built from a dialogue job's events."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import BaseModel, ValidationError

from api.client_json import load_json
from api.errors import (
    ApiError,
    BadRequest,
    GatewayTimeout,
    JobFailure,
    Unprocessable,
    error_body,
    raise_for_failure,
    validated,
)
from api.intake.jobs import follow
from api.legacy.generation import LegacyGenerationRequest
from api.legacy.speech import FORMAT_ALIASES, LegacyAudioChunk, LegacySpeechRequest, LegacyTranscript
from api.state import AppState
from api.validation import validation_summary
from contract.dialogue import AssistantFinal, DialogueMetadata, DialogueResult, HeardTranscript
from contract.errors import UpstreamError
from contract.events import event_data
from contract.generation import GenerationParams
from contract.jobs import EventType, JobRecord, JobStatus
from contract.results import result_of
from contract.synthesis import SynthesizeRequest

INVALID_GENERATION = "Invalid generation overrides supplied"  # the original's 400 detail, word for word
# synthesis_config keys the original dropped: the text spoken is the reply, streaming is `stream_audio`.
NOT_SYNTHESIS = frozenset({"text", "input", "stream"})


def config_object(raw: Any, name: str) -> dict[str, Any]:
    """A config form field as the original's `_parse_json_field` read it: absent, empty or `"null"` is
    `{}`; anything else must be a JSON object, or it is a 400 with the original's detail."""
    if raw is None or raw in ("", "null"):
        return {}
    # Bad JSON is the original's 400 and its detail; NaN and nesting past any sane depth, every route's 422.
    value = load_json(raw, name, bad=lambda _: BadRequest(f"Invalid JSON for '{name}'", param=name))
    if not isinstance(value, dict):
        raise BadRequest(f"Field '{name}' must be a JSON object", param=name)
    return value


def legacy_generation(overrides: dict[str, Any]) -> GenerationParams:
    """generation_config as the original took it: `prompt` and nulls dropped, unknown keys ignored, its
    GenerationRequest's types and bounds (as `/v1/generate` takes them), only the fields sent applied;
    anything else is its 400. A `model` must be registered (404 `model_not_found`)."""
    sent = {key: value for key, value in overrides.items() if value is not None and key != "prompt"}
    try:
        request = LegacyGenerationRequest.model_validate({**sent, "prompt": ""}).job_request()
    except ValidationError as exc:
        field = validation_summary(list(exc.errors()))[1]
        raise BadRequest(INVALID_GENERATION, param=_generation_param(field)) from None
    except Unprocessable as exc:
        raise BadRequest(INVALID_GENERATION, param=_generation_param(exc.param)) from None
    return GenerationParams.model_validate(request.model_dump(exclude_unset=True, exclude={"prompt"}))


def _generation_param(field: str | None) -> str:
    return f"generation_config.{field}" if field else "generation_config"


def legacy_synthesis(overrides: dict[str, Any]) -> tuple[SynthesizeRequest, str | None]:
    """synthesis_config as the original took it: `text` and `stream` dropped, the rest read as
    `/v1/text-to-speech` reads it (nulls are defaults, unknown keys ignored, `references` as base64
    strings, `ogg`). Returns the request (its text a placeholder) and the format name to answer with
    when it is the original's alias (`ogg`) rather than speechq's. A bad value is a 422 naming it."""
    kept = {key: value for key, value in overrides.items() if key not in NOT_SYNTHESIS}
    with _within("synthesis_config"):
        body = validated(LegacySpeechRequest, {**kept, "text": "a"})
        request = body.job_request()
    return request, body.asked_format if body.asked_format in FORMAT_ALIASES else None


@contextmanager
def _within(config: str) -> Iterator[None]:
    """A refused field named as part of its config: `synthesis_config.voice`."""
    try:
        yield
    except ApiError as exc:
        if isinstance(exc, Unprocessable):
            exc.message = f"{config}.{exc.message}" if exc.param else f"{config}: {exc.message}"
        exc.param = f"{config}.{exc.param}" if exc.param else config
        raise


class LegacyDialogue(BaseModel):
    """The original's `SpeechDialogueResponse`, then speechq's additions."""

    transcript: LegacyTranscript
    response_text: str
    audio_base64: str
    response_format: str
    media_type: str
    sample_rate: int
    reference_id: str | None = None
    # speechq's additions
    conversation_id: str | None = None
    job_id: str

    @classmethod
    def of(cls, job: JobRecord, audio: bytes, response_format: str | None) -> LegacyDialogue:
        result = result_of(job, DialogueResult)
        heard = HeardTranscript(text=result.transcript, language=result.language, segments=result.segments)
        return cls(
            transcript=LegacyTranscript.of(heard),
            response_text=result.response_text,
            audio_base64=base64.b64encode(audio).decode(),
            response_format=response_format or result.response_format,
            media_type=result.media_type,
            sample_rate=result.sample_rate,
            reference_id=result.reference_id,
            conversation_id=result.conversation_id,
            job_id=job.id,
        )


def metadata(event: DialogueMetadata, response_format: str | None) -> dict[str, Any]:
    """`{response_format, media_type, sample_rate[, reference_id]}` (no `reference_id` when there is none,
    as the original), then speechq's own keys that have a value (`job_id`, `voice`, …)."""
    data = event.model_dump(mode="json")
    first = {key: data[key] for key in ("response_format", "media_type", "sample_rate", "reference_id")}
    if response_format:
        first["response_format"] = response_format
    return {key: value for key, value in {**first, **data, **first}.items() if value is not None}


async def stream_lines(
    state: AppState, job: JobRecord, response_format: str | None, *, pipelined: bool = False
) -> AsyncIterator[dict[str, Any]]:
    """The job's events as the original's stream lines: `metadata`, `transcript`, exactly one
    `assistant_text` (`{"text": the whole reply}`), every `audio_chunk` (held until the reply is whole),
    `done`. A failure is an `error` line (`detail`, and speechq's `data`) and no `done`, as the original's
    stream broke off. `pipelined`: deltas and audio in the job's order, and `done` whatever the outcome."""
    held: list[dict[str, Any]] = []
    answered = pipelined
    async for event in follow(state, job.id):
        if event.type == EventType.metadata:
            yield {"event": "metadata", "data": metadata(event_data(EventType.metadata, event.data), response_format)}
        elif event.type == EventType.transcript:
            heard = LegacyTranscript.of(event_data(EventType.transcript, event.data))
            yield {"event": "transcript", "data": heard.model_dump()}
        elif event.type == EventType.assistant_text:
            text = event_data(EventType.assistant_text, event.data)
            if pipelined:
                yield {"event": "assistant_text", "data": text.model_dump()}
            elif isinstance(text, AssistantFinal):
                answered = True
                yield {"event": "assistant_text", "data": {"text": text.text}}
                for line in held:
                    yield line
                held.clear()
        elif event.type == EventType.audio_chunk:
            chunk = LegacyAudioChunk.of(event_data(EventType.audio_chunk, event.data), response_format)
            line = {"event": "audio_chunk", "data": chunk.model_dump()}
            if answered:
                yield line
            else:
                held.append(line)
        elif event.type == EventType.error:
            error = event_data(EventType.error, event.data)
            yield {"event": "error", "data": error.model_dump(), **error_body(JobFailure(error.failure()))}
        elif event.type == EventType.done:
            done = event_data(EventType.done, event.data)
            if pipelined or done.status == JobStatus.succeeded:
                yield {"event": "done", "data": {"job_id": job.id, **done.model_dump(mode="json")}}


async def opened(
    state: AppState, job: JobRecord, lines: AsyncIterator[dict[str, Any]], *, first: str
) -> AsyncIterator[dict[str, Any]]:
    """Hold the answer back until the line `first` (or a successful end): a job that fails before it is
    answered with its HTTP error, as the original's was, not with a 200 that carries an error. Returns
    the lines, those read while waiting included."""
    read: list[dict[str, Any]] = []
    reached = False
    try:
        async with asyncio.timeout(state.settings.job_wait_timeout_seconds):
            async for line in lines:
                read.append(line)
                if line["event"] == first or line["event"] == "done" and line["data"]["status"] == "succeeded":
                    reached = True
                    break
    except TimeoutError:
        raise GatewayTimeout(f"job {job.id} did not start answering in time; poll /v1/jobs/{job.id}") from None
    if not reached:  # the job ended without it: failed, cancelled or expired
        final = await state.store.get(job.id, owner=job.owner)
        if final is None:
            raise GatewayTimeout(f"job {job.id} expired before it finished")
        with as_the_original():
            raise_for_failure(final)

    async def replayed() -> AsyncIterator[dict[str, Any]]:
        for line in read:
            yield line
        async for line in lines:
            yield line

    return replayed()


@contextmanager
def as_the_original() -> Iterator[None]:
    """A job's failure, with the status the original answered it with: its Whisper and OpenAudio clients
    raised RuntimeError, answered 503 "Speech services are unavailable", so speechq's `upstream_error`
    (502) and `upstream_timeout` (504) are 503 on this route, their code kept."""
    try:
        yield
    except JobFailure as exc:
        if isinstance(exc.failure, UpstreamError):
            raise JobFailure(exc.failure, status=503) from None
        raise
