"""The seed API's generation endpoints, now backed by the queue: same paths, fields and answers."""

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
from api.submit import follow, submit, wait_for
from tasks.jobs import EventType, JobKind, JobRecord
from tasks.payloads import GenerateRequest

router = APIRouter(prefix="/v1", tags=["generation (seed API)"])


class GenerateResponse(BaseModel):
    generated_text: str


@router.post("/generate", response_model=GenerateResponse)
async def generate(body: GenerateRequest, state: StateDep, principal: PrincipalDep, rid: RequestIdDep) -> Any:
    job, _ = await submit(state, JobKind.generate, body, principal, request_id=rid)
    final = await wait_for(state, job)
    assert final.result is not None
    return GenerateResponse(generated_text=final.result["text"])


async def ndjson_events(state: Any, job: JobRecord) -> AsyncIterator[dict[str, Any]]:
    """A generation job's events as the seed's stream lines: `{"token"}`…, then `{"done": true, …}`."""
    result: dict[str, Any] = {}
    async for event in follow(state, job.id):
        if event.type == EventType.token:
            yield {"token": event.data["text"]}
        elif event.type == EventType.result:
            result = event.data
        elif event.type == EventType.error:
            yield {"error": event.data}
        elif event.type == EventType.done:
            yield {
                "done": True,
                "status": event.data["status"],
                "job_id": job.id,
                "generated_text": result.get("text"),
                "finish_reason": result.get("finish_reason"),
                "usage": result.get("usage"),
            }


@router.post("/generate_stream")
async def generate_stream(
    body: GenerateRequest, state: StateDep, principal: PrincipalDep, rid: RequestIdDep
) -> StreamingResponse:
    job, _ = await submit(state, JobKind.generate, body, principal, request_id=rid)

    async def lines() -> AsyncIterator[bytes]:
        async for line in ndjson_events(state, job):
            yield (json.dumps(line) + "\n").encode()

    return StreamingResponse(lines(), media_type="application/x-ndjson", headers={"X-Job-ID": job.id})


@router.websocket("/generate_ws")
async def generate_ws(websocket: WebSocket) -> None:
    state, principal = await websocket_principal(websocket)
    if principal is None:
        return
    await websocket.accept()
    try:
        raw = await websocket.receive_json()
        body = GenerateRequest.model_validate(raw)
        job, _ = await submit(state, JobKind.generate, body, principal)
        async for line in ndjson_events(state, job):
            if "token" in line:
                await websocket.send_json(line)
            elif "error" in line:
                await websocket.send_json({"status": "error", "detail": line["error"]["message"], "job_id": job.id})
                await websocket.close(code=1011)
                return
            elif line["status"] != "succeeded":
                await websocket.send_json({"status": "error", "detail": f"job {job.id} {line['status']}"})
                await websocket.close(code=1011)
                return
            else:
                await websocket.send_json({"status": "done", "job_id": job.id, "usage": line["usage"]})
        await websocket.close(code=1000)
    except WebSocketDisconnect:
        return
    except (ValidationError, json.JSONDecodeError) as exc:
        message = validation_summary(exc.errors())[0] if isinstance(exc, ValidationError) else f"invalid JSON: {exc}"
        await websocket.send_json({"status": "error", "detail": message})
        await websocket.close(code=1011)
    except (ApiError, RedisError) as exc:
        await websocket.send_json({"status": "error", "detail": str(exc)})
        await websocket.close(code=1011)
