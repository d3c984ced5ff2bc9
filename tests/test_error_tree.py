"""One tree of job failures (`contract.errors`) and one mapping per surface (`api.errors`): HTTP, WebSocket,
batch error lines; and the text of an unexpected exception reaches the log, never the client."""

from __future__ import annotations

import json
import logging
import re
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from kombu.exceptions import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from api.auth import ANONYMOUS
from api.errors import (
    HTTP_STATUS,
    ApiError,
    JobFailure,
    api_error_response,
    as_api_error,
    batch_error,
    error_body,
    websocket_error,
)
from config import load_settings
from config.logs import log_context
from contract.errors import (
    Category,
    ContextOverflow,
    EmptyAudio,
    JobError,
    JobTimedOut,
    UpstreamError,
    error_classes,
    failure_from,
)
from contract.jobs import JobKind, JobRecord, JobStatus
from jobstore import keys
from tests.conftest import Stack
from tests.records import create_job
from tests.stack import wait_until
from workers.celery_tasks import JobRunner
from workers.execution import DeadlinePassed
from workers.metrics import ERROR_TYPES, WorkerMetrics
from workers.stages import stage_failure

LUA = Path(__file__).resolve().parents[1] / "jobstore" / "lua"

# What each code answered before the tree: the statuses clients already rely on.
KNOWN_STATUS = {
    "invalid_input": 400,
    "context_length_exceeded": 400,
    "empty_file": 400,
    "unsupported_media_type": 415,
    "invalid_audio": 422,
    "audio_too_long": 422,
    "model_unavailable": 503,
    "upstream_error": 502,
    "upstream_timeout": 504,
    "timeout": 504,
    "internal_error": 500,
    "engine_error": 500,
    "engine_stalled": 500,
    "worker_lost": 500,
}

CLASSES = sorted(error_classes().values(), key=lambda cls: cls.code)


def every_class_with_a_code(root: type[JobError] = JobError) -> list[type[JobError]]:
    found = [root] if "code" in vars(root) else []
    for sub in root.__subclasses__():
        found += every_class_with_a_code(sub)
    return found


def test_codes_are_unique_and_every_category_has_a_status() -> None:
    codes = [cls.code for cls in every_class_with_a_code()]
    assert len(codes) == len(set(codes)), sorted(codes)
    assert set(HTTP_STATUS) == set(Category)
    assert {cls.code: HTTP_STATUS[cls.category] for cls in CLASSES if cls.code in KNOWN_STATUS} == KNOWN_STATUS


def test_the_codes_lua_scripts_record_are_in_the_tree() -> None:
    written = {code for path in LUA.glob("*.lua") for code in re.findall(r"type = '(\w+)'", path.read_text())}
    assert written and written <= set(error_classes())


def test_every_code_of_the_tree_counts_under_its_own_failure_label() -> None:
    assert ERROR_TYPES == set(error_classes())
    metrics = WorkerMetrics()
    job = JobRecord("job_x", JobKind.generate, JobStatus.failed, owner="o", request={})
    for code in error_classes():
        metrics.finished(job, "failed", None, {"type": code, "message": "m"}, 1.0)
    metrics.finished(job, "failed", None, {"type": "made_up_by_a_client", "message": "m"}, 1.0)
    counted = {
        sample.labels["type"]: sample.value
        for metric in metrics.failures.collect()
        for sample in metric.samples
        if sample.name == "worker_job_failures_total"
    }
    assert counted == {**dict.fromkeys(error_classes(), 1.0), "other": 1.0}


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.code)
def test_each_failure_maps_to_one_answer_on_every_surface(cls: type[JobError]) -> None:
    failure = cls("what went wrong")
    assert type(failure_from(failure.as_record())) is cls  # a record reads back as its class

    http = JobFailure(failure)
    status = HTTP_STATUS[cls.category]
    assert (http.status, http.code) == (status, cls.code)
    assert http.type == ("invalid_request_error" if status < 500 else "server_error")
    response = api_error_response(http)
    assert response.status_code == status
    body = json.loads(bytes(response.body))
    assert body["error"] == {"message": "what went wrong", "type": http.type, "param": None, "code": cls.code}
    assert body["detail"] == "what went wrong"

    ws = websocket_error(failure)
    assert ws.message == {"event": "error", "status": "error", **body, "code": cls.code}
    assert ws.close_code == (1008 if status < 500 else 1011)

    line = batch_error(JobFailure.recorded(failure.as_record()), "job_1")
    assert line["response"] == {"status_code": status, "request_id": "job_1", "body": {"error": body["error"]}}
    assert line["error"] == {"code": cls.code, "message": "what went wrong"}


