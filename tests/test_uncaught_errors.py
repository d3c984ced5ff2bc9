"""What the API answers for an exception no route caught: the one envelope with its request id, over HTTP
(from Starlette's test client and from a real uvicorn) and over every WebSocket, with the broker away."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from kombu.exceptions import OperationalError
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError
from starlette.websockets import WebSocketDisconnect

from api.app import create_app
from config import Settings
from tests.audio import as_wav
from tests.fake_servers import serve_app
from tests.stack import free_port

SECRET = "secret-10.0.0.7"
# What a route raises, and what the client is told: (status, code).
RAISED: dict[str, tuple[Exception, int, str]] = {
    "bug": (RuntimeError(f"{SECRET} /srv/keys"), 500, "internal_error"),
    "script": (ResponseError(f"ERR Error running script ({SECRET})"), 500, "internal_error"),
    "replica": (ReadOnlyError(f"You can't write against a read only replica ({SECRET})"), 503, "redis_unavailable"),
    "full": (OutOfMemoryError(f"OOM command not allowed ({SECRET})"), 507, "insufficient_storage"),
    "broker": (OperationalError(f"[Errno 111] Connection refused ({SECRET})"), 503, "broker_unavailable"),
}


def failing_app(redis_url: str, **settings: Any) -> FastAPI:
    """The real app, with one more route that raises what it is told to."""
    app = create_app(Settings(redis_url=redis_url, **settings))

    @app.get("/v1/raise/{what}")
    async def raise_(what: str) -> None:
        raise RAISED[what][0]

    return app


def assert_enveloped(http: httpx.Client | TestClient) -> None:
    for what, (_, status, code) in RAISED.items():
        request_id = f"rid-{what}"
        response = http.get(f"/v1/raise/{what}", headers={"X-Request-ID": request_id})
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/json"
        assert response.headers["x-request-id"] == request_id
        body = response.json()
        assert body["error"]["code"] == code and body["detail"] == body["error"]["message"]
        assert SECRET not in response.text
        if status == 500:
            assert body["error"]["message"] == f"internal error (request id {request_id})"
            assert body["error"]["type"] == "server_error"
        else:
            assert "retry-after" in response.headers
        if what == "bug":  # uvicorn closes the connection after an exception escapes the app: the client is told
            assert response.headers["connection"] == "close"


def test_an_uncaught_exception_is_answered_in_the_envelope_with_its_request_id(
    private_redis: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = failing_app(private_redis)
    # Starlette re-raises what its `Exception` handler answered, for the server's log: the test client
    # that does not re-raise it sees what a real client gets.
    with TestClient(app, raise_server_exceptions=False) as http:
        assert_enveloped(http)
    assert f"{SECRET} /srv/keys" in caplog.text  # the log has what the client is not told
    with serve_app(app, lifespan="on") as url, httpx.Client(base_url=url, timeout=30) as http:
        assert_enveloped(http)


@contextmanager
def broker_down(private_redis: str) -> Iterator[TestClient]:
    """The app with a broker that refuses connections (nothing listens on its port)."""
    app = failing_app(private_redis, celery_broker_url=f"amqp://guest:guest@127.0.0.1:{free_port()}//")
    with TestClient(app) as http:
        # Refused at the first connection attempt, rather than after kombu's retries.
        options = {**app.state.speechq.celery.conf.broker_transport_options, "max_retries": 0}
        app.state.speechq.celery.conf.update(broker_transport_options=options, task_publish_retry=False)
        yield http


def test_every_websocket_says_why_before_it_closes_when_the_broker_is_away(private_redis: str) -> None:
    tone = base64.b64encode(as_wav(0.2 * np.sin(np.linspace(0, 440 * 2 * np.pi, 16_000)), 16_000)).decode()
    requests = {
        "/v1/text-to-speech/ws": {"text": "Hello there."},
        "/v1/speech-to-text/ws": {"audio_base64": tone, "filename": "tone.wav"},
        "/v1/dialogue/ws": {"audio_base64": tone, "filename": "tone.wav"},
        "/v1/generate_ws": {"prompt": "Hello", "max_tokens": 4},
    }
    with broker_down(private_redis) as http:
        for path, request in requests.items():
            with http.websocket_connect(path) as ws:
                ws.send_json(request)
                failed = ws.receive_json()
                assert (failed["event"], failed["status"], failed["code"]) == ("error", "error", "broker_unavailable")
                assert failed["error"]["type"] == "server_error" and SECRET not in json.dumps(failed)
                with pytest.raises(WebSocketDisconnect) as closed:
                    ws.receive_json()
                assert closed.value.code == 1011, path


def test_a_websocket_message_that_is_not_a_json_object_is_refused_and_the_socket_stays_open(
    private_redis: str,
) -> None:
    with broker_down(private_redis) as http, http.websocket_connect("/v1/text-to-speech/ws") as ws:
        ws.send_text("not JSON")
        assert ws.receive_json()["code"] == "bad_request"
        ws.send_json(["a list"])  # answered on the same socket: the first refusal left it open
        assert ws.receive_json()["code"] == "validation_error"


def test_the_job_websocket_closes_with_why_when_redis_is_away() -> None:
    app = create_app(Settings(redis_url=f"redis://127.0.0.1:{free_port()}"))  # nothing listens there
    with TestClient(app) as http, http.websocket_connect("/v1/jobs/job_x/ws") as ws:
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert (closed.value.code, closed.value.reason) == (1011, "the job store (Redis) is unreachable; retry shortly")
