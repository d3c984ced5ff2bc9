"""`WS /v1/realtime`: OpenAI's Realtime API (README, Realtime). The session itself is api/realtime/session.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import APIRouter, WebSocket
from redis.exceptions import RedisError

from api.deps import app_state, authenticate
from api.errors import InvalidApiKey, TooManyRequests, Unauthorized, as_api_error
from api.realtime import protocol
from api.realtime.protocol import ProtocolError, SessionConfig, error_event, new_id
from api.realtime.store import SessionStore

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["realtime"])

# Browsers cannot set headers on a WebSocket: they send the key as a subprotocol, as OpenAI's own clients do.
KEY_SUBPROTOCOL = "openai-insecure-api-key."


def offered_key(websocket: WebSocket) -> tuple[str | None, str | None]:
    """(the key sent as a subprotocol or an `api_key` query parameter, the subprotocol to answer with)."""
    offered = [p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    key = next((p.removeprefix(KEY_SUBPROTOCOL) for p in offered if p.startswith(KEY_SUBPROTOCOL)), None)
    answer = "realtime" if "realtime" in offered else None
    return key or websocket.query_params.get("api_key"), answer


@router.websocket("/realtime")
async def realtime(websocket: WebSocket) -> None:
    state = app_state(websocket)
    key, subprotocol = offered_key(websocket)
    dialect: protocol.Dialect = "beta" if "realtime=v1" in websocket.headers.get("openai-beta", "") else "ga"

    async def refuse(code: int, reason: str, message: str, error_code: str, param: str | None = None) -> None:
        await websocket.accept(subprotocol=subprotocol)
        await websocket.send_json(error_event(message, code=error_code, param=param, event_id=None))
        await websocket.close(code=code, reason=reason[:120])

    try:
        principal = await authenticate(websocket, state, key)
    except (InvalidApiKey, Unauthorized) as exc:
        # OpenAI's answer: an `error` event, then close 3000 naming it.
        await refuse(3000, "invalid_request_error.invalid_api_key", exc.message, "invalid_api_key")
        return
    except TooManyRequests as exc:
        await refuse(4429, "rate_limit_exceeded", exc.message, "rate_limit_exceeded")  # as every WebSocket (SPEC §9)
        return
    except Exception as exc:  # noqa: BLE001 - Redis away: say so, close
        failure = as_api_error(exc)
        await refuse(1011, failure.code, failure.message, failure.code)
        return

    try:  # imported here: the API starts without numpy and onnxruntime, which only sessions need
        from api.realtime import vad
        from api.realtime.session import Session
        from api.realtime.settings import conversation_model, restored
    except ImportError as exc:
        message = f"realtime sessions need numpy and onnxruntime in the API (install speechq[realtime]): {exc}"
        await refuse(1011, "server_error", message, "server_error")
        return
    query = websocket.query_params
    config = SessionConfig(id=new_id("sess"))
    if query.get("intent") == "transcription":
        config.type = "transcription"
    store = SessionStore(state.redis)
    items = None
    try:
        config.model, config.requested_model = conversation_model(query.get("model"), state)
        resume = query.get("session_id")
        if resume:
            kept = await store.load(resume, principal.id)
            if kept is None:
                raise ProtocolError(
                    f"no session {resume[:64]!r} of yours to resume", code="session_not_found", param="session_id"
                )
            config.id = resume
            restored(config, kept[0], state)
            items = kept[1]
    except ProtocolError as exc:
        await refuse(3000, f"invalid_request_error.{exc.code}", exc.message, exc.code, exc.param)
        return
    limit = state.settings.max_realtime_sessions_per_key
    try:
        admitted = await store.admit(principal.id, config.id, limit)
    except RedisError as exc:
        failure = as_api_error(exc)
        await refuse(1011, failure.code, failure.message, failure.code)
        return
    if not admitted:
        message = f"this key has {limit} realtime sessions open (MAX_REALTIME_SESSIONS_PER_KEY); close one first"
        await refuse(4429, "session_limit_reached", message, "session_limit_reached")
        return
    try:
        await asyncio.to_thread(vad.load, state.settings.realtime_vad_model)
    except (ImportError, OSError, RuntimeError) as exc:  # no model file: an operator's mistake, said plainly
        log.warning("realtime session refused: %s", exc)
        await refuse(1011, "server_error", f"realtime sessions are not available here: {exc}", "server_error")
        return
    await websocket.accept(subprotocol=subprotocol)
    state.metrics.realtime_sessions.inc()
    session = Session(websocket, state, principal, config, dialect, store, items)
    try:
        await session.run()
    finally:
        state.metrics.realtime_sessions.dec()
        with contextlib.suppress(RedisError):
            await store.leave(principal.id, config.id)