def test_blocking_and_streaming_answer_a_failure_with_the_same_envelope() -> None:
    record = ContextOverflow("prompt + max_tokens exceed the context").as_record()
    blocking = json.loads(bytes(api_error_response(JobFailure.recorded(record)).body))
    streamed = error_body(JobFailure.recorded(record))  # an SSE / NDJSON line
    assert blocking == streamed and streamed["error"]["type"] == "invalid_request_error"


def test_an_unknown_or_missing_record_is_an_internal_error() -> None:
    for record in (None, {}, {"type": "no_such_code", "message": "m"}):
        failure = JobFailure.recorded(record)
        assert (failure.status, failure.code, failure.type) == (500, "internal_error", "server_error")


def test_audio_refusals_keep_their_statuses_and_a_param() -> None:
    refused = JobFailure(EmptyAudio("the uploaded file is empty"), param="audio_base64")
    assert (refused.status, refused.code, refused.param) == (400, "empty_file", "audio_base64")


def test_a_route_may_answer_with_the_originals_status_and_keeps_the_code() -> None:
    failure = JobFailure(UpstreamError("OpenAudio failed"), status=503)
    assert (failure.status, failure.code, failure.type) == (503, "upstream_error", "server_error")


def test_a_stage_failure_keeps_the_stages_class_and_names_the_stage() -> None:
    failed = stage_failure("synthesis", JobStatus.failed, UpstreamError("OpenAudio failed").as_record())
    assert type(failed) is UpstreamError and failed.message == "synthesis failed: OpenAudio failed"
    timed_out = stage_failure("generation", JobStatus.failed, {"type": "timeout", "message": "too long"})
    assert type(timed_out) is JobTimedOut and not isinstance(timed_out, DeadlinePassed)
    assert stage_failure("transcription", JobStatus.expired, None).code == "stage_expired"
    assert stage_failure("transcription", JobStatus.cancelled, None).code == "stage_cancelled"


# What each surface answers for an exception no route caught: (status, code, Retry-After).
UNCAUGHT: list[tuple[BaseException, int, str, str | None]] = [
    (OutOfMemoryError("OOM command not allowed (secret 10.0.0.7:6379)"), 507, "insufficient_storage", "30"),
    (OperationalError("[Errno 111] Connection refused: amqp://secret@10.0.0.9:5672"), 503, "broker_unavailable", "5"),
    (RedisConnectionError("Error 111 connecting to 10.0.0.7:6379 (secret)"), 503, "redis_unavailable", "5"),
    (RedisTimeoutError("Timeout reading from 10.0.0.7:6379 (secret)"), 503, "redis_unavailable", "5"),
    (ReadOnlyError("You can't write against a read only replica 10.0.0.7 (secret)"), 503, "redis_unavailable", "5"),
    (ResponseError("ERR Error running script secret.lua on 10.0.0.7"), 500, "internal_error", None),
    (RuntimeError("secret-path /srv/keys on 10.0.0.7"), 500, "internal_error", None),
    (json.JSONDecodeError("Expecting value", "secret record from 10.0.0.7", 0), 500, "internal_error", None),
]


@pytest.mark.parametrize(("exc", "status", "code", "retry_after"), UNCAUGHT, ids=lambda v: type(v).__name__)
def test_every_surface_answers_an_uncaught_exception_from_one_table(
    exc: BaseException, status: int, code: str, retry_after: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="api.errors"), log_context(request_id="rid-9"):
        error = as_api_error(exc)
        ws = websocket_error(exc)
    assert (error.status, error.code, error.headers.get("Retry-After")) == (status, code, retry_after)
    response = api_error_response(error)
    assert (response.status_code, response.headers.get("retry-after")) == (status, retry_after)
    assert ws.message["code"] == code and ws.close_code == 1011
    line = batch_error(error, "job_1")
    assert (line["response"]["status_code"], line["error"]["code"]) == (status, code)
    told = json.dumps([bytes(response.body).decode(), ws.message, ws.reason, line])
    assert "secret" not in told and "10.0.0" not in told
    assert str(exc) in caplog.text  # the log has what the client is not told
    if status == 500:  # a bug: the client gets the request id to quote, the log its traceback
        assert error.message == "internal error (request id rid-9)"
        assert all(record.exc_info for record in caplog.records)


