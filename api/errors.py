"""One error tree for the API and one JSON envelope for every error it answers.

    ApiError (500 internal_error)
    ├── BadRequest (400)
    ├── Unauthorized (401 invalid_api_key)
    ├── NotFound (404 not_found)
    │   └── ModelNotFound (404 model_not_found)
    ├── Conflict (409)
    ├── Unprocessable (422 validation_error)
    ├── TooManyRequests (429 rate_limit_exceeded, Retry-After)
    │   └── QuotaExceeded (429 too_many_active_jobs)
    ├── ServiceUnavailable (503)
    │   └── QueueFullError (503 queue_full, Retry-After)
    └── GatewayTimeout (504 job_timeout)

The envelope is OpenAI's, so the official client reads it everywhere:
`{"error": {"message", "type", "param", "code"}}`; validation errors also keep FastAPI's `detail` list.
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError
from pydantic import BaseModel, ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
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


class NotFound(ApiError):
    status, code, type = 404, "not_found", "invalid_request_error"


class ModelNotFound(NotFound):
    code = "model_not_found"


class Conflict(ApiError):
    status, code, type = 409, "conflict", "invalid_request_error"


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


def validated(model: type[M], value: dict[str, Any], prefix: str | None = None) -> M:
    """`value` as a `model`, or a 422 naming the first bad field (under `prefix`, for a nested config)."""
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        message, param = validation_summary(list(exc.errors()))
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
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def validation_summary(errors: list[Any]) -> tuple[str, str | None]:
    """A one-line message naming the first bad field, and that field's dotted name."""
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path", "header")]
    param = ".".join(loc) or None
    message = first.get("msg", "invalid request")
    return (f"{param}: {message}" if param else message), param


def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        body = envelope(exc.message, code=exc.code, type_=exc.type, param=exc.param)
        return JSONResponse(body, status_code=exc.status, headers=exc.headers)

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = list(exc.errors())
        message, param = validation_summary(errors)
        body = envelope(message, code="validation_error", type_="invalid_request_error", param=param)
        body["detail"] = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in errors]
        return JSONResponse(body, status_code=422)

    async def on_http(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        body = envelope(str(exc.detail), code=code, type_="invalid_request_error")
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    async def on_redis_down(_: Request, exc: Exception) -> JSONResponse:
        log.error("Redis unreachable: %s", exc)
        message = f"the job store (Redis) is unreachable: {exc}; retry shortly"
        body = envelope(message, code="redis_unavailable", type_="server_error")
        return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})

    async def on_broker_down(_: Request, exc: Exception) -> JSONResponse:
        log.error("broker unreachable: %s", exc)
        body = envelope(f"the job broker is unreachable: {exc}", code="broker_unavailable", type_="server_error")
        return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RedisConnectionError, on_redis_down)
    app.add_exception_handler(RedisTimeoutError, on_redis_down)
    app.add_exception_handler(OperationalError, on_broker_down)
