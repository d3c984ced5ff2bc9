"""The audio formats of a realtime session: `audio/pcm` (16-bit little-endian mono at 24 kHz) and G.711
`audio/pcmu` / `audio/pcma` at 8 kHz, coded with PyAV (FFmpeg's G.711 codecs), in and out."""

from __future__ import annotations

import io
import wave
from typing import Any, Literal

import av
import numpy as np

from api.realtime import vad
from api.realtime.formats import AudioFormat


def g711(fmt: AudioFormat, mode: Literal["r", "w"]) -> Any:
    """FFmpeg's G.711 coder for `fmt` ("r" to decode, "w" to encode 16-bit samples); None for raw PCM."""
    if fmt.codec is None:
        return None
    codec: Any = av.CodecContext.create(fmt.codec, mode)
    codec.sample_rate = fmt.rate
    codec.layout = "mono"
    if mode == "w":
        codec.format = "s16"
        codec.open()
    return codec


class Decoder:
    """Appended audio (base64 already undone) as 16-bit PCM at the format's rate, plus the same audio at
    16 kHz as floats for the VAD."""

    def __init__(self, fmt: AudioFormat) -> None:
        self.format = fmt
        self._codec = g711(fmt, "r")
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=vad.RATE)
        self._odd = b""  # half a sample left from the last append

    def decode(self, data: bytes) -> tuple[np.ndarray, np.ndarray]:
        """(int16 at the format's rate, float32 at 16 kHz)."""
        if self._codec is None:
            data, self._odd = self._odd + data, b""
            if len(data) % 2:
                data, self._odd = data[:-1], data[-1:]
            pcm = np.frombuffer(data, dtype="<i2").astype(np.int16)
        else:
            frames = self._codec.decode(av.Packet(data))
            parts = [frame.to_ndarray().reshape(-1) for frame in frames]
            pcm = np.concatenate(parts).astype(np.int16) if parts else np.zeros(0, np.int16)
        return pcm, self._for_vad(pcm)

    def _for_vad(self, pcm: np.ndarray) -> np.ndarray:
        if not pcm.size:
            return np.zeros(0, np.float32)
        frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
        frame.sample_rate = self.format.rate
        out = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)


class Encoder:
    """Speech from the TTS (16-bit PCM at the format's rate) in the session's output format."""

    def __init__(self, fmt: AudioFormat) -> None:
        self.format = fmt
        self._codec = g711(fmt, "w")

    def encode(self, pcm16: bytes) -> bytes:
        if self._codec is None:
            return pcm16
        samples = np.frombuffer(pcm16[: len(pcm16) // 2 * 2], dtype="<i2")
        frame = av.AudioFrame.from_ndarray(samples[None, :].astype(np.int16), format="s16", layout="mono")
        frame.sample_rate = self.format.rate
        return b"".join(bytes(packet) for packet in self._codec.encode(frame))


def wav(pcm: np.ndarray, rate: int) -> bytes:
    """16-bit mono PCM as a WAV file, what a transcription job takes."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.astype("<i2").tobytes())
    return buffer.getvalue()
