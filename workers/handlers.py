"""Job handlers: turn a claimed job into engine calls and events, and return its result."""

from __future__ import annotations

import time
from collections.abc import Callable

from config import Settings
from contract.errors import InvalidJobInput
from contract.events import Progress
from contract.generation import (
    ChatMessage,
    ChatRequest,
    CompletionRequest,
    GenerateRequest,
    GenerationResult,
    GenerationTimings,
    Token,
    Usage,
)
from contract.jobs import EventType, JobKind, JobRecord
from contract.synthesis import SynthesisResult, SynthesisTimings, SynthesizeRequest
from contract.transcription import TranscribeRequest, TranscriptionResult, TranscriptSegment
from media.audio import decode
from workers.audio_out import AudioEncoder, ChunkSender, Tempo, normalize_loudness
from workers.context import JobContext
from workers.cores import SHARE
from workers.llm import Prompt
from workers.models import ModelCache, SpeechEngine, VoiceEngine
from workers.stt import RemoteWhisperEngine

InputReader = Callable[[str], bytes | None]
OutputWriter = Callable[[str, bytes], None]


class TokenBatcher:
    """Sends text deltas as `token` events: the first at once, later ones gathered for up to `window` s.

    Each event wakes every live reader of the job; on a small machine those wake-ups compete with the
    model for the same cores, so a short window keeps streamed tokens/s at the in-process rate while
    adding at most `window` to when a delta is seen.
    """

    def __init__(self, run: JobContext, window: float) -> None:
        self.run = run
        self.window = window
        self.pending: list[str] = []
        self.sent_at = 0.0

    def __call__(self, text: str) -> None:
        self.pending.append(text)
        if time.monotonic() - self.sent_at >= self.window:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.run.emit(EventType.token, Token(text="".join(self.pending)))
            self.pending.clear()
            self.sent_at = time.monotonic()


def run_llm_job(job: JobRecord, run: JobContext, models: ModelCache) -> GenerationResult:
    """generate / chat / completion: stream `token` events, return the text and its usage."""
    params: GenerateRequest | ChatRequest | CompletionRequest
    if job.kind == JobKind.chat:
        params = ChatRequest.model_validate(job.request)
    elif job.kind == JobKind.generate:
        params = GenerateRequest.model_validate(job.request)
    else:
        params = CompletionRequest.model_validate(job.request)
    with models.llm(params.model) as engine:
        if isinstance(params, ChatRequest):
            prompt = engine.chat_prompt(params.messages)
        elif isinstance(params, GenerateRequest):
            prompt = engine.chat_prompt([ChatMessage(role="user", content=params.prompt)])
        else:
            prompt = Prompt(params.prompt, (), add_bos=True)
        batcher = TokenBatcher(run, window=models.settings.llm_stream_batch_seconds)
        # `check` notices a cancel or the time limit even while nothing is emitted (a slot still prefilling,
        # a stretch of tokens that are not yet whole text).
        generation = engine.generate(prompt, params, batcher, check=run.check)
        batcher.flush()
    first_token = generation.first_token_seconds
    return GenerationResult(
        text=generation.text,
        model=engine.name,
        finish_reason=generation.finish_reason,
        usage=Usage.of(generation.prompt_tokens, generation.completion_tokens),
        timings=GenerationTimings(
            seconds=round(generation.seconds, 4),
            first_token_seconds=round(first_token, 4) if first_token is not None else None,
            tokens_per_second=(
                round(generation.completion_tokens / generation.seconds, 2) if generation.seconds > 0 else None
            ),
        ),
    )


def run_stt_job(job: JobRecord, run: JobContext, models: ModelCache, inputs: InputReader) -> TranscriptionResult:
    """transcribe: decode the stored audio, stream `segment` and `progress` events, return the transcript."""
    request = TranscribeRequest.model_validate(job.request)
    data = inputs(job.id)
    if data is None:
        raise InvalidJobInput("the job's audio is no longer stored (it expired with JOB_TTL_SECONDS)")
    with models.stt(request.model) as engine, SHARE.other_engine():
        return _transcribe(engine, data, request, run, models.settings)


