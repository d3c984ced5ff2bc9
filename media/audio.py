"""Audio intake shared by the API (a quick probe before a job is queued) and the worker (full decoding).

PyAV reads the file by its content, never by its name. Both steps refuse with an `InvalidAudio`
(`contract.errors`), whose `code` becomes the job's `error.type`:

    EmptyAudio        empty_file               nothing was uploaded
    UnsupportedAudio  unsupported_media_type   not audio, or a container outside ALLOWED_FORMATS
    InvalidAudio      invalid_audio            a corrupt, truncated or lying file; a sample rate outside
                                               8–384 kHz, more than 32 channels;
                                               more seconds than a file of its size can hold (`plausible_seconds`)
    AudioTooLong      audio_too_long           longer than MAX_AUDIO_SECONDS
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import av

from contract.errors import AudioTooLong, EmptyAudio, InvalidAudio, UnsupportedAudio
from contract.speech import MIN_SAMPLE_RATE

if TYPE_CHECKING:
    import numpy as np

# FFmpeg demuxer names accepted (PyAV reports several names for one family, comma-separated).
ALLOWED_FORMATS = frozenset(
    {"wav", "mp3", "flac", "ogg", "matroska", "webm", "mov", "mp4", "m4a", "aac", "aiff", "caf", "w64", "amr"}
)
# A file may decode to a little less than its header says (encoder padding); more than this is truncation.
TRUNCATION_TOLERANCE = 0.9
# Telephone speech is 8 kHz (the floor for audio out too); below it nothing is intelligible, and a low
# declared rate lets a few bytes stand for minutes of audio that resampling to 16 kHz then multiplies
# (at 1 Hz, 1.2 KB is 600 s).
MIN_INPUT_SAMPLE_RATE = MIN_SAMPLE_RATE
MAX_INPUT_SAMPLE_RATE = 384_000  # the highest rate recorders and FFmpeg's decoders use
MAX_INPUT_CHANNELS = 32
# The most audio a file may hold: a floor, plus so many seconds per KB. Real compressed speech stays well
# under 2.5 s/KB: Opus at its 6 kbps minimum is ~1.3 s/KB, AMR-NB at 4.75 kbps ~1.7, MP3 at 8 kbps ~1.0,
# 8 kHz PCM 0.06. Silence compressed by FLAC (~5 s/KB) or a header that lies goes past it; the floor
# keeps short clips (and pauses an encoder squeezed to nothing) clear of the ratio.
SECONDS_FLOOR = 60.0
SECONDS_PER_KB = 2.5


@dataclass(frozen=True, slots=True)
class AudioInfo:
    format: str
    codec: str
    duration: float | None  # as the container declares it, else as its packets add up; None if neither says
    sample_rate: int
    channels: int


def _open(data: bytes) -> av.container.InputContainer:
    if not data:
        raise EmptyAudio("the uploaded file is empty")
    _check_riff_sizes(data)
    try:
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="ignore")
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise UnsupportedAudio(f"not a recognised audio file ({exc.__class__.__name__})") from None
    names = set(container.format.name.split(","))
    if not names & ALLOWED_FORMATS:
        container.close()
        raise UnsupportedAudio(
            f"{container.format.long_name or container.format.name} files are not accepted; "
            f"send one of: {', '.join(sorted(ALLOWED_FORMATS))}"
        )
    if not container.streams.audio:
        container.close()
        raise UnsupportedAudio("the file has no audio stream")
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


def plausible_seconds(size: int) -> float:
    """The most audio a file of `size` bytes may hold: SECONDS_FLOOR plus SECONDS_PER_KB per KB."""
    return SECONDS_FLOOR + SECONDS_PER_KB * size / 1024


def _check_sample_rate(rate: int) -> None:
    if rate < MIN_INPUT_SAMPLE_RATE:
        raise InvalidAudio(f"the audio's sample rate is {rate} Hz; speech needs at least {MIN_INPUT_SAMPLE_RATE} Hz")
    if rate > MAX_INPUT_SAMPLE_RATE:
        raise InvalidAudio(
            f"the audio's header claims {rate} Hz; no recording is above {MAX_INPUT_SAMPLE_RATE} Hz, so it lies"
        )


def _check_channels(channels: int) -> None:
    if not 1 <= channels <= MAX_INPUT_CHANNELS:
        raise InvalidAudio(f"the audio's header claims {channels} channels; at most {MAX_INPUT_CHANNELS} are taken")


def _check_length(seconds: float, size: int, max_seconds: float, *, decoded: bool = False) -> None:
    """Refuse audio over MAX_AUDIO_SECONDS, or over what a file of `size` bytes can plausibly hold."""
    plausible = plausible_seconds(size)
    if seconds > max_seconds:
        length = f"decodes to more than {max_seconds:.0f}s" if decoded else f"lasts {seconds:.0f}s"
        raise AudioTooLong(f"the audio {length}; the limit is {max_seconds:.0f}s (MAX_AUDIO_SECONDS)")
    if seconds > plausible:
        length = "decodes to more than" if decoded else f"lasts {seconds:.0f}s, more than"
        raise InvalidAudio(
            f"the audio {length} the {plausible:.0f}s a {size / 1024:.1f} KB file of speech can hold "
            f"({SECONDS_FLOOR:.0f}s + {SECONDS_PER_KB:g}s per KB); its header lies or it is mostly silence"
        )


def _packet_seconds(container: av.container.InputContainer, stream: av.AudioStream, stop: float) -> float | None:
    """The stream's length from its packets (demuxed, not decoded), for containers that declare none;
    counting stops once past `stop`."""
    total = 0.0
    try:
        for packet in container.demux(stream):
            if packet.duration and packet.time_base:
                total += float(packet.duration * packet.time_base)
                if total > stop:
                    break
    except av.error.FFmpegError:
        return None  # the worker's decode will say what is wrong with it
    return total or None


def probe(data: bytes, *, max_seconds: float) -> AudioInfo:
    """Cheap checks, from the headers (or the packets when they declare no length), nothing decoded:
    is it audio, of an accepted kind and sample rate, whole, not too long for the cap and for its size."""
    container = _open(data)
    with container:
        stream = container.streams.audio[0]
        if not stream.codec_context or not stream.codec_context.sample_rate:
            raise InvalidAudio("the audio stream declares no sample rate")
        _check_sample_rate(stream.codec_context.sample_rate)
        _check_channels(stream.codec_context.channels)
        duration = container.duration / av.time_base if container.duration else None
        if duration is None:
            duration = _packet_seconds(container, stream, stop=max(max_seconds, plausible_seconds(len(data))))
        if duration is not None:
            _check_length(duration, len(data), max_seconds)
        return AudioInfo(
            format=container.format.name,
            codec=stream.codec_context.name,
            duration=duration,
            sample_rate=stream.codec_context.sample_rate,
            channels=stream.codec_context.channels,
        )


def decode(data: bytes, *, rate: int = 16_000, max_seconds: float, time_limit: float) -> np.ndarray:
    """The whole file as mono float32 PCM at `rate`; refuses bombs, truncation and corrupt streams.

    Headers can lie, so the checks of `probe` are made again on what actually decodes, frame by frame,
    before each frame is resampled: decoding stops as soon as the audio passes MAX_AUDIO_SECONDS or what
    a file of its size can hold, or a frame comes at a rate too low for speech.
    """
    import numpy as np

    started = time.monotonic()
    container = _open(data)
    chunks: list[np.ndarray] = []
    decoded = 0.0  # seconds, counted before resampling
    with container:
        stream = container.streams.audio[0]
        declared = container.duration / av.time_base if container.duration else None
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        try:
            for frame in container.decode(stream):
                _check_sample_rate(frame.sample_rate)
                decoded += frame.samples / frame.sample_rate
                _check_length(decoded, len(data), max_seconds, decoded=True)
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
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
