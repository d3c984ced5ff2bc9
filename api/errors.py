"""One error tree for the API and one JSON envelope for every error it answers.

    ApiError (500 internal_error)
    ├── BadRequest (400)
    ├── Unauthorized (401 invalid_api_key)
    │   └── InvalidApiKey (401, or 403 on the original API's routes)
    ├── Forbidden (403 invalid_api_key)
    ├── NotFound (404 not_found)
    │   └── ModelNotFound (404 model_not_found)
    ├── Conflict (409)
    │   ├── JobNotSucceeded (409 job_not_succeeded)
    │   ├── BatchCancelled (409 batch_cancelled)
    │   └── BatchExpired (409 batch_expired)
    ├── RequestTooLarge (413 request_too_large)
    │   └── StorageQuotaExceeded (413 storage_quota_exceeded)
    ├── Unprocessable (422 validation_error)
    ├── TooManyRequests (429 rate_limit_exceeded, Retry-After)
    │   └── QuotaExceeded (429 too_many_active_jobs)
    ├── ServiceUnavailable (503)
    │   ├── QueueFullError (503 queue_full, Retry-After)
    │   ├── StoreUnavailable (503 redis_unavailable, Retry-After)
    │   └── BrokerUnavailableError (503 broker_unavailable, Retry-After)
    ├── GatewayTimeout (504 job_timeout)
    ├── InsufficientStorage (507 insufficient_storage, Retry-After: Redis is at its maxmemory)
    └── JobFailure (a job's `contract.errors.JobError`: its code, the status its category maps to)

The envelope is OpenAI's, so the official client reads it everywhere:
`{"error": {"message", "type", "param", "code"}}`; validation errors also keep FastAPI's `detail` list.

One table from an exception to an `ApiError`, `as_api_error`, and one mapping per surface from that:
`api_error_response` (HTTP, every handler), `websocket_error` (every WebSocket route's error message and
close code), `batch_error` (a batch's error-file line). A job's failure reaches them as `JobFailure`,
whose status comes from `HTTP_STATUS`, the one table from a failure's category to HTTP. The text of an
unexpected exception reaches the log, never a client. How a request that does not validate is described
(the field, its input cut short) is `api.validation`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError
from pydantic import BaseModel, ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.request_id import request_id_header, request_id_of
from api.validation import clipped, public_errors, unregistered_model_param, validation_summary
from config.logs import current_request_id, log_context
from contract.errors import Category, JobError, failure_from, internal_error_message
from contract.jobs import JobRecord, JobStatus

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


class ClientGone(ApiError):
    """The client that waited for a job went away (nginx's 499); nobody receives this answer."""

    status, code, type = 499, "client_closed_request", "invalid_request_error"


class InvalidJsonLine(BadRequest):
    """A batch input line that is not JSON."""

    code = "invalid_json_line"


class Unauthorized(ApiError):
    status, code, type = 401, "invalid_api_key", "authentication_error"


class InvalidApiKey(Unauthorized):
    """A key was sent and is not one of API_KEYS (401; 403 on the original API's routes, as the original answered)."""


class Forbidden(ApiError):
    status, code, type = 403, "invalid_api_key", "authentication_error"


class PermissionDenied(ApiError):
    """A valid key asking for what only an operator (OPERATOR_KEY_IDS) may do."""

    status, code, type = 403, "permission_denied", "permission_error"


class NotFound(ApiError):
    status, code, type = 404, "not_found", "invalid_request_error"


class ModelNotFound(NotFound):
    code = "model_not_found"


class Conflict(ApiError):
    status, code, type = 409, "conflict", "invalid_request_error"


class JobNotSucceeded(Conflict):
    code = "job_not_succeeded"


class BatchCancelled(Conflict):
    """A batch's request that was not run because the batch was cancelled."""

    code = "batch_cancelled"


class BatchExpired(Conflict):
    """A batch's request that was not run because the batch expired."""

    code = "batch_expired"


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


class StoreUnavailable(ServiceUnavailable):
    code = "redis_unavailable"


class BrokerUnavailableError(ServiceUnavailable):
    code = "broker_unavailable"


class GatewayTimeout(ApiError):
    status, code, type = 504, "job_timeout", "server_error"


class InsufficientStorage(ApiError):
    status, code, type = 507, "insufficient_storage", "server_error"


# A job failure's category as HTTP; the envelope's `type` follows from the status (`envelope_type`).
HTTP_STATUS: dict[Category, int] = {
    Category.invalid_request: 400,
    Category.unsupported_media: 415,
    Category.unprocessable: 422,
    Category.internal: 500,
    Category.upstream: 502,
    Category.unavailable: 503,
    Category.timeout: 504,
    Category.storage_full: 507,
}


def envelope_type(status: int) -> str:
    """OpenAI's error `type` for a job failure: the client's fault or ours, whether it was asked for
    blocking or streaming."""
    return "invalid_request_error" if status < 500 else "server_error"


class JobFailure(ApiError):
    """A job's failure as the API answers it: its code, and the status its category maps to (`status`
    only where a route must answer as the original did)."""

    def __init__(self, failure: JobError, *, param: str | None = None, status: int | None = None) -> None:
        super().__init__(failure.message, param=param)
        self.failure = failure
        self.status = status or HTTP_STATUS[failure.category]
        self.code = failure.code
        self.type = envelope_type(self.status)

    @classmethod
    def recorded(cls, error: Mapping[str, Any] | None) -> JobFailure:
        """The failure a job's record (or its `error` event) holds as `{type, message}`."""
        return cls(failure_from(error))


def failure_of(job: JobRecord) -> ApiError | None:
    """What the API answers for a job that did not succeed (None for one that did): a failure as its
    `JobFailure`, a cancelled job 409, an expired one 504."""
    if job.status == JobStatus.succeeded:
        return None
    if job.status in (JobStatus.cancelled, JobStatus.cancelling):
        return Conflict(f"job {job.id} was cancelled")
    if job.status == JobStatus.expired:
        return GatewayTimeout(f"job {job.id} expired in the queue before a worker took it")
    return JobFailure.recorded(job.error)


def raise_for_failure(job: JobRecord) -> None:
    failure = failure_of(job)
    if failure is not None:
        raise failure


MODEL_NOT_FOUND_MESSAGE = "The model does not exist or is not served here; GET /v1/models lists the models"


def unregistered_model(errors: list[Any], prefix: str | None = None) -> ModelNotFound | None:
    """The 404 for a request naming a model the registry does not serve (one message for every name)."""
    param = unregistered_model_param(errors, prefix)
    return None if param is None else ModelNotFound(MODEL_NOT_FOUND_MESSAGE, param=param)


REDIS_DOWN = "the job store (Redis) is unreachable; retry shortly"
REDIS_FULL = "the job store (Redis) is full and stores nothing more for now; retry later"
BROKER_DOWN = "the job broker is unreachable; retry shortly"
# Redis errors that pass: it is down, slow, still loading its data, or a replica after a failover.
STORE_AWAY = (RedisConnectionError, RedisTimeoutError, ReadOnlyError)


def as_api_error(exc: BaseException) -> ApiError:
    """The one table from an exception to what a client is told, on every surface (HTTP, WebSocket, batch
    lines): an `ApiError` as it is, a job's failure as `JobFailure`, Redis full as 507, Redis or the broker
    away as 503 with `Retry-After`. Anything else is a bug (another Redis error included: a script or a
    command we got wrong): a 500 that names the request id, its text and traceback in the log only."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, JobError):
        return JobFailure(exc)
    if isinstance(exc, OutOfMemoryError):
        # Redis refuses writes at its maxmemory (noeviction): nothing was stored; room comes back as jobs
        # and files expire or are deleted.
        log.error("Redis is full: %s", exc)
        return InsufficientStorage(REDIS_FULL, headers={"Retry-After": "30"})
    if isinstance(exc, STORE_AWAY):
        log.error("Redis unreachable: %s", exc)  # the address it tried stays in the log
        return StoreUnavailable(REDIS_DOWN, headers={"Retry-After": "5"})
    if isinstance(exc, OperationalError):
        log.error("broker unreachable: %s", exc)
        return BrokerUnavailableError(BROKER_DOWN, headers={"Retry-After": "5"})
    log.error("unexpected error: %r", exc, exc_info=exc)
    return ApiError(internal_error_message(current_request_id()))


def invalid_request(exc: ValidationError, prefix: str | None = None) -> ApiError:
    """A client's message that did not validate: a 404 if it names a model that is not served, else a 422
    naming the first bad field (under `prefix`, for a nested config)."""
    errors = list(exc.errors())
    missing = unregistered_model(errors, prefix)
    if missing is not None:
        return missing
    message, param = validation_summary(errors)
    if prefix is None:
        return Unprocessable(message, param=param)
    return Unprocessable(f"{prefix}.{message}", param=f"{prefix}.{param}" if param else prefix)


def validated(model: type[M], value: dict[str, Any], prefix: str | None = None) -> M:
    """`value` as a `model`, or the client's 4xx for it (`invalid_request`)."""
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise invalid_request(exc, prefix) from exc


def envelope(message: str, *, code: str, type_: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error object, and beside it the `detail` string the Gemma 3 Speech API's clients read."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}, "detail": message}


def error_body(error: ApiError) -> dict[str, Any]:
    """The envelope of an `ApiError`, its message cut to `MESSAGE_LIMIT` in case it quotes the client;
    an error line in a stream is this too."""
    return envelope(clipped(error.message), code=error.code, type_=error.type, param=error.param)


@dataclass(frozen=True, slots=True)
class WebSocketError:
    message: dict[str, Any]  # what the route sends
    close_code: int  # 1008 the client's fault, 1011 ours: for a route that closes after an error

    @property
    def reason(self) -> str:
        return str(self.message["detail"])[:120]  # a close reason is at most 123 bytes


def websocket_error(exc: BaseException) -> WebSocketError:
    """Every WebSocket route's error: `{"event": "error", "status": "error", "detail", "code", "error"}`
    (`event` is what the original speech routes' clients read, `status` the original generation route's, `error`
    OpenAI's object), and the close code for a route that closes on it."""
    error = as_api_error(exc)
    message = {"event": "error", "status": "error", **error_body(error), "code": error.code}
    return WebSocketError(message, 1008 if error.status < 500 else 1011)


def batch_error(error: ApiError, request_id: str) -> dict[str, Any]:
    """A failed batch request's `response` and `error`, as its line in the batch's error file has them."""
    body = error_body(error)
    del body["detail"]
    response = {"status_code": error.status, "request_id": request_id, "body": body}
    return {"response": response, "error": {"code": error.code, "message": body["error"]["message"]}}


def api_error_response(exc: ApiError) -> JSONResponse:
    """The HTTP answer to an `ApiError`: its status, its envelope, its headers."""
    return JSONResponse(error_body(exc), status_code=exc.status, headers=exc.headers)


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

    async def on_other(_: Request, exc: Exception) -> JSONResponse:
        return api_error_response(as_api_error(exc))

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Starlette runs the handler for `Exception` in its outermost middleware, outside the request id's,
        # so the id is put back here: on the log line, in the message and in the headers. Once the answer
        # is sent the exception is raised again for the server, and uvicorn then closes the connection:
        # `Connection: close` tells the client not to send its next request on it.
        with log_context(request_id=request_id_of(request.scope)):
            response = api_error_response(as_api_error(exc))
        response.headers.update({**request_id_header(request.scope), "Connection": "close"})
        return response

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    for expected in (JobError, RedisError, OperationalError):  # answered inside the request's middleware
        app.add_exception_handler(expected, on_other)
    app.add_exception_handler(Exception, on_unexpected)
