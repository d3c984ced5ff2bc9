"""The sockets `speechq api` serves on: API_PORT for API clients, and CONSOLE_PORT for browsers, which refuse
6665–6669 (the Fetch standard's "bad ports"): the console and the docs open there (SPEC §13)."""

from __future__ import annotations

import logging
import socket

log = logging.getLogger(__name__)


def listening_sockets(host: str, port: int, console_port: int) -> list[socket.socket]:
    """A socket bound to host:port (an error if it cannot be), and one to host:console_port unless it is 0,
    the API port itself, or taken (then one log line says so, and the API serves on its port alone)."""
    sockets = [bound(host, port)]
    if console_port and console_port != port:
        try:
            sockets.append(bound(host, console_port))
        except OSError as exc:
            log.warning(
                "console port %s on %s is not available (%s): the console and docs are not served for browsers; "
                "set CONSOLE_PORT to a free port (0: off)",
                console_port,
                host,
                exc.strerror or exc,
            )
        else:
            log.info("console    http://%s:%s/console  (docs at /docs)", _shown(host), console_port)
    return sockets


def bound(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port, as uvicorn binds one (SO_REUSEADDR, inheritable for workers)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(2048)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock


def _shown(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host
