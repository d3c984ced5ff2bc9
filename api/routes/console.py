"""What a person opens in a browser (SPEC §13): the console, `/console`, and the interactive docs, `/docs`.

Both are files shipped in the package (the console's in `api/console/`, the docs' in the `swagger-ui-bundle`
wheel), never a CDN's: the machine may be offline. The console is served with a content security policy that
allows only its own files (no inline script, no other origin), and holds no secret: the key is typed into
the page, kept in `sessionStorage` and sent as a header. Browsers refuse the API's port 6666, so `speechq
api` also listens on CONSOLE_PORT (6680) for them (`cli/serving.py`); these routes answer on both.
"""

from __future__ import annotations

import re
from importlib.resources import files
from importlib.resources.abc import Traversable

from fastapi import APIRouter
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from swagger_ui_bundle import swagger_ui_path

from api.errors import NotFound

router = APIRouter(include_in_schema=False)

CONSOLE_FILES: Traversable = files("api").joinpath("console")
SWAGGER_FILES: Traversable = swagger_ui_path
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".map": "application/json",
}
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",  # no inline script, no eval, nothing from elsewhere
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "media-src 'self' blob:",
        "connect-src 'self'",  # fetch, SSE read by fetch, and the realtime WebSocket, to this origin only
        "worker-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
CONSOLE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # a new version's files are picked up at once
}
OPEN_PREFIXES = ("/console/", "/docs/static/")  # besides the exact paths below: no key needed to load these
OPEN_PATHS = frozenset({"/console", "/docs"})


@router.get("/console")
@router.get("/console/")
async def console_page() -> Response:
    return _shipped(CONSOLE_FILES, "index.html", CONSOLE_HEADERS)


@router.get("/console/{name}")
async def console_file(name: str) -> Response:
    return _shipped(CONSOLE_FILES, name, CONSOLE_HEADERS)


@router.get("/docs")
async def docs() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="speechq · API docs",
        swagger_js_url="/docs/static/swagger-ui-bundle.js",
        swagger_css_url="/docs/static/swagger-ui.css",
        swagger_favicon_url="/docs/static/favicon-32x32.png",
    )


@router.get("/docs/static/{name}")
async def docs_file(name: str) -> Response:
    return _shipped(
        SWAGGER_FILES, name, {"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"}
    )


def _shipped(folder: Traversable, name: str, headers: dict[str, str]) -> Response:
    """A file of `folder` by its plain name (no path, a known type), or a 404."""
    suffix = name[name.rfind(".") :] if "." in name else ""
    found = folder.joinpath(name) if FILE_NAME.fullmatch(name) and suffix in MEDIA_TYPES else None
    if found is None or not found.is_file():
        raise NotFound(f"no file {name[:64]!r} here", param="name")
    return Response(found.read_bytes(), media_type=MEDIA_TYPES[suffix], headers=headers)
