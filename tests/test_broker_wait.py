"""At start-up `speechq worker`, `api` and `flower` wait for an unreachable Redis or broker, saying so every few
seconds, and give up with one line naming the URL (password hidden) past BROKER_CONNECT_TIMEOUT_SECONDS."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cli.broker_wait import BrokerUnreachable, wait_for_broker
from cli.embedded_redis import EmbeddedRedis
from config import load_settings
from tests.stack import SPEECHQ, Process, base_env, free_port, start_api, start_worker, wait_for_worker, wait_until


@pytest.mark.parametrize("command", [["api"], ["worker", "--queues", "llm"], ["flower"]])
def test_an_unreachable_broker_is_retried_then_named_without_its_password(command: list[str], tmp_path: Path) -> None:
    port = free_port()
    env = base_env(f"redis://:s3cret@127.0.0.1:{port}/0", tmp_path, BROKER_CONNECT_TIMEOUT_SECONDS="5")
    process = Process(command[0], [*SPEECHQ, *command], env, tmp_path)
    started = time.monotonic()
    status = process.process.wait(60)
    process.stop()
    log = process.log()
    assert status == 1, log
    assert time.monotonic() - started < 30
    assert log.count(f"waiting for redis://:**@127.0.0.1:{port}/0") >= 2, log  # retried, and said so each time
    last = log.strip().splitlines()[-1]
    assert last.startswith(f"speechq {command[0]}: redis://:**@127.0.0.1:{port}/0 did not answer within ")
    assert "BROKER_CONNECT_TIMEOUT_SECONDS=5" in last
    assert "s3cret" not in log and "Traceback" not in log


def test_a_worker_started_before_its_broker_serves_once_the_broker_is_up(tmp_path: Path) -> None:
    port = free_port()
    env = base_env(f"redis://127.0.0.1:{port}/0", tmp_path)
    worker = start_worker(env, tmp_path, queues="llm")
    try:
        wait_until(lambda: "waiting for redis://127.0.0.1" in worker.log(), timeout=30, what="a waiting line")
        with EmbeddedRedis(tmp_path / "valkey", port):
            api, url = start_api(env, tmp_path)
            try:
                wait_for_worker(url, worker)
            finally:
                api.stop()
    finally:
        worker.stop()


def test_the_second_server_is_waited_for_too_and_the_limit_counts_from_the_start(tmp_path: Path) -> None:
    asked: list[str] = []

    def check(url: str) -> str | None:
        asked.append(url)
        return None if url.startswith("redis://") else "connection refused"

    settings = load_settings(
        redis_url="redis://127.0.0.1:1/0",
        celery_broker_url="amqp://guest:pw@127.0.0.1:2//",
        broker_connect_timeout_seconds=0.3,
    )
    with pytest.raises(BrokerUnreachable, match=r"^amqp://guest:\*\*@127.0.0.1:2// did not answer within"):
        wait_for_broker(settings, retry_seconds=0.05, check=check)
    assert asked[0] == "redis://127.0.0.1:1/0" and len(asked) > 2
