"""The job API: submit, poll, list, cancel, fetch the result, and follow events over SSE or WebSocket."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Response, WebSocket
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.websockets import WebSocketDisconnect, WebSocketState

from api.auth import Principal
from api.deps import IdempotencyKeyDep, PrincipalDep, RequestIdDep, StateDep, StoreDep, refuse, websocket_principal
from api.errors import Conflict, JobNotSucceeded, NotFound, Unprocessable, websocket_error
from api.intake.jobs import accepted, follow, stored_audio
from api.schemas import DialogueResultPublic, JobCreated, JobPublic, JobsPublic, WebhookStatus, job_public
from api.validation import quoted
from contract.dialogue import DialogueResult
from contract.generation import ChatRequest, CompletionRequest, GenerateRequest, GenerationResult
from contract.jobs import JobKind, JobRecord, JobStatus
from contract.results import parse_result
from contract.synthesis import SynthesisResult
from contract.transcription import TranscriptionResult
from jobstore.event_log import parse_event_id
from jobstore.store import JobStore
from jobstore.waiting import place

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.post("/generate", status_code=202, response_model=JobCreated)
async def create_generate(
    body: GenerateRequest, state: StateDep, principal: PrincipalDep, rid: RequestIdDep, idem: IdempotencyKeyDep = None
) -> JSONResponse:
    return await accepted(state, JobKind.generate, body, principal, rid, idem)


@router.post("/chat", status_code=202, response_model=JobCreated)
async def create_chat(
    body: ChatRequest, state: StateDep, principal: PrincipalDep, rid: RequestIdDep, idem: IdempotencyKeyDep = None
) -> JSONResponse:
    return await accepted(state, JobKind.chat, body, principal, rid, idem)


@router.post("/completion", status_code=202, response_model=JobCreated)
async def create_completion(
    body: CompletionRequest, state: StateDep, principal: PrincipalDep, rid: RequestIdDep, idem: IdempotencyKeyDep = None
) -> JSONResponse:
    return await accepted(state, JobKind.completion, body, principal, rid, idem)


async def _owned(store: JobStore, job_id: str, principal: Principal) -> JobRecord:
    job = await store.get(job_id, owner=principal.id)
    if job is None:
        raise NotFound(f"no job {quoted(job_id)!r}", param="job_id")
    return job


@router.get("", response_model=JobsPublic)
async def list_jobs(
    store: StoreDep,
    principal: PrincipalDep,
    status: JobStatus | None = None,
    kind: JobKind | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    # A non-finite cursor would reach Redis as a score it cannot parse: refuse it here with a 422.
    cursor: Annotated[float | None, Query(description="next_cursor of the previous page", allow_inf_nan=False)] = None,
) -> JobsPublic:
    jobs, next_cursor = await store.list(owner=principal.id, limit=limit, before=cursor, status=status, kind=kind)
    return JobsPublic(
        data=[job_public(job) for job in jobs],
        next_cursor=repr(next_cursor) if next_cursor is not None else None,
        has_more=next_cursor is not None,
    )


FEED_JOBS = 50  # the feed follows the key's most recent jobs
FEED_SECONDS = 0.5  # how often it looks at them


@router.get(
    "/feed",
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "`snapshot`, then `job` events"}},
)
async def job_feed(state: StateDep, principal: PrincipalDep) -> EventSourceResponse:
    """Your jobs, live, on one connection (the console's job table): a `snapshot` event with your 50 most
    recent jobs, newest first (`{"data": [Job, …]}`), then a `job` event (a Job, as `GET /v1/jobs/{id}`
    answers it) each time one of them changes: its status, timings, progress, or its place in line and ETA
    while it waits. The server looks twice a second; the client polls nothing."""

    async def changes() -> AsyncIterator[ServerSentEvent]:
        shown: dict[str, str] | None = None  # what the client has of each job, as JSON
        while True:
            jobs, _ = await state.store.list(owner=principal.id, limit=FEED_JOBS)
            views = [
                job_public(job, await place(state.redis, job.id) if job.status == JobStatus.queued else None)
                for job in jobs
            ]
            now = {view.id: view.model_dump_json() for view in views}
            if shown is None:
                data = [view.model_dump(mode="json") for view in views]
                yield ServerSentEvent(event="snapshot", data=json.dumps({"data": data}))
            else:
                for job_id in reversed(now):  # oldest first: a client that prepends new rows keeps the order
                    if shown.get(job_id) != now[job_id]:
                        yield ServerSentEvent(event="job", data=now[job_id])
            shown = now
            await asyncio.sleep(FEED_SECONDS)

    return EventSourceResponse(changes(), ping=15, headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@router.get("/{job_id}", response_model=JobPublic)
async def get_job(job_id: str, state: StateDep, principal: PrincipalDep) -> JobPublic:
    job = await _owned(state.store, job_id, principal)
    delivery = await state.outbox.delivery(job.webhook_event) if job.webhook_event else None
    return job_public(
        job,
        await place(state.redis, job_id) if job.status == JobStatus.queued else None,
        WebhookStatus.of(job, delivery),
    )


@router.delete("/{job_id}", status_code=202, response_model=JobPublic)
async def cancel_job(job_id: str, store: StoreDep, principal: PrincipalDep) -> JobPublic:
    outcome = await store.cancel(job_id, owner=principal.id)
    if outcome is None:
        raise NotFound(f"no job {quoted(job_id)!r}", param="job_id")
    if outcome not in (JobStatus.cancelled, JobStatus.cancelling):
        raise Conflict(f"job {job_id} already ended as {outcome}; there is nothing to cancel")
    return job_public(await _owned(store, job_id, principal))


# What `GET /v1/jobs/{id}/result` answers in JSON: a synthesis's result is its audio instead.
ResultPublic = GenerationResult | TranscriptionResult | DialogueResultPublic


@router.get(
    "/{job_id}/result",
    response_model=ResultPublic,
    responses={200: {"content": {"audio/*": {}}, "description": "the result; a synthesis's is its audio"}},
)
async def get_result(job_id: str, store: StoreDep, principal: PrincipalDep) -> Response | ResultPublic:
    job = await _owned(store, job_id, principal)
    if job.status != JobStatus.succeeded:
        raise JobNotSucceeded(
            f"job {job_id} is {job.status}"
            + (f": {job.error['message']}" if job.error else "; its result is not ready")
        )
    if job.kind == JobKind.synthesize:
        return await _audio(store, job)
    result = parse_result(job.kind, job.result or {})
    if isinstance(result, DialogueResult):
        return DialogueResultPublic(**dict(result), audio_url=f"/v1/jobs/{job_id}/audio")
    assert not isinstance(result, SynthesisResult), "a synthesis answers with its audio"
    return result


@router.get(
    "/{job_id}/audio",
    response_class=Response,
    responses={200: {"content": {"audio/*": {}}, "description": "the audio, with its media type"}},
)
async def get_audio(job_id: str, store: StoreDep, principal: PrincipalDep) -> Response:
    """The audio a synthesis or a dialogue produced, with its media type."""
    job = await _owned(store, job_id, principal)
    if job.kind not in (JobKind.synthesize, JobKind.dialogue):
        raise NotFound(f"job {job_id} is a {job.kind} job; only synthesize and dialogue jobs make audio")
    if job.status != JobStatus.succeeded:
        raise Conflict(f"job {job_id} is {job.status}; its audio is not ready")
    return await _audio(store, job)


async def _audio(store: JobStore, job: JobRecord) -> Response:
    result = parse_result(job.kind, job.result or {})
    assert isinstance(result, SynthesisResult | DialogueResult), "only these jobs make audio"
    audio = await stored_audio(store, job)
    headers = {"x-audio-format": result.response_format, "x-sample-rate": str(result.sample_rate)}
    return Response(audio, media_type=result.media_type, headers=headers)


# An event id as streams give them: `<ms>-<seq>` in ASCII digits that fit Redis's 64 bits (19 digits always do),
# or "" for the start. Declared, so the schema says so and any other id is a 422 before Redis is asked: a "²" (a
# digit to `str.isdigit`) or a number past 64 bits was refused by Redis once the stream had begun.
EVENT_ID = r"^([0-9]{1,19}(-[0-9]{1,19})?)?$"


def _resume_point(header: str | None, query: str | None) -> str | None:
    given = query if query is not None else header
    try:
        return parse_event_id(given)
    except ValueError as exc:
        raise Unprocessable(f"not an event id: {quoted(given)!r}", param="Last-Event-ID") from exc


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "the job's events, as server-sent events"}},
)
async def job_events(
    job_id: str,
    state: StateDep,
    principal: PrincipalDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", pattern=EVENT_ID)] = None,
    after: Annotated[
        str | None, Query(description="resume after this event id (like Last-Event-ID)", pattern=EVENT_ID)
    ] = None,
) -> EventSourceResponse:
    await _owned(state.store, job_id, principal)
    start = _resume_point(last_event_id, after)

    async def stream() -> AsyncIterator[ServerSentEvent]:
        async for event in follow(state, job_id, after=start):
            yield ServerSentEvent(id=event.id, event=event.type, data=json.dumps(event.data))

    return EventSourceResponse(stream(), ping=15, headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@router.websocket("/{job_id}/ws")
async def job_websocket(websocket: WebSocket, job_id: str, after: str | None = None) -> None:
    state, principal = await websocket_principal(websocket)
    if principal is None:
        return
    try:
        job = await state.store.get(job_id, owner=principal.id)
        if job is None:
            await refuse(websocket, 4404, f"no job {quoted(job_id)!r}")
            return
        try:
            start = parse_event_id(after)
        except ValueError as exc:
            await refuse(websocket, 1008, str(exc))
            return
        await websocket.accept()
        async for event in follow(state, job_id, after=start):
            await websocket.send_json({"id": event.id, "event": event.type, "data": event.data})
    except WebSocketDisconnect:
        return
    except Exception as exc:  # noqa: BLE001 - Redis away, or a bug: the close says why (the messages are events)
        failure = websocket_error(exc)
        if websocket.client_state == WebSocketState.CONNECTING:
            await websocket.accept()
        await websocket.close(code=failure.close_code, reason=failure.reason)
        return
    await websocket.close(code=1000)


# Registered after every router: a POST to any other /v1/jobs/<kind> names the kinds there are.
fallback = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@fallback.post("/{kind}", include_in_schema=False)
async def unknown_kind(kind: str, _: PrincipalDep) -> None:
    raise NotFound(f"unknown job kind {quoted(kind)!r}; kinds: {', '.join(k.value for k in JobKind)}", param="kind")