def _transcribe(
    engine: SpeechEngine, data: bytes, request: TranscribeRequest, run: JobContext, settings: Settings
) -> TranscriptionResult:
    if isinstance(engine, RemoteWhisperEngine):
        run.emit(EventType.progress, Progress(fraction=0.0, stage="uploading"))
        result = engine.transcribe_file(data, request)
        for segment in result.segments:
            run.emit(EventType.segment, segment.brief())
        return result
    run.emit(EventType.progress, Progress(fraction=0.0, stage="decoding"))
    decode_started = time.perf_counter()
    pcm = decode(data, max_seconds=settings.max_audio_seconds, time_limit=settings.audio_decode_timeout_seconds)
    decode_seconds = time.perf_counter() - decode_started
    duration = pcm.size / 16_000

    def on_segment(segment: TranscriptSegment, done_seconds: float) -> None:
        run.emit(EventType.segment, segment.brief())
        fraction = min(1.0, done_seconds / duration) if duration else 1.0
        run.emit(EventType.progress, Progress(fraction=round(fraction, 4), stage="transcribing"))

    # `check` notices a cancel or the time limit while the job waits for its turn in a decoding step.
    result = engine.transcribe(pcm, request, on_segment, check=run.check)
    result.timings.decode_seconds = round(decode_seconds, 4)
    return result


def run_tts_job(job: JobRecord, run: JobContext, models: ModelCache, outputs: OutputWriter) -> SynthesisResult:
    """synthesize: speak sentence by sentence, send each as an `audio_chunk` event, store the whole file."""
    request = SynthesizeRequest.model_validate(job.request)
    with models.tts(request.model) as engine, SHARE.other_engine():
        return _synthesize(engine, request, job, run, outputs)


def _synthesize(
    engine: VoiceEngine, request: SynthesizeRequest, job: JobRecord, run: JobContext, outputs: OutputWriter
) -> SynthesisResult:
    rate = request.sample_rate or engine.sample_rate
    encoder = AudioEncoder(request.response_format, rate)
    started = time.perf_counter()
    chunks = ChunkSender(run, encoder, started)
    spoken = 0
    run.emit(EventType.progress, Progress(fraction=0.0, stage="synthesizing"))
    tempo: Tempo | None = None
    for chunk in engine.stream(request):
        pcm = chunk.pcm
        if request.speed != 1.0 and not engine.native_speed:
            tempo = tempo or Tempo(request.speed, chunk.rate)
            pcm = tempo(pcm)
        if request.normalize:
            pcm = normalize_loudness(pcm)
        chunks.send(encoder.encode(pcm, chunk.rate), chunk.text)
        if chunk.text:
            spoken += len(chunk.text)
            fraction = min(0.99, spoken / len(request.text))
            run.emit(EventType.progress, Progress(fraction=round(fraction, 4), stage="synthesizing"))
    if tempo is not None:
        chunks.send(encoder.encode(tempo(None), tempo.rate), None)
    tail, whole = encoder.close()
    if encoder.samples == 0:
        raise InvalidJobInput("the text has nothing to speak (no words the voice can pronounce)")
    chunks.send(tail, None)
    outputs(job.id, whole)
    seconds = time.perf_counter() - started
    return SynthesisResult(
        response_format=request.response_format,
        media_type=encoder.media_type,
        sample_rate=rate,
        duration=round(encoder.seconds, 3),
        bytes=len(whole),
        chunks=chunks.count,
        model=engine.name,
        voice=request.voice,
        reference_id=request.reference_id,
        characters=len(request.text),
        timings=SynthesisTimings(
            seconds=round(seconds, 4),
            first_chunk_seconds=round(chunks.first, 4) if chunks.first is not None else None,
            real_time_factor=round(seconds / encoder.seconds, 4),
        ),
    )
