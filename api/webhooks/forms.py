"""`webhook_url` and `webhook_events` as form fields, for the routes that take an upload (transcription,
dialogue); JSON bodies carry them as fields of their own (`contract/webhooks.py`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Form


async def webhook_form(
    webhook_url: Annotated[
        str | None, Form(description="called with a signed event once the job ends (SPEC §11)")
    ] = None,
    webhook_events: Annotated[
        list[str] | None,
        Form(description="succeeded, failed, cancelled, expired (the field repeated, or comma-separated); default all"),
    ] = None,
) -> dict[str, Any]:
    """The webhook fields the client sent."""
    fields: dict[str, Any] = {}
    if webhook_url is not None:
        fields["webhook_url"] = webhook_url
    if webhook_events is not None:
        fields["webhook_events"] = [
            name.strip() for value in webhook_events for name in value.split(",") if name.strip()
        ]
    return fields


WebhookFormDep = Annotated[dict[str, Any], Depends(webhook_form)]
