"""Local HTTP servers that speak a remote service's protocol, run in a thread of the test process."""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Literal

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from tests.stack import free_port, wait_until

Handler = Callable[[Request], Awaitable[Response]]


@contextmanager
def serve(routes: Mapping[str, Handler]) -> Iterator[str]:
    """Serve `{path: handler}` (POST) on a free port; yields the base URL."""
    app = Starlette(routes=[Route(path, handler, methods=["POST"]) for path, handler in routes.items()])
    with serve_app(app) as url:
        yield url


@contextmanager
def serve_app(app: ASGIApp, lifespan: Literal["on", "off"] = "off") -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a free port, in a thread; yields the base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan=lifespan))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=10, what="the fake server")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        time.sleep(0.1)
