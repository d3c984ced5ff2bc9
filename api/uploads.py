"""Upload intake: the body cap (enforced while the body streams in), reading and probing an uploaded
audio file, and the per-key daily budget of audio seconds."""

from __future__ import annotations

import base64
import binascii
import math
import time
from typing import Any

import anyio.to_thread
from fastapi import UploadFile
from redis.asyncio import Redis
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ApiError, JobFailure, TooManyRequests, Unprocessable, error_body
from config import Settings
from contract.errors import InvalidAudio
from jobstore import keys
from media.audio import AudioInfo, plausible_seconds, probe

# Room for the multipart framing and form fields around the file itself.
FORM_OVERHEAD = 1 << 20


class PayloadTooLarge(ApiError):
    status, code, type = 413, "payload_too_large", "invalid_request_error"


class AudioBudgetSpent(TooManyRequests):
    code = "audio_budget_exhausted"


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
        body = error_body(error)
        await JSONResponse(body, status_code=413, headers={"Connection": "close"})(scope, receive, send)


class AudioBudget:
    """AUDIO_SECONDS_PER_KEY_PER_DAY: the seconds of audio one key (or, without keys, everyone) may send
    per UTC day, counted in Redis so every API process shares the count; 0: no budget.

    A file is charged what its header declares (else its packets add up to; else the most its size
    allows), when it is accepted; `refund` gives it back when no job came of it.
    """

    def __init__(self, redis: Redis, settings: Settings, owner: str) -> None:
        self.redis = redis
        self.limit = settings.audio_seconds_per_key_per_day
        self.max_seconds = settings.max_audio_seconds
        self.owner = owner
        self.charged: tuple[str, float] | None = None  # (counter key, seconds)

    async def charge(self, info: AudioInfo, size: int, param: str = "file") -> None:
        if not self.limit:
            return
        seconds = info.duration if info.duration is not None else min(self.max_seconds, plausible_seconds(size))
        day = int(time.time() // 86_400)
        key = keys.audio_seconds(self.owner, day)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incrbyfloat(key, seconds)
            pipe.expire(key, 2 * 86_400)
            used, _ = await pipe.execute()
        if float(used) > self.limit:
            # Over: take it back. Two racing requests may both be refused, never both let past.
            await self.redis.incrbyfloat(key, -seconds)
            retry = max(1, math.ceil((day + 1) * 86_400 - time.time()))
            raise AudioBudgetSpent(
                f"this file ({seconds:.0f}s) would overrun this key's audio budget for today ({self.limit:g}s a "
                "day, AUDIO_SECONDS_PER_KEY_PER_DAY); it renews at 00:00 UTC",
                param=param,
                headers={"Retry-After": str(retry)},
            )
        self.charged = (key, seconds)

    async def refund(self) -> None:
        if self.charged is not None:
            key, seconds = self.charged
            self.charged = None
            await self.redis.incrbyfloat(key, -seconds)


async def read_audio(
    file: UploadFile, settings: Settings, param: str = "file", *, budget: AudioBudget | None = None
) -> bytes:
    """The upload's bytes, after the cap and a header probe (empty, not audio, truncated, too long, too
    low a rate, more seconds than its size can hold), charged to `budget`."""
    limit = upload_limit_bytes(settings)
    if file.size is not None and file.size > limit:
        raise too_large(limit)
    data = await file.read()
    if len(data) > limit:
        raise too_large(limit)
    await check_audio(data, settings, param, budget=budget)
    return data


async def check_audio(
    data: bytes, settings: Settings, param: str = "file", *, budget: AudioBudget | None = None
) -> AudioInfo:
    try:
        info = await anyio.to_thread.run_sync(lambda: probe(data, max_seconds=settings.max_audio_seconds))
    except InvalidAudio as exc:
        raise JobFailure(exc, param=param) from None
    if budget is not None:
        await budget.charge(info, len(data), param)
    return info


async def websocket_audio(message: dict[str, Any], settings: Settings, *, budget: AudioBudget | None = None) -> bytes:
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
    await check_audio(audio, settings, param="audio_base64", budget=budget)
    return audio
