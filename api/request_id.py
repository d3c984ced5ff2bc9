"""Request ids: taken from the configured header (default X-Request-ID) or made up, returned on the
response, put on every log line written while the request is served, and closed by an access line."""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from config.logs import log_context

_SAFE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
access_log = logging.getLogger("speechq.access")
_HEADER = "request_id_header"  # where the header's name waits in the request state, for `request_id_header`


def request_id_of(scope: Scope) -> str | None:
    """The id `RequestIdMiddleware` gave the request, for code that runs outside it."""
    request_id: str | None = scope.get("state", {}).get("request_id")
    return request_id


def request_id_header(scope: Scope) -> dict[str, str]:
    """The request id as a response header, for an answer sent outside `RequestIdMiddleware` (the answer to
    an unexpected exception); empty if the middleware never saw the request."""
    state = scope.get("state", {})
    return {state[_HEADER]: state["request_id"]} if _HEADER in state and "request_id" in state else {}


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp, header: str) -> None:
        self.app = app
        self.header = header.lower().encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(self.header, b"").decode("latin-1")
        request_id = given if _SAFE.match(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state[_HEADER] = self.header.decode("latin-1")
        started = time.perf_counter()
        status = 0

        async def with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # Headers a dependency decided on (rate limits) travel in the request state.
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                extra = [(k.lower().encode(), v.encode()) for k, v in state.get("response_headers", {}).items()]
                headers += [(name, value) for name, value in extra if name not in present]
                message["headers"] = [*headers, (self.header, request_id.encode())]
            await send(message)

        with log_context(request_id=request_id):
            try:
                await self.app(scope, receive, with_headers)
            finally:
                access_log.info(
                    "%s %s %s %.1fms",
                    scope.get("method", "WS"),
                    scope["path"],
                    status or "-",
                    (time.perf_counter() - started) * 1000,
                )
