"""Conversation items as a realtime session holds them: what a client may create, and their text."""

from __future__ import annotations

from typing import Any

from api.realtime.protocol import ProtocolError, new_id


def item_text(item: dict[str, Any]) -> str:
    parts = []
    for part in item.get("content") or []:
        value = part.get("text") if part.get("text") is not None else part.get("transcript")
        if isinstance(value, str) and value.strip():
            parts.append(value.strip())
    return " ".join(parts)


def client_item(raw: dict[str, Any]) -> dict[str, Any]:
    """An item a client sent (`conversation.item.create`), checked and in the session's shape."""
    kind = raw.get("type", "message")
    if kind == "function_call_output" or kind == "function_call":
        raise ProtocolError(
            "tools are not supported: speechq's models call no functions", code="unsupported", param="item.type"
        )
    if kind != "message":
        raise ProtocolError(f"item.type {str(kind)[:32]!r} is not supported; use message", param="item.type")
    role = raw.get("role")
    if role not in ("user", "assistant", "system"):
        raise ProtocolError("item.role must be user, assistant or system", param="item.role")
    content = raw.get("content")
    if not isinstance(content, list) or not content:
        raise ProtocolError("item.content must be a non-empty list", param="item.content")
    parts = []
    for index, part in enumerate(content):
        if not isinstance(part, dict):
            raise ProtocolError("each content part is an object", param=f"item.content.{index}")
        ptype = part.get("type")
        text = part.get("text", part.get("transcript"))
        allowed = {
            "user": ("input_text",),
            "system": ("input_text",),
            "assistant": ("output_text", "text", "output_audio", "audio"),
        }[role]
        if ptype not in allowed or not isinstance(text, str) or len(text) > 200_000:
            raise ProtocolError(
                f"a {role} message's content parts are {', '.join(allowed)} with `text` "
                "(audio is appended through input_audio_buffer)",
                param=f"item.content.{index}",
            )
        name = {"text": "output_text", "audio": "output_audio"}.get(ptype, ptype)
        parts.append({"type": name, "transcript": text} if name == "output_audio" else {"type": name, "text": text})
    item_id = raw.get("id")
    if item_id is not None and (not isinstance(item_id, str) or not 1 <= len(item_id) <= 64):
        raise ProtocolError("item.id must be a string of 1 to 64 characters", param="item.id")
    return {
        "id": item_id or new_id("item"),
        "object": "realtime.item",
        "type": "message",
        "status": "completed",
        "role": role,
        "content": parts,
    }


def client_items(raw: list[Any]) -> list[dict[str, Any]]:
    return [client_item(item) for item in raw if isinstance(item, dict)]
