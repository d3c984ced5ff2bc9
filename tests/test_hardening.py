"""The smaller holes of issue 13, each reproduced against real API processes and shown closed: non-finite
cursors, what `/v1/workers` tells every key, the OpenAPI schema, auth before the body, forged
X-Forwarded-For, chat `response_format`, whitespace around a key, Flower without a login, and error
messages that quote the client."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel, field_validator, model_validator
from redis import Redis

from api.errors import Unprocessable, validated
from api.routes.models import public_worker_id
from cli.stack import flower_refusal
from config import Settings
from jobstore.adverts import WorkerInfo, advertise, withdraw
from jobstore.keys import WORKER_PATTERN
from tests.conftest import Stack
from tests.stack import ROOT, base_env, free_port, start_api, start_up, wait_until

KEY = "sk-hardening-0123456789"
AUTH = {"X-API-Key": KEY}
ERRORS = {"401", "404", "422", "429", "503"}


@pytest.fixture(scope="module")
def hardened(stack: Stack, logs_dir: Path) -> Iterator[str]:
    """An API with keys on, on the session's Redis and worker; uploads may be large, so a body read
    before the key is checked would be read to its end."""
    env = {**stack.env, "API_KEY_ENABLED": "true", "API_KEYS": KEY, "MAX_UPLOAD_MB": "256"}
    api, url = start_api(env, logs_dir)
    try:
        yield url
    finally:
        api.stop()


def longest_run(text: str, char: str) -> int:
    return max((len(run) for run in re.findall(f"{re.escape(char)}+", text)), default=0)


def raw_status(url: str, path: str, headers: list[bytes]) -> int:
    """The status of a GET whose header lines go out byte for byte (httpx refuses a value that starts or
    ends with whitespace, which is what this is about)."""
    address = httpx.URL(url)
    lines = [f"GET {path} HTTP/1.1".encode(), b"Host: speechq", b"Connection: close", *headers]
    with socket.create_connection((address.host, address.port), timeout=10) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return int(reply.split(b" ", 2)[1])


# 1. A cursor that is not a finite number ------------------------------------------------------------


def test_a_non_finite_or_garbage_cursor_is_a_json_422_naming_it(hardened: str) -> None:
    with httpx.Client(base_url=hardened, headers=AUTH, timeout=10) as client:
        for cursor in ("nan", "NaN", "inf", "-inf", "Infinity", "1e999", "garbage"):
            response = client.get("/v1/jobs", params={"cursor": cursor})
            assert response.status_code == 422, (cursor, response.text)
            assert response.headers["content-type"] == "application/json"
            error = response.json()["error"]
            assert error["code"] == "validation_error" and error["param"] == "cursor", cursor
            assert error["message"].startswith("cursor: ")
        # The same keep-alive connection still serves: nothing was reset.
        assert client.get("/v1/jobs", params={"cursor": "1700000000.5"}).status_code == 200


# 2. /v1/workers tells every key only what a client needs -------------------------------------------


@pytest.fixture
def exposed_worker(stack: Stack) -> Iterator[WorkerInfo]:
    """A worker record as a worker that loaded paths and a Hugging Face repo would advertise it."""
    info = WorkerInfo(
        id="gpu-node-7.internal.example:48213",
        hostname="gpu-node-7.internal.example",
        pid=48213,
        queues=["llm"],
        device="1",
        models=["gemma-3-270m", "/srv/tenant-b/private.gguf", "~/models/x.gguf", "evil/repo"],
        started_at=1_700_000_000.0,
        cuda_visible_devices="1",
        metrics_port=9471,
    )
    redis = Redis.from_url(stack.redis_url)
    advertise(redis, info, ttl=60)
    try:
        yield info
    finally:
        withdraw(redis, info.id)
        redis.close()


def raw_worker_ids(redis_url: str) -> list[str]:
    """The `host:pid` ids the workers advertise in Redis."""
    with Redis.from_url(redis_url) as redis:
        records = [redis.get(name) for name in redis.scan_iter(match=WORKER_PATTERN)]
    return [json.loads(record)["id"] for record in records if record]


def test_workers_list_shows_no_host_pid_port_or_path(hardened: str, stack: Stack, exposed_worker: WorkerInfo) -> None:
    with httpx.Client(base_url=hardened, headers=AUTH, timeout=10) as client:
        listed = client.get("/v1/workers")
        models = client.get("/v1/models")
    assert listed.status_code == 200 and models.status_code == 200
    workers = listed.json()["data"]
    assert len(workers) >= 2, "the session's worker and the advertised one"
    for worker in workers:
        assert set(worker) == {
            "id",
            "object",
            "queues",
            "device",
            "cuda_visible_devices",
            "models",
            "started_at",
            "heartbeat_age_seconds",
            "slots",
            "busy",
            "draining",
        }
        assert re.fullmatch(r"worker_[0-9a-f]{12}", worker["id"])
    mine = next(w for w in workers if w["id"] == public_worker_id(exposed_worker.id))
    assert mine["queues"] == ["llm"] and mine["device"] == "1" and mine["started_at"] == 1_700_000_000.0
    assert mine["models"] == ["gemma-3-270m"], "registered names only: no path, no repo id"
    # The record's other fields are gone (the key set above); its host and paths appear nowhere.
    leaks = ["gpu-node-7", "/srv/tenant-b", "~/models", "evil/repo", *raw_worker_ids(stack.redis_url)]
    if len(socket.gethostname()) >= 8:  # a short name could turn up inside another word
        leaks.append(socket.gethostname())
    for leak in leaks:
        assert leak not in listed.text, leak
        assert leak not in models.text, leak
    gemma = next(m for m in models.json()["data"] if m["id"] == "gemma-3-270m")
    assert public_worker_id(exposed_worker.id) in gemma["loaded_on"]


# 3. The OpenAPI schema: open, with the key schemes and the error envelope declared -----------------


def test_openapi_declares_the_key_schemes_and_the_error_responses(stack: Stack, logs_dir: Path) -> None:
    env = {
        **stack.env,
        "API_KEY_ENABLED": "true",
        "API_KEYS": KEY,
        "API_KEY_HEADER_NAME": "X-Speechq-Key",
        "METRICS_REQUIRE_KEY": "true",
    }
    api, url = start_api(env, logs_dir)
    try:
        with httpx.Client(base_url=url, timeout=10) as client:
            assert client.get("/docs").status_code == 200, "the docs stay open: they hold no secret"
            schema = client.get("/openapi.json").json()
            refused = client.get("/v1/jobs")
            assert client.get("/v1/jobs", headers={"X-Speechq-Key": KEY}).status_code == 200
            assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    finally:
        api.stop()
    assert schema["components"]["securitySchemes"] == {
        "APIKeyHeader": {"type": "apiKey", "in": "header", "name": "X-Speechq-Key"},
        "BearerAuth": {"type": "http", "scheme": "bearer"},
    }
    either_key: list[dict[str, list[str]]] = [{"APIKeyHeader": []}, {"BearerAuth": []}]
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if path in ("/health", "/ready"):
                assert "security" not in operation, path
                continue
            assert operation["security"] == either_key, (method, path)
            if path != "/metrics":
                assert ERRORS <= set(operation["responses"]), (method, path)
    responses = schema["paths"]["/v1/jobs"]["get"]["responses"]
    assert responses["401"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorEnvelope"}
    invalid = responses["422"]["content"]["application/json"]["schema"]
    assert invalid == {"$ref": "#/components/schemas/ValidationErrorEnvelope"}
    detail = schema["components"]["schemas"]["ErrorDetail"]
    assert set(detail["required"]) == {"message", "type", "param", "code"}
    # What the schema says is what a refusal looks like.
    assert refused.status_code == 401 and set(refused.json()["error"]) == {"message", "type", "param", "code"}


# 4. The key and the rate limit are checked before the body is read ----------------------------------


def test_an_unauthenticated_upload_is_refused_before_its_body_is_read(hardened: str) -> None:
    chunks, pulled = 512, 0  # 512 × 256 KiB = 128 MiB, under this API's MAX_UPLOAD_MB

    def body() -> Iterator[bytes]:
        nonlocal pulled
        yield b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        for _ in range(chunks):
            pulled += 1
            yield b"\0" * 262_144
        yield b"\r\n--x--\r\n"

    response = httpx.post(
        f"{hardened}/v1/audio/transcriptions",
        content=body(),
        headers={"content-type": "multipart/form-data; boundary=x"},
        timeout=60,
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    # What the client managed to push fits in the sockets' buffers; the server read none of the rest.
    assert pulled < chunks // 4, f"{pulled} of {chunks} chunks were taken from the client"
    assert response.headers["connection"] == "close"


# 5. X-Forwarded-For only from configured proxies ---------------------------------------------------


def test_a_forged_forwarded_for_does_not_dodge_the_per_ip_limit(private_redis: str, tmp_path: Path) -> None:
    limited = {
        "API_KEY_ENABLED": "true",
        "API_KEYS": KEY,
        "RATE_LIMIT_ENABLED": "true",
        "RATE_LIMIT_REQUESTS": "3",
        "RATE_LIMIT_WINDOW_SECONDS": "600",
    }
    untrusting = base_env(private_redis, tmp_path, **limited)
    untrusting.pop("FORWARDED_ALLOW_IPS", None)  # unset, as on a default install (uvicorn reads it too)
    default_api, default_url = start_api(untrusting, tmp_path)
    proxied_api, proxied_url = start_api(
        base_env(private_redis, tmp_path, FORWARDED_ALLOW_IPS="127.0.0.1", **limited), tmp_path
    )
    try:
        forged = [
            httpx.get(f"{default_url}/v1/jobs", headers={"X-Forwarded-For": f"203.0.113.{n}"}, timeout=10).status_code
            for n in range(5)
        ]
        assert forged == [401, 401, 401, 429, 429], "every request counts against 127.0.0.1, whatever it claims"
        # Behind a proxy the operator trusts, the forwarded address is the client's, with a budget of its own.
        via_proxy = httpx.get(f"{proxied_url}/v1/jobs", headers={"X-Forwarded-For": "198.51.100.9"}, timeout=10)
        assert via_proxy.status_code == 401
        assert httpx.get(f"{proxied_url}/v1/jobs", timeout=10).status_code == 429, "127.0.0.1 itself is spent"
    finally:
        default_api.stop()
        proxied_api.stop()


# 6. Chat response_format: text or refused ----------------------------------------------------------


def test_chat_accepts_a_text_response_format_and_refuses_json(hardened: str) -> None:
    chat = {"model": "gemma-3-270m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    with httpx.Client(base_url=hardened, headers=AUTH, timeout=120) as client:
        answered = client.post("/v1/chat/completions", json={**chat, "response_format": {"type": "text"}})
        assert answered.status_code == 200, answered.text
        assert answered.json()["object"] == "chat.completion"
        for refused_format in (
            {"type": "json_object"},
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
        ):
            response = client.post("/v1/chat/completions", json={**chat, "response_format": refused_format})
            assert response.status_code == 422, response.text
            error = response.json()["error"]
            assert error["param"] == "response_format"
            assert '{"type": "text"}' in error["message"] and "json_object" in error["message"]
        job = client.post("/v1/jobs/chat", json={**chat, "response_format": {"type": "json_object"}})
        assert job.status_code == 422, "the job API has no response_format: an unknown field is refused"


# 7. Whitespace around a key ------------------------------------------------------------------------


def test_whitespace_around_a_key_is_ignored_on_both_sides(hardened: str) -> None:
    for header in (f"X-API-Key: {KEY}", f"X-API-Key:   {KEY}", f"X-API-Key: {KEY}  ", f"X-API-Key: \t{KEY}\t "):
        assert raw_status(hardened, "/v1/jobs", [header.encode()]) == 200, repr(header)
    assert raw_status(hardened, "/v1/jobs", [f"Authorization: Bearer {KEY} ".encode()]) == 200
    for header in (f"X-API-Key: {KEY}x ", "X-API-Key:   ", f"X-API-Key: {KEY[:-1]} "):
        assert raw_status(hardened, "/v1/jobs", [header.encode()]) == 401, repr(header)


# 8. Flower never listens beyond loopback without a login ------------------------------------------


def test_flower_off_loopback_needs_a_login() -> None:
    def settings(**values: Any) -> Settings:
        return Settings(_env_file=None, **values)

    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert flower_refusal(settings(flower_host=host)) is None, host
    assert flower_refusal(settings(flower_host="0.0.0.0", flower_basic_auth="admin:s3cret")) is None
    for exposed in ({"flower_host": "0.0.0.0"}, {"flower_host": "flower.example", "flower_basic_auth": ""}):
        refusal = flower_refusal(settings(**exposed))
        assert refusal is not None and "FLOWER_BASIC_AUTH" in refusal, exposed


def test_speechq_up_runs_without_flower_when_it_would_be_open(private_redis: str, tmp_path: Path) -> None:
    flower_port = free_port()
    env = base_env(private_redis, tmp_path, FLOWER_HOST="0.0.0.0", FLOWER_PORT=str(flower_port), TTS_PRELOAD="false")
    env.pop("FLOWER_BASIC_AUTH", None)
    env["LOG_FORMAT"] = "text"
    up, url = start_up(env, tmp_path, "--queues", "tts")
    try:

        def serving() -> bool:
            assert up.alive(), "speechq up exited"
            return bool(httpx.get(f"{url}/ready", timeout=2).json()["queues"]["tts"]["workers"])

        wait_until(serving, timeout=120, what="the API and the tts worker")
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", flower_port), timeout=2).close()
        assert up.stop(timeout=60) == 0
    finally:
        up.stop()
    flower_lines = [line for line in up.log().splitlines() if "Flower" in line]
    assert len(flower_lines) == 1, flower_lines
    assert "not started" in flower_lines[0] and "FLOWER_BASIC_AUTH" in flower_lines[0]


def test_speechq_flower_refuses_to_listen_openly(private_redis: str, tmp_path: Path) -> None:
    env = base_env(private_redis, tmp_path, FLOWER_HOST="0.0.0.0", FLOWER_PORT=str(free_port()))
    env.pop("FLOWER_BASIC_AUTH", None)
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "flower"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "FLOWER_BASIC_AUTH" in done.stderr


# 9. Error messages quote at most ~100 characters of what the client sent --------------------------


def test_errors_never_echo_more_than_a_hundred_characters_of_input(hardened: str) -> None:
    with httpx.Client(base_url=hardened, headers=AUTH, timeout=60) as client:
        field = client.post("/v1/jobs/generate", json={"prompt": "Hi", "k" * 5000: 1})
        job = client.get("/v1/jobs/" + "j" * 5000)
        queued = client.post("/v1/jobs/generate", json={"prompt": "Hi", "max_tokens": 1}).json()["id"]
        resume = client.get(f"/v1/jobs/{queued}/events", params={"after": "z" * 5000})
    for response, char, status in ((field, "k", 422), (job, "j", 404), (resume, "z", 422)):
        assert response.status_code == status, response.text[:300]
        # An event id is checked against its pattern, which the answer names instead of the value.
        longest = longest_run(response.text, char)
        assert longest == 100 or (char == "z" and longest == 0), (char, response.text[:300])
        assert len(response.json()["error"]["message"]) <= 401
    # The field name is cut, not dropped: the error still says which field it was and how long.
    assert field.json()["error"]["param"].startswith("k" * 100 + "… (5000 characters)")
    assert json.loads(field.text)["detail"][0]["type"] == "extra_forbidden"


class Echoing(BaseModel):
    """A model whose validators quote what they were given, as a careless one might."""

    name: str
    tags: list[str] = []

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        if value != "ok":
            raise ValueError(f"no such name {value!r}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _no_bad_tag(cls, data: Any) -> Any:
        for tag in data.get("tags", []):
            if tag.startswith("bad"):
                raise ValueError(f"tag {tag} is not allowed")
        return data


@pytest.mark.parametrize(
    ("body", "char"), [({"name": "n" * 3000}, "n"), ({"name": "ok", "tags": ["fine", "bad" + "t" * 3000]}, "t")]
)
def test_a_validator_that_quotes_its_input_is_cut_short(body: dict[str, Any], char: str) -> None:
    with pytest.raises(Unprocessable) as refused:
        validated(Echoing, body)
    message = refused.value.message
    assert 90 <= longest_run(message, char) <= 100, message[:300]
    assert f"… ({len(body['name']) if char == 'n' else 3003} characters)" in message, "cut, and said so"
