"""What a job or batch request may ask to be told when it ends (SPEC §11): `webhook_url` and `webhook_events`.

They describe the job, not the work: neither reaches the worker (both are left out of the stored request).
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, Field

WebhookEvent = Literal["succeeded", "failed", "cancelled", "expired"]
WEBHOOK_EVENTS: tuple[WebhookEvent, ...] = get_args(WebhookEvent)


class WebhookFields(BaseModel):
    webhook_url: str | None = Field(
        None,
        exclude=True,
        max_length=2_048,
        description="Called once the job ends, with a signed event (Standard Webhooks); the host must be one "
        "the operator allows (WEBHOOK_ALLOWED_HOSTS)",
    )
    webhook_events: list[WebhookEvent] | None = Field(
        None,
        exclude=True,
        min_length=1,
        description="Which ends to be told of; default: all of them",
    )

    def webhook_fields(self) -> dict[str, Any]:
        """The webhook fields that were sent, to carry over to the job's request."""
        return {
            name: getattr(self, name) for name in ("webhook_url", "webhook_events") if getattr(self, name) is not None
        }
