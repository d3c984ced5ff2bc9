"""The options of a transcription, sent as form fields or as a batch line's body, as a validated
`TranscribeRequest`: shared by the transcription routes and the batch planner."""

from __future__ import annotations

from typing import Any

from api.errors import validated
from contract.transcription import TranscribeRequest


def transcribe_request(fields: dict[str, Any]) -> TranscribeRequest:
    """Fields (those given as None were not sent) → a validated request; a bad one is a 422 naming it."""
    return validated(TranscribeRequest, {name: value for name, value in fields.items() if value is not None})
