"""The seed API's generation endpoints, now backed by the queue: the original's paths, request fields,
answers and stream framing (SPEC §7), so its clients keep working unchanged."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, WebSocket
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ValidationError
from redis.exceptions import RedisError
from starlette.websockets import WebSocketDisconnect

from api.deps import PrincipalDep, RequestIdDep, StateDep, websocket_principal
from api.errors import ApiError, validation_summary
from api.seed_generation import SeedGenerationRequest
from api.state import AppState
from api.submit import follow, submit, wait_for
from contract.jobs import EventType, JobKind, JobRecord

router = APIRouter(prefix="/v1", tags=["generation (seed API)"])


class GenerateResponse(BaseModel):
    generated_text: str


@router.post("/generate", response_model=GenerateResponse)
async def generate(
    body: SeedGenerationRequest, state: StateDep, principal: PrincipalDep, rid: RequestIdDep
) -> GenerateResponse:
    job, _ = await submit(state, JobKind.generate, body.job_request(), principal, request_id=rid)
    final = await wait_for(state, job)
    assert final.result is not None
    return GenerateResponse(generated_text=final.result["text"])


async def _text_so_far(state: AppState, job: JobRecord) -> AsyncIterator[dict[str, Any]]:
    """The original's stream lines: `{"generated_text": <the text so far>}` for each delta, and a failure
    as `{"detail": …}` (with speechq's `error` beside it)."""
    text = ""
    async for event in follow(state, job.id):
        if event.type == EventType.token:
            text += event.data["text"]
            yield {"generated_text": text}
        elif event.type == EventType.error:
            yield {"detail": event.data["message"], "error": event.data}
        elif event.type == EventType.done and event.data["status"] not in ("succeeded", "failed"):
            yield {"detail": f"the generation was {event.data['status']}"}


@router.post("/generate_stream")
async def generate_stream(
    body: SeedGenerationRequest, state: StateDep, principal: PrincipalDep, rid: RequestIdDep
) -> StreamingResponse:
    """One JSON object per line, as the original sent them (`Content-Type: application/json`)."""
    job, _ = await submit(state, JobKind.generate, body.job_request(), principal, request_id=rid)

    async def lines() -> AsyncIterator[bytes]:
        async for line in _text_so_far(state, job):
            yield (json.dumps(line) + "\n").encode()

    return StreamingResponse(lines(), media_type="application/json", headers={"X-Job-ID": job.id})


@router.websocket("/generate_ws")
async def generate_ws(websocket: WebSocket) -> None:
    """Request after request on one connection: `{"token": …}`… then `{"status": "done"}` for each. A bad
    request or a failed generation closes it with 1011, as the original did, after a message saying why."""
    state, principal = await websocket_principal(websocket)
    if principal is None:
        return
    await websocket.accept()
    while True:
        try:
            raw = await websocket.receive_json()
            request = SeedGenerationRequest.model_validate(raw).job_request()
            job, _ = await submit(state, JobKind.generate, request, principal)
            failure = await _stream_tokens(websocket, state, job)
        except WebSocketDisconnect:
            return
        except (ValidationError, ValueError, ApiError, RedisError) as exc:
            failure = _reason(exc)
        if failure is not None:
            await websocket.send_json({"status": "error", "detail": failure})
            await websocket.close(code=1011, reason=failure[:120])
            return


async def _stream_tokens(websocket: WebSocket, state: AppState, job: JobRecord) -> str | None:
    """Send the job's text as `token` messages, then `done`; returns why it failed, if it did."""
    result: dict[str, Any] = {}
    async for event in follow(state, job.id):
        if event.type == EventType.token:
            await websocket.send_json({"token": event.data["text"]})
        elif event.type == EventType.result:
            result = event.data
        elif event.type == EventType.error:
            return str(event.data["message"])
        elif event.type == EventType.done:
            if event.data["status"] != "succeeded":
                return f"job {job.id} {event.data['status']}"
    await websocket.send_json({"status": "done", "job_id": job.id, "usage": result.get("usage")})
    return None


def _reason(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return validation_summary(list(exc.errors()))[0]
    if isinstance(exc, ApiError):
        return exc.message
    if isinstance(exc, RedisError):
        return f"the job store is unreachable: {exc}"
    return f"invalid request: {exc}"  # a message that is not JSON
