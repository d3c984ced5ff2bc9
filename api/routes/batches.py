"""OpenAI's Files and Batch APIs: upload a JSONL of requests, run each as a job, collect the answers.

Batches serve `/v1/chat/completions`, `/v1/completions` and `/v1/audio/transcriptions`; a transcription
line names its audio as an uploaded file (`"file": "file-…"`). A batch whose lines do not validate ends
`failed` with an error per bad line; otherwise every line becomes a job at once (all or none, counted
against the key's MAX_ACTIVE_JOBS_PER_KEY and storage quota) and the batch is `in_progress`. Its state
is brought up to date whenever it is read: once every job has ended, the
answers are written to an output file (and failures to an error file) and the batch is `completed` —
or `cancelled`, or `expired` after its 24 h window.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from api.auth import Principal
from api.deps import PrincipalDep, RequestIdDep, StateDep
from api.errors import ApiError, NotFound, RequestTooLarge, Unprocessable, validated
from api.openai.protocol import ChatCompletionRequest, CompletionRequestOpenAI
from api.openai.serving import chat_completion_body, chat_payload, completion_body, completion_payload
from api.routes.transcription import transcribe_request
from api.state import AppState
from api.submit import FAILURE_STATUS, allowance, refusals, storage_quota
from api.uploads import AudioBudget, check_audio
from contract.jobs import TASKS, JobKind, JobStatus
from contract.payloads import with_defaults
from jobstore.files import new_id
from media.transcripts import render

router = APIRouter(prefix="/v1", tags=["OpenAI compatible"])

ENDPOINTS = {
    "/v1/chat/completions": JobKind.chat,
    "/v1/completions": JobKind.completion,
    "/v1/audio/transcriptions": JobKind.transcribe,
}
PURPOSES = ("batch", "user_data", "assistants", "vision", "fine-tune", "evals")
WINDOW_SECONDS = 24 * 3600
MAX_ERRORS = 100


# --- files --------------------------------------------------------------------------------------


@router.post("/files")
async def upload_file(
    state: StateDep,
    principal: PrincipalDep,
    file: Annotated[UploadFile, File()],
    purpose: Annotated[str, Form()],
) -> dict[str, Any]:
    if purpose not in PURPOSES:
        raise Unprocessable(f"purpose: must be one of {', '.join(PURPOSES)}", param="purpose")
    data = await file.read()  # the body cap (MAX_UPLOAD_MB) has already held it to size
    if not data:
        raise Unprocessable("file: the file is empty", param="file")
    with refusals(state):  # STORAGE_QUOTA_MB_PER_KEY: 413 before anything is stored
        return await state.batches.put_file(
            principal.id, file.filename or "upload", purpose, data, quota=storage_quota(state.settings)
        )


@router.get("/files")
async def list_files(state: StateDep, principal: PrincipalDep, purpose: str | None = None) -> dict[str, Any]:
    return {"object": "list", "data": await state.batches.list_files(principal.id, purpose), "has_more": False}


@router.get("/files/{file_id}")
async def get_file(file_id: str, state: StateDep, principal: PrincipalDep) -> dict[str, Any]:
    record = await state.batches.get_file(file_id, principal.id)
    if record is None:
        raise NotFound(f"No such File object: {file_id}", param="file_id")
    return record


@router.get("/files/{file_id}/content")
async def file_content(file_id: str, state: StateDep, principal: PrincipalDep) -> Response:
    data = await state.batches.file_content(file_id, principal.id)
    if data is None:
        raise NotFound(f"No such File object: {file_id}", param="file_id")
    return Response(data, media_type="application/octet-stream")


@router.delete("/files/{file_id}")
async def delete_file(file_id: str, state: StateDep, principal: PrincipalDep) -> dict[str, Any]:
    if not await state.batches.delete_file(file_id, principal.id):
        raise NotFound(f"No such File object: {file_id}", param="file_id")
    return {"id": file_id, "object": "file", "deleted": True}


# --- batches ------------------------------------------------------------------------------------


class BatchCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(min_length=1, max_length=64)
    endpoint: str
    completion_window: Literal["24h"] = "24h"
    metadata: dict[str, str] | None = Field(None, max_length=16)


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


async def _refund(plans: list[Planned]) -> None:
    """No job came of these lines: give their audio seconds back (AUDIO_SECONDS_PER_KEY_PER_DAY)."""
    for plan in plans:
        if plan.budget is not None:
            await plan.budget.refund()


def _batch_owner(principal: Principal) -> str:
    return f"{principal.id}:batch"  # its jobs stay out of the key's job list (not out of its quotas)


def _queue(batch: dict[str, Any]) -> str:
    return TASKS[ENDPOINTS[batch["endpoint"]]][1]


async def _plan_line(state: AppState, principal: Principal, endpoint: str, line: Any, seen: set[str]) -> Planned:
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
    kind = ENDPOINTS[endpoint]
    if kind == JobKind.chat:
        chat = validated(ChatCompletionRequest, body, "body")
        payload = with_defaults(chat_payload(chat), state.settings.generation_defaults).model_dump(mode="json")
        return Planned(custom_id=custom_id, kind=kind, model=chat.model, payload=payload)
    if kind == JobKind.completion:
        completion = validated(CompletionRequestOpenAI, body, "body")
        payload = with_defaults(completion_payload(completion), state.settings.generation_defaults).model_dump(
            mode="json"
        )
        return Planned(custom_id=custom_id, kind=kind, model=completion.model, payload=payload)
    return await _plan_transcription(state, principal, custom_id, body)


async def _plan_transcription(state: AppState, principal: Principal, custom_id: str, body: dict[str, Any]) -> Planned:
    model, file_id = body.get("model"), body.get("file")
    if not isinstance(model, str):
        raise Unprocessable("body.model: the name of a speech-to-text model is required", param="body.model")
    if not isinstance(file_id, str):
        raise Unprocessable("body.file: the id of an uploaded audio file (files.create) is required", param="body.file")
    options = {k: v for k, v in body.items() if k not in ("file", "model")}
    request = transcribe_request({**options, "model": model, "filename": file_id})
    audio = await state.batches.file_content(file_id, principal.id)
    if audio is None:
        raise Unprocessable(f"body.file: no such file {file_id!r}", param="body.file")
    budget = AudioBudget(state.redis, state.settings, principal.id)
    await check_audio(audio, state.settings, param="body.file", budget=budget)
    return Planned(
        custom_id=custom_id,
        kind=JobKind.transcribe,
        model=model,
        payload=request.model_dump(mode="json"),
        audio=audio,
        response_format=request.response_format,
        budget=budget,
    )


def _batch_object(batch_id: str, body: BatchCreate, created: int, status: str) -> dict[str, Any]:
    return {
        "id": batch_id,
        "object": "batch",
        "endpoint": body.endpoint,
        "errors": None,
        "input_file_id": body.input_file_id,
        "completion_window": body.completion_window,
        "status": status,
        "output_file_id": None,
        "error_file_id": None,
        "created_at": created,
        "in_progress_at": None,
        "expires_at": created + WINDOW_SECONDS,
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "metadata": body.metadata,
    }


@router.post("/batches")
async def create_batch(
    body: BatchCreate, state: StateDep, principal: PrincipalDep, rid: RequestIdDep
) -> dict[str, Any]:
    if body.endpoint not in ENDPOINTS:
        raise Unprocessable(f"endpoint: batches serve {', '.join(ENDPOINTS)}", param="endpoint")
    content = await state.batches.file_content(body.input_file_id, principal.id)
    if content is None:
        raise NotFound(f"No such File object: {body.input_file_id}", param="input_file_id")
    created = int(time.time())
    batch = _batch_object(new_id("batch_"), body, created, "validating")
    plans: list[Planned] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    limit = state.settings.max_job_request_kb * 1024
    for number, text in enumerate(content.decode("utf-8", errors="replace").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            plan = await _plan_line(state, principal, body.endpoint, json.loads(text), seen)
            if limit and len(json.dumps(plan.payload)) > limit:
                raise RequestTooLarge(
                    f"the request is over the {limit // 1024} KB a job may store (MAX_JOB_REQUEST_KB)"
                )
            plans.append(plan)
        except json.JSONDecodeError as exc:
            errors.append(
                {"code": "invalid_json_line", "message": f"line {number}: {exc.msg}", "param": None, "line": number}
            )
        except ApiError as exc:
            errors.append(
                {"code": exc.code, "message": f"line {number}: {exc.message}", "param": exc.param, "line": number}
            )
    if not plans and not errors:
        errors.append({"code": "empty_file", "message": "the input file has no requests", "param": None, "line": None})
    batch["request_counts"]["total"] = len(plans) + len(errors)
    if errors:
        await _refund(plans)
        batch.update(status="failed", failed_at=created, errors={"object": "list", "data": errors[:MAX_ERRORS]})
        await state.batches.put_batch(principal.id, batch, [])
        return batch
    # One script creates every line's job or none: over MAX_ACTIVE_JOBS_PER_KEY (the lines count with the
    # key's other jobs) a 429, over QUEUE_MAX_DEPTH a 503, over the storage quota a 413, nothing queued.
    try:
        with refusals(state):
            jobs = await state.store.create_many(
                ENDPOINTS[body.endpoint],
                [(plan.payload, plan.audio) for plan in plans],
                owner=_batch_owner(principal),
                active_owner=principal.id,
                request_id=rid,
                allowance=allowance(state.settings, principal.id),
            )
    except Exception:
        await _refund(plans)
        raise
    state.metrics.jobs_created.labels(ENDPOINTS[body.endpoint].value).inc(len(jobs))
    requests = [
        [plan.custom_id, job.id, plan.model, plan.response_format] for plan, job in zip(plans, jobs, strict=True)
    ]
    batch.update(status="in_progress", in_progress_at=int(time.time()))
    await state.batches.put_batch(principal.id, batch, requests)
    return batch


async def _current(state: AppState, batch_id: str, principal: Principal) -> dict[str, Any]:
    """The batch brought up to date: counts, expiry, and the output files once every job has ended."""
    found = await state.batches.get_batch(batch_id, principal.id)
    if found is None:
        raise NotFound(f"No such Batch object: {batch_id}", param="batch_id")
    batch, requests = found
    if batch["status"] not in ("in_progress", "cancelling"):
        return batch
    owner = _batch_owner(principal)
    statuses = await state.batches.job_statuses([job_id for _, job_id, _, _ in requests])
    ended = [s is None or JobStatus(s).terminal for s in statuses]
    batch["request_counts"] = {
        "total": len(requests),
        "completed": sum(s == JobStatus.succeeded for s in statuses),
        "failed": sum(e and s != JobStatus.succeeded for s, e in zip(statuses, ended, strict=True)),
    }
    now = int(time.time())
    if not all(ended) and now >= batch["expires_at"] and batch["status"] == "in_progress":
        batch.update(status="cancelling", cancelling_at=now, expired_at=now)
        undone = [job_id for (_, job_id, _, _), done in zip(requests, ended, strict=True) if not done]
        await state.store.cancel_many(undone, owner=owner, queue=_queue(batch))
    if all(ended) and await state.batches.claim_finalizing(batch_id):
        batch["finalizing_at"] = now
        await _write_outputs(state, principal, batch, requests)
        if batch.get("expired_at"):
            batch["status"] = "expired"
        elif batch["status"] == "cancelling":
            batch.update(status="cancelled", cancelled_at=int(time.time()))
        else:
            batch.update(status="completed", completed_at=int(time.time()))
    await state.batches.save_batch(batch)
    return batch


async def _write_outputs(
    state: AppState, principal: Principal, batch: dict[str, Any], requests: list[list[str]]
) -> None:
    owner = _batch_owner(principal)
    outputs: list[str] = []
    failures: list[str] = []
    for custom_id, job_id, model, response_format in requests:
        job = await state.store.get(job_id, owner=owner)
        line: dict[str, Any] = {"id": f"batch_req_{job_id}", "custom_id": custom_id, "response": None, "error": None}
        if job is not None and job.status == JobStatus.succeeded and job.result is not None:
            created = int(job.times.get("finished_at", time.time()))
            if job.kind == JobKind.chat:
                answer: Any = chat_completion_body(job_id, model, created, job.result)
            elif job.kind == JobKind.completion:
                answer = completion_body(job_id, model, created, job.result)
            else:
                answer = render(job.result, response_format)
            line["response"] = {"status_code": 200, "request_id": job_id, "body": answer}
            outputs.append(json.dumps(line))
            continue
        if job is None:
            error = {"type": "expired", "message": "the request's job expired before the batch ended"}
        elif job.status == JobStatus.cancelled:
            code = "batch_expired" if batch.get("expired_at") else "batch_cancelled"
            error = {"type": code, "message": f"the request was not run: {code.replace('_', ' ')}"}
        else:
            error = job.error or {"type": str(job.status), "message": f"the job ended {job.status}"}
        status_code = FAILURE_STATUS.get(error["type"], 500)
        body = {"error": {"message": error["message"], "type": error["type"], "param": None, "code": error["type"]}}
        line["response"] = {"status_code": status_code, "request_id": job_id, "body": body}
        line["error"] = {"code": error["type"], "message": error["message"]}
        failures.append(json.dumps(line))
    if outputs:
        data = ("\n".join(outputs) + "\n").encode()
        record = await state.batches.put_file(
            principal.id, f"{batch['id']}_output.jsonl", "batch_output", data, quota=_counted(state)
        )
        batch["output_file_id"] = record["id"]
    if failures:
        data = ("\n".join(failures) + "\n").encode()
        record = await state.batches.put_file(
            principal.id, f"{batch['id']}_error.jsonl", "batch_output", data, quota=_counted(state)
        )
        batch["error_file_id"] = record["id"]


def _counted(state: AppState) -> int | None:
    """A batch's output files count against the key's storage, but are never refused: the work is done."""
    return 0 if storage_quota(state.settings) is not None else None


@router.get("/batches/{batch_id}")
async def get_batch(batch_id: str, state: StateDep, principal: PrincipalDep) -> dict[str, Any]:
    return await _current(state, batch_id, principal)


@router.post("/batches/{batch_id}/cancel")
async def cancel_batch(batch_id: str, state: StateDep, principal: PrincipalDep) -> dict[str, Any]:
    found = await state.batches.get_batch(batch_id, principal.id)
    if found is None:
        raise NotFound(f"No such Batch object: {batch_id}", param="batch_id")
    batch, requests = found
    if batch["status"] in ("validating", "in_progress"):
        batch.update(status="cancelling", cancelling_at=int(time.time()))
        await state.batches.save_batch(batch)
        # Their messages leave the queue too; any a worker already took is skipped before any model is used.
        job_ids = [job_id for _, job_id, _, _ in requests]
        await state.store.cancel_many(job_ids, owner=_batch_owner(principal), queue=_queue(batch))
    return await _current(state, batch_id, principal)


@router.get("/batches")
async def list_batches(state: StateDep, principal: PrincipalDep, limit: int = 20) -> dict[str, Any]:
    ids = await state.batches.list_batches(principal.id, max(1, min(limit, 100)))
    data = [await _current(state, batch_id, principal) for batch_id in ids]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": False,
    }
