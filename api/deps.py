"""FastAPI dependencies, as `Annotated` aliases the routes take as parameters."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, WebSocket
from starlette.requests import HTTPConnection

from api.auth import Principal
from api.errors import Unauthorized
from api.state import AppState
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


async def get_principal(conn: HTTPConnection, state: StateDep) -> Principal:
    principal = state.keys.authenticate(state.keys.presented(conn.headers))
    if principal is None:
        header = state.keys.header
        raise Unauthorized(f"missing or invalid API key: send it in {header} or as Authorization: Bearer <key>")
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def get_request_id(conn: HTTPConnection) -> str:
    request_id: str = conn.scope.get("state", {}).get("request_id", "")
    return request_id


RequestIdDep = Annotated[str, Depends(get_request_id)]


async def websocket_principal(websocket: WebSocket) -> tuple[AppState, Principal | None]:
    """The app state and the caller; a caller without a valid key is closed with 4401 (and gets None)."""
    state = app_state(websocket)
    principal = state.keys.authenticate(state.keys.presented(websocket.headers))
    if principal is None:
        await websocket.close(code=4401, reason="missing or invalid API key")
    return state, principal


IdempotencyKeyDep = Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)]
