"""The audio formats a realtime session speaks: `audio/pcm` (16-bit little-endian mono at 24 kHz) and G.711
`audio/pcmu` / `audio/pcma` at 8 kHz; their GA and beta names. (The coding is api/realtime/audio.py.)"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class AudioFormat:
    type: str  # GA: audio/pcm, audio/pcmu, audio/pcma
    rate: int
    codec: str | None  # FFmpeg's G.711 codec; None for raw PCM

    def ga(self) -> dict[str, Any]:
        return {"type": self.type, "rate": self.rate} if self.codec is None else {"type": self.type}

    def beta(self) -> str:
        return BETA_NAMES[self.type]


PCM = AudioFormat("audio/pcm", 24_000, None)
FORMATS = {
    "audio/pcm": PCM,
    "audio/pcmu": AudioFormat("audio/pcmu", 8_000, "pcm_mulaw"),
    "audio/pcma": AudioFormat("audio/pcma", 8_000, "pcm_alaw"),
}
BETA_NAMES = {"audio/pcm": "pcm16", "audio/pcmu": "g711_ulaw", "audio/pcma": "g711_alaw"}
FROM_BETA = {beta: FORMATS[ga] for ga, beta in BETA_NAMES.items()}


class UnknownFormat(ValueError):
    pass


def audio_format(value: object) -> AudioFormat:
    """A GA `{"type": "audio/pcm", "rate": 24000}` or a beta `"pcm16"`."""
    if isinstance(value, str):
        if value in FROM_BETA:
            return FROM_BETA[value]
        if value in FORMATS:
            return FORMATS[value]
    elif isinstance(value, dict) and value.get("type") in FORMATS:
        chosen = FORMATS[value["type"]]
        rate = value.get("rate", chosen.rate)
        if rate != chosen.rate:
            raise UnknownFormat(f"{chosen.type} is only supported at {chosen.rate} Hz, not {rate!r}")
        return chosen
    known = ", ".join([*FORMATS, *FROM_BETA])
    raise UnknownFormat(f"unsupported audio format {value!r}; formats: {known}")


def milliseconds(samples: int, fmt: AudioFormat) -> int:
    return samples * 1000 // fmt.rate


def samples_at(ms: int, fmt: AudioFormat) -> int:
    return ms * fmt.rate // 1000
