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
from redis.exceptions import ConnectionError as RedisConnectionError

from api.auth import ANONYMOUS
from api.errors import (
    HTTP_STATUS,
    ApiError,
    BadRequest,
    JobFailure,
    api_error_response,
    as_api_error,
    batch_error,
    error_body,
    websocket_error,
)
from config import load_settings
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
from jobstore.celery_app import create_celery
from jobstore.creation import CreatePlan
from tests.conftest import Stack
from tests.stack import wait_until
from workers.celery_tasks import JobRunner
from workers.dialogue import stage_failure
from workers.execution import DeadlinePassed, WorkerStore

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


def test_unexpected_exceptions_say_nothing_of_their_text(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="api.errors"):
        hidden = as_api_error(RuntimeError("secret-path /srv/keys"))
        store_down = websocket_error(RedisConnectionError("Error 111 connecting to 10.0.0.7:6379"))
    assert (hidden.status, hidden.code) == (500, "internal_error") and "secret" not in hidden.message
    assert "10.0.0.7" not in json.dumps(store_down.message) and "10.0.0.7" not in store_down.reason
    assert store_down.close_code == 1011 and store_down.message["code"] == "redis_unavailable"
    assert "secret-path" in caplog.text and "10.0.0.7" in caplog.text  # the log has them
    not_json = websocket_error(json.JSONDecodeError("Expecting value", "x", 0))
    assert not_json.close_code == 1008 and not_json.message["code"] == BadRequest.code
    assert as_api_error(ApiError("kept")).message == "kept"


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
    settings = load_settings(redis_url=stack.redis_url)
    decoded = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    try:
        store = WorkerStore(decoded, ttl=600, lease=5, max_attempts=1)
        plan = CreatePlan.build(
            create_celery(settings),
            JobKind.generate,
            {"prompt": {"text": secret}, "max_tokens": 4},
            owner=ANONYMOUS,  # the session stack has no keys: its clients are all `anonymous`
            ttl=600,
            max_queue_depth=0,
            max_active=0,
            direct=True,
            request_id=request_id,
        )
        assert store.scripts["create"](keys=plan.keys, args=plan.args)[0] == "created"
        wait_until(lambda: decoded.hget(keys.job(plan.job_id), "status") == "failed", timeout=60, what="the failure")
    finally:
        decoded.close()

    job = client.get(f"/v1/jobs/{plan.job_id}")
    assert job.status_code == 200, job.text
    assert job.json()["error"] == {"type": "internal_error", "message": f"internal error (request id {request_id})"}
    result = client.get(f"/v1/jobs/{plan.job_id}/result")
    assert result.status_code == 409 and result.json()["error"]["code"] == "job_not_succeeded"
    events = client.get(f"/v1/jobs/{plan.job_id}/events").text
    for answer in (job.text, result.text, events):
        assert secret not in answer
    log = stack.worker.log()  # the exception's text, with the job and request ids
    assert secret in log and f"job {plan.job_id} (request {request_id}) failed unexpectedly" in log
