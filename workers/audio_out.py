"""Audio out: float PCM from a TTS engine → the container asked for, one sentence at a time.

`AudioEncoder` keeps one encoder (PyAV) open for the whole job, so the bytes it hands back after each
sentence, concatenated, are one valid stream of the format — what a client plays as it arrives — and
`close()` gives the finished file (with the headers a seekable file gets, such as WAV sizes).
"""

from __future__ import annotations

import io
import struct
import time
from fractions import Fraction
from typing import Any

import av
import numpy as np

from contract.jobs import EventType
from contract.speech import MEDIA_TYPES
from contract.synthesis import AudioChunk
from workers.context import JobContext

# Container and codec for each format PyAV encodes; wav and pcm are written directly.
_CODECS = {"flac": ("flac", "flac"), "mp3": ("mp3", "libmp3lame"), "opus": ("ogg", "libopus"), "aac": ("adts", "aac")}
_BIT_RATES = {"mp3": 64_000, "opus": 32_000, "aac": 64_000}  # mono speech


def wav_header(rate: int, data_bytes: int | None) -> bytes:
    """A 44-byte PCM s16le mono WAV header; sizes 0xFFFFFFFF when the length is not known yet (streaming)."""
    data = 0xFFFFFFFF if data_bytes is None else data_bytes
    riff = 0xFFFFFFFF if data_bytes is None else 36 + data_bytes
    return (
        b"RIFF"
        + struct.pack("<I", riff)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
        + b"data"
        + struct.pack("<I", data)
    )


def _frame(pcm: np.ndarray, rate: int) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(pcm, dtype=np.float32)[None, :], format="flt", layout="mono"
    )
    frame.sample_rate = rate
    return frame


class AudioEncoder:
    """Encodes mono float32 chunks (at any input rate) into one `fmt` stream at `rate`."""

    def __init__(self, fmt: str, rate: int) -> None:
        self.fmt = fmt
        self.rate = rate
        self.media_type = MEDIA_TYPES[fmt]
        self.samples = 0  # output samples so far
        self._raw = fmt in ("wav", "pcm")
        self._buffer = io.BytesIO()
        self._sent = 0
        self._container: Any = None
        if self._raw:
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
            if fmt == "wav":
                self._buffer.write(wav_header(rate, None))
        else:
            container_format, codec = _CODECS[fmt]
            # Ogg pages are flushed every 20 ms of audio rather than every second, so each sentence's
            # audio leaves with that sentence.
            options = {"page_duration": "20000"} if container_format == "ogg" else {}
            self._container = av.open(self._buffer, "w", format=container_format, options=options)
            self._stream = self._container.add_stream(codec, rate=rate, layout="mono")
            if fmt in _BIT_RATES:
                self._stream.codec_context.bit_rate = _BIT_RATES[fmt]
            self._resampler = av.AudioResampler(format=self._stream.codec_context.format.name, layout="mono", rate=rate)

    @property
    def seconds(self) -> float:
        return self.samples / self.rate

    def encode(self, pcm: np.ndarray, rate: int) -> bytes:
        """Add a chunk; returns the bytes of the stream that are ready (may be empty for a short chunk)."""
        if pcm.size:
            self._push(self._resampler.resample(_frame(pcm, rate)))
        return self._take()

    def close(self) -> tuple[bytes, bytes]:
        """Flush; returns (the stream's last bytes, the whole finished file)."""
        self._push(self._resampler.resample(None))
        if self._container is not None:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            self._container.close()
        tail = self._take()
        whole = self._buffer.getvalue()
        if self.fmt == "wav":
            whole = wav_header(self.rate, len(whole) - 44) + whole[44:]
        return tail, whole

    def _push(self, frames: list[av.AudioFrame]) -> None:
        for frame in frames:
            self.samples += frame.samples
            if self._raw:
                self._buffer.write(frame.to_ndarray().tobytes())
                continue
            for packet in self._stream.encode(frame):
                self._container.mux(packet)

    def _take(self) -> bytes:
        data = self._buffer.getvalue()[self._sent :]
        self._sent += len(data)
        return data


class ChunkSender:
    """Sends what an encoder hands back as the job's numbered `audio_chunk` events (a synthesis and a
    dialogue alike), and notes how long after `started` the first was ready."""

    def __init__(self, run: JobContext, encoder: AudioEncoder, started: float) -> None:
        self.run = run
        self.encoder = encoder
        self.started = started
        self.first: float | None = None  # seconds from `started` to the first chunk
        self.count = 0

    def send(self, data: bytes, text: str | None) -> None:
        """`data` (nothing is sent for none) as the next chunk; `text` is the sentence it speaks."""
        if not data:
            return
        if self.first is None:
            self.first = time.perf_counter() - self.started
        enc = self.encoder
        self.run.emit(EventType.audio_chunk, AudioChunk.of(self.count, data, enc.fmt, enc.rate, enc.seconds, text))
        self.count += 1


def normalize_loudness(pcm: np.ndarray, target_rms: float = 0.1, peak: float = 0.97) -> np.ndarray:
    """Bring a chunk to a steady speech level (about -20 dBFS RMS) without clipping.

    Applied per sentence, so it works while streaming; sentences from one voice end up equally loud.
    """
    if not pcm.size:
        return pcm
    rms = float(np.sqrt(np.mean(np.square(pcm, dtype=np.float64))))
    if rms < 1e-5:
        return pcm
    gain = min(max(target_rms / rms, 0.25), 8.0)
    top = float(np.max(np.abs(pcm))) * gain
    if top > peak:
        gain *= peak / top
    return (pcm * gain).astype(np.float32)


class Tempo:
    """Changes speed without changing pitch (FFmpeg's atempo), for engines that cannot do it themselves."""

    def __init__(self, speed: float, rate: int) -> None:
        self.rate = rate
        self.graph = av.filter.Graph()
        source = self.graph.add_abuffer(format="flt", sample_rate=rate, layout="mono", time_base=Fraction(1, rate))
        node = source
        for factor in _atempo_steps(speed):
            step = self.graph.add("atempo", f"{factor:.6f}")
            node.link_to(step)
            node = step
        sink = self.graph.add("abuffersink")
        node.link_to(sink)
        self.graph.configure()
        self.pts = 0

    def __call__(self, pcm: np.ndarray | None) -> np.ndarray:
        """Feed a chunk (None at the end); returns what the filter has ready."""
        if pcm is None:
            self.graph.push(None)
        else:
            frame = _frame(pcm, self.rate)
            frame.pts = self.pts
            self.pts += pcm.size
            self.graph.push(frame)
        out: list[np.ndarray] = []
        while True:
            try:
                out.append(self.graph.pull().to_ndarray().reshape(-1))
            except (av.BlockingIOError, av.EOFError):
                break
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)


def _atempo_steps(speed: float) -> list[float]:
    """atempo takes 0.5–100 per instance; slower speeds are a chain of 0.5 steps."""
    steps: list[float] = []
    while speed < 0.5:
        steps.append(0.5)
        speed /= 0.5
    steps.append(speed)
    return steps
