"""One error tree for the API and one JSON envelope for every error it answers.

    ApiError (500 internal_error)
    ├── BadRequest (400)
    ├── Unauthorized (401 invalid_api_key)
    │   └── InvalidApiKey (401, or 403 on the seed routes)
    ├── Forbidden (403 invalid_api_key)
    ├── NotFound (404 not_found)
    │   └── ModelNotFound (404 model_not_found)
    ├── Conflict (409)
    ├── RequestTooLarge (413 request_too_large)
    │   └── StorageQuotaExceeded (413 storage_quota_exceeded)
    ├── Unprocessable (422 validation_error)
    ├── TooManyRequests (429 rate_limit_exceeded, Retry-After)
    │   └── QuotaExceeded (429 too_many_active_jobs)
    ├── ServiceUnavailable (503)
    │   └── QueueFullError (503 queue_full, Retry-After)
    ├── GatewayTimeout (504 job_timeout)
    └── InsufficientStorage (507 insufficient_storage, Retry-After: Redis is at its maxmemory)

The envelope is OpenAI's, so the official client reads it everywhere:
`{"error": {"message", "type", "param", "code"}}`; validation errors also keep FastAPI's `detail` list.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError
from pydantic import BaseModel, ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)


class ApiError(Exception):
    status = 500
    code = "internal_error"
    type = "server_error"

    def __init__(self, message: str, *, param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}


class BadRequest(ApiError):
    status, code, type = 400, "bad_request", "invalid_request_error"


class Unauthorized(ApiError):
    status, code, type = 401, "invalid_api_key", "authentication_error"


class InvalidApiKey(Unauthorized):
    """A key was sent and is not one of API_KEYS (401; 403 on the seed routes, as the original answered)."""


class Forbidden(ApiError):
    status, code, type = 403, "invalid_api_key", "authentication_error"


class NotFound(ApiError):
    status, code, type = 404, "not_found", "invalid_request_error"


class ModelNotFound(NotFound):
    code = "model_not_found"


class Conflict(ApiError):
    status, code, type = 409, "conflict", "invalid_request_error"


class RequestTooLarge(ApiError):
    status, code, type = 413, "request_too_large", "invalid_request_error"


class StorageQuotaExceeded(RequestTooLarge):
    code = "storage_quota_exceeded"


class Unprocessable(ApiError):
    status, code, type = 422, "validation_error", "invalid_request_error"


class TooManyRequests(ApiError):
    status, code, type = 429, "rate_limit_exceeded", "requests"


class QuotaExceeded(TooManyRequests):
    code = "too_many_active_jobs"


class ServiceUnavailable(ApiError):
    status, code, type = 503, "service_unavailable", "server_error"


class QueueFullError(ServiceUnavailable):
    code = "queue_full"


class GatewayTimeout(ApiError):
    status, code, type = 504, "job_timeout", "server_error"


class InsufficientStorage(ApiError):
    status, code, type = 507, "insufficient_storage", "server_error"


MODEL_NOT_FOUND_MESSAGE = "The model does not exist or is not served here; GET /v1/models lists the models"


def unregistered_model(errors: list[Any], prefix: str | None = None) -> ModelNotFound | None:
    """The 404 for a request naming a model the registry does not serve (one message for every name)."""
    for error in errors:
        if error.get("type") == "model_not_found":
            loc = [str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path", "header")]
            param = ".".join([prefix, *loc] if prefix else loc) or "model"
            return ModelNotFound(MODEL_NOT_FOUND_MESSAGE, param=param)
    return None


def validated(model: type[M], value: dict[str, Any], prefix: str | None = None) -> M:
    """`value` as a `model`, or a 422 naming the first bad field (under `prefix`, for a nested config);
    a 404 `model_not_found` when it names a model that is not served."""
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        errors = list(exc.errors())
        missing = unregistered_model(errors, prefix)
        if missing is not None:
            raise missing from None
        message, param = validation_summary(errors)
        if prefix is None:
            raise Unprocessable(message, param=param) from exc
        raise Unprocessable(f"{prefix}.{message}", param=f"{prefix}.{param}" if param else prefix) from exc


def websocket_failure(exc: Exception) -> tuple[dict[str, Any], int]:
    """What a WebSocket route sends when a request fails, and the close code that follows."""
    if isinstance(exc, ApiError):
        return {"event": "error", "detail": exc.message, "code": exc.code}, 1008 if exc.status < 500 else 1011
    if isinstance(exc, ValueError):  # a message that is not JSON
        return {"event": "error", "detail": f"invalid request: {exc}", "code": "bad_request"}, 1008
    return {"event": "error", "detail": f"the job store is unreachable: {exc}", "code": "redis_unavailable"}, 1011


def envelope(message: str, *, code: str, type_: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error object, and beside it the `detail` string the Gemma 3 Speech API's clients read."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}, "detail": message}


# An error message quotes at most this much of anything the client sent (a value, a field name).
QUOTE_LIMIT = 100
# And is never longer than this, whatever a validator put in it.
MESSAGE_LIMIT = 400


def quoted(value: object, limit: int = QUOTE_LIMIT) -> str:
    """`value` as an error message may show it: its first `limit` characters, and how long it was."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def clipped(message: str, limit: int = MESSAGE_LIMIT) -> str:
    return message if len(message) <= limit else message[:limit] + "…"


def public_errors(errors: list[Any]) -> list[dict[str, Any]]:
    """Validation errors as the client sees them: `loc`, `msg` and `type`, with the client's own input
    (field names in `loc`, values a `msg` quotes) cut to `QUOTE_LIMIT` characters."""
    return [
        {
            "type": error.get("type", "value_error"),
            "loc": [quoted(part) if isinstance(part, str) else part for part in error.get("loc", ())],
            "msg": _unechoed(str(error.get("msg", "invalid request")), error.get("input")),
            **_input_and_context(error),
        }
        for error in errors
    ]


def _input_and_context(error: Any) -> dict[str, Any]:
    """FastAPI's `input` and `ctx`, where they are small plain values: a number, a short string."""
    shown: dict[str, Any] = {}
    value = error.get("input")
    if value is None or isinstance(value, bool | int | float) or (isinstance(value, str) and len(value) <= QUOTE_LIMIT):
        shown["input"] = value
    context = error.get("ctx")
    if isinstance(context, dict):
        plain = {
            k: v
            for k, v in context.items()
            if isinstance(v, bool | int | float) or isinstance(v, str) and len(v) <= QUOTE_LIMIT
        }
        if plain:
            shown["ctx"] = plain
    return shown


def _unechoed(message: str, value: object) -> str:
    # pydantic's own messages name the expected values, never the input; a custom validator's may quote a
    # string from the input it was given (for a model validator, the whole object).
    if len(message) > QUOTE_LIMIT:
        for text in sorted(_long_strings(value), key=len, reverse=True):
            for echo in (repr(text), text):
                message = message.replace(echo, quoted(text))
    return clipped(message)


def _long_strings(value: object, depth: int = 0) -> Iterator[str]:
    """The strings longer than `QUOTE_LIMIT` in a request body: keys and values, a few levels down."""
    if isinstance(value, str):
        if len(value) > QUOTE_LIMIT:
            yield value
    elif isinstance(value, dict) and depth < 4:
        for key, item in value.items():
            yield from _long_strings(key, depth + 1)
            yield from _long_strings(item, depth + 1)
    elif isinstance(value, list | tuple) and depth < 4:
        for item in value:
            yield from _long_strings(item, depth + 1)


def validation_summary(errors: list[Any]) -> tuple[str, str | None]:
    """A one-line message naming the first bad field, and that field's dotted name."""
    first = public_errors(errors[:1])[0]
    loc = [str(part) for part in first["loc"] if part not in ("body", "query", "path", "header")]
    param = ".".join(loc) or None
    message = first["msg"]
    return (f"{param}: {message}" if param else message), param


def api_error_response(exc: ApiError) -> JSONResponse:
    """The envelope for an `ApiError`, its message cut to `MESSAGE_LIMIT` in case it quotes the client."""
    body = envelope(clipped(exc.message), code=exc.code, type_=exc.type, param=exc.param)
    return JSONResponse(body, status_code=exc.status, headers=exc.headers)


def redis_down_response(exc: Exception) -> JSONResponse:
    log.error("Redis unreachable: %s", exc)
    message = f"the job store (Redis) is unreachable: {exc}; retry shortly"
    body = envelope(message, code="redis_unavailable", type_="server_error")
    return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})


def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return api_error_response(exc)

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = list(exc.errors())
        missing = unregistered_model(errors)
        if missing is not None:
            return await on_api_error(_, missing)
        message, param = validation_summary(errors)
        body = envelope(message, code="validation_error", type_="invalid_request_error", param=param)
        body["detail"] = public_errors(errors)
        return JSONResponse(body, status_code=422)

    async def on_http(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        body = envelope(str(exc.detail), code=code, type_="invalid_request_error")
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    async def on_redis_down(_: Request, exc: Exception) -> JSONResponse:
        return redis_down_response(exc)

    async def on_redis_full(_: Request, exc: Exception) -> JSONResponse:
        # Redis refuses writes at its maxmemory (noeviction): nothing was stored; room comes back as
        # jobs and files expire or are deleted.
        log.error("Redis is full: %s", exc)
        message = "the job store (Redis) is full and stores nothing more for now; retry later"
        return api_error_response(InsufficientStorage(message, headers={"Retry-After": "30"}))

    async def on_broker_down(_: Request, exc: Exception) -> JSONResponse:
        log.error("broker unreachable: %s", exc)
        body = envelope(f"the job broker is unreachable: {exc}", code="broker_unavailable", type_="server_error")
        return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RedisConnectionError, on_redis_down)
    app.add_exception_handler(RedisTimeoutError, on_redis_down)
    app.add_exception_handler(OutOfMemoryError, on_redis_full)
    app.add_exception_handler(OperationalError, on_broker_down)
