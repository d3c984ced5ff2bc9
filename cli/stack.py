"""Supervising child processes: `speechq up` (Redis + API + worker + Flower) and one worker per GPU."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import importlib.util
import ipaddress
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

from config import Settings, environment
from workers.startup import RESTART_EXIT_CODE

log = logging.getLogger("speechq")
SPEECHQ = [sys.executable, "-m", "cli.main"]


LOCK_FILE = "speechq-up.lock"
SETTLED = 60.0  # seconds a child must have run for its death to be a crash to restart, not a failed start


class StackRefused(Exception):
    """`speechq up` will not start: another stack holds the data dir, a killed one's Valkey still serves it,
    or the API's port is taken. The message is the one line the operator sees."""


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    argv: list[str]
    env: dict[str, str]
    optional: bool = False  # Flower: when it ends, the rest runs on without it
    ended: bool = False
    started: float = field(default_factory=time.monotonic)


class Supervisor:
    """Starts children, stops them all on Ctrl-C/SIGTERM or when one of them fails to start; a child that
    exits with RESTART_EXIT_CODE (a worker whose engine got stuck) or dies after serving for a while is
    started again instead, and an optional child that ends is let go with one log line."""

    def __init__(self) -> None:
        self.children: list[Child] = []
        self.stopping = False
        self.signal: int | None = None

    def start(self, name: str, argv: list[str], env: dict[str, str], *, optional: bool = False) -> None:
        self.children.append(Child(name, self._spawn(argv, env), argv, env, optional=optional))

    @staticmethod
    def _spawn(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        preexec = _die_with_parent if sys.platform == "linux" else None
        return subprocess.Popen(argv, env=env, preexec_fn=preexec)

    def _restart(self, child: Child) -> None:
        child.process = self._spawn(child.argv, child.env)
        child.started = time.monotonic()

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
                    code = None if child.ended else child.process.poll()
                    if code == RESTART_EXIT_CODE:
                        log.warning("%s asked to be restarted (its engine got stuck); starting it again", child.name)
                        self._restart(child)
                    elif code is not None and not child.optional and time.monotonic() - child.started > SETTLED:
                        # It served for a while, then died (a broker connection lost mid-read can take a
                        # Celery worker with it): start it again. One that dies at start stops the stack.
                        log.error("%s %s after serving; starting it again", child.name, exit_reason(code))
                        self._restart(child)
                    elif code is not None and child.optional:
                        log.warning(
                            "%s %s; the rest runs on without it (its log above says why)", child.name, exit_reason(code)
                        )
                        child.ended = True
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


@contextlib.contextmanager
def data_dir_lock(settings: Settings) -> Iterator[None]:
    """Hold DATA_DIR/speechq-up.lock for the stack's life, so a second `speechq up` from the same data dir
    (two Valkeys on one AOF) refuses. An flock, not a pid file: the kernel drops it when the process ends,
    however it ends, so a crashed stack leaves nothing stale. The file says who holds it."""
    folder = settings.data_dir.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / LOCK_FILE).open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise StackRefused(already_running(folder, handle.read())) from None
        handle.truncate(0)
        handle.write(json.dumps({"pid": os.getpid(), "api": api_url(settings)}) + "\n")
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)


def already_running(folder: Path, holder: str) -> str:
    try:
        found = json.loads(holder)
        who = f"pid {int(found['pid'])}, API on {found['api']}"
    except (ValueError, KeyError, TypeError):  # the holder is between taking the lock and writing to it
        who = "starting up"
    return (
        f"speechq is already running from this data dir ({who}); stop it, or set DATA_DIR to another "
        f"folder to run a second stack beside it (data dir: {folder})"
    )


def api_url(settings: Settings) -> str:
    return f"http://{settings.api_host}:{settings.api_port}"


