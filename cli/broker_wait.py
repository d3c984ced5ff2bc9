"""At start-up, wait for Redis and the broker as an orchestrated service should: retry, say so every few
seconds, and give up (status 1, one line naming the URL, password hidden) only past
BROKER_CONNECT_TIMEOUT_SECONDS, when the operator set one."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from kombu import Connection
from kombu.utils.url import maybe_sanitize_url

from config import Settings, SettingsError
from config.redis_urls import is_sentinel_url, parse_sentinel_url, sync_client
from tasks.envelope import is_redis_url

log = logging.getLogger("speechq")
RETRY_SECONDS = 3.0


class BrokerUnreachable(Exception):
    """Redis or the broker did not answer within BROKER_CONNECT_TIMEOUT_SECONDS; the message is the line."""


def probe(url: str) -> str | None:
    """Why `url` does not answer now, or None when it does."""
    try:
        if is_redis_url(url):
            with sync_client(url, socket_connect_timeout=2, socket_timeout=2) as client:
                client.ping()
        else:
            with Connection(url, connect_timeout=2) as connection:
                connection.ensure_connection(max_retries=1)
    except Exception as exc:  # noqa: BLE001 - whatever the client raises, the answer is "not yet, because …"
        return str(exc) or type(exc).__name__
    return None


def wait_for_broker(
    settings: Settings,
    *,
    retry_seconds: float = RETRY_SECONDS,
    check: Callable[[str], str | None] = probe,
) -> None:
    """Return once REDIS_URL and the Celery broker (when it is another server) both answer."""
    urls = list(dict.fromkeys(url for url in (settings.redis_url, settings.broker_url) if url))
    limit = settings.broker_connect_timeout_seconds
    started = time.monotonic()
    for url in urls:
        shown = ";".join(maybe_sanitize_url(part) for part in url.split(";"))  # a Sentinel URL has several
        try:
            if is_sentinel_url(url):
                parse_sentinel_url(url)
        except SettingsError as exc:  # waiting would not mend it
            raise BrokerUnreachable(f"{shown}: {exc}") from None
        while (reason := check(url)) is not None:
            waited = time.monotonic() - started
            if limit is not None and waited >= limit:
                raise BrokerUnreachable(
                    f"{shown} did not answer within BROKER_CONNECT_TIMEOUT_SECONDS={limit:g}: {reason}"
                )
            log.warning("waiting for %s (%s); retrying every %g s", shown, reason, retry_seconds)
            time.sleep(retry_seconds if limit is None else max(0.0, min(retry_seconds, limit - waited)))
