"""Session-wide real services: one embedded Valkey (or REDIS_URL), one worker, one API over HTTP."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from cli.embedded_redis import EmbeddedRedis
from tests.stack import Process, base_env, free_port, start_api, start_worker, wait_for_worker

MISSING_MODEL = "missing-model"


@dataclass
class Stack:
    redis_url: str
    url: str
    api: Process
    worker: Process
    env: dict[str, str]
    metrics_url: str  # the worker's /metrics


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    with EmbeddedRedis(tmp_path_factory.mktemp("valkey")) as server:
        yield server.url


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def stack(redis_url: str, logs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    metrics_port = free_port()
    data = tmp_path_factory.mktemp("data")
    # A registered model whose file is not on the worker: tests use it for a job that fails there.
    (data / "models.yaml").write_text(f"{MISSING_MODEL}:\n  role: llm\n  source: /nonexistent/model.gguf\n")
    # OpenAudio is pointed at a closed port: a dialogue test uses it as a speech stage that fails.
    env = base_env(
        redis_url,
        data,
        WORKER_METRICS_PORT=str(metrics_port),
        OPENAUDIO_API_BASE=f"http://127.0.0.1:{free_port()}",
        MODELS_FILE=str(data / "models.yaml"),
    )
    worker = start_worker(env, logs_dir)
    api, url = start_api(env, logs_dir)
    try:
        wait_for_worker(url, worker)
        yield Stack(
            redis_url=redis_url,
            url=url,
            api=api,
            worker=worker,
            env=env,
            metrics_url=f"http://127.0.0.1:{metrics_port}",
        )
    finally:
        api.stop()
        worker.stop()


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=60) as http:
        yield http


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[str]:
    """An embedded Valkey of the test's own, for a test that kills or restarts processes."""
    with EmbeddedRedis(tmp_path / "valkey") as server:
        yield server.url
