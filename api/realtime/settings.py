"""A realtime session's settings from `session.update` (GA or beta shape), and as they are kept in Redis."""

from __future__ import annotations

from typing import Any

from api.realtime import protocol
from api.realtime.protocol import ProtocolError, SessionConfig, Transcription
from api.state import AppState
from contract.catalog import ModelRole, UnknownModel, registry


def conversation_model(name: str | None, state: AppState) -> tuple[str, str]:
    """(the registered LLM that answers, the name the client used) for a session's `model`."""
    if name is None or name.startswith(protocol.OPENAI_REALTIME_PREFIXES):
        return state.settings.dialogue_model, name or state.settings.dialogue_model
    try:
        return registry().lookup(name, ModelRole.llm).name, name
    except UnknownModel:
        raise ProtocolError(
            f"model {name[:64]!r} is not a language model served here; GET /v1/models lists them",
            code="model_not_found",
            param="model",
        ) from None


def transcription_model(value: object, param: str) -> tuple[Transcription | None, str | None]:
    if value is None:
        return None, None
    if not isinstance(value, dict):
        raise ProtocolError(f"{param} must be an object or null", param=param)
    name = value.get("model")
    model: str | None = None
    if name is not None and name not in protocol.OPENAI_TRANSCRIBE_MODELS:
        try:
            model = registry().lookup(str(name), ModelRole.stt).name
        except UnknownModel:
            raise ProtocolError(
                f"{param}.model {str(name)[:64]!r} is not a speech-to-text model served here",
                code="model_not_found",
                param=f"{param}.model",
            ) from None
    language = value.get("language")
    if language is not None and (not isinstance(language, str) or not 2 <= len(language) <= 8):
        raise ProtocolError(f"{param}.language must be a language code such as en", param=f"{param}.language")
    prompt = value.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise ProtocolError(f"{param}.prompt must be a string", param=f"{param}.prompt")
    return Transcription(model, language or None, prompt or None), name if isinstance(name, str) else None


def update_config(config: SessionConfig, session: dict[str, Any], state: AppState) -> None:
    """Apply a `session.update` (GA or beta shape) to `config`; a bad field is a ProtocolError naming it, and
    then nothing is changed."""
    new = SessionConfig(**{**config.__dict__})
    _general(new, session, state)
    _beta_fields(new, session)
    audio = session.get("audio")
    if audio is not None:
        if not isinstance(audio, dict):
            raise ProtocolError("session.audio must be an object", param="session.audio")
        _audio_input(new, audio.get("input") or {})
        _audio_output(new, audio.get("output") or {})
    if session.get("tools"):
        raise ProtocolError(
            "tools are not supported: speechq's models call no functions", code="unsupported", param="session.tools"
        )
    config.__dict__.update(new.__dict__)


def _general(new: SessionConfig, session: dict[str, Any], state: AppState) -> None:
    kind = session.get("type")
    if kind is not None:
        if kind not in ("realtime", "transcription"):
            raise ProtocolError("session.type must be realtime or transcription", param="session.type")
        new.type = kind
    if "model" in session:
        model = session["model"]
        if not isinstance(model, str):
            raise ProtocolError("session.model must be a string", param="session.model")
        new.model, new.requested_model = conversation_model(model, state)
    if "instructions" in session:
        new.instructions = protocol.text(session["instructions"], "session.instructions", 20_000)
    if "output_modalities" in session:
        new.output_modalities = protocol.modalities(session["output_modalities"], "session.output_modalities")
    for key in ("max_output_tokens", "max_response_output_tokens"):
        if key in session:
            new.max_output_tokens = protocol.token_limit(session[key], f"session.{key}")
    if "temperature" in session:
        new.temperature = protocol.bounded(session["temperature"], "session.temperature", 0.0, 2.0)


def _beta_fields(new: SessionConfig, session: dict[str, Any]) -> None:
    if "voice" in session:
        new.voice = protocol.text(session["voice"], "session.voice", 128)
    if "modalities" in session:
        new.output_modalities = protocol.modalities(session["modalities"], "session.modalities")
    if "input_audio_format" in session:
        new.input_format = protocol.fmt(session["input_audio_format"], "session.input_audio_format")
    if "output_audio_format" in session:
        new.output_format = protocol.fmt(session["output_audio_format"], "session.output_audio_format")
    if "turn_detection" in session:
        new.turn_detection = protocol.turn_detection(
            session["turn_detection"], new.turn_detection, "session.turn_detection"
        )
    if "input_audio_transcription" in session:
        new.transcription, new.transcription_requested = transcription_model(
            session["input_audio_transcription"], "session.input_audio_transcription"
        )


def _audio_input(new: SessionConfig, audio_in: dict[str, Any]) -> None:
    name = "session.audio.input"
    if "format" in audio_in:
        new.input_format = protocol.fmt(audio_in["format"], f"{name}.format")
    if "turn_detection" in audio_in:
        new.turn_detection = protocol.turn_detection(
            audio_in["turn_detection"], new.turn_detection, f"{name}.turn_detection"
        )
    if "transcription" in audio_in:
        new.transcription, new.transcription_requested = transcription_model(
            audio_in["transcription"], f"{name}.transcription"
        )


def _audio_output(new: SessionConfig, audio_out: dict[str, Any]) -> None:
    name = "session.audio.output"
    if "format" in audio_out:
        new.output_format = protocol.fmt(audio_out["format"], f"{name}.format")
    if "voice" in audio_out:
        new.voice = protocol.text(audio_out["voice"], f"{name}.voice", 128)
    if "speed" in audio_out:
        new.speed = protocol.bounded(audio_out["speed"], f"{name}.speed", 0.25, 4.0)


def kept_config(config: SessionConfig) -> dict[str, Any]:
    """The settings a resumed session gets back (`session.update` in GA terms)."""
    rendered = config.render("ga")
    rendered["model"] = config.requested_model or config.model
    return rendered


def restored(config: SessionConfig, kept: dict[str, Any], state: AppState) -> None:
    kept = {
        k: v
        for k, v in kept.items()
        if k not in ("id", "object", "expires_at", "tracing", "prompt", "truncation", "include", "tool_choice", "tools")
    }
    update_config(config, kept, state)
