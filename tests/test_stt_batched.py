"""Batched Whisper decoding (issue 26), on the real model in-process.

Within a job: a long recording decodes in steps of VAD chunks with the sequential decoder's words (within 0.02
WER) and right segment timestamps; sampling takes the sequential decoder, and a greedy segment that came out
poor is decoded again with the temperature ladder. Across jobs: four transcriptions share one step and each
gets exactly the text it gets alone, and one of them cancelled while waiting leaves the other three's
unchanged. (A worker killed mid-step: `tests/test_stt_batched_stack.py`.)"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from faster_whisper.transcribe import Segment

from contract.catalog import CATALOG
from contract.transcription import TranscribeRequest, TranscriptionResult, TranscriptSegment
from media.audio import decode
from tests.audio import DISTINCT_SENTENCES, encode, speak, wer
from workers.stt import WhisperEngine
from workers.stt_batch import ChunkScheduler, Recording
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
    """The default on this 2-core machine: 2 lanes of one thread, 2 chunks per step."""
    engine = WhisperEngine("whisper-tiny.en", WHISPER, cpu_threads=2)
    assert (engine.lanes, engine.batch_size) == (2, 2)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def one_lane() -> Iterator[WhisperEngine]:
    """One lane of one thread, 4 chunks per step: a step is slow enough for a test to queue others behind it."""
    engine = WhisperEngine("whisper-tiny.en", WHISPER, cpu_threads=1, lanes=1, batch_size=4)
    yield engine
    engine.close()


def transcribed(
    engine: WhisperEngine, pcm: np.ndarray, check: Callable[[], None] | None = None, **fields: object
) -> tuple[TranscriptionResult, list[float]]:
    """The result, and the audio position each streamed segment reported (the order clients see)."""
    positions: list[float] = []

    def on_segment(_: TranscriptSegment, done: float) -> None:
        positions.append(done)

    request = TranscribeRequest.model_validate({"filename": "a.wav", **fields})
    return engine.transcribe(pcm, request, on_segment, check=check), positions


def test_a_long_recording_decodes_in_steps_with_the_sequential_words(
    engine: WhisperEngine, recording: tuple[np.ndarray, str]
) -> None:
    pcm, said = recording
    batched, positions = transcribed(engine, pcm)
    assert batched.timings.batch_size == 2 and batched.timings.batch_jobs == 1
    sequential_engine = WhisperEngine("whisper-tiny.en", WHISPER, cpu_threads=2, batch_size=1)
    sequential, _ = transcribed(sequential_engine, pcm)
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


def test_sampling_takes_the_sequential_decoder_and_a_prompt_or_a_short_clip_the_batched_one(
    engine: WhisperEngine, recording: tuple[np.ndarray, str]
) -> None:
    pcm, said = recording
    prompted, _ = transcribed(engine, pcm, prompt="A list of everyday sentences.")
    sampled, _ = transcribed(engine, pcm[: 45 * 16_000], temperature=0.2)
    short, _ = transcribed(engine, pcm[: 8 * 16_000])
    assert prompted.timings.batch_size == 2 and wer(said, prompted.text) < 0.1
    assert sampled.timings.batch_size is None and sampled.text
    assert short.timings.batch_size == 1 and wer(DISTINCT_SENTENCES[0], short.segments[0].text) < 0.2


def test_word_timestamps_in_steps_stay_inside_their_segments(
    engine: WhisperEngine, recording: tuple[np.ndarray, str]
) -> None:
    pcm, said = recording
    result, _ = transcribed(engine, pcm, timestamp_granularities=["segment", "word"])
    assert result.words and wer(said, result.text) < 0.1
    assert all(a.start <= b.start for a, b in zip(result.words, result.words[1:], strict=False))
    for segment in result.segments:
        assert segment.words and all(
            segment.start - 0.5 <= w.start <= w.end <= segment.end + 0.5 for w in segment.words
        )
    assert result.words[-1].end <= pcm.size / 16_000 + 0.5


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


def clips() -> list[tuple[np.ndarray, str]]:
    """Four clips of one distinct sentence each, at 16 kHz, and what is said in each."""
    voiced = [(speak(text), text) for text in DISTINCT_SENTENCES[10:14]]
    return [(decode(encode(pcm, rate), max_seconds=60, time_limit=30), text) for (pcm, rate), text in voiced]


def behind_a_running_step(engine: WhisperEngine, blocker: np.ndarray) -> threading.Thread:
    """Start transcribing `blocker` (a recording of at most `batch_size` chunks) and return once its one step
    runs: the one lane is busy for a while, and what is submitted meanwhile waits for the next step."""
    scheduler = engine._scheduler
    assert isinstance(scheduler, ChunkScheduler)
    thread = threading.Thread(target=transcribed, args=(engine, blocker))
    thread.start()

    def running() -> Recording | None:
        with scheduler.wakeup:
            return next((r for r in scheduler.waiting if r.decoding and r.taken == len(r.features)), None)

    deadline = time.monotonic() + 30
    while running() is None:
        assert time.monotonic() < deadline, "the blocker's step never started"
        time.sleep(0.01)
    return thread


def test_four_transcriptions_share_a_step_and_each_gets_exactly_its_own_text(
    one_lane: WhisperEngine, recording: tuple[np.ndarray, str]
) -> None:
    four = clips()
    alone = [transcribed(one_lane, pcm)[0] for pcm, _ in four]
    assert all(r.timings.batch_jobs == 1 for r in alone)
    together: dict[int, TranscriptionResult] = {}
    blocker = behind_a_running_step(one_lane, recording[0][: 50 * 16_000])
    threads = [
        threading.Thread(target=lambda n=n, pcm=pcm: together.__setitem__(n, transcribed(one_lane, pcm)[0]))
        for n, (pcm, _) in enumerate(four)
    ]
    for thread in threads:
        thread.start()
    for thread in [*threads, blocker]:
        thread.join(timeout=120)
    for n, (_, said) in enumerate(four):
        result = together[n]
        assert (result.timings.batch_jobs, result.timings.batch_size) == (4, 4), result.timings
        assert result.text == alone[n].text and wer(said, result.text) < 0.2, (said, result.text)
        assert [(s.start, s.end) for s in result.segments] == [(s.start, s.end) for s in alone[n].segments]


class Cancelled(Exception):
    pass


def test_a_cancelled_neighbour_leaves_the_others_text_unchanged(
    one_lane: WhisperEngine, recording: tuple[np.ndarray, str]
) -> None:
    """The third of four is cancelled while its chunk waits (its job's `check` raises, as `JobExecution.check`
    does once the owner cancels): the step after the blocker's decodes the other three, with their own texts."""
    four = clips()
    alone = [transcribed(one_lane, pcm)[0].text for pcm, _ in four]
    cancel = threading.Event()

    def check() -> None:
        if cancel.is_set():
            raise Cancelled()

    outcomes: dict[int, TranscriptionResult | Exception] = {}

    def job(n: int, pcm: np.ndarray) -> None:
        try:
            outcomes[n] = transcribed(one_lane, pcm, check=check if n == 2 else None)[0]
        except Cancelled as exc:
            outcomes[n] = exc

    scheduler = one_lane._scheduler
    assert isinstance(scheduler, ChunkScheduler)
    blocker = behind_a_running_step(one_lane, recording[0][: 50 * 16_000])
    threads = [threading.Thread(target=job, args=(n, pcm)) for n, (pcm, _) in enumerate(four)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while True:  # all four wait behind the blocker's step; then the third is cancelled
        with scheduler.wakeup:
            if sum(not r.decoding for r in scheduler.waiting) == 4:
                break
        assert time.monotonic() < deadline
        time.sleep(0.01)
    cancel.set()
    for thread in [*threads, blocker]:
        thread.join(timeout=120)
    assert isinstance(outcomes[2], Cancelled)
    for n in (0, 1, 3):
        result = outcomes[n]
        assert isinstance(result, TranscriptionResult)
        assert result.text == alone[n], (result.text, alone[n])
        assert result.timings.batch_jobs == 3, result.timings  # the cancelled one's chunk was never decoded


def test_silence_gives_no_segments(engine: WhisperEngine) -> None:
    """What Whisper "hears" in silence (likely no speech, decoded with little confidence) is dropped, as the
    sequential decoder drops it."""
    result, positions = transcribed(engine, np.zeros(3 * 16_000, np.float32))
    assert (result.text, result.segments, positions) == ("", [], [])
