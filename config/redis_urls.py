"""Redis clients from a URL: a server (`redis://`, `rediss://`, `unix://`, through redis-py's `from_url`) or a
group watched by Sentinel, in kombu's form (`sentinel://h1:26379;sentinel://h2:26379/0?master_name=speechq`).

A Sentinel client asks the sentinels where the master is at each (re)connection, so after a failover the
same client reaches the promoted replica (redis-py's `SentinelConnectionPool`). As in kombu, a password in
the URL is the master's (and its replicas'); the sentinels themselves are reached without one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.asyncio.sentinel import SentinelManagedConnection as AsyncSentinelManagedConnection
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedConnection

from config.settings import SettingsError

SENTINEL_PORT = 26379
# The retries redis-py gives a client it builds from a URL: 10, backing off from 10 ms to 1 s, on a lost or
# timed-out connection. `master_for`'s connections would otherwise give up at the first error; with them a
# command in flight during a failover waits for the promoted master, or fails as "Redis away" (the API's 503).
RETRIES = 10


def _backoff() -> ExponentialWithJitterBackoff:
    return ExponentialWithJitterBackoff(base=0.01, cap=1.0)


@dataclass(frozen=True)
class SentinelUrl:
    """A `sentinel://` URL taken apart: where the sentinels are and which master group they watch."""

    sentinels: tuple[tuple[str, int], ...]
    master_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None

    def kombu_url(self) -> str:
        """The URL as kombu's Sentinel transport reads it: no query (kombu would take `master_name` for a
        connection argument), and credentials and db on every part, since kombu reads them from the part it
        is on, and moves to the next part when a connection fails."""
        auth = ""
        if self.username or self.password:
            auth = f"{quote(self.username or '', safe='')}:{quote(self.password or '', safe='')}@"
        return ";".join(f"sentinel://{auth}{host}:{port}/{self.db}" for host, port in self.sentinels)


def is_sentinel_url(url: str) -> bool:
    return url.split("://", 1)[0] == "sentinel"


def parse_sentinel_url(url: str) -> SentinelUrl:
    """`sentinel://[[user]:password@]host[:port][/db][?master_name=name]`, one part per sentinel joined by `;`.
    The db, credentials and master name may be written on any part (kombu reads them from the first); where
    several parts give one, they must agree. Raises `SettingsError` naming what is wrong."""
    sentinels: list[tuple[str, int]] = []
    found: dict[str, set[str]] = {"master_name": set(), "db": set(), "username": set(), "password": set()}
    for part in filter(None, (piece.strip() for piece in url.split(";"))):
        if not is_sentinel_url(part):
            scheme = part.split("://", 1)[0]
            raise SettingsError(
                f"Redis URL: each ';'-separated part of a Sentinel URL starts sentinel://, not {scheme!r}"
            )
        parsed = urlsplit(part)
        try:
            port = parsed.port or SENTINEL_PORT
        except ValueError as exc:
            raise SettingsError(f"Redis URL: a sentinel's port is not a number ({exc})") from None
        if not parsed.hostname:
            raise SettingsError("Redis URL: a sentinel:// part names no host")
        sentinels.append((parsed.hostname, port))
        query = dict(parse_qsl(parsed.query))
        unknown = set(query) - {"master_name"}
        if unknown:
            raise SettingsError(f"Redis URL: a Sentinel URL takes only master_name in its query, not {sorted(unknown)}")
        given = {
            "master_name": query.get("master_name"),
            "db": parsed.path.strip("/") or None,
            "username": unquote(parsed.username) if parsed.username else None,
            "password": None if parsed.password is None else unquote(parsed.password),
        }
        for name, value in given.items():
            if value is not None:
                found[name].add(value)
    for name, values in found.items():
        if len(values) > 1:
            shown = "the parts disagree" if name == "password" else f"the parts disagree: {sorted(values)}"
            raise SettingsError(f"Redis URL: the Sentinel URL gives its {name} more than once and {shown}")
    if not sentinels:
        raise SettingsError("Redis URL: a Sentinel URL names no sentinel")
    if not found["master_name"]:
        raise SettingsError(
            "Redis URL: a Sentinel URL needs the name of the master group the sentinels watch, "
            "e.g. sentinel://host:26379/0?master_name=speechq"
        )
    db = next(iter(found["db"]), "0")
    if not db.isdigit():
        raise SettingsError(f"Redis URL: the Sentinel URL's db must be a number, not {db!r}")
    return SentinelUrl(
        sentinels=tuple(sentinels),
        master_name=next(iter(found["master_name"])),
        db=int(db),
        username=next(iter(found["username"]), None),
        password=next(iter(found["password"]), None),
    )


class _MasterConnection(SentinelManagedConnection):
    """Asks the sentinels where the master is at every connect, a reconnect inside a command's retries
    included: redis-py asks only when a connection is taken from the pool, so a command under way at a
    failover keeps knocking on the dead master until its retries run out (redis/redis-py#3874)."""

    def _connect(self) -> Any:
        self.host, self.port = self.connection_pool.get_master_address()
        inherited: Callable[[], Any] = super()._connect
        return inherited()


class _AsyncMasterConnection(AsyncSentinelManagedConnection):
    """`_MasterConnection` for asyncio."""

    async def _connect(self) -> None:
        self.host, self.port = await self.connection_pool.get_master_address()
        inherited: Callable[[], Awaitable[None]] = super()._connect
        await inherited()


def _master_kwargs(target: SentinelUrl, options: dict[str, Any], retry: Retry | AsyncRetry) -> dict[str, Any]:
    return {"db": target.db, "username": target.username, "password": target.password, "retry": retry, **options}


def sync_client(url: str, *, decode_responses: bool = False, **options: Any) -> Redis:
    """A blocking client of the server or Sentinel group `url` names; `options` are redis-py's (timeouts…)."""
    if not is_sentinel_url(url):
        return Redis.from_url(url, decode_responses=decode_responses, **options)
    target = parse_sentinel_url(url)
    sentinel = Sentinel(list(target.sentinels), **_master_kwargs(target, options, Retry(_backoff(), RETRIES)))
    client: Redis = sentinel.master_for(
        target.master_name, decode_responses=decode_responses, connection_class=_MasterConnection
    )
    return client


def async_client(url: str, *, decode_responses: bool = False, **options: Any) -> AsyncRedis:
    """`sync_client` for asyncio."""
    if not is_sentinel_url(url):
        return AsyncRedis.from_url(url, decode_responses=decode_responses, **options)
    target = parse_sentinel_url(url)
    sentinel = AsyncSentinel(list(target.sentinels), **_master_kwargs(target, options, AsyncRetry(_backoff(), RETRIES)))
    client: AsyncRedis = sentinel.master_for(
        target.master_name, decode_responses=decode_responses, connection_class=_AsyncMasterConnection
    )
    return client
