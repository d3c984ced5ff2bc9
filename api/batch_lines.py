"""A batch's lines: what comes in (`BatchCreate`, a JSONL of requests, each planned as a job) and what goes
out (a line per request in the output or error file). Every line shape is built here."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ConfigDict, Field
from redis.asyncio import Redis

from api.client_json import load_json
from api.errors import (
    ApiError,
    BatchCancelled,
    BatchExpired,
    GatewayTimeout,
    InvalidJsonLine,
    RequestTooLarge,
    Unprocessable,
    batch_error,
    failure_of,
    validated,
)
from api.intake.jobs import with_operator_defaults
from api.intake.transcription import transcribe_request
from api.openai.payloads import chat_payload, completion_payload
from api.openai.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequestOpenAI,
    CompletionResponse,
)
from api.uploads import AudioBudget, check_audio
from config import Settings
from contract.errors import internal_error_message
from contract.generation import GenerationResult
from contract.jobs import JobKind, JobRecord, JobStatus, RequestedTier
from contract.results import result_of
from contract.transcription import TranscriptionResult
from contract.webhooks import WebhookFields
from jobstore.files import FileStore
from media.transcripts import render
from tasks.registry import task_for

log = logging.getLogger(__name__)

ENDPOINTS = {
    "/v1/chat/completions": JobKind.chat,
    "/v1/completions": JobKind.completion,
    "/v1/audio/transcriptions": JobKind.transcribe,
}

MAX_BATCH_REQUESTS = 50_000  # OpenAI's limit: lines wait in the scheduler and are admitted as slots free


class BatchCreate(WebhookFields):
    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(min_length=1, max_length=64)
    # The route names the endpoints in its own 422; the schema lists them for clients and fuzzers.
    endpoint: str = Field(json_schema_extra={"enum": list(ENDPOINTS)})
    completion_window: Literal["24h"] = "24h"
    metadata: dict[str, str] | None = Field(None, max_length=16)
    service_tier: RequestedTier | None = None  # speechq's: the lines' tier (default flex)


def queue_of(endpoint: str) -> str:
    """The queue a batch's jobs wait on."""
    return task_for(ENDPOINTS[endpoint]).queue


@dataclass
class Planned:
    """One validated line: what job to run for it."""

    custom_id: str
    kind: JobKind
    model: str
    payload: dict[str, Any]
    audio: bytes | None = None
    response_format: str = "json"
    budget: AudioBudget | None = None  # the audio seconds charged for it, given back if no job comes of it


async def refund(plans: list[Planned]) -> None:
    """No job came of these lines: give their audio seconds back (AUDIO_SECONDS_PER_KEY_PER_DAY)."""
    for plan in plans:
        if plan.budget is not None:
            await plan.budget.refund()


@dataclass(frozen=True, slots=True)
class LinePlanner:
    """Turns an input file's lines into jobs to run, for one key."""

    settings: Settings
    redis: Redis
    files: FileStore
    owner: str

    async def plan(self, content: bytes, endpoint: str) -> tuple[list[Planned], list[dict[str, Any]]]:
        """Every line's job, and an error per line that does not validate (the batch's `errors`)."""
        plans: list[Planned] = []
        errors: list[dict[str, Any]] = []
        seen: set[str] = set()
        limit = self.settings.max_job_request_kb * 1024
        for number, text in enumerate(content.decode("utf-8", errors="replace").splitlines(), start=1):
            if not text.strip():
                continue
            try:
                plan = await self._plan_line(endpoint, load_json(text, bad=InvalidJsonLine), seen)
                if limit and len(json.dumps(plan.payload)) > limit:
                    raise RequestTooLarge(
                        f"the request is over the {limit // 1024} KB a job may store (MAX_JOB_REQUEST_KB)"
                    )
                plans.append(plan)
            except ApiError as exc:
                errors.append(validation_error(exc.code, f"line {number}: {exc.message}", exc.param, line=number))
        if not plans and not errors:
            errors.append(validation_error("empty_file", "the input file has no requests"))
        if len(plans) + len(errors) > MAX_BATCH_REQUESTS:
            message = (
                f"the input file has {len(plans) + len(errors)} requests; a batch takes at most {MAX_BATCH_REQUESTS}"
            )
            errors.insert(0, validation_error("too_many_requests", message))
        return plans, errors

    async def _plan_line(self, endpoint: str, line: Any, seen: set[str]) -> Planned:
        """A request line → its job; raises `ApiError` naming what is wrong with it."""
        if not isinstance(line, dict):
            raise Unprocessable("each line must be a JSON object")
        custom_id = line.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            raise Unprocessable("custom_id: a non-empty string is required", param="custom_id")
        if custom_id in seen:
            raise Unprocessable(f"custom_id: {custom_id!r} is used twice; each line needs its own", param="custom_id")
        seen.add(custom_id)
        if line.get("method") != "POST":
            raise Unprocessable("method: must be POST", param="method")
        if line.get("url") != endpoint:
            raise Unprocessable(f"url: every line must be for the batch's endpoint {endpoint}", param="url")
        body = line.get("body")
        if not isinstance(body, dict):
            raise Unprocessable("body: a JSON object is required", param="body")
        if body.get("stream"):
            raise Unprocessable("body.stream: a batch answers whole responses, not streams", param="body.stream")
        for name in ("webhook_url", "webhook_events"):
            if name in body:
                raise Unprocessable(
                    f"body.{name}: a batch's webhook is the batch's own, not its lines'", param=f"body.{name}"
                )
        kind = ENDPOINTS[endpoint]
        if kind == JobKind.chat:
            chat = validated(ChatCompletionRequest, body, "body")
            payload = with_operator_defaults(chat_payload(chat), self.settings).model_dump(mode="json")
            return Planned(custom_id=custom_id, kind=kind, model=chat.model, payload=payload)
        if kind == JobKind.completion:
            completion = validated(CompletionRequestOpenAI, body, "body")
            payload = with_operator_defaults(completion_payload(completion), self.settings).model_dump(mode="json")
            return Planned(custom_id=custom_id, kind=kind, model=completion.model, payload=payload)
        return await self._plan_transcription(custom_id, body)

    async def _plan_transcription(self, custom_id: str, body: dict[str, Any]) -> Planned:
        model, file_id = body.get("model"), body.get("file")
        if not isinstance(model, str):
            raise Unprocessable("body.model: the name of a speech-to-text model is required", param="body.model")
        if not isinstance(file_id, str):
            raise Unprocessable(
                "body.file: the id of an uploaded audio file (files.create) is required", param="body.file"
            )
        options = {k: v for k, v in body.items() if k not in ("file", "model")}
        request = transcribe_request({**options, "model": model, "filename": file_id})
        audio = await self.files.file_content(file_id, self.owner)
        if audio is None:
            raise Unprocessable(f"body.file: no such file {file_id!r}", param="body.file")
        budget = AudioBudget(self.redis, self.settings, self.owner)
        await check_audio(audio, self.settings, param="body.file", budget=budget)
        return Planned(
            custom_id=custom_id,
            kind=JobKind.transcribe,
            model=model,
            payload=request.model_dump(mode="json"),
            audio=audio,
            response_format=request.response_format,
            budget=budget,
        )