def port_taken(host: str, port: int) -> bool:
    """Whether something already listens on host:port: a trial bind, with SO_REUSEADDR as servers set it
    (a port left in TIME_WAIT is free)."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return False  # the server will say what is wrong with the host
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as trial:
            trial.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                trial.bind(address)
            except OSError:
                return True
    return False


def run_stack(settings: Settings, *, queues: str, flower: bool) -> int:
    """Raises StackRefused, before anything starts, when the data dir is in use or the API port taken."""
    with data_dir_lock(settings):
        if port_taken(settings.api_host, settings.api_port):
            raise StackRefused(
                f"speechq up: port {settings.api_port} on {settings.api_host} is already in use; "
                "pass --port or set API_PORT to a free one"
            )
        orphan = orphaned_valkey(settings)
        if orphan is not None:
            raise StackRefused(
                f"speechq up: a Valkey left behind by a speechq up that did not stop cleanly still serves this "
                f"data dir on {orphan}; stop that valkey-server process, then start again "
                f"(data dir: {settings.data_dir.resolve()})"
            )
        return supervise_stack(settings, queues=queues, flower=flower)


def orphaned_valkey(settings: Settings) -> str | None:
    """The URL of an embedded Valkey that still answers on this data dir while no stack holds its lock: its
    `speechq up` was SIGKILLed, which the Valkey outlives. A second one on the same files would corrupt them."""
    if settings.redis_url:
        return None
    from cli.embedded_redis import running_embedded_url

    url = running_embedded_url(settings.data_dir)
    if url is None:
        return None
    where = urlsplit(url)
    try:
        socket.create_connection((where.hostname or "127.0.0.1", where.port or 6379), timeout=1).close()
    except OSError:
        return None  # a stale address file: nothing listens there any more
    return url


def supervise_stack(settings: Settings, *, queues: str, flower: bool) -> int:
    with redis_for(settings) as redis_url:
        env = environment.for_child(REDIS_URL=redis_url)
        supervisor = Supervisor()
        supervisor.start("worker", [*SPEECHQ, "worker", "--queues", queues], env)
        supervisor.start("api", [*SPEECHQ, "api", "--host", settings.api_host, "--port", str(settings.api_port)], env)
        log.info("Redis      %s%s", redis_url, "" if settings.redis_url else " (embedded Valkey)")
        log.info("API        %s", api_url(settings))
        if settings.console_port:
            log.info(
                "console    http://%s:%s/console  (and the docs at /docs)", settings.api_host, settings.console_port
            )
        log.info("worker     queues %s", queues)
        if flower:
            start_flower(supervisor, settings, env)
        log.info("Ctrl-C stops everything")
        return supervisor.wait()


def start_flower(supervisor: Supervisor, settings: Settings, env: dict[str, str]) -> None:
    """Flower beside the stack, unless it is not installed, would be open to the network without a login,
    or its port is taken (then one log line says why, and the rest of the stack runs without it)."""
    refusal = flower_refusal(settings)
    if refusal is not None:
        log.error("Flower     %s", refusal)
    elif importlib.util.find_spec("flower") is None:
        log.info("Flower     not installed (pip install 'speechq[flower]'); skipped")
    elif port_taken(settings.flower_host, settings.flower_port):
        log.error(
            "Flower     not started: port %d on %s is already in use; set FLOWER_PORT to a free port, or pass "
            "--no-flower",
            settings.flower_port,
            settings.flower_host,
        )
    else:
        supervisor.start("flower", [*SPEECHQ, "flower"], env, optional=True)
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


def run_workers(
    devices: list[str], model_queues: list[str], *, dialogue: bool, concurrency: int | None, metrics_port: int
) -> int:
    """One worker process per GPU (each pinned with its own --device) for the model queues, and one
    for the `dialogue` queue; each takes the next metrics port."""
    supervisor = Supervisor()
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
        env = environment.for_child(WORKER_METRICS_PORT=str(metrics_port + index if metrics_port else 0))
        supervisor.start(name, argv, env)
    return supervisor.wait()
