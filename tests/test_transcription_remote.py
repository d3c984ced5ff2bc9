"""The remote engine (`ENABLE_LOCAL_WHISPER=false`) over real HTTP against a server speaking OpenAI's
transcription API: speechq's own endpoint, behind a proxy that fails first and records what it gets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tests.audio import SENTENCES, spoken, wer
from tests.conftest import Stack
from tests.fake_servers import serve
from tests.stack import private_stack


class FlakyTranscriptionProxy:
    """Answers 503 `failures` times, then forwards to a real OpenAI-protocol server; keeps every request."""

    def __init__(self, upstream: str, failures: int) -> None:
        self.upstream = upstream
        self.failures = failures
        self.calls: list[dict[str, Any]] = []

    async def handle(self, request: Request) -> Response:
        async with request.form() as form:
            upload = form["file"]
            assert not isinstance(upload, str)
            audio = await upload.read()
            filename = upload.filename or "audio"
            fields: dict[str, list[str]] = {}
            for key, value in form.multi_items():
                if isinstance(value, str):
                    fields.setdefault(key, []).append(value)
        seen = {key: values[-1] for key, values in fields.items()}
        self.calls.append({"path": request.url.path, "auth": request.headers.get("authorization"), "fields": seen})
        if len(self.calls) <= self.failures:
            return JSONResponse({"error": {"message": "overloaded", "type": "server_error"}}, status_code=503)
        async with httpx.AsyncClient(timeout=60) as client:
            answer = await client.post(
                f"{self.upstream}{request.url.path}", files={"file": (filename, audio)}, data=fields
            )
        return Response(answer.content, status_code=answer.status_code, media_type=answer.headers["content-type"])


@pytest.fixture
def remote_stack(stack: Stack, tmp_path: Path) -> Iterator[tuple[str, FlakyTranscriptionProxy]]:
    proxy = FlakyTranscriptionProxy(stack.url, failures=1)
    routes = {"/v1/audio/transcriptions": proxy.handle, "/v1/audio/translations": proxy.handle}
    with (
        serve(routes) as proxy_url,
        private_stack(
            tmp_path,
            "stt",
            ENABLE_LOCAL_WHISPER="false",
            OPENAI_API_KEY="sk-test-remote",
            OPENAI_API_BASE=f"{proxy_url}/v1",
            OPENAI_WHISPER_MODEL="whisper-1",
            OPENAI_MAX_RETRIES="2",
        ) as remote,
    ):
        yield remote.url, proxy


def test_remote_transcription_retries_a_5xx_and_succeeds(remote_stack: tuple[str, FlakyTranscriptionProxy]) -> None:
    url, proxy = remote_stack
    with httpx.Client(base_url=url, timeout=120) as client:
        response = client.post("/v1/speech-to-text", files={"file": ("report.wav", spoken("report"))})
        assert response.status_code == 200, response.text
        body = response.json()
        assert wer(SENTENCES["report"], body["text"]) <= 0.15
        assert body["segments"]
        assert body["language"] in ("en", "english")

    assert len(proxy.calls) == 2  # a 503, then the retry that succeeded
    for call in proxy.calls:
        assert call["auth"] == "Bearer sk-test-remote"
        assert call["fields"]["model"] == "whisper-1"
        assert call["fields"]["response_format"] == "verbose_json"


def test_remote_errors_are_reported_not_hidden(remote_stack: tuple[str, FlakyTranscriptionProxy]) -> None:
    url, proxy = remote_stack
    proxy.failures = 100  # the remote never recovers: the job fails once retries are spent
    with httpx.Client(base_url=url, timeout=120) as client:
        response = client.post("/v1/speech-to-text", files={"file": ("fox.wav", spoken("fox"))})
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "engine_error" and "503" in error["message"]
    assert "overloaded" not in error["message"] and "http" not in error["message"]  # the service's text: the log's
    assert len(proxy.calls) == 3  # the first try and OPENAI_MAX_RETRIES=2