def test_api_errors_and_job_failures_pass_as_they_are() -> None:
    kept = ApiError("kept")
    assert as_api_error(kept) is kept
    failure = as_api_error(ContextOverflow("9000 tokens"))
    assert (failure.status, failure.code, failure.message) == (400, "context_length_exceeded", "9000 tokens")


class FakeRun:
    """The part of `JobExecution` that `JobRunner._run` uses: it records how the job finished."""

    def __init__(self) -> None:
        self.finished: list[tuple[JobStatus, dict[str, Any] | None, dict[str, Any] | None]] = []

    def finish(
        self, status: JobStatus, *, result: dict[str, Any] | None = None, error: dict[str, Any] | None = None
    ) -> str:
        self.finished.append((status, result, error))
        return status.value


def test_the_runner_records_a_bug_with_the_request_id_and_logs_its_text(caplog: pytest.LogCaptureFixture) -> None:
    runner = JobRunner(load_settings(), None, "worker-1", {})  # type: ignore[arg-type]
    job = JobRecord("job_x", JobKind.generate, JobStatus.running, owner="o", request={}, request_id="rid-7")

    def broken(_job: JobRecord, _run: Any) -> Any:
        raise KeyError("secret-column")

    run = FakeRun()
    with caplog.at_level(logging.ERROR, logger="workers.celery_tasks"):
        status, _, error = runner._run(job, run, broken)  # type: ignore[arg-type]
    assert status == "failed" and error == {"type": "internal_error", "message": "internal error (request id rid-7)"}
    assert run.finished == [(JobStatus.failed, None, error)]
    assert "secret-column" in caplog.text and "job_x" in caplog.text and "rid-7" in caplog.text

    def refused(_job: JobRecord, _run: Any) -> Any:
        raise ContextOverflow("the prompt is 9000 tokens")

    assert runner._run(job, FakeRun(), refused)[2] == {  # type: ignore[arg-type]
        "type": "context_length_exceeded",
        "message": "the prompt is 9000 tokens",
    }

    def past_deadline(_job: JobRecord, _run: Any) -> Any:
        raise DeadlinePassed("the job ran longer than TASK_TIME_LIMIT_SECONDS")

    timed_out = runner._run(job, FakeRun(), past_deadline)[2]  # type: ignore[arg-type]
    assert timed_out is not None and timed_out["type"] == "timeout"
    assert "TASK_TIME_LIMIT_SECONDS=" in timed_out["message"]


def test_a_job_whose_handler_crashes_tells_the_client_only_its_request_id(stack: Stack, client: httpx.Client) -> None:
    """A job the API could never have accepted (its prompt is an object, not text) reaches the real worker,
    whose handler fails on it with pydantic's ValidationError: a bug, not a `JobError`."""
    secret = f"secret-{uuid.uuid4().hex[:8]}"  # short enough for pydantic's message to quote whole
    request_id = f"rid-{uuid.uuid4().hex[:12]}"
    decoded = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    try:
        job_id = create_job(
            stack.redis_url,
            JobKind.generate,
            {"prompt": {"text": secret}, "max_tokens": 4},
            owner=ANONYMOUS,  # the session stack has no keys: its clients are all `anonymous`
            request_id=request_id,
        ).id
        wait_until(lambda: decoded.hget(keys.job(job_id), "status") == "failed", timeout=60, what="the failure")
    finally:
        decoded.close()

    job = client.get(f"/v1/jobs/{job_id}")
    assert job.status_code == 200, job.text
    assert job.json()["error"] == {"type": "internal_error", "message": f"internal error (request id {request_id})"}
    result = client.get(f"/v1/jobs/{job_id}/result")
    assert result.status_code == 409 and result.json()["error"]["code"] == "job_not_succeeded"
    events = client.get(f"/v1/jobs/{job_id}/events").text
    for answer in (job.text, result.text, events):
        assert secret not in answer
    log = stack.worker.log()  # the exception's text, with the job and request ids
    assert secret in log and f"job {job_id} (request {request_id}) failed unexpectedly" in log
