"""Upload intake: the body cap (enforced while the body streams in) and reading an uploaded audio file."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import anyio.to_thread
from fastapi import UploadFile
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ApiError, Unprocessable, envelope
from config import Settings
from tasks.audio import InvalidAudio, probe

# Room for the multipart framing and form fields around the file itself.
FORM_OVERHEAD = 1 << 20


class PayloadTooLarge(ApiError):
    status, code, type = 413, "payload_too_large", "invalid_request_error"


class AudioRefused(ApiError):
    type = "invalid_request_error"

    def __init__(self, error: InvalidAudio, param: str = "file") -> None:
        super().__init__(str(error), param=param)
        self.status = error.status
        self.code = error.code


def upload_limit_bytes(settings: Settings) -> int:
    return int(settings.max_upload_mb * 1024 * 1024)


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the upload is larger than MAX_UPLOAD_MB ({limit / 1048576:g} MB)", param="file")


class BodyLimitMiddleware:
    """Refuses a request body over the cap: at once from Content-Length, or as soon as it streams past it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.limit = max_bytes
        self.hard_limit = max_bytes + FORM_OVERHEAD

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.hard_limit:
            await self._refuse(scope, receive, send)
            return
        seen = 0
        refused = False

        async def counted() -> Message:
            # Past the cap: answer 413 now and tell the app the client went away. (Raising here would
            # reach FastAPI's form parser, which turns any error into a 400.)
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.hard_limit:
                    refused = True
                    await self._refuse(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def unless_refused(message: Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, counted, unless_refused)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = too_large(self.limit)
        body = envelope(error.message, code=error.code, type_=error.type, param=error.param)
        await JSONResponse(body, status_code=413, headers={"Connection": "close"})(scope, receive, send)


async def read_audio(file: UploadFile, settings: Settings, param: str = "file") -> bytes:
    """The upload's bytes, after the cap and a header probe (empty, not audio, truncated, too long)."""
    limit = upload_limit_bytes(settings)
    if file.size is not None and file.size > limit:
        raise too_large(limit)
    data = await file.read()
    if len(data) > limit:
        raise too_large(limit)
    await check_audio(data, settings, param)
    return data


async def check_audio(data: bytes, settings: Settings, param: str = "file") -> None:
    try:
        await anyio.to_thread.run_sync(lambda: probe(data, max_seconds=settings.max_audio_seconds))
    except InvalidAudio as exc:
        raise AudioRefused(exc, param) from None


async def websocket_audio(message: dict[str, Any], settings: Settings) -> bytes:
    """The audio of a WebSocket request (`audio_base64`), decoded, capped and probed like an upload."""
    encoded = message.get("audio_base64")
    if not isinstance(encoded, str) or not encoded:
        raise Unprocessable("audio_base64: the audio is missing", param="audio_base64")
    limit = upload_limit_bytes(settings)
    if len(encoded) > limit * 4 // 3 + 4:
        raise too_large(limit)
    try:
        audio = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise Unprocessable("audio_base64: not valid base64", param="audio_base64") from None
    await check_audio(audio, settings, param="audio_base64")
    return audio
