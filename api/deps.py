"""FastAPI dependencies, as `Annotated` aliases the routes take as parameters, and the gate in front of
them that checks the API key and the rate limit before a request's body is read."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Header, WebSocket
from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect

from api.auth import ANONYMOUS, Principal
from api.batch_service import BatchService
from api.errors import (
    ApiError,
    Forbidden,
    InvalidApiKey,
    TooManyRequests,
    Unauthorized,
    api_error_response,
    as_api_error,
    websocket_error,
)
from api.inbox import Inbox
from api.state import AppState
from config.logs import bind
from contract.errors import JobError
from jobstore.store import JobStore

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


async def get_batch_service(state: StateDep) -> BatchService:
    """The batch service over this process's stores (a few references: made per request)."""
    return BatchService(state.store, state.files, state.batches, state.settings)


BatchServiceDep = Annotated[BatchService, Depends(get_batch_service)]


async def authenticate(conn: HTTPConnection, state: AppState, presented: str | None = None) -> Principal:
    """The caller, after its key (or, without one, its IP) has passed the rate limit. The key is the one
    `presented` (a WebSocket's other ways of sending it), else the one in the headers.

    Callers without a valid key are limited by IP too, so guessing keys is as slow as the limit.
    """
    presented = presented or state.keys.presented(conn.headers)
    # uvicorn's parser drops a header value's leading whitespace but keeps the trailing: strip both, so a
    # key pasted with a stray space is refused or accepted the same whichever side the space is on.
    principal = state.keys.authenticate(presented.strip() if presented else None)
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
        if presented and presented.strip():
            raise InvalidApiKey(f"invalid API key: send one of the service's keys in {header} or as a Bearer token")
        raise Unauthorized(f"missing API key: send it in {header} or as Authorization: Bearer <key>")
    bind(owner=principal.id)
    return principal


# The Gemma 3 Speech API's routes: they answer as the original did (README: Migrating), a wrong key included.
LEGACY_ROUTES = frozenset(
    {
        "/v1/generate",
        "/v1/generate_stream",
        "/v1/generate_ws",
        "/v1/speech-to-text",
        "/v1/speech-to-text/ws",
        "/v1/text-to-speech",
        "/v1/text-to-speech/ws",
        "/v1/dialogue",
    }
)
# Routes that answer without a key. `/metrics` checks its own when METRICS_REQUIRE_KEY is set.
OPEN_PATHS = frozenset({"/health", "/ready", "/metrics"})
_PRINCIPAL = "principal"  # where the gate leaves the caller, in the request's scope state


class AccessGate:
    """Checks the API key and the rate limit of every HTTP request to a protected route, and answers 401
    or 429 before the app reads a byte of the body: FastAPI parses a form body before it runs any
    dependency, so a dependency alone would take a whole upload from a caller it then refuses.
    WebSockets are checked by `websocket_principal`, before their first message is read."""

    def __init__(self, app: ASGIApp, open_paths: frozenset[str], open_prefixes: tuple[str, ...] = ()) -> None:
        self.app = app
        self.open_paths = open_paths
        self.open_prefixes = open_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in self.open_paths or path.startswith(self.open_prefixes):
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        refusal: Response
        try:
            principal = await authenticate(conn, app_state(conn))
        except InvalidApiKey as exc:
            legacy = scope["path"] in LEGACY_ROUTES  # the original answered a wrong key 403, a missing one 401
            refusal = api_error_response(Forbidden("Invalid API key") if legacy else exc)
        except Exception as exc:  # noqa: BLE001 - Redis away or full, or a bug: the envelope, not a plain 500
            refusal = api_error_response(as_api_error(exc))
        else:
            scope.setdefault("state", {})[_PRINCIPAL] = principal
            await self.app(scope, receive, send)
            return
        if _has_body(conn):
            # The body stays unread: closing is cheaper than letting the server drain it for the next request.
            refusal.headers["Connection"] = "close"
        await refusal(scope, receive, send)


def _has_body(conn: HTTPConnection) -> bool:
    return conn.headers.get("content-length", "0") != "0" or "transfer-encoding" in conn.headers


async def get_principal(conn: HTTPConnection, state: StateDep) -> Principal:
    """The caller the gate let through (or, on a route the gate leaves open, the caller checked now)."""
    checked = conn.scope.get("state", {}).get(_PRINCIPAL)
    if isinstance(checked, Principal):
        return checked
    return await authenticate(conn, state)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def get_request_id(conn: HTTPConnection) -> str:
    request_id: str = conn.scope.get("state", {}).get("request_id", "")
    return request_id


RequestIdDep = Annotated[str, Depends(get_request_id)]


async def websocket_principal(websocket: WebSocket) -> tuple[AppState, Principal | None]:
    """The app state and the caller; a caller without a valid key is closed with 4401, one over the rate
    limit with 4429, and one that could not be checked (Redis away) gets the error and 1011 (all get None)."""
    state = app_state(websocket)
    try:
        return state, await authenticate(websocket, state)
    except TooManyRequests as exc:
        await refuse(websocket, 4429, exc.message)
    except InvalidApiKey:
        legacy = websocket.scope["path"] in LEGACY_ROUTES
        await refuse(websocket, 4403 if legacy else 4401, "Invalid API key" if legacy else "invalid API key")
    except Unauthorized:
        await refuse(websocket, 4401, "Missing API key")
    except Exception as exc:  # noqa: BLE001 - Redis away, or a bug: the client hears why before the close
        await websocket.accept()
        await close_with_error(websocket, exc)
    return state, None


async def close_with_error(websocket: WebSocket, exc: BaseException) -> None:
    """Send an accepted WebSocket the `websocket_error` for `exc`, then close it with its close code."""
    failure = websocket_error(exc)
    await websocket.send_json(failure.message)
    await websocket.close(code=failure.close_code, reason=failure.reason)


WebSocketHandler = Callable[[WebSocket, AppState, Principal, dict[str, Any]], Coroutine[Any, Any, None]]


async def serve_websocket(websocket: WebSocket, handle: WebSocketHandler) -> None:
    """The original API's WebSockets: check the key, accept, then answer JSON requests one after another on
    the same connection, as the original's loops did, except that a client that leaves mid-answer is noticed
    at once (`Inbox`), and the handler cancelled with it. A refused or failed request gets its
    `websocket_error` message and the connection stays open for the next; any other failure (Redis or
    the broker away, a bug) gets its message too, then closes the connection (1011)."""
    state, principal = await websocket_principal(websocket)
    if principal is None:
        return
    await websocket.accept()
    async with Inbox(websocket) as inbox:
        while True:
            try:
                request = await inbox.next_request()
                await inbox.while_connected(handle(websocket, state, principal, request))
            except WebSocketDisconnect:
                return
            except (ApiError, JobError) as exc:  # refused, or failed: the next request may do better
                await websocket.send_json(websocket_error(exc).message)
            except Exception as exc:  # noqa: BLE001 - Redis or the broker away, or a bug: say why, then close
                await close_with_error(websocket, exc)
                return


async def refuse(websocket: WebSocket, code: int, reason: str) -> None:
    """Close with an application code the client can read: closing before the handshake completes
    would reach it only as an HTTP 403, so accept first."""
    await websocket.accept()
    await websocket.close(code=code, reason=reason[:120])


IdempotencyKeyDep = Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)]
