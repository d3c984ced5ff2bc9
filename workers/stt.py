"""Speech-to-text engines: faster-whisper on this host, or OpenAI's transcription API over HTTP.

Both return a `TranscriptionResult` (`contract.transcription`): text, language, duration, task, segments
(id, start, end, text, and words when asked), words, model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contract.errors import EngineError, InvalidJobInput, ModelUnavailable
from contract.transcription import TranscribeRequest, TranscriptionResult, TranscriptionTimings, TranscriptSegment, Word

if TYPE_CHECKING:
    import numpy as np

    from config import Settings

log = logging.getLogger(__name__)

SegmentSink = Callable[[TranscriptSegment, float], None]  # (segment, seconds of audio done)
# faster-whisper's fallback ladder when temperature is 0 and a segment decodes badly.
FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def temperatures(request: TranscribeRequest) -> float | tuple[float, ...]:
    """What a Whisper engine decodes with: temperature 0 is OpenAI's "0, falling back as needed" (the ladder)."""
    return FALLBACK_TEMPERATURES if request.temperature == 0 else request.temperature


# When a greedy decode counts as bad (faster-whisper's own thresholds), unless the window is silence.
COMPRESSION_RATIO_THRESHOLD = 2.4
LOG_PROB_THRESHOLD = -1.0
NO_SPEECH_THRESHOLD = 0.6
# On 2 CPU cores 4, 8 and 16 decode a 100 s recording alike (2.1-2.2 s); a GPU wants more in flight.
DEFAULT_BATCH_SIZE = {"cpu": 8, "cuda": 16}


def _words(segment: Any) -> list[Word]:
    return [
        Word(word=w.word.strip(), start=round(w.start, 3), end=round(w.end, 3), probability=round(w.probability, 4))
        for w in segment.words or ()
    ]


class WhisperEngine:
    """faster-whisper (CTranslate2): int8 on CPU, float16 on CUDA."""

    remote = False

    def __init__(
        self,
        name: str,
        path: Path,
        *,
        cpu_threads: int | None,
        batch_size: int | None = None,
        batch_min_seconds: float = 40.0,
    ) -> None:
        try:
            import ctranslate2
            from faster_whisper import BatchedInferencePipeline, WhisperModel
        except ImportError as exc:
            raise ModelUnavailable("this worker has no faster-whisper: pip install 'speechq[stt]'") from exc
        cuda = ctranslate2.get_cuda_device_count() > 0
        self.device, self.compute_type = ("cuda", "float16") if cuda else ("cpu", "int8")
        started = time.perf_counter()
        self.name = name
        self.english_only = name.endswith(".en")
        self._model = WhisperModel(
            str(path), device=self.device, compute_type=self.compute_type, cpu_threads=cpu_threads or 0
        )
        self.batch_size = batch_size or DEFAULT_BATCH_SIZE[self.device]
        self.batch_min_seconds = batch_min_seconds
        self._batched = BatchedInferencePipeline(self._model) if self.batch_size > 1 else None
        self.load_seconds = time.perf_counter() - started
        log.info("loaded %s on %s (%s) in %.2fs", name, self.device, self.compute_type, self.load_seconds)

    def transcribe(self, pcm: np.ndarray, request: TranscribeRequest, on_segment: SegmentSink) -> TranscriptionResult:
        if self.english_only and request.language not in (None, "en"):
            raise InvalidJobInput(f"{self.name} only understands English; use whisper-base for {request.language!r}")
        started = time.perf_counter()
        batch_size = self._batch_size_for(pcm, request)
        if batch_size:
            segments, info = self._decode_batched(pcm, request, batch_size)
        else:
            segments, info = self._model.transcribe(
                pcm,
                language=request.language,
                task=request.task,
                initial_prompt=request.prompt,
                temperature=temperatures(request),
                word_timestamps=request.words,
                vad_filter=request.vad_filter,
                beam_size=1,
            )
        collected: list[TranscriptSegment] = []
        for number, segment in enumerate(segments):
            item = TranscriptSegment(
                id=number,
                seek=segment.seek,
                start=round(segment.start, 3),
                end=round(segment.end, 3),
                text=segment.text.strip(),
                tokens=list(segment.tokens),
                temperature=segment.temperature,
                avg_logprob=round(segment.avg_logprob, 4),
                compression_ratio=round(segment.compression_ratio, 4),
                no_speech_prob=round(segment.no_speech_prob, 4),
                words=_words(segment) if request.words else None,
            )
            collected.append(item)
            on_segment(item, segment.end)
        seconds = time.perf_counter() - started
        return TranscriptionResult(
            text=" ".join(s.text for s in collected).strip(),
            language=info.language,
            language_probability=round(info.language_probability, 4),
            duration=round(info.duration, 3),
            task=request.task,
            segments=collected,
            words=[w for s in collected for w in s.words or ()] if request.words else None,
            model=self.name,
            timings=TranscriptionTimings(
                seconds=round(seconds, 4),
                real_time_factor=round(seconds / info.duration, 4) if info.duration else None,
                batch_size=batch_size,
            ),
        )

    def _batch_size_for(self, pcm: np.ndarray, request: TranscribeRequest) -> int | None:
        """The batch to decode this recording in, or None for the sequential decoder: a short recording has
        nothing to batch, and a prompt or sampling (temperature > 0) are the sequential decoder's."""
        if self._batched is None or pcm.size / 16_000 < self.batch_min_seconds:
            return None
        return self.batch_size if request.prompt is None and request.temperature == 0 else None

    def _decode_batched(self, pcm: np.ndarray, request: TranscribeRequest, batch_size: int) -> tuple[Any, Any]:
        """The recording cut at pauses (Silero VAD) into chunks of up to 30 s, decoded `batch_size` at a time,
        greedily, with segment timestamps (not one "paragraph" per chunk). The batched pipeline has no
        temperature fallback: a segment whose greedy decode fails faster-whisper's thresholds is decoded
        again over its span by the sequential decoder, which has."""
        assert self._batched is not None
        segments, info = self._batched.transcribe(
            pcm,
            language=request.language,
            task=request.task,
            temperature=0.0,
            word_timestamps=request.words,
            without_timestamps=False,
            vad_filter=True,
            beam_size=1,
            batch_size=batch_size,
        )
        return self._redecoded_where_poor(pcm, segments, request), info

    def _redecoded_where_poor(self, pcm: np.ndarray, segments: Any, request: TranscribeRequest) -> Iterator[Any]:
        for segment in segments:
            poor = segment.compression_ratio > COMPRESSION_RATIO_THRESHOLD or segment.avg_logprob < LOG_PROB_THRESHOLD
            if not poor or segment.no_speech_prob > NO_SPEECH_THRESHOLD:
                yield segment
                continue
            again, _ = self._model.transcribe(
                pcm,
                language=request.language,
                task=request.task,
                temperature=FALLBACK_TEMPERATURES,
                word_timestamps=request.words,
                clip_timestamps=[segment.start, segment.end],
                beam_size=1,
            )
            yield from again


