"""OpenAI's Realtime protocol, both dialects: the GA event names and session shape, and the beta ones
(`OpenAI-Beta: realtime=v1`) that older clients speak. The session thinks in GA terms; what goes out is
renamed and reshaped here for a beta client, and what comes in from one is read here."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from api.realtime.formats import PCM, AudioFormat, UnknownFormat, audio_format

Dialect = Literal["ga", "beta"]

# GA server event → its beta name (those not listed are the same in both).
BETA_EVENT_NAMES = {
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
    "conversation.item.added": "conversation.item.created",
}
# GA events a beta client never got.
NOT_IN_BETA = frozenset({"conversation.item.done"})
# Content part types that the beta named otherwise.
BETA_PART_TYPES = {"output_audio": "audio", "output_text": "text"}

# OpenAI's model names, served by the deployment's conversation model.
OPENAI_REALTIME_PREFIXES = ("gpt-realtime", "gpt-4o-realtime", "gpt-4o-mini-realtime")
OPENAI_TRANSCRIBE_MODELS = frozenset({"whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe"})
MAX_EVENT_BYTES = 15 * 1024 * 1024  # OpenAI's cap on one client event


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(12).replace('-', 'A').replace('_', 'B')}"


class ProtocolError(Exception):
    """A client event the session cannot act on: answered with an `error` event; the session lives."""

    def __init__(self, message: str, *, code: str = "invalid_value", param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param


def error_event(
    message: str, *, type: str = "invalid_request_error", code: str | None, param: str | None, event_id: str | None
) -> dict[str, Any]:
    """OpenAI's `error` event, naming the client event it answers (`event_id`)."""
    error = {"type": type, "code": code, "message": message, "param": param, "event_id": event_id}
    return {"type": "error", "event_id": new_id("event"), "error": error}


def for_dialect(event: dict[str, Any], dialect: Dialect) -> dict[str, Any] | None:
    """`event` (GA) as the client's dialect has it; None for one its dialect does not have."""
    if dialect == "ga":
        return event
    name = event["type"]
    if name in NOT_IN_BETA:
        return None
    out = {**event, "type": BETA_EVENT_NAMES.get(name, name)}
    for key in ("item", "part"):
        if isinstance(out.get(key), dict):
            out[key] = beta_shape(out[key])
    if isinstance(out.get("response"), dict):
        out["response"] = beta_response(out["response"])
    return out


def beta_shape(item: dict[str, Any]) -> dict[str, Any]:
    """An item or content part with the beta's content type names."""
    if item.get("type") in BETA_PART_TYPES:
        item = {**item, "type": BETA_PART_TYPES[item["type"]]}
    if isinstance(item.get("content"), list):
        item = {**item, "content": [beta_shape(part) for part in item["content"]]}
    return item


def beta_response(response: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in response.items() if k not in ("output_modalities", "audio", "conversation_id")}
    out["modalities"] = response.get("output_modalities", ["audio"])
    out["output"] = [beta_shape(item) for item in response.get("output", [])]
    output = response.get("audio", {}).get("output", {})
    if output:
        out["voice"] = output.get("voice")
        fmt = output.get("format", {})
        out["output_audio_format"] = audio_format(fmt).beta() if fmt else "pcm16"
    return out


@dataclass
class TurnDetection:
    """OpenAI's `server_vad` settings."""

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    create_response: bool = True
    interrupt_response: bool = True
    idle_timeout_ms: int | None = None


@dataclass
class Transcription:
    model: str | None  # a registered speech-to-text name; None: the deployment's default
    language: str | None = None
    prompt: str | None = None

    def render(self, requested: str | None) -> dict[str, Any]:
        return {"model": requested or self.model or "whisper-1", "language": self.language, "prompt": self.prompt}