# --- what goes out -------------------------------------------------------------------------------


def validation_error(code: str, message: str, param: str | None = None, *, line: int | None = None) -> dict[str, Any]:
    """An entry of a failed batch's `errors.data`: why a line of its input was refused."""
    return {"code": code, "message": message, "param": param, "line": line}


def result_line(request: list[str], row: dict[str, str] | None, *, batch_expired: bool) -> dict[str, Any]:
    """The output-file line of a request whose job (`row`, as stored; None once expired) ended, with `error`
    None, else its error-file line. A job whose record or result does not read back fails its own line
    alone, as an internal error: the log has why, the line only the job's id."""
    custom_id, job_id, model, response_format = request
    try:
        job = JobRecord.from_hash(row) if row is not None else None
        return _answer_line(custom_id, job_id, model, response_format, job, batch_expired=batch_expired)
    except (ValueError, KeyError, TypeError, AttributeError):  # ValidationError and JSONDecodeError are ValueErrors
        log.exception("batch request %r: job %s or its result does not read back", custom_id, job_id)
        return error_line(custom_id, job_id, ApiError(internal_error_message(None, job_id)))


def _answer_line(
    custom_id: str, job_id: str, model: str, response_format: str, job: JobRecord | None, *, batch_expired: bool
) -> dict[str, Any]:
    if job is None or job.status != JobStatus.succeeded or job.result is None:
        return error_line(custom_id, job_id, _failure(job, batch_expired=batch_expired))
    created = int(job.times.get("finished_at", time.time()))
    if job.kind in (JobKind.chat, JobKind.completion):
        shape = ChatCompletionResponse if job.kind == JobKind.chat else CompletionResponse
        answer: Any = shape.of(job_id, model, created, result_of(job, GenerationResult)).model_dump(mode="json")
    else:
        answer = render(result_of(job, TranscriptionResult), response_format)
    response = {"status_code": 200, "request_id": job_id, "body": answer}
    return {"id": f"batch_req_{job_id}", "custom_id": custom_id, "response": response, "error": None}


def _failure(job: JobRecord | None, *, batch_expired: bool) -> ApiError:
    """Why a request has no answer, as the API's error for it."""
    if job is None:
        return GatewayTimeout("the request's job expired before the batch ended")
    if job.status == JobStatus.cancelled:
        cause = BatchExpired if batch_expired else BatchCancelled
        return cause(f"the request was not run: {cause.code.replace('_', ' ')}")
    return failure_of(job) or ApiError(f"the job ended {job.status}")


def error_line(custom_id: str, job_id: str, error: ApiError) -> dict[str, Any]:
    """An error-file line: the request's failure as the HTTP answer it would have had, and as `error`."""
    return {"id": f"batch_req_{job_id}", "custom_id": custom_id, **batch_error(error, job_id)}
