"""FastAPI dependencies, as `Annotated` aliases the routes take as parameters."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, Header, WebSocket
from redis.exceptions import RedisError
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocketDisconnect

from api.auth import ANONYMOUS, Principal
from api.errors import ApiError, TooManyRequests, Unauthorized, Unprocessable, websocket_failure
from api.state import AppState
from config.logs import bind
from tasks.store import JobStore

# Dependencies are `async def` on purpose: FastAPI runs a plain `def` dependency in a worker thread,
# and four thread hops per request cost more than the whole job submission.


def app_state(conn: HTTPConnection) -> AppState:
    state: AppState = conn.app.state.speechq
    return state


async def get_state(conn: HTTPConnection) -> AppState:
    return app_state(conn)


StateDep = Annotated[AppState, Depends(get_state)]


async def get_store(state: StateDep) -> JobStore:
    return state.store


StoreDep = Annotated[JobStore, Depends(get_store)]


async def authenticate(conn: HTTPConnection, state: AppState) -> Principal:
    """The caller, after its key (or, without one, its IP) has passed the rate limit.

    Callers without a valid key are limited by IP too, so guessing keys is as slow as the limit.
    """
    principal = state.keys.authenticate(state.keys.presented(conn.headers))
    limited = state.limiter.enabled
    if limited:
        if principal is None or principal.id == ANONYMOUS:
            scope = f"ip:{conn.client.host if conn.client else 'unknown'}"
        else:
            scope = principal.id
        anonymous = scope.startswith("ip:")
        decision = await state.limiter.check(scope)
        conn.scope.setdefault("state", {})["response_headers"] = decision.headers
        if not decision.allowed:
            state.metrics.rejections.labels("ip" if anonymous else "key").inc()
            raise TooManyRequests(
                f"rate limit exceeded: {state.settings.rate_limit_requests} requests per "
                f"{state.settings.rate_limit_window_seconds:g}s; retry in {decision.headers['Retry-After']}s",
                headers=decision.headers,
            )
    if principal is None:
        header = state.keys.header
        raise Unauthorized(f"missing or invalid API key: send it in {header} or as Authorization: Bearer <key>")
    bind(owner=principal.id)
    return principal


async def get_principal(conn: HTTPConnection, state: StateDep) -> Principal:
    return await authenticate(conn, state)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def get_request_id(conn: HTTPConnection) -> str:
    request_id: str = conn.scope.get("state", {}).get("request_id", "")
    return request_id


RequestIdDep = Annotated[str, Depends(get_request_id)]


async def websocket_principal(websocket: WebSocket) -> tuple[AppState, Principal | None]:
    """The app state and the caller; a caller without a valid key is closed with 4401, one over the rate
    limit with 4429 (and gets None)."""
    state = app_state(websocket)
    try:
        return state, await authenticate(websocket, state)
    except TooManyRequests as exc:
        await refuse(websocket, 4429, exc.message)
    except Unauthorized:
        await refuse(websocket, 4401, "missing or invalid API key")
    return state, None


WebSocketHandler = Callable[[WebSocket, AppState, Principal, dict[str, Any]], Awaitable[None]]


async def serve_websocket(websocket: WebSocket, handle: WebSocketHandler) -> None:
    """The seed API's one-request WebSockets: check the key, accept, read one JSON object, let `handle`
    answer it, close with 1000. A refused request gets `{"event": "error", "detail", "code"}` and a
    close code: 1008 for the client's mistakes, 1011 for ours."""
    state, principal = await websocket_principal(websocket)
    if principal is None:
        return
    await websocket.accept()
    try:
        message = await websocket.receive_json()
        if not isinstance(message, dict):
            raise Unprocessable("the message must be a JSON object")
        await handle(websocket, state, principal, message)
        await websocket.close(code=1000)
    except WebSocketDisconnect:
        return
    except (ApiError, json.JSONDecodeError, RedisError) as exc:
        reply, close_code = websocket_failure(exc)
        await websocket.send_json(reply)
        await websocket.close(code=close_code)


async def refuse(websocket: WebSocket, code: int, reason: str) -> None:
    """Close with an application code the client can read: closing before the handshake completes
    would reach it only as an HTTP 403, so accept first."""
    await websocket.accept()
    await websocket.close(code=code, reason=reason[:120])


IdempotencyKeyDep = Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)]