@dataclass
class SessionConfig:
    """A session's settings, as the session acts on them."""

    id: str
    type: Literal["realtime", "transcription"] = "realtime"
    model: str = ""  # the registered LLM that answers
    requested_model: str = ""  # the name the client used, echoed back
    instructions: str = "You are a helpful, friendly voice assistant. Answer briefly, in one or two sentences."
    voice: str = "alloy"
    speed: float = 1.0
    input_format: AudioFormat = PCM
    output_format: AudioFormat = PCM
    output_modalities: list[str] = field(default_factory=lambda: ["audio"])
    turn_detection: TurnDetection | None = field(default_factory=TurnDetection)
    transcription: Transcription | None = None
    transcription_requested: str | None = None
    max_output_tokens: int | None = None  # None: "inf", the deployment's default cap
    temperature: float | None = None
    created_at: int = field(default_factory=lambda: int(time.time()))

    def render(self, dialect: Dialect) -> dict[str, Any]:
        turn = self.turn_detection
        turn_json: dict[str, Any] | None = None
        if turn is not None:
            turn_json = {
                "type": "server_vad",
                "threshold": turn.threshold,
                "prefix_padding_ms": turn.prefix_padding_ms,
                "silence_duration_ms": turn.silence_duration_ms,
                "create_response": turn.create_response,
                "interrupt_response": turn.interrupt_response,
                "idle_timeout_ms": turn.idle_timeout_ms,
            }
        transcription = self.transcription.render(self.transcription_requested) if self.transcription else None
        limit: int | str = self.max_output_tokens if self.max_output_tokens is not None else "inf"
        if dialect == "beta":
            return {
                "id": self.id,
                "object": "realtime.transcription_session" if self.type == "transcription" else "realtime.session",
                "model": self.requested_model or self.model,
                "modalities": ["text", "audio"] if "audio" in self.output_modalities else ["text"],
                "instructions": self.instructions,
                "voice": self.voice,
                "input_audio_format": self.input_format.beta(),
                "output_audio_format": self.output_format.beta(),
                "input_audio_transcription": transcription,
                "turn_detection": turn_json,
                "tools": [],
                "tool_choice": "auto",
                "temperature": self.temperature if self.temperature is not None else 0.8,
                "max_response_output_tokens": limit,
            }
        audio_input: dict[str, Any] = {
            "format": self.input_format.ga(),
            "transcription": transcription,
            "turn_detection": turn_json,
            "noise_reduction": None,
        }
        if self.type == "transcription":
            return {
                "type": "transcription",
                "id": self.id,
                "object": "realtime.transcription_session",
                "audio": {"input": audio_input},
                "include": [],
            }
        return {
            "type": "realtime",
            "id": self.id,
            "object": "realtime.session",
            "model": self.requested_model or self.model,
            "output_modalities": self.output_modalities,
            "instructions": self.instructions,
            "audio": {
                "input": audio_input,
                "output": {"format": self.output_format.ga(), "voice": self.voice, "speed": self.speed},
            },
            "tools": [],
            "tool_choice": "auto",
            "max_output_tokens": limit,
            "tracing": None,
            "truncation": "auto",
            "prompt": None,
            "expires_at": self.created_at + 3600,
            "include": None,
        }


def is_beta_session(session: dict[str, Any]) -> bool:
    """A `session.update` written in the beta's terms (no `type`, and beta-only fields)."""
    beta_fields = {"modalities", "input_audio_format", "output_audio_format", "input_audio_transcription", "voice"}
    return "type" not in session and bool(beta_fields & session.keys())


def bounded(value: object, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ProtocolError(f"{name} must be a number from {low:g} to {high:g}", param=name)
    return float(value)


def text(value: object, name: str, limit: int) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise ProtocolError(f"{name} must be a string of at most {limit} characters", param=name)
    return value


def turn_detection(value: object, current: TurnDetection | None, name: str) -> TurnDetection | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ProtocolError(f"{name} must be an object or null", param=name)
    kind = value.get("type", "server_vad")
    if kind != "server_vad":
        raise ProtocolError(f"{name}.type {kind!r} is not supported; use server_vad or null", param=f"{name}.type")
    turn = replace(current) if current is not None else TurnDetection()
    if "threshold" in value:
        turn.threshold = bounded(value["threshold"], f"{name}.threshold", 0.0, 1.0)
    for key in ("prefix_padding_ms", "silence_duration_ms"):
        if key in value:
            setattr(turn, key, int(bounded(value[key], f"{name}.{key}", 0, 10_000)))
    for key in ("create_response", "interrupt_response"):
        if key in value:
            if not isinstance(value[key], bool):
                raise ProtocolError(f"{name}.{key} must be true or false", param=f"{name}.{key}")
            setattr(turn, key, value[key])
    if "idle_timeout_ms" in value:
        idle = value["idle_timeout_ms"]
        turn.idle_timeout_ms = None if idle is None else int(bounded(idle, f"{name}.idle_timeout_ms", 5_000, 30_000))
    return turn


def fmt(value: object, name: str) -> AudioFormat:
    try:
        return audio_format(value)
    except UnknownFormat as exc:
        raise ProtocolError(str(exc), code="invalid_value", param=name) from None


def modalities(value: object, name: str) -> list[str]:
    if not isinstance(value, list) or not value or any(m not in ("audio", "text") for m in value):
        raise ProtocolError(f'{name} must be ["audio"] or ["text"]', param=name)
    return ["audio"] if "audio" in value else ["text"]


def token_limit(value: object, name: str) -> int | None:
    if value == "inf":
        return None
    return int(bounded(value, name, 1, 4096))
