"""Supervising child processes: `speechq up` (Redis + API + worker + Flower) and one worker per GPU."""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import ipaddress
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import FrameType

from config import Settings
from workers.startup import RESTART_EXIT_CODE

log = logging.getLogger("speechq")
SPEECHQ = [sys.executable, "-m", "cli.main"]


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    argv: list[str]
    env: dict[str, str]


class Supervisor:
    """Starts children, stops them all on Ctrl-C/SIGTERM or when one of them dies; a child that exits
    with RESTART_EXIT_CODE (a worker whose engine got stuck) is started again instead."""

    def __init__(self) -> None:
        self.children: list[Child] = []
        self.stopping = False
        self.signal: int | None = None

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.children.append(Child(name, self._spawn(argv, env), argv, env))

    @staticmethod
    def _spawn(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        preexec = _die_with_parent if sys.platform == "linux" else None
        return subprocess.Popen(argv, env=env, preexec_fn=preexec)

    def _on_signal(self, signum: int, _: FrameType | None) -> None:
        log.info("%s received: stopping", signal.Signals(signum).name)
        self.stopping = True
        self.signal = signum

    def wait(self) -> int:
        """Block until asked to stop or a child exits; then stop every child. Returns the exit status."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        status = 0
        try:
            while not self.stopping:
                for child in self.children:
                    code = child.process.poll()
                    if code == RESTART_EXIT_CODE:
                        log.warning("%s asked to be restarted (its engine got stuck); starting it again", child.name)
                        child.process = self._spawn(child.argv, child.env)
                    elif code is not None:
                        log.error("%s %s; stopping the rest (its log above says why)", child.name, exit_reason(code))
                        self.stopping, status = True, 1
                        break
                time.sleep(0.2)
        finally:
            self.stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return status

    def stop_all(self, timeout: float = 90.0) -> None:
        """Stop every child, giving a worker's soft shutdown (up to 60 s) time to finish its jobs."""
        if not (self.signal == signal.SIGINT and _ctrl_c_reached_children()):
            # A second signal would turn a worker's soft shutdown into a cold one: send one only when
            # the children did not get Ctrl-C from the terminal themselves.
            for child in self.children:
                if child.process.poll() is None:
                    child.process.send_signal(signal.SIGTERM)  # soft shutdown: running jobs finish or go back
        deadline = time.monotonic() + timeout
        for child in self.children:
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs; killing it", child.name, timeout)
                child.process.kill()
                child.process.wait()
            log.info("%s stopped", child.name)


def exit_reason(code: int) -> str:
    """How a child ended, in words: `exited with status 1`, `was killed by SIGSEGV (signal 11)`."""
    if code >= 0:
        return f"exited with status {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = "an unknown signal"
    return f"was killed by {name} (signal {-code})"


def _die_with_parent() -> None:
    """In the child, before exec: the kernel kills it if its supervisor dies, however that happens (a
    SIGKILL, or an outer supervisor that gave up waiting), so no worker outlives `speechq up`."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


_PR_SET_PDEATHSIG = 1


def _ctrl_c_reached_children() -> bool:
    """Ctrl-C at a terminal signals the whole foreground process group, children included."""
    try:
        return sys.stdin.isatty() and os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except OSError:
        return False


@contextlib.contextmanager
def redis_for(settings: Settings) -> Iterator[str]:
    """The configured REDIS_URL, or a freshly started embedded Valkey for the lifetime of the block."""
    if settings.redis_url:
        yield settings.redis_url
        return
    from cli.embedded_redis import EmbeddedRedis

    folder, memory = settings.data_dir / "valkey", settings.redis_maxmemory_mb
    with EmbeddedRedis(folder, settings.embedded_redis_port, memory) as server:
        yield server.url


def run_stack(settings: Settings, *, queues: str, flower: bool) -> int:
    with redis_for(settings) as redis_url:
        env = {**os.environ, "REDIS_URL": redis_url}
        supervisor = Supervisor()
        supervisor.start("worker", [*SPEECHQ, "worker", "--queues", queues], env)
        supervisor.start("api", [*SPEECHQ, "api", "--host", settings.api_host, "--port", str(settings.api_port)], env)
        log.info("Redis      %s%s", redis_url, "" if settings.redis_url else " (embedded Valkey)")
        log.info("API        http://%s:%d  (docs at /docs)", settings.api_host, settings.api_port)
        log.info("worker     queues %s", queues)
        if flower:
            start_flower(supervisor, settings, env)
        log.info("Ctrl-C stops everything")
        return supervisor.wait()


def start_flower(supervisor: Supervisor, settings: Settings, env: dict[str, str]) -> None:
    """Flower beside the stack, unless it is not installed or would be open to the network without a login
    (then one log line says why, and the rest of the stack runs without it)."""
    refusal = flower_refusal(settings)
    if refusal is not None:
        log.error("Flower     %s", refusal)
    elif importlib.util.find_spec("flower") is None:
        log.info("Flower     not installed (pip install 'speechq[flower]'); skipped")
    else:
        supervisor.start("flower", [*SPEECHQ, "flower"], env)
        log.info("Flower     http://%s:%d", settings.flower_host, settings.flower_port)


def flower_refusal(settings: Settings) -> str | None:
    """Why Flower must not start, or None: its task table lists every key's jobs, so off loopback it
    needs a login."""
    login = settings.flower_basic_auth
    if (login is not None and login.get_secret_value()) or is_loopback(settings.flower_host):
        return None
    return (
        f"not started: FLOWER_HOST={settings.flower_host} is reachable from other machines and "
        "FLOWER_BASIC_AUTH is unset; set FLOWER_BASIC_AUTH=user:password, or FLOWER_HOST=127.0.0.1"
    )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a hostname: it may resolve anywhere
        return False


def run_workers(devices: list[str], model_queues: list[str], *, dialogue: bool, concurrency: int | None) -> int:
    """One worker process per GPU (each pinned with its own --device) for the model queues, and one
    for the `dialogue` queue; each takes the next metrics port."""
    supervisor = Supervisor()
    metrics_port = int(os.environ.get("WORKER_METRICS_PORT", "9400"))
    jobs = ["--concurrency", str(concurrency)] if concurrency else []
    children: list[tuple[str, list[str]]] = []
    if model_queues:
        queues = ",".join(model_queues)
        pinned_to: list[str | None] = list(devices) or [None]
        for device in pinned_to:
            pinned = ["--device", device] if device is not None else []
            name = f"worker[cuda:{device}]" if device is not None else "worker"
            children.append((name, [*SPEECHQ, "worker", "--queues", queues, *pinned, *jobs]))
    if dialogue:
        children.append(("worker[dialogue]", [*SPEECHQ, "worker", "--queues", "dialogue"]))
    for index, (name, argv) in enumerate(children):
        env = {**os.environ, "WORKER_METRICS_PORT": str(metrics_port + index if metrics_port else 0)}
        supervisor.start(name, argv, env)
    return supervisor.wait()
