"""kombu's Redis transport, with one fault mended: a worker survives its broker's restart.

When the broker goes away, Celery's consumer closes its connection and opens a new one. Closing runs the
callbacks still waiting on the event loop, among them the acknowledgement of a job that finished during
the outage. That ack reaches a channel whose connection is already closed (`transport.client` is None),
and kombu dereferences it while building a connection pool: an `AttributeError` that Celery takes for an
unrecoverable error, and the worker process exits (`'NoneType' object has no attribute 'hostname'`).

Here that ack fails as what it is, a lost connection: the consumer logs it ("Couldn't ack"), reconnects
and serves on. The message stays unacknowledged in the broker; kombu restores it after the visibility
timeout, and the job store's claim skips it, because its job has already ended.

The same mend for kombu's Sentinel transport (a master's failover is such an outage): `SENTINEL_TRANSPORT`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError

# `broker_transport` for a redis:// or valkey:// broker URL (kombu resolves "module:Class").
TRANSPORT = f"{__name__}:Transport"
# ...and for a sentinel:// one.
SENTINEL_TRANSPORT = f"{__name__}:SentinelTransport"


def _refuse_if_closed(channel: kombu_redis.Channel) -> None:
    if channel.connection.client is None:  # the connection this channel belonged to is closed
        raise RedisConnectionError("the broker connection this channel belonged to is closed")


class Channel(kombu_redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> Any:
        _refuse_if_closed(self)
        inherited: Callable[..., Any] = getattr(super(), "_connparams")  # noqa: B009 - not in kombu's stubs
        return inherited(asynchronous=asynchronous)


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(kombu_redis.SentinelChannel):
    def _connparams(self, asynchronous: bool = False) -> Any:
        _refuse_if_closed(self)
        inherited: Callable[..., Any] = getattr(super(), "_connparams")  # noqa: B009 - not in kombu's stubs
        return inherited(asynchronous=asynchronous)


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel
