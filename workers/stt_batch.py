"""Batched Whisper decoding across transcriptions: lanes of one model decode the chunks of every running job together.

A job thread cuts its recording into chunks of up to 30 s (Silero VAD at pauses), computes their features
and `submit`s them as a `Recording`. Each lane thread takes the next step's chunks, up to STT_BATCH_SIZE:
one from each waiting recording in turn, oldest first, so ten short clips share a step as readily as one
long recording fills it. It encodes and decodes them in one CTranslate2 call (faster-whisper's
`BatchedInferencePipeline.forward`: greedy, with segment timestamps) and hands each recording its chunks'
segments; the job thread puts them back in order. Several lanes decode at once: on a CPU, two steps on one
thread each outrun one step on two threads.

    job thread ──submit──▶ waiting ──step: ≤ batch_size chunks, round robin──▶ segments by chunk ──▶ job thread
                                 ▲ cancel(): its chunks not yet taken are dropped; its neighbours never notice

Only recordings decoded alike share a step: the same task, language and prompt. A recording that wants word
timestamps decodes alone, one step at a time: faster-whisper aligns words with a running "last speech"
time that must stay within one recording.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from contract.errors import EngineError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Decoded:
    """One chunk's segments (faster-whisper's dicts: text, tokens, start, end, scores, words), and the step
    they came from: how many chunks it decoded, from how many recordings."""

    index: int
    segments: list[dict[str, Any]]
    chunks: int
    recordings: int


@dataclass(eq=False)
class Recording:
    """A transcription as its job thread sees it: its chunks' features (each padded to 30 s) and metadata
    (`collect_chunks`' offset, duration and speech spans), how they decode (a faster-whisper `Tokenizer` and
    `TranscriptionOptions`), and a queue that receives a `Decoded` per chunk, in any order, or an exception."""

    features: list[np.ndarray]
    metadata: list[dict[str, Any]]
    tokenizer: Any
    options: Any
    alike: Hashable  # recordings whose `alike` are equal decode in one step
    events: queue.SimpleQueue[Decoded | Exception] = field(default_factory=queue.SimpleQueue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    taken: int = 0  # chunks handed to a step so far
    decoding: bool = False  # a step holds some of its chunks now
    last_speech: float = 0.0  # for word timestamps: where the previous chunk's speech ended

    @property
    def alone(self) -> bool:
        """Word timestamps: a step of its own chunks only, one step at a time."""
        return bool(self.options.word_timestamps)

    def cancel(self) -> None:
        """Leave: chunks not yet in a step are never decoded (the job was cancelled, timed out or lost)."""
        self.cancelled.set()


Step = list[tuple[Recording, int]]  # (recording, chunk index) for each row of a batch


class ChunkScheduler:
    """`lanes` threads decoding the chunks of every submitted recording, `batch_size` chunks per step."""

    def __init__(self, model: Any, *, lanes: int, batch_size: int, name: str) -> None:
        from faster_whisper import BatchedInferencePipeline

        self.batch_size = batch_size
        self.waiting: list[Recording] = []
        self.wakeup = threading.Condition()
        self.closed = False
        self.steps = 0
        # A pipeline per lane: `forward` keeps word alignment's running state on the pipeline object.
        self._lanes = [
            threading.Thread(
                target=self._lane, args=(BatchedInferencePipeline(model),), name=f"speechq-stt-{name}-{n}", daemon=True
            )
            for n in range(lanes)
        ]
        for lane in self._lanes:
            lane.start()

    def submit(self, recording: Recording) -> None:
        with self.wakeup:
            if self.closed:
                raise EngineError("the speech-to-text model is shutting down")
            self.waiting.append(recording)
            self.wakeup.notify_all()

    def close(self) -> None:
        with self.wakeup:
            self.closed = True
            for recording in self.waiting:
                recording.events.put(EngineError("the speech-to-text model is shutting down"))
            self.waiting.clear()
            self.wakeup.notify_all()
        for lane in self._lanes:
            lane.join(timeout=30)

    def _lane(self, pipeline: Any) -> None:
        while True:
            with self.wakeup:
                while not self.closed and not (step := self._take()):
                    self.wakeup.wait()
                if self.closed:
                    return
            try:
                self._decode(pipeline, step)
            except Exception as exc:  # a bug or a broken model: fail this step's recordings, keep serving
                log.exception("speech-to-text batch step failed")
                for recording in {id(r): r for r, _ in step}.values():
                    recording.events.put(EngineError(f"transcription failed: {type(exc).__name__}"))
                    recording.cancel()
            finally:
                with self.wakeup:
                    for recording, _ in step:
                        recording.decoding = False
                    self.wakeup.notify_all()

    def _take(self) -> Step:
        """The next step's chunks (called with `wakeup` held): the oldest recording that can go sets what is
        decoded alike; then one chunk from each recording like it in turn, until the batch is full."""
        self.waiting = [r for r in self.waiting if not r.cancelled.is_set() and r.taken < len(r.features)]
        ready = [r for r in self.waiting if not (r.alone and r.decoding)]
        if not ready:
            return []
        first = ready[0]
        group = [first] if first.alone else [r for r in ready if not r.alone and r.alike == first.alike]
        step: Step = []
        while len(step) < self.batch_size and any(r.taken < len(r.features) for r in group):
            for recording in group:
                if recording.taken < len(recording.features) and len(step) < self.batch_size:
                    step.append((recording, recording.taken))
                    recording.taken += 1
                    recording.decoding = True
        return step

    def _decode(self, pipeline: Any, step: Step) -> None:
        recording = step[0][0]
        if recording.alone:
            pipeline.last_speech_timestamp = recording.last_speech
        outputs = pipeline.forward(
            np.stack([r.features[i] for r, i in step]),
            recording.tokenizer,
            [r.metadata[i] for r, i in step],
            recording.options,
        )
        if recording.alone:
            recording.last_speech = pipeline.last_speech_timestamp
        self.steps += 1
        recordings = len({id(r) for r, _ in step})
        for (owner, index), segments in zip(step, outputs, strict=True):
            owner.events.put(Decoded(index, segments, len(step), recordings))
