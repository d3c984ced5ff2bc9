"""Speech-to-text engines: faster-whisper on this host, or OpenAI's transcription API over HTTP.

Both return a `TranscriptionResult` (`contract.transcription`): text, language, duration, task, segments
(id, start, end, text, and words when asked), words, model.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from contract.errors import EngineError, InvalidJobInput, ModelUnavailable
from contract.transcription import TranscribeRequest, TranscriptionResult, TranscriptionTimings, TranscriptSegment, Word
from workers.cores import usable_cores
from workers.stt_batch import ChunkScheduler, Decoded, Recording

if TYPE_CHECKING:
    from config import Settings

log = logging.getLogger(__name__)

SegmentSink = Callable[[TranscriptSegment, float], None]  # (segment, seconds of audio done)
# faster-whisper's fallback ladder when temperature is 0 and a segment decodes badly.
FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def refuse_other_languages(name: str, request: TranscribeRequest) -> None:
    """An English-only model (`*.en`) asked for another language: the job fails, naming the model to use."""
    if name.endswith(".en") and request.language not in (None, "en"):
        raise InvalidJobInput(f"{name} only understands English; use whisper-base for {request.language!r}")


def temperatures(request: TranscribeRequest) -> float | tuple[float, ...]:
    """What a Whisper engine decodes with: temperature 0 is OpenAI's "0, falling back as needed" (the ladder)."""
    return FALLBACK_TEMPERATURES if request.temperature == 0 else request.temperature


# When a greedy decode counts as bad (faster-whisper's own thresholds), unless the window is silence.
COMPRESSION_RATIO_THRESHOLD = 2.4
LOG_PROB_THRESHOLD = -1.0
NO_SPEECH_THRESHOLD = 0.6
# Chunks of one step (bench/batch_folder.py, 2 CPU cores: 2 lanes of 2 chunks decode 40 short clips 1.5x
# faster than the sequential loop, 8 chunks per lane no faster than it); a GPU wants more in flight.
DEFAULT_BATCH_SIZE = {"cpu": 2, "cuda": 16}
MAX_CPU_LANES = 4  # one thread each by default: small GEMMs gain little from a second thread
SAMPLE_RATE = 16_000
CHUNK_SECONDS = 30  # Whisper's window: the longest chunk a step decodes
CHECK_SECONDS = 0.25  # how often a job waiting on its chunks looks for a cancel or its time limit


def _words(segment: Any) -> list[Word]:
    return [
        Word(word=w.word.strip(), start=round(w.start, 3), end=round(w.end, 3), probability=round(w.probability, 4))
        for w in segment.words or ()
    ]


class BatchStats:
    """What the steps that decoded one recording looked like (`TranscriptionTimings.batch_size/batch_jobs`)."""

    def __init__(self) -> None:
        self.chunks = 0
        self.recordings = 0

    def saw(self, decoded: Decoded) -> None:
        self.chunks = max(self.chunks, decoded.chunks)
        self.recordings = max(self.recordings, decoded.recordings)


