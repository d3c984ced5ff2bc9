"""Rendering a transcription result in the formats clients ask for: json, text, srt, vtt, verbose_json."""

from __future__ import annotations

from typing import Any

from contract.transcription import TranscriptionResult

MEDIA_TYPES = {
    "json": "application/json",
    "verbose_json": "application/json",
    "text": "text/plain; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
}


def _clock(seconds: float, separator: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def to_srt(result: TranscriptionResult) -> str:
    blocks = [
        f"{n}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text.strip()}\n"
        for n, s in enumerate(result.segments, start=1)
    ]
    return "\n".join(blocks)


def to_vtt(result: TranscriptionResult) -> str:
    blocks = [f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text.strip()}\n" for s in result.segments]
    return "WEBVTT\n\n" + "\n".join(blocks)


def to_tsv(result: TranscriptionResult) -> str:
    """openai-whisper's tsv: start and end in integer milliseconds, then the text."""
    rows = [f"{round(s.start * 1000)}\t{round(s.end * 1000)}\t{' '.join(s.text.split())}" for s in result.segments]
    return "start\tend\ttext\n" + "".join(row + "\n" for row in rows)


def to_verbose_json(result: TranscriptionResult) -> dict[str, Any]:
    body: dict[str, Any] = {
        "task": result.task,
        "language": result.language,
        "duration": result.duration,
        "text": result.text,
        "segments": [s.model_dump(mode="json", exclude={"words"}) for s in result.segments],
    }
    if result.words is not None:
        body["words"] = [w.model_dump(mode="json") for w in result.words]
    return body


def render(result: TranscriptionResult, response_format: str) -> str | dict[str, Any]:
    """The result in `response_format`: a string for text/srt/vtt, a JSON object otherwise."""
    if response_format == "text":
        return result.text.strip() + "\n"
    if response_format == "srt":
        return to_srt(result)
    if response_format == "vtt":
        return to_vtt(result)
    if response_format == "tsv":
        return to_tsv(result)
    if response_format == "verbose_json":
        return to_verbose_json(result)
    return {"text": result.text}
