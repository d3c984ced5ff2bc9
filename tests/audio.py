"""Test speech, synthesized from known sentences (hibari-tts, voice heart), and word error rate."""

from __future__ import annotations

import io
import re
from functools import cache
from typing import Any

import av
import jiwer
import numpy as np

SENTENCES = {
    "fox": "The quick brown fox jumps over the lazy dog.",
    "report": "Please send the quarterly report to the finance team by Friday.",
    "weather": "The weather today will be sunny with a light breeze from the west.",
    "library": "She borrowed three books from the library and returned them on Monday.",
}


@cache
def _tts() -> Any:  # hibari ships no types
    from hibari import Hibari

    return Hibari()


# Speech that never repeats itself: no window compresses past faster-whisper's threshold, so none falls back to
# sampling at a random temperature, and a long recording is decoded the same way every run (about 128 s).
DISTINCT_SENTENCES = (
    "The museum opens at nine in the morning and closes at six in the evening.",
    "Our train was delayed by twenty minutes because of a signal failure near the bridge.",
    "She planted tomatoes, basil and peppers along the sunny side of the garden.",
    "Please remember to lock the back door before you leave for the airport.",
    "The committee will vote on the new budget proposal next Thursday afternoon.",
    "A gentle rain fell over the valley while the farmers gathered their tools.",
    "He wrote three chapters of his novel during a quiet week in the mountains.",
    "The software update fixes a bug that caused the printer to stop responding.",
    "Children played football in the park until the street lights came on.",
    "The recipe calls for two cups of flour, one egg and a pinch of salt.",
    "Astronomers observed a bright comet passing close to the planet Jupiter.",
    "The bakery on the corner sells fresh bread and warm cinnamon rolls every day.",
    "Our manager asked everyone to submit their expense reports by the end of the month.",
    "The old lighthouse guided ships safely into the harbor for over a century.",
    "During the concert the violinist played a beautiful piece by Vivaldi.",
    "Traffic on the highway was heavy because of the holiday weekend.",
    "The library is hosting a reading club for teenagers every Wednesday evening.",
    "Scientists are studying how coral reefs recover after warm ocean summers.",
    "My neighbor repaired his bicycle and rode it to the lake on Sunday.",
    "The hotel offers a free breakfast with coffee, juice and fresh fruit.",
    "Engineers tested the new bridge with heavy trucks before it opened to traffic.",
    "The students presented their science projects to the parents in the gym.",
    "A small cat slept on the windowsill, warmed by the afternoon sun.",
    "The pilot announced that we would land twenty minutes ahead of schedule.",
    "Volunteers cleaned the beach and collected several bags of plastic waste.",
    "The chef prepared a spicy soup with ginger, garlic and fresh coriander.",
    "Our internet connection dropped twice during the video meeting this morning.",
    "The gardener trimmed the hedges and raked the fallen leaves into piles.",
)


def speak(text: str) -> tuple[np.ndarray, int]:
    tts = _tts()
    audio = tts(text)
    return np.asarray(audio, dtype=np.float32), int(tts.sample_rate)


def encode(pcm: np.ndarray, rate: int, fmt: str = "wav", bit_rate: int = 0) -> bytes:
    """PCM in the container `fmt` (wav, mp3, flac, ogg), encoded with PyAV (at `bit_rate`, if given)."""
    codec = {"wav": "pcm_s16le", "mp3": "libmp3lame", "flac": "flac", "ogg": "libopus"}[fmt]
    out_rate = 48_000 if fmt == "ogg" else rate
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=out_rate, layout="mono")
        assert isinstance(stream, av.AudioStream)
        if bit_rate:
            stream.codec_context.bit_rate = bit_rate
        samples = (np.clip(pcm, -1, 1) * 32767).astype(np.int16)
        resampler = av.AudioResampler(format=stream.codec_context.format.name, layout="mono", rate=out_rate)
        for start in range(0, max(samples.size, 1), rate):  # a second a frame: long audio stays small
            frame = av.AudioFrame.from_ndarray(samples[None, start : start + rate], format="s16", layout="mono")
            frame.sample_rate = rate
            for resampled in resampler.resample(frame):
                for packet in stream.encode(resampled):
                    container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


@cache
def spoken(name: str, fmt: str = "wav") -> bytes:
    pcm, rate = speak(SENTENCES[name])
    return encode(pcm, rate, fmt)


def _normal(text: str) -> str:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).strip()


def wer(reference: str, hypothesis: str) -> float:
    return float(jiwer.wer(_normal(reference), _normal(hypothesis)))


def decode_audio(data: bytes, fmt: str, rate: int | None = None) -> tuple[np.ndarray, int]:
    """Audio bytes in `fmt` → mono float32 and its sample rate, decoded by PyAV (raw pcm needs `rate`)."""
    if fmt == "pcm":
        assert rate is not None, "raw PCM carries no rate"
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0, rate
    parts: list[np.ndarray] = []
    found = 0
    with av.open(io.BytesIO(data), "r") as container:
        for frame in container.decode(audio=0):
            found = frame.sample_rate
            parts.append(frame.to_ndarray().astype(np.float32).reshape(frame.samples, -1).mean(axis=1))
    return (np.concatenate(parts) if parts else np.zeros(0, np.float32)), found


def as_wav(pcm: np.ndarray, rate: int) -> bytes:
    return encode(pcm, rate, "wav")
