"""Real processes for the tests: an embedded Valkey, `speechq api` and `speechq worker` over real HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx

ROOT = Path(__file__).resolve().parents[1]
SPEECHQ = [sys.executable, "-m", "cli.main"]
T = TypeVar("T")


def at_error(line: str) -> bool:
    """A JSON log line at ERROR or above, or a traceback printed outside the log (a Celery task that is
    ignored, as a cancelled or failed job's is, logs its traceback inside an INFO line: that is no error)."""
    try:
        record = json.loads(line)
    except ValueError:
        return "Traceback" in line
    return isinstance(record, dict) and record.get("level") in ("ERROR", "CRITICAL")


@contextmanager
def nothing_logged_at_error(*processes: Process) -> Iterator[None]:
    """Fail if, during the block, any of `processes` logs at ERROR (see `at_error`)."""
    before = [len(process.log()) for process in processes]
    yield
    for process, start in zip(processes, before, strict=True):
        errors = [line for line in process.log()[start:].splitlines() if at_error(line)]
        assert not errors, f"{process.name} logged: {errors[:5]}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    check: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.1, what: str = "condition"
) -> T:
    """The first truthy value `check()` returns, polled every `interval` s; a condition, not a guessed sleep."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - any error from the check means not yet
            last_error = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last error: {last_error})")


class Process:
    """A child process whose output goes to a log file the test can read."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self, timeout: float = 20.0) -> int:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()
        return self.process.returncode


def base_env(redis_url: str, data_dir: Path, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "JOB_", "API_", "QUEUE_", "BROKER_"))}
    env.update(
        REDIS_URL=redis_url,
        DATA_DIR=str(data_dir),
        LLM_MODELS_DIR=str(ROOT / "var" / "models"),
        LLM_N_CTX="2048",
        LLM_N_THREADS="2",
        LOG_LEVEL="INFO",
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        WORKER_METRICS_PORT="0",
        LOG_FORMAT="json",
    )
    env.update(overrides)
    return env


def start_worker(env: dict[str, str], log_dir: Path, queues: str = "llm,stt,tts,dialogue") -> Process:
    return Process("worker", [*SPEECHQ, "worker", "--queues", queues], env, log_dir)


def start_api(env: dict[str, str], log_dir: Path) -> tuple[Process, str]:
    port = free_port()
    process = Process("api", [*SPEECHQ, "api", "--host", "127.0.0.1", "--port", str(port)], env, log_dir)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if not process.alive():
            raise RuntimeError(f"API exited:\n{process.log()}")
        return httpx.get(f"{url}/health", timeout=1).status_code == 200

    wait_until(healthy, timeout=30, what="the API")
    return process, url


def up_env(data_dir: Path, **overrides: str) -> dict[str, str]:
    """The environment of a `speechq up` as a person runs it (its own embedded Valkey under `data_dir`, the
    default models and settings), with `overrides`."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "API_", "FLOWER_", "LLM_", "TTS_", "STT_"))
    }
    env.update(
        DATA_DIR=str(data_dir),
        LLM_MODELS_DIR=str(ROOT / "var" / "models"),
        LLM_N_THREADS="2",
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        WORKER_METRICS_PORT="0",
        LOG_FORMAT="text",
    )
    env.update(overrides)
    return env


def start_up(env: dict[str, str], log_dir: Path, *options: str) -> tuple[Process, str]:
    """`speechq up` on a free port (not yet ready: each test waits for what it needs); its URL."""
    port = free_port()
    return Process("up", [*SPEECHQ, "up", "--port", str(port), *options], env, log_dir), f"http://127.0.0.1:{port}"


def wait_for_worker(url: str, process: Process, queue: str = "llm", timeout: float = 120.0) -> None:
    def serving() -> bool:
        if not process.alive():
            raise RuntimeError(f"worker exited:\n{process.log()}")
        ready = httpx.get(f"{url}/ready", timeout=2).json()
        return bool(ready.get("queues", {}).get(queue, {}).get("workers", 0) > 0)

    wait_until(serving, timeout=timeout, what=f"a worker on {queue}")


@dataclass(frozen=True)
class PrivateStack:
    url: str
    redis_url: str
    env: dict[str, str]


@contextmanager
def private_stack(folder: Path, queues: str, **env_overrides: str) -> Iterator[PrivateStack]:
    """An embedded Valkey of its own under `folder`, a worker serving `queues` and an API, all configured
    by `env_overrides`; stopped when the block ends."""
    from cli.embedded_redis import EmbeddedRedis

    with EmbeddedRedis(folder / "valkey") as redis:
        env = base_env(redis.url, folder, **env_overrides)
        worker = start_worker(env, folder, queues=queues)
        api, url = start_api(env, folder)
        try:
            for queue in queues.split(","):
                wait_for_worker(url, worker, queue=queue)
            yield PrivateStack(url=url, redis_url=redis.url, env=env)
        finally:
            api.stop()
            worker.stop()


@dataclass
class DoomedWorker:
    """A worker (of `queues`) a test will SIGKILL, the API in front of it, and the workers started to replace it."""

    url: str
    worker: Process
    env: dict[str, str]
    folder: Path
    queues: str = "llm"
    rescuers: list[Process] = field(default_factory=list)

    def rescue(self) -> Process:
        """Start another worker with the same settings (it takes the dead one's jobs over)."""
        rescuer = start_worker(self.env, self.folder, queues=self.queues)
        self.rescuers.append(rescuer)
        return rescuer


@contextmanager
def doomed_worker(
    redis_url: str, folder: Path, time_limit: int, queues: str = "llm", **env_overrides: str
) -> Iterator[DoomedWorker]:
    """A stack whose dead worker's jobs come back within seconds (a 2 s lease, a visibility timeout just
    past the time limit, a sweep every second); everything is stopped after."""
    env = base_env(
        redis_url,
        folder,
        JOB_LEASE_SECONDS="2",
        TASK_TIME_LIMIT_SECONDS=str(time_limit),
        BROKER_VISIBILITY_TIMEOUT_SECONDS=str(time_limit + 1),
        BROKER_RESTORE_INTERVAL_SECONDS="1",
        **env_overrides,
    )
    worker = start_worker(env, folder, queues=queues)
    api, url = start_api(env, folder)
    stack = DoomedWorker(url, worker, env, folder, queues)
    try:
        wait_for_worker(url, worker, queue=queues)
        yield stack
    finally:
        api.stop()
        for process in (worker, *stack.rescuers):
            process.stop()
