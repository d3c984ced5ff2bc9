"""Text to speech vocabulary shared by the API and the workers: formats, voices, sentence splitting.

Nothing here loads a model: the API validates a synthesis request against these tables, and the
worker's engines (`workers.tts`) use the same ones, so a request the API accepts is one a worker can run.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Literal

AudioFormat = Literal["wav", "pcm", "flac", "mp3", "opus", "aac"]

MEDIA_TYPES: dict[str, str] = {
    "wav": "audio/wav",
    "pcm": "audio/pcm",  # raw signed 16-bit little-endian mono
    "flac": "audio/flac",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",  # Opus in an Ogg container, as OpenAI serves it
    "aac": "audio/aac",  # AAC in ADTS frames
}

# Sample rates each encoder accepts; None means any rate from 8 to 96 kHz.
_MP3_RATES = (8_000, 11_025, 12_000, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000)
ENCODER_RATES: dict[str, tuple[int, ...] | None] = {
    "wav": None,
    "pcm": None,
    "flac": None,
    "mp3": _MP3_RATES,
    "opus": (48_000,),  # Opus always decodes at 48 kHz, whatever rate it was fed
    "aac": (*_MP3_RATES, 64_000, 88_200, 96_000),
}
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 8_000, 96_000

# What OpenAI clients send: the model aliases are served by the default engine (TTS_MODEL), and each
# voice name is served by the engine's voice of that name when it has one, else by its default voice.
OPENAI_TTS_MODELS = frozenset({"tts-1", "tts-1-hd", "gpt-4o-mini-tts", "gpt-4o-mini-tts-2025-12-15"})
OPENAI_VOICES = frozenset(
    {"alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse", "marin", "cedar"}
)


def output_sample_rate(fmt: str, requested: int | None, native: int) -> int:
    """The rate the audio is delivered at: the one asked for, else the engine's own, moved to the
    nearest rate the format's encoder accepts (Opus, for one, is always 48 kHz)."""
    rate = requested or native
    allowed = ENCODER_RATES[fmt]
    if allowed is None or rate in allowed:
        return rate
    if requested is not None:
        raise ValueError(
            f"sample_rate {requested} is not possible with {fmt}; use one of {', '.join(map(str, allowed))}"
        )
    higher = [r for r in allowed if r >= rate]
    return min(higher) if higher else max(allowed)


def speakable(text: str) -> bool:
    """Whether `text` holds anything a voice can say: a letter or a digit, in any script (Unicode
    categories L* and N*). Emoji, symbols and punctuation alone are silence an engine still spends
    seconds on, so such text is refused before a job exists."""
    return any(unicodedata.category(char)[0] in "LN" for char in text)


_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"”’)\]]*\s+(?=[\"“‘(\[]?[A-Z0-9])")
_ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "prof", "st", "sr", "jr", "vs", "etc", "e.g", "i.e", "no", "mt"})


def split_sentences(text: str) -> list[str]:
    """Sentences (and paragraphs) of `text`, in order, each a unit an engine can speak on its own.

    A period after a common abbreviation ("Dr. Smith") or an initial ("J. K. Rowling") does not end a
    sentence.
    """
    sentences: list[str] = []
    for paragraph in re.split(r"\n\s*\n|\n", text.strip()):
        start = 0
        for match in _SENTENCE_END.finditer(paragraph):
            word = paragraph[: match.start()].rsplit(maxsplit=1)[-1].rstrip(".").lower()
            if paragraph[match.start() - 1] == "." and (word in _ABBREVIATIONS or len(word) == 1):
                continue
            sentences.append(paragraph[start : match.start()].strip())
            start = match.end()
        sentences.append(paragraph[start:].strip())
    return [s for s in sentences if s]


def complete_sentences(text: str) -> tuple[list[str], str]:
    """Text that is still being written → (the sentences it has finished, the unfinished rest).

    A sentence counts as finished once the next one has begun, so "Dr." or "3." in the middle of a
    sentence is not mistaken for its end.
    """
    sentences = split_sentences(text)
    if len(sentences) < 2:
        return [], text
    return sentences[:-1], sentences[-1] + text[len(text.rstrip()) :]
