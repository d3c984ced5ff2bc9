"""The openai-whisper engine (optional extra `openai-whisper`): PyTorch `.pt` checkpoints.

A model is found by name in `~/.cache/whisper` (where openai-whisper keeps its downloads), or in
`<models_dir>/openai-whisper/`, or given as a path to a `.pt` file. Offline, a catalogue model with no
checkpoint is converted once from its CTranslate2 weights (`workers.whisper_checkpoint`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from contract.errors import ModelUnavailable
from contract.transcription import TranscribeRequest, TranscriptionResult, TranscriptionTimings, TranscriptSegment, Word
from workers.stt import CHECK_SECONDS, SegmentSink, refuse_other_languages, temperatures

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)


def find_checkpoint(name: str, ctranslate2_dir: Path | None, models_dir: Path) -> Path:
    """`whisper-tiny.en` → `tiny.en.pt` in the whisper cache or models_dir, converting it if need be."""
    short = name.removeprefix("whisper-")
    for folder in (Path.home() / ".cache" / "whisper", models_dir / "openai-whisper"):
        if (folder / f"{short}.pt").is_file():
            return folder / f"{short}.pt"
    if ctranslate2_dir is None:
        raise ModelUnavailable(f"no openai-whisper checkpoint for {name!r} in ~/.cache/whisper")
    from workers.whisper_checkpoint import convert

    target = models_dir / "openai-whisper" / f"{short}.pt"
    log.info("converting %s from %s into %s", name, ctranslate2_dir, target)
    return convert(ctranslate2_dir, target)


class OpenAIWhisperEngine:
    """openai-whisper's reference implementation on PyTorch (fp16 on CUDA, fp32 on CPU)."""

    def __init__(self, name: str, checkpoint: Path) -> None:
        try:
            import torch
            import whisper
        except ImportError as exc:
            raise ModelUnavailable("this worker has no openai-whisper: pip install 'speechq[openai-whisper]'") from exc
        started = time.perf_counter()
        self.name = name
        self.cuda = torch.cuda.is_available()
        self._model = whisper.load_model(str(checkpoint), device="cuda" if self.cuda else "cpu")
        # One decode at a time: openai-whisper hooks its key-value cache onto the model for each decode.
        self._lock = threading.Lock()
        self.load_seconds = time.perf_counter() - started
        log.info("loaded %s (openai-whisper) from %s in %.2fs", name, checkpoint, self.load_seconds)

    def transcribe(
        self,
        pcm: np.ndarray,
        request: TranscribeRequest,
        on_segment: SegmentSink,
        check: Callable[[], None] | None = None,
    ) -> TranscriptionResult:
        """`check` is called while the job waits for another to finish with the model, and may raise."""
        refuse_other_languages(self.name, request)
        while not self._lock.acquire(timeout=CHECK_SECONDS):
            if check is not None:
                check()
        try:
            return self._transcribe(pcm, request, on_segment)
        finally:
            self._lock.release()

    def _transcribe(self, pcm: np.ndarray, request: TranscribeRequest, on_segment: SegmentSink) -> TranscriptionResult:
        started = time.perf_counter()
        answer = self._model.transcribe(
            pcm,
            language=request.language,
            task=request.task,
            initial_prompt=request.prompt,
            temperature=temperatures(request),
            word_timestamps=request.words,
            fp16=self.cuda,
            verbose=None,
        )
        duration = pcm.size / 16_000
        segments: list[TranscriptSegment] = []
        for number, raw in enumerate(answer["segments"]):
            words = [
                Word(word=w["word"].strip(), start=round(w["start"], 3), end=round(w["end"], 3))
                for w in raw.get("words", [])
            ]
            segment = TranscriptSegment(
                id=number,
                seek=raw["seek"],
                start=round(raw["start"], 3),
                end=round(raw["end"], 3),
                text=raw["text"].strip(),
                tokens=raw["tokens"],
                temperature=raw["temperature"],
                avg_logprob=round(raw["avg_logprob"], 4),
                compression_ratio=round(raw["compression_ratio"], 4),
                no_speech_prob=round(raw["no_speech_prob"], 4),
                words=words if request.words else None,
            )
            segments.append(segment)
            on_segment(segment, raw["end"])
        seconds = time.perf_counter() - started
        return TranscriptionResult(
            text=" ".join(s.text for s in segments).strip(),
            language=answer.get("language") or request.language or "en",
            duration=round(duration, 3),
            task=request.task,
            segments=segments,
            words=[w for s in segments for w in s.words or ()] if request.words else None,
            model=self.name,
            engine="openai-whisper",
            timings=TranscriptionTimings(seconds=round(seconds, 4), real_time_factor=round(seconds / duration, 4)),
        )
