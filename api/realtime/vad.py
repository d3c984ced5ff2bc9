"""Server VAD: Silero VAD v6, the ONNX model faster-whisper ships, run frame by frame where the audio
arrives (the API process). Each 32 ms frame costs well under a millisecond of CPU, and running it here
lets `speech_started` and `speech_stopped` go out the moment the audio shows them; a round trip through a
worker's queue for every 40 ms chunk would cost more than the model does."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from api.realtime.protocol import TurnDetection

RATE = 16_000  # what the model hears
FRAME = 512  # samples a step: 32 ms
CONTEXT = 64  # samples of the previous frame each step sees
FRAME_MS = FRAME * 1000 // RATE


def shipped_model() -> Path:
    """The Silero VAD v6 file faster-whisper ships, found without importing faster_whisper (which would load
    CTranslate2 into the API process)."""
    spec = importlib.util.find_spec("faster_whisper")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("no Silero VAD model: install faster-whisper (the `stt` extra) or set REALTIME_VAD_MODEL")
    return Path(spec.submodule_search_locations[0]) / "assets" / "silero_vad_v6.onnx"


@cache
def _session(path: Path | None = None) -> Any:  # onnxruntime ships no types
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = 1
    options.log_severity_level = 4
    model = str(path or shipped_model())
    return onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"], sess_options=options)


_model: Path | None = None  # REALTIME_VAD_MODEL, once `load` has been told it


def load(path: Path | None) -> None:
    """Load the model (REALTIME_VAD_MODEL, else faster-whisper's) before a session's first chunk needs it."""
    global _model
    _model = path
    _session(path)


class SpeechProbabilities:
    """The probability of speech in each 32 ms frame of a 16 kHz stream fed in pieces of any size; the
    model's recurrent state runs on across pieces, as it would over one long recording."""

    def __init__(self) -> None:
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)

    def feed(self, samples: np.ndarray) -> np.ndarray:
        """The probabilities of the whole frames `samples` completes (those left over wait for more)."""
        audio = np.concatenate([self._pending, samples.astype(np.float32, copy=False)])
        whole = audio.size // FRAME * FRAME
        self._pending = audio[whole:]
        if not whole:
            return np.zeros(0, dtype=np.float32)
        frames = audio[:whole].reshape(-1, FRAME)
        contexts = np.vstack([self._context, frames[:-1, -CONTEXT:]]) if len(frames) > 1 else self._context[None]
        self._context = frames[-1, -CONTEXT:].copy()
        batch = np.concatenate([contexts, frames], axis=1)
        out, self._h, self._c = _session(_model).run(None, {"input": batch, "h": self._h, "c": self._c})
        return np.asarray(out, dtype=np.float32).reshape(-1)


@dataclass
class Change:
    """Speech began (`started`) or ended (`stopped`) at `ms` from the start of the session's audio."""

    kind: str  # "started" | "paused" | "resumed" | "stopped"
    ms: int


@dataclass
class SpeechTracker:
    """Turns speech probabilities into speech started / stopped, as server_vad does: speech starts at the
    first frame at or over the threshold, and stops after `silence_duration_ms` of frames under it (less
    a margin, so a dip does not end a turn). Between the two it says when the speech has `paused` (a
    short silence that may become the end) and `resumed`, so the turn's transcription can start while the
    end is still being confirmed."""

    settings: TurnDetection
    frames: SpeechProbabilities = field(default_factory=SpeechProbabilities)
    heard_ms: int = 0  # audio fed so far, in whole frames
    speaking: bool = False
    paused: bool = False
    last_speech_ms: int = 0
    started_ms: int = 0

    @property
    def pause_ms(self) -> int:
        """Silence that counts as a pause: a third of the silence that ends a turn, at least two frames."""
        return max(2 * FRAME_MS, self.settings.silence_duration_ms // 3)

    def feed(self, samples16k: np.ndarray) -> list[Change]:
        changes: list[Change] = []
        low = max(self.settings.threshold - 0.15, 0.01)
        for probability in self.frames.feed(samples16k):
            self.heard_ms += FRAME_MS
            if probability >= self.settings.threshold:
                self.last_speech_ms = self.heard_ms
                if not self.speaking:
                    self.speaking = True
                    self.started_ms = max(0, self.heard_ms - FRAME_MS)
                    changes.append(Change("started", self.started_ms))
                elif self.paused:
                    self.paused = False
                    changes.append(Change("resumed", self.heard_ms))
            elif self.speaking and probability < low:
                silent = self.heard_ms - self.last_speech_ms
                if silent >= self.settings.silence_duration_ms:
                    self.speaking = self.paused = False
                    changes.append(Change("stopped", self.last_speech_ms))
                elif silent >= self.pause_ms and not self.paused:
                    self.paused = True
                    changes.append(Change("paused", self.last_speech_ms))
            elif self.speaking:
                self.last_speech_ms = self.heard_ms  # between the two thresholds: still the same speech
        return changes
