"""Server VAD (Silero VAD v6, frame by frame) on real speech: where it starts, pauses, resumes and stops."""

from __future__ import annotations

import numpy as np

from api.realtime.protocol import TurnDetection
from api.realtime.vad import RATE, SpeechTracker
from tests.audio import speak


def speech16k(text: str) -> np.ndarray:
    """`text` spoken, at 16 kHz, without the silence the voice leaves around it."""
    audio, rate = speak(text)
    audio = np.interp(np.arange(0, audio.size, rate / RATE), np.arange(audio.size), audio).astype(np.float32)
    loud = np.flatnonzero(np.abs(audio) > 0.02)
    return np.asarray(audio[loud[0] : loud[-1] + 1], dtype=np.float32)


def silence(ms: int) -> np.ndarray:
    return np.zeros(RATE * ms // 1000, np.float32)


def test_a_short_gap_pauses_and_resumes_and_a_long_one_ends_the_turn() -> None:
    tracker = SpeechTracker(TurnDetection(silence_duration_ms=300))
    audio = np.concatenate(
        [silence(500), speech16k("What is the capital"), silence(150), speech16k("of France?"), silence(800)]
    )
    changes = []
    for start in range(0, audio.size, 640):  # 40 ms pieces, as a client sends them
        changes += tracker.feed(audio[start : start + 640])
    kinds = [change.kind for change in changes]
    assert kinds[0] == "started" and kinds[-1] == "stopped" and kinds.count("started") == 1, kinds
    assert "resumed" in kinds and kinds.index("paused") < kinds.index("resumed"), kinds
    started, stopped = changes[0].ms, changes[-1].ms
    assert 350 <= started <= 650, started  # the speech begins at 500 ms
    spoken_ms = audio.size * 1000 // RATE - 800
    assert spoken_ms - 150 <= stopped <= spoken_ms + 150, (stopped, spoken_ms)