class WhisperEngine:
    """faster-whisper (CTranslate2): int8 on CPU, float16 on CUDA.

    Transcriptions decode together (`workers/stt_batch.py`): `lanes` steps at once, each of up to
    `batch_size` chunks, on `cpu_threads` ÷ `lanes` threads each. A temperature above 0 (sampling) takes the
    sequential decoder, as does every request when `batch_size` is 1.
    """

    remote = False

    def __init__(
        self,
        name: str,
        path: Path,
        *,
        cpu_threads: int | None,
        batch_size: int | None = None,
        lanes: int | None = None,
        compute_type: str | None = None,
    ) -> None:
        try:
            import ctranslate2
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise ModelUnavailable("this worker has no faster-whisper: pip install 'speechq[stt]'") from exc
        cuda = ctranslate2.get_cuda_device_count() > 0
        self.device, self.compute_type = ("cuda", "float16") if cuda else ("cpu", "int8")
        self.compute_type = compute_type or self.compute_type
        started = time.perf_counter()
        self.name = name
        cores = cpu_threads or usable_cores()
        self.lanes = lanes or (1 if cuda else min(cores, MAX_CPU_LANES))
        self._model = WhisperModel(
            str(path),
            device=self.device,
            compute_type=self.compute_type,
            cpu_threads=max(1, cores // self.lanes),
            num_workers=self.lanes,  # CTranslate2 runs this many calls at once (one per lane)
        )
        self.batch_size = batch_size or DEFAULT_BATCH_SIZE[self.device]
        self._scheduler = (
            ChunkScheduler(self._model, lanes=self.lanes, batch_size=self.batch_size, name=name)
            if self.batch_size > 1
            else None
        )
        self.load_seconds = time.perf_counter() - started
        log.info(
            "loaded %s on %s (%s) in %.2fs: %d lane(s) of %d chunk(s)",
            name,
            self.device,
            self.compute_type,
            self.load_seconds,
            self.lanes,
            self.batch_size,
        )

    def close(self) -> None:
        if self._scheduler is not None:
            self._scheduler.close()

    def transcribe(
        self,
        pcm: np.ndarray,
        request: TranscribeRequest,
        on_segment: SegmentSink,
        check: Callable[[], None] | None = None,
    ) -> TranscriptionResult:
        """`check` is called while the job waits for its chunks, and may raise to stop it."""
        refuse_other_languages(self.name, request)
        started = time.perf_counter()
        stats = BatchStats()
        recording: Recording | None = None
        try:
            if self._scheduler is None or request.temperature > 0:
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
                language, probability = info.language, info.language_probability
            else:
                recording, segments, language, probability = self._decode_together(pcm, request, check, stats)
            collected = [
                self._streamed(number, segment, request, on_segment) for number, segment in enumerate(segments)
            ]
        finally:
            if recording is not None:
                recording.cancel()  # a job stopped early leaves the steps to its neighbours
        seconds = time.perf_counter() - started
        duration = pcm.size / SAMPLE_RATE
        return TranscriptionResult(
            text=" ".join(s.text for s in collected).strip(),
            language=language,
            language_probability=round(probability, 4),
            duration=round(duration, 3),
            task=request.task,
            segments=collected,
            words=[w for s in collected for w in s.words or ()] if request.words else None,
            model=self.name,
            timings=TranscriptionTimings(
                seconds=round(seconds, 4),
                real_time_factor=round(seconds / duration, 4) if duration else None,
                batch_size=stats.chunks or None,
                batch_jobs=stats.recordings or None,
            ),
        )

    @staticmethod
    def _streamed(number: int, segment: Any, request: TranscribeRequest, on_segment: SegmentSink) -> TranscriptSegment:
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
        on_segment(item, segment.end)
        return item

    def _decode_together(
        self, pcm: np.ndarray, request: TranscribeRequest, check: Callable[[], None] | None, stats: BatchStats
    ) -> tuple[Recording, Iterator[Any], str, float]:
        """The recording cut into chunks of up to 30 s, decoded greedily with segment timestamps in steps shared
        with other transcriptions; then what came out poor is decoded again with the temperature ladder.

        A recording of up to 30 s that asked for no VAD is one chunk; anything longer is cut at pauses by
        Silero VAD (faster-whisper's batched settings), and speech the VAD drops is not transcribed."""
        from faster_whisper.transcribe import (
            Tokenizer,
            TranscriptionOptions,
            get_suppressed_tokens,
            pad_or_trim,
            restore_speech_timestamps,
        )
        from faster_whisper.vad import VadOptions, collect_chunks, get_speech_timestamps

        assert self._scheduler is not None
        model = self._model
        if request.vad_filter or pcm.size > CHUNK_SECONDS * SAMPLE_RATE:
            vad = VadOptions(max_speech_duration_s=CHUNK_SECONDS, min_silence_duration_ms=160)
            clips = get_speech_timestamps(pcm, vad)
        else:
            clips = [{"start": 0, "end": pcm.size}] if pcm.size else []
        chunks, metadata = collect_chunks(pcm, clips, max_duration=CHUNK_SECONDS) if clips else ([], [])
        features = [model.feature_extractor(chunk)[..., :-1] for chunk in chunks]
        language, probability = self._language(request, features)
        tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task=request.task, language=language)
        options = TranscriptionOptions(
            beam_size=1,
            best_of=5,
            patience=1,
            length_penalty=1,
            repetition_penalty=1,
            no_repeat_ngram_size=0,
            log_prob_threshold=LOG_PROB_THRESHOLD,
            no_speech_threshold=NO_SPEECH_THRESHOLD,
            compression_ratio_threshold=COMPRESSION_RATIO_THRESHOLD,
            condition_on_previous_text=False,
            prompt_reset_on_temperature=0.5,
            temperatures=[0.0],
            initial_prompt=f" {request.prompt.strip()}" if request.prompt else None,  # as the sequential decoder
            prefix=None,
            suppress_blank=True,
            suppress_tokens=get_suppressed_tokens(tokenizer, [-1]),
            without_timestamps=False,
            max_initial_timestamp=0.0,
            word_timestamps=request.words,
            prepend_punctuations="\"'“¿([{-",
            append_punctuations="\"'.。,，!！?？:：”)]}、",
            multilingual=False,
            max_new_tokens=None,
            clip_timestamps=clips,
            hallucination_silence_threshold=None,
            hotwords=None,
        )
        recording = Recording(
            features=[pad_or_trim(f) for f in features],
            metadata=metadata,
            tokenizer=tokenizer,
            options=options,
            alike=(request.task, language, request.prompt),
        )
        self._scheduler.submit(recording)
        segments = restore_speech_timestamps(self._collected(recording, check, stats), clips, SAMPLE_RATE)
        return recording, self._redecoded_where_poor(pcm, segments, request), language, probability

    def _language(self, request: TranscribeRequest, features: list[np.ndarray]) -> tuple[str, float]:
        """The language asked for, English for an English-only model, else what Whisper hears in the speech."""
        if request.language is not None or not self._model.model.is_multilingual:
            return request.language or "en", 1.0
        if not features:
            return "en", 0.0
        language, probability, _ = self._model.detect_language(features=np.concatenate(features, axis=1))
        return str(language), float(probability)

    @staticmethod
    def _collected(recording: Recording, check: Callable[[], None] | None, stats: BatchStats) -> Iterator[Any]:
        """The recording's segments as faster-whisper's `Segment`s, chunk after chunk as their steps end."""
        from faster_whisper.transcribe import Segment, Word

        early: dict[int, Decoded] = {}
        for index in range(len(recording.features)):
            while index not in early:
                try:
                    item = recording.events.get(timeout=CHECK_SECONDS)
                except queue.Empty:
                    if check is not None:
                        check()
                    continue
                if isinstance(item, Exception):
                    raise item
                early[item.index] = item
            decoded = early.pop(index)
            stats.saw(decoded)
            for segment in decoded.segments:
                yield Segment(
                    id=0,
                    seek=segment["seek"],
                    start=round(segment["start"], 3),
                    end=round(segment["end"], 3),
                    text=segment["text"],
                    tokens=segment["tokens"],
                    avg_logprob=segment["avg_logprob"],
                    compression_ratio=segment["compression_ratio"],
                    no_speech_prob=segment["no_speech_prob"],
                    words=[Word(**word) for word in segment["words"]] if recording.alone else None,
                    temperature=0.0,
                )

    def _redecoded_where_poor(self, pcm: np.ndarray, segments: Any, request: TranscribeRequest) -> Iterator[Any]:
        """The sequential decoder's rules, applied to greedy segments: one that is silence (likely no speech, and
        decoded with little confidence) is dropped; one that fails faster-whisper's thresholds on speech is
        decoded again over its span by the sequential decoder, which has the temperature ladder; the others
        pass as they are."""
        for segment in segments:
            if segment.no_speech_prob > NO_SPEECH_THRESHOLD and segment.avg_logprob <= LOG_PROB_THRESHOLD:
                continue  # what Whisper "hears" in silence
            poor = segment.compression_ratio > COMPRESSION_RATIO_THRESHOLD or segment.avg_logprob < LOG_PROB_THRESHOLD
            if not poor or segment.no_speech_prob > NO_SPEECH_THRESHOLD:
                yield segment
                continue
            again, _ = self._model.transcribe(
                pcm,
                language=request.language,
                task=request.task,
                initial_prompt=request.prompt,
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
