"""The original API's generation endpoints, now backed by the queue: the original's paths, request fields,
answers and stream framing (README: Migrating), so its clients keep working unchanged."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response, WebSocket
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.websockets import WebSocketDisconnect

from api.auth import Principal
from api.deps import PrincipalDep, RequestIdDep, StateDep, websocket_principal
from api.errors import Conflict, JobFailure, WebSocketError, error_body, validated, websocket_error
from api.inbox import Inbox
from api.intake.jobs import cancelled_if_abandoned, cancelled_if_left, follow, submit, wait_for
from api.legacy.generation import LegacyGenerationRequest
from api.state import AppState
from contract.events import event_data
from contract.generation import GenerateRequest, GenerationResult
from contract.jobs import EventType, JobKind, JobRecord, JobStatus
from contract.results import result_of

router = APIRouter(prefix="/v1", tags=["generation (original API)"])


class GenerateResponse(BaseModel):
    generated_text: str


@router.post("/generate", response_model=GenerateResponse)
async def generate(
    body: LegacyGenerationRequest,
    state: StateDep,
    principal: PrincipalDep,
    rid: RequestIdDep,
    request: Request,
    response: Response,
) -> GenerateResponse:
    job, _ = await submit(state, JobKind.generate, body.job_request(), principal, request_id=rid)
    final = await wait_for(state, job, client=request)
    response.headers["X-Job-ID"] = job.id  # speechq's addition, as on the other original API's routes
    return GenerateResponse(generated_text=result_of(final, GenerationResult).text)


async def _text_so_far(state: AppState, job: JobRecord) -> AsyncIterator[dict[str, Any]]:
    """The original's stream lines: `{"generated_text": <the text so far>}` for each delta, and a failure
    as `{"detail": …}` (with speechq's `error` object beside it)."""
    text = ""
    async for event in follow(state, job.id):
        if event.type == EventType.token:
            text += event_data(EventType.token, event.data).text
            yield {"generated_text": text}
        elif event.type == EventType.error:
            yield error_body(JobFailure(event_data(EventType.error, event.data).failure()))
        elif event.type == EventType.done:
            ended = event_data(EventType.done, event.data).status
            if ended not in (JobStatus.succeeded, JobStatus.failed):
                yield error_body(Conflict(f"the generation was {ended}"))


@router.post(
    "/generate_stream",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "A stream of JSON objects, one per line, as the original sent them: "
            '`{"generated_text": <the text so far>}` for each piece, a failure as the error envelope',
            "content": {"application/json": {}},  # JSON lines: no one JSON Schema describes the stream
        }
    },
)
async def generate_stream(
    body: LegacyGenerationRequest, state: StateDep, principal: PrincipalDep, rid: RequestIdDep
) -> StreamingResponse:
    """One JSON object per line, as the original sent them (`Content-Type: application/json`)."""
    job, _ = await submit(state, JobKind.generate, body.job_request(), principal, request_id=rid)

    async def lines() -> AsyncIterator[bytes]:
        async for line in _text_so_far(state, job):
            yield (json.dumps(line) + "\n").encode()

    body_stream = cancelled_if_abandoned(state, job, lines())
    return StreamingResponse(body_stream, media_type="application/json", headers={"X-Job-ID": job.id})


@router.websocket("/generate_ws")
async def generate_ws(websocket: WebSocket) -> None:
    """Request after request on one connection: `{"token": …}`… then `{"status": "done"}` for each. A bad
    request or a failed generation closes it with 1011, as the original did, after a message saying why."""
    state, principal = await websocket_principal(websocket)
    if principal is None:
        return
    await websocket.accept()
    async with Inbox(websocket) as inbox:
        while True:
            try:
                request = validated(LegacyGenerationRequest, await inbox.next_request()).job_request()
                failure = await inbox.while_connected(_generate(websocket, state, principal, request))
            except WebSocketDisconnect:
                return
            except Exception as exc:  # noqa: BLE001 - a bad request, Redis or the broker away, a bug: say why
                failure = websocket_error(exc)
            if failure is not None:
                await websocket.send_json(failure.message)
                # The original closed the connection after any failed request, and always with 1011.
                await websocket.close(code=1011, reason=failure.reason)
                return


async def _generate(
    websocket: WebSocket, state: AppState, principal: Principal, request: GenerateRequest
) -> WebSocketError | None:
    job, _ = await submit(state, JobKind.generate, request, principal)
    async with cancelled_if_left(state, job):
        return await _stream_tokens(websocket, state, job)


async def _stream_tokens(websocket: WebSocket, state: AppState, job: JobRecord) -> WebSocketError | None:
    """Send the job's text as `token` messages, then `done`; returns why it failed, if it did."""
    result: GenerationResult | None = None
    async for event in follow(state, job.id):
        if event.type == EventType.token:
            await websocket.send_json({"token": event_data(EventType.token, event.data).text})
        elif event.type == EventType.result:
            result = GenerationResult.model_validate(event.data)
        elif event.type == EventType.error:
            return websocket_error(JobFailure(event_data(EventType.error, event.data).failure()))
        elif event.type == EventType.done:
            ended = event_data(EventType.done, event.data).status
            if ended != JobStatus.succeeded:
                return websocket_error(Conflict(f"job {job.id} {ended}"))
    usage = result.usage.model_dump() if result is not None else None
    await websocket.send_json({"status": "done", "job_id": job.id, "usage": usage})
    return None
