"""The webhook outbox (SPEC §11): what a job or batch asked to be told, and the events waiting to be delivered.

A job's webhook is two fields of its hash, `webhook_url` and `webhook_events`; the script that ends the job
(`lua/_prelude.lua` `job_ended`) writes its event to the outbox in the same step, so a job can never end
without its event queued. A batch's webhook is kept in its hash the same way, and the compare-and-set that
ends the batch (`lua/batch_update.lua`) writes its event. An event's record (`keys.webhook`) holds its body
as it will be sent on every try; `keys.WEBHOOKS_DUE` orders the undelivered ones by their next try,
`keys.WEBHOOKS_PENDING` by their age. `api/webhooks/delivery.py` delivers them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Literal, cast

from redis.asyncio import Redis

from contract.webhooks import WEBHOOK_EVENTS, WebhookEvent
from jobstore import keys, scripts

# A batch's final status -> the event type OpenAI sends for it, and the `webhook_events` name that asks for it.
BATCH_EVENTS: dict[str, tuple[str, WebhookEvent]] = {
    "completed": ("batch.completed", "succeeded"),
    "failed": ("batch.failed", "failed"),
    "cancelled": ("batch.cancelled", "cancelled"),
    "expired": ("batch.expired", "expired"),
}


@dataclass(frozen=True, slots=True)
class Webhook:
    """Where a job or batch is to be told it ended, and on which of its ends."""

    url: str
    events: tuple[WebhookEvent, ...] = WEBHOOK_EVENTS

    def fields(self) -> dict[str, str]:
        """As stored in the job's (or batch's) hash."""
        return {"webhook_url": self.url, "webhook_events": " ".join(self.events)}

    @classmethod
    def stored(cls, fields: dict[str, str]) -> Webhook | None:
        url = fields.get("webhook_url")
        if not url:
            return None
        events = tuple(cast(WebhookEvent, name) for name in (fields.get("webhook_events") or "").split())
        return cls(url, events)


def batch_event(batch_id: str, status: str, webhook: Webhook | None, owner: str) -> list[str]:
    """The outbox arguments of `lua/batch_update.lua` (event id, url, owner, type, body) for a batch that
    ends as `status`, or [] when it has no webhook or its webhook does not want this end."""
    if webhook is None or status not in BATCH_EVENTS:
        return []
    etype, wanted = BATCH_EVENTS[status]
    if wanted not in webhook.events:
        return []
    event_id = "evt_" + batch_id.removeprefix("batch_")
    body = {"object": "event", "id": event_id, "type": etype, "created_at": int(time.time()), "data": {"id": batch_id}}
    return [event_id, webhook.url, owner, etype, json.dumps(body)]


@dataclass(frozen=True, slots=True)
class Delivery:
    """An event in the outbox, as a deliverer claims it."""

    id: str
    url: str
    owner: str  # the API key whose secrets sign it
    subject: str  # the job or batch it tells of
    type: str
    body: str
    created_at: float
    attempts: int

    @classmethod
    def of(cls, fields: dict[str, str]) -> Delivery:
        return cls(
            id=fields["id"],
            url=fields["url"],
            owner=fields.get("owner", ""),
            subject=fields.get("subject", ""),
            type=fields.get("type", ""),
            body=fields["body"],
            created_at=float(fields.get("created_at") or 0),
            attempts=int(fields.get("attempts") or 0),
        )


class WebhookOutbox:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._claim = redis.register_script(scripts.source("webhook_claim"))
        self._settle = redis.register_script(scripts.source("webhook_settle"))
        self.put_script = redis.register_script(scripts.source("webhook_put"))

    async def claim(self, seconds: float, limit: int) -> list[Delivery]:
        """Up to `limit` events due now, each held by this process for `seconds` (see `lua/webhook_claim.lua`)."""
        rows = cast(list[list[str]], await self._claim(keys=[], args=[seconds, limit]))
        return [Delivery.of(dict(zip(row[::2], row[1::2], strict=True))) for row in rows]

    async def settle(
        self,
        event_id: str,
        outcome: Literal["delivered", "retry", "failed"],
        *,
        next_try: float = 0.0,
        error: str = "",
        status: int | None = None,
    ) -> str:
        return cast(
            str,
            await self._settle(
                keys=[], args=[event_id, outcome, f"{next_try:.6f}", error, "" if status is None else status]
            ),
        )

    async def oldest_pending_age(self) -> float:
        """Seconds since the oldest undelivered event was made; 0 when none waits."""
        oldest = cast(list[tuple[str, float]], await self.redis.zrange(keys.WEBHOOKS_PENDING, 0, 0, withscores=True))
        return max(0.0, time.time() - oldest[0][1]) if oldest else 0.0

    async def delivery(self, event_id: str) -> dict[str, Any] | None:
        """An event's delivery as `GET /v1/jobs/{id}` shows it; None once its record has expired."""
        found = cast(dict[str, str], await self.redis.hgetall(keys.webhook(event_id)))
        return found or None
