"""`WebhookDeliverer`: every API process delivers the webhook outbox (`jobstore/webhooks.py`).

Each process claims due events for a while (`lua/webhook_claim.lua`), so two never try the same event at
once, and one that dies mid-try leaves it to another once the claim runs out: delivery is at least once,
and every try of an event carries the same `webhook-id` for the receiver to deduplicate on. Tries run side
by side (WEBHOOK_CONCURRENCY), each bounded by WEBHOOK_TIMEOUT_SECONDS, so a slow receiver holds only its
own. A 2xx delivers; a timeout, a connection error, a 5xx or a 429 is tried again after a wait that doubles
(with jitter) up to WEBHOOK_BACKOFF_MAX_SECONDS, for WEBHOOK_RETRY_HOURS; anything else (a 3xx: redirects
are not followed; another 4xx; a refused address) gives up at once. Each try connects to the address it has
just checked (`api/webhooks/urls.py`), reads at most 64 KB of the answer and drops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Literal

import httpx
from redis.exceptions import RedisError
from standardwebhooks import Webhook as Signer

from api.metrics import ApiMetrics
from api.webhooks.urls import RefusedUrl, Target, WebhookPolicy
from config import Settings
from jobstore.webhooks import Delivery, WebhookOutbox

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5  # how often the outbox is looked at for due events
MAX_ANSWER_BYTES = 64 * 1024  # of a receiver's answer, what is read before it is dropped
RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})
USER_AGENT = "speechq-webhooks/0.1"


class Signatures:
    """The secrets each API key's events are signed with: its own (WEBHOOK_KEY_SECRETS) or WEBHOOK_SECRET."""

    def __init__(self, settings: Settings) -> None:
        self.default = [Signer(secret.get_secret_value()) for secret in settings.webhook_secret]
        self.per_key = {
            key: [Signer(secret.get_secret_value()) for secret in secrets]
            for key, secrets in settings.webhook_key_secrets.items()
        }

    def headers(self, delivery: Delivery, now: datetime) -> dict[str, str]:
        """Standard Webhooks' headers: `webhook-signature` holds one `v1,<base64>` per active secret."""
        signers = self.per_key.get(delivery.owner) or self.default
        signature = " ".join(signer.sign(delivery.id, now, delivery.body) for signer in signers)
        return {
            "webhook-id": delivery.id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signature,
        }


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one try went, the error to show for it, the receiver's HTTP status, and the least wait before
    the next try that the receiver asked for (Retry-After)."""

    kind: Literal["delivered", "retry", "failed"]
    error: str = ""
    status: int | None = None
    wait: float | None = None


class WebhookDeliverer:
    def __init__(self, outbox: WebhookOutbox, policy: WebhookPolicy, settings: Settings, metrics: ApiMetrics) -> None:
        self.outbox = outbox
        self.policy = policy
        self.signatures = Signatures(settings)
        self.metrics = metrics
        self.timeout = settings.webhook_timeout_seconds
        self.retry_seconds = settings.webhook_retry_hours * 3600
        self.backoff_max = settings.webhook_backoff_max_seconds
        self.concurrency = settings.webhook_concurrency
        self.claim_seconds = self.timeout + 10.0  # a try that outlives this is taken over by another process
        self._client = httpx.AsyncClient(
            follow_redirects=False,
            timeout=httpx.Timeout(self.timeout),
            limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=8),
            trust_env=False,  # never through a proxy the environment names: the address checked is the one used
        )
        self._tries: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="webhook-deliverer")

    async def stop(self) -> None:
        """Stop claiming and cut the tries under way short: their events are tried again by another process
        (or this one, restarted) once their claim runs out."""
        self._stopping.set()
        for task in [self._task, *self._tries]:
            if task is not None:
                task.cancel()
        for task in [self._task, *self._tries]:
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._client.aclose()

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.tick()
            except RedisError as exc:  # Redis away for a moment: look again next time
                log.warning("could not read the webhook outbox: %s", exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_SECONDS):
                    await self._stopping.wait()

    async def tick(self) -> int:
        """Claim as many due events as there are free slots and start trying each; how many were started."""
        free = self.concurrency - len(self._tries)
        if free <= 0:
            return 0
        deliveries = await self.outbox.claim(self.claim_seconds, free)
        for delivery in deliveries:
            task = asyncio.create_task(self.deliver(delivery), name=f"webhook-{delivery.id}")
            self._tries.add(task)
            task.add_done_callback(self._tries.discard)
        return len(deliveries)

    async def deliver(self, delivery: Delivery) -> None:
        try:
            outcome = await self.attempt(delivery)
        except Exception as exc:  # a fault of ours must not end the loop: tried again, and logged
            log.exception("webhook %s: the try failed inside speechq", delivery.id)
            outcome = Outcome("retry", f"speechq could not send it ({type(exc).__name__})")
        next_try = 0.0
        if outcome.kind == "retry":
            wait = self._backoff(delivery.attempts, outcome.wait)
            next_try = time.time() + wait
            if next_try > delivery.created_at + self.retry_seconds:
                hours = self.retry_seconds / 3600
                outcome = Outcome("failed", f"{outcome.error}; given up after {hours:g} h of tries", outcome.status)
        try:
            await self.outbox.settle(
                delivery.id, outcome.kind, next_try=next_try, error=outcome.error, status=outcome.status
            )
        except RedisError as exc:  # the claim runs out and the event is tried again
            log.warning("could not record the try of webhook %s: %s", delivery.id, exc)
            return
        self.metrics.webhook_deliveries.labels("retried" if outcome.kind == "retry" else outcome.kind).inc()
        log_at = logging.INFO if outcome.kind == "delivered" else logging.WARNING
        log.log(
            log_at,
            "webhook %s (%s of %s) to %s: %s%s",
            delivery.id,
            delivery.type,
            delivery.subject,
            delivery.url,
            outcome.kind,
            f" ({outcome.error})" if outcome.error else "",
        )

    async def attempt(self, delivery: Delivery) -> Outcome:
        """One try at delivering the event."""
        try:
            target = await self.policy.target(delivery.url)
        except RefusedUrl as exc:
            return Outcome("failed", f"webhook_url {exc}")
        except OSError as exc:
            return Outcome("retry", f"could not resolve the host: {exc or type(exc).__name__}")
        try:
            async with asyncio.timeout(self.timeout):
                status, retry_after = await self._post(target, delivery)
        except (TimeoutError, httpx.TimeoutException):
            return Outcome("retry", f"no answer within {self.timeout:g} s")
        except httpx.HTTPError as exc:
            return Outcome("retry", f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        if 200 <= status < 300:
            return Outcome("delivered", status=status)
        if status in RETRIED_STATUSES:
            return Outcome("retry", f"the receiver answered {status}", status, retry_after)
        if 300 <= status < 400:
            return Outcome("failed", f"the receiver answered {status}: redirects are not followed", status)
        return Outcome("failed", f"the receiver answered {status}", status)

    async def _post(self, target: Target, delivery: Delivery) -> tuple[int, float | None]:
        host = f"[{target.address}]" if target.address.version == 6 else str(target.address)
        url = httpx.URL(target.url).copy_with(host=host)
        default_port = 443 if target.scheme == "https" else 80
        headers = {
            "host": target.host if target.port == default_port else f"{target.host}:{target.port}",
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            **self.signatures.headers(delivery, datetime.now(UTC)),
        }
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        request = self._client.build_request(
            "POST", url, content=delivery.body.encode(), headers=headers, extensions=extensions
        )
        response = await self._client.send(request, stream=True)
        try:
            read = 0
            async for chunk in response.aiter_raw():
                read += len(chunk)
                if read >= MAX_ANSWER_BYTES:
                    break
        finally:
            await response.aclose()
        return response.status_code, _retry_after(response.headers.get("retry-after"))

    def _backoff(self, attempts: int, at_least: float | None) -> float:
        """The wait before the next try after `attempts` earlier ones failed: 1 s doubling up to
        WEBHOOK_BACKOFF_MAX_SECONDS, each between half and all of it (jitter), or the receiver's Retry-After."""
        ceiling = min(self.backoff_max, 2.0 ** min(attempts, 30))
        wait = ceiling * random.uniform(0.5, 1.0)
        return min(max(wait, at_least or 0.0), self.backoff_max)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
