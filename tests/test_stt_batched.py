"""faster-whisper's batched pipeline inside one job (issue 26): a long recording decodes in batches of VAD
chunks with the same words as the sequential decoder (within 0.02 WER), right segment timestamps, and the
sequential decoder where a request needs it (a prompt, sampling) or a greedy decode came out poor."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from faster_whisper.transcribe import Segment

from contract.catalog import CATALOG
from contract.transcription import TranscribeRequest, TranscriptionResult, TranscriptSegment
from media.audio import decode
from tests.audio import DISTINCT_SENTENCES, encode, speak, wer
from workers.stt import WhisperEngine
from workers.weights import locate

ROOT = Path(__file__).resolve().parents[1]
SECONDS = 60.0


@pytest.fixture(scope="module")
def recording() -> tuple[np.ndarray, str]:
    """A minute of distinct sentences at 16 kHz, and what is said in it."""
    voiced = [speak(text) for text in DISTINCT_SENTENCES]
    rate = voiced[0][1]
    said: list[str] = []
    pcm: list[np.ndarray] = []
    for text, (audio, _) in zip(DISTINCT_SENTENCES, voiced, strict=False):
        if sum(part.size for part in pcm) >= SECONDS * rate:
            break
        said.append(text)
        pcm.append(audio)
    return decode(encode(np.concatenate(pcm), rate), max_seconds=600, time_limit=60), " ".join(said)


WHISPER = locate(CATALOG["whisper-tiny.en"], ROOT / "var" / "models")


@pytest.fixture(scope="module")
def engine() -> Iterator[WhisperEngine]:
    yield WhisperEngine("whisper-tiny.en", WHISPER, cpu_threads=2, batch_size=8, batch_min_seconds=40.0)


def transcribed(engine: WhisperEngine, pcm: np.ndarray, **fields: object) -> tuple[TranscriptionResult, list[float]]:
    """The result, and the audio position each streamed segment reported (the order clients see)."""
    positions: list[float] = []

    def on_segment(_: TranscriptSegment, done: float) -> None:
        positions.append(done)

    request = TranscribeRequest.model_validate({"filename": "a.wav", **fields})
    return engine.transcribe(pcm, request, on_segment), positions


def test_a_long_recording_decodes_in_batches_with_the_sequential_words(
    engine: WhisperEngine, recording: tuple[np.ndarray, str]
) -> None:
    pcm, said = recording
    batched, positions = transcribed(engine, pcm)
    assert batched.timings.batch_size == 8
    sequential, _ = transcribed(WhisperEngine("whisper-tiny.en", WHISPER, cpu_threads=2, batch_size=1), pcm)
    assert sequential.timings.batch_size is None
    assert wer(said, batched.text) <= wer(said, sequential.text) + 0.02, (batched.text, sequential.text)
    assert wer(said, batched.text) < 0.1
    # Segments, not one 30 s "paragraph" per chunk: about as many as the sequential decoder's, in order,
    # each within the recording, streamed in order.
    segments = batched.segments
    assert len(segments) >= len(sequential.segments) // 2 and all(s.end - s.start <= 30 for s in segments)
    assert all(a.start <= b.start for a, b in zip(segments, segments[1:], strict=False))
    assert 0 <= segments[0].start and segments[-1].end <= pcm.size / 16_000 + 0.5
    assert positions == sorted(positions) and len(positions) == len(segments)


def test_what_needs_the_sequential_decoder_gets_it(engine: WhisperEngine, recording: tuple[np.ndarray, str]) -> None:
    pcm, said = recording
    prompted, _ = transcribed(engine, pcm, prompt="A list of everyday sentences.")
    sampled, _ = transcribed(engine, pcm[: 45 * 16_000], temperature=0.2)
    short, _ = transcribed(engine, pcm[: 20 * 16_000])
    assert prompted.timings.batch_size is None and wer(said, prompted.text) < 0.1
    assert sampled.timings.batch_size is None and short.timings.batch_size is None


def test_a_poor_greedy_segment_is_decoded_again_with_the_temperature_ladder(
    engine: WhisperEngine, recording: tuple[np.ndarray, str]
) -> None:
    """A segment as the batched pipeline would give it, marked poor (compression ratio past 2.4): its span is
    decoded again by the sequential decoder, and the words come from there; a good one passes as it is."""
    pcm, said = recording
    poor = Segment(
        id=0,
        seek=0,
        start=0.0,
        end=10.0,
        text="the the the the the the the the",
        tokens=[],
        avg_logprob=-0.2,
        compression_ratio=3.5,
        no_speech_prob=0.01,
        words=None,
        temperature=0.0,
    )
    good = dataclasses.replace(poor, id=1, start=10.0, end=12.0, text="kept as it was", compression_ratio=1.2)
    request = TranscribeRequest.model_validate({"filename": "a.wav"})
    out = list(engine._redecoded_where_poor(pcm, iter([poor, good]), request))
    assert out[-1] is good
    again = out[:-1]
    assert again and all(0.0 <= s.start and s.end <= 10.5 for s in again)
    text = " ".join(s.text for s in again).lower()
    assert "the the the" not in text and wer(DISTINCT_SENTENCES[0], text.split(".")[0]) < 0.3, text