class RemoteWhisperEngine:
    """OpenAI's transcription API (or any server speaking it), with retries on 5xx and connection errors."""

    remote = True

    def __init__(self, settings: Settings) -> None:
        import openai

        if settings.openai_api_key is None:
            raise ModelUnavailable("ENABLE_LOCAL_WHISPER is false but OPENAI_API_KEY is not set")
        self.name = settings.openai_whisper_model
        self.response_format = settings.openai_whisper_response_format
        self._openai = openai
        self._client = openai.OpenAI(
            api_key=settings.openai_api_key.get_secret_value(),
            base_url=settings.openai_api_base,
            timeout=settings.openai_timeout_seconds,
            max_retries=settings.openai_max_retries,
        )

    def transcribe_file(self, data: bytes, request: TranscribeRequest) -> TranscriptionResult:
        options: dict[str, Any] = {
            "file": (request.filename, data),
            "model": self.name,
            "response_format": self.response_format,
            "temperature": request.temperature,
        }
        if request.prompt:
            options["prompt"] = request.prompt
        started = time.perf_counter()
        try:
            if request.task == "translate":
                answer = self._client.audio.translations.create(**options)
            else:
                if request.language:
                    options["language"] = request.language
                if self.response_format == "verbose_json":
                    options["timestamp_granularities"] = request.timestamp_granularities
                answer = self._client.audio.transcriptions.create(**options)
        except self._openai.APIStatusError as exc:
            # The service's own message stays in the log: it may name our account, key or address.
            log.warning("the transcription service answered %d: %s", exc.status_code, exc.message)
            if exc.status_code in (400, 413, 415, 422):
                raise InvalidJobInput(f"the transcription service refused the audio (HTTP {exc.status_code})") from None
            raise EngineError(f"the transcription service failed (HTTP {exc.status_code})") from None
        except self._openai.APIConnectionError as exc:
            log.warning("the transcription service is unreachable: %r", exc.__cause__ or exc)
            raise EngineError("the transcription service is unreachable") from None
        body: dict[str, Any] = {"text": answer} if isinstance(answer, str) else answer.model_dump()
        segments = [
            TranscriptSegment.model_validate({**s, "id": n, "text": str(s.get("text", "")).strip()})
            for n, s in enumerate(body.get("segments") or [])
        ]
        return TranscriptionResult(
            text=str(body.get("text", "")).strip(),
            language=body.get("language") or request.language or "",
            duration=float(body.get("duration") or 0.0),
            task=request.task,
            segments=segments,
            words=body.get("words") or None,
            model=self.name,
            timings=TranscriptionTimings(seconds=round(time.perf_counter() - started, 4)),
        )
