"""Audio intake shared by the API (a quick probe before a job is queued) and the worker (full decoding).

PyAV reads the file by its content, never by its name. Both steps refuse with `InvalidAudio`, whose
`code` becomes the job's `error.type` and whose `status` is the HTTP answer:

    empty_file (400)             nothing was uploaded
    unsupported_media_type (415) not audio, or a container outside ALLOWED_FORMATS
    invalid_audio (422)          a corrupt, truncated or lying file
    audio_too_long (422)         longer than MAX_AUDIO_SECONDS
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import av

if TYPE_CHECKING:
    import numpy as np

# FFmpeg demuxer names accepted (PyAV reports several names for one family, comma-separated).
ALLOWED_FORMATS = frozenset(
    {"wav", "mp3", "flac", "ogg", "matroska", "webm", "mov", "mp4", "m4a", "aac", "aiff", "caf", "w64", "amr"}
)
# A file may decode to a little less than its header says (encoder padding); more than this is truncation.
TRUNCATION_TOLERANCE = 0.9


class InvalidAudio(Exception):
    def __init__(self, message: str, *, code: str = "invalid_audio", status: int = 422) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


@dataclass(frozen=True, slots=True)
class AudioInfo:
    format: str
    codec: str
    duration: float | None  # as declared by the container, if it says
    sample_rate: int
    channels: int


def _open(data: bytes) -> av.container.InputContainer:
    if not data:
        raise InvalidAudio("the uploaded file is empty", code="empty_file", status=400)
    _check_riff_sizes(data)
    try:
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="ignore")
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise InvalidAudio(
            f"not a recognised audio file ({exc.__class__.__name__})", code="unsupported_media_type", status=415
        ) from None
    names = set(container.format.name.split(","))
    if not names & ALLOWED_FORMATS:
        container.close()
        raise InvalidAudio(
            f"{container.format.long_name or container.format.name} files are not accepted; "
            f"send one of: {', '.join(sorted(ALLOWED_FORMATS))}",
            code="unsupported_media_type",
            status=415,
        )
    if not container.streams.audio:
        container.close()
        raise InvalidAudio("the file has no audio stream", code="unsupported_media_type", status=415)
    return container


def _check_riff_sizes(data: bytes) -> None:
    """A WAV whose `data` chunk declares more bytes than the file holds is truncated (FFmpeg would not say)."""
    if not (data.startswith(b"RIFF") and data[8:12] == b"WAVE"):
        return
    position = 12
    while position + 8 <= len(data):
        chunk, size = data[position : position + 4], int.from_bytes(data[position + 4 : position + 8], "little")
        if chunk == b"data":
            present = len(data) - position - 8
            if size not in (0, 0xFFFFFFFF) and present < size * TRUNCATION_TOLERANCE:
                raise InvalidAudio(
                    f"the WAV file is truncated: its header declares {size} bytes of audio but {present} are present"
                )
            return
        position += 8 + size + (size & 1)


def probe(data: bytes, *, max_seconds: float) -> AudioInfo:
    """Cheap checks from the headers only: is it audio, of an accepted kind, whole, not declared too long."""
    container = _open(data)
    with container:
        stream = container.streams.audio[0]
        duration = container.duration / av.time_base if container.duration else None
        if duration is not None and duration > max_seconds:
            raise InvalidAudio(
                f"the audio lasts {duration:.0f}s; the limit is {max_seconds:.0f}s (MAX_AUDIO_SECONDS)",
                code="audio_too_long",
            )
        if not stream.codec_context or not stream.codec_context.sample_rate:
            raise InvalidAudio("the audio stream declares no sample rate")
        return AudioInfo(
            format=container.format.name,
            codec=stream.codec_context.name,
            duration=duration,
            sample_rate=stream.codec_context.sample_rate,
            channels=stream.codec_context.channels,
        )


def decode(data: bytes, *, rate: int = 16_000, max_seconds: float, time_limit: float) -> np.ndarray:
    """The whole file as mono float32 PCM at `rate`; refuses bombs, truncation and corrupt streams."""
    import numpy as np

    started = time.monotonic()
    container = _open(data)
    chunks: list[np.ndarray] = []
    samples = 0
    limit = int(max_seconds * rate)
    with container:
        stream = container.streams.audio[0]
        declared = container.duration / av.time_base if container.duration else None
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray().reshape(-1)
                    chunks.append(chunk)
                    samples += chunk.size
                if samples > limit:
                    raise InvalidAudio(
                        f"the audio decodes to more than {max_seconds:.0f}s (MAX_AUDIO_SECONDS)", code="audio_too_long"
                    )
                if time.monotonic() - started > time_limit:
                    raise InvalidAudio(f"decoding took longer than {time_limit:.0f}s; the file is too complex")
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except av.error.FFmpegError as exc:
            raise InvalidAudio(f"the audio is corrupt: {exc}") from None
    pcm = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    seconds = pcm.size / rate
    if seconds < 0.05:
        raise InvalidAudio("the file holds no decodable audio")
    if declared and declared > 1.0 and seconds < declared * TRUNCATION_TOLERANCE:
        raise InvalidAudio(
            f"the file is truncated or its header lies: it declares {declared:.1f}s but only {seconds:.1f}s decode"
        )
    return pcm.astype(np.float32, copy=False)
