"""Deployment: the compose file and Dockerfiles checked statically, GPU pinning and queue routing with
real worker processes, and the API image's dependency closure free of model libraries."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from packaging.requirements import Requirement

from api.routes.models import public_worker_id
from cli.embedded_redis import EmbeddedRedis
from tests.audio import spoken
from tests.sse import read_events
from tests.stack import ROOT, SPEECHQ, Process, base_env, start_api, wait_until

BIN = Path(sys.executable).parent
MODEL_LIBRARIES = {
    "llama-cpp-python",
    "torch",
    "ctranslate2",
    "faster-whisper",
    "onnxruntime",
    "openai-whisper",
    "hibari-tts",
    "piper-tts",
    "numpy",
    "tokenizers",
    "transformers",
}


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


def test_compose_matches_the_compose_specification(tmp_path: Path) -> None:
    check = [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec"]
    done = subprocess.run([*check, str(ROOT / "docker-compose.yml")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    broken = tmp_path / "broken.yml"  # the check can fail: a healthcheck must be a mapping
    broken.write_text("services:\n  api:\n    image: x\n    healthcheck: yes\n    ports: 6666\n")
    assert subprocess.run([*check, str(broken)], capture_output=True).returncode != 0


def test_every_service_is_healthchecked_and_waits_for_healthy_dependencies() -> None:
    services = compose()["services"]
    assert {"redis", "api", "gpu-worker-0", "cpu-worker", "flower", "openaudio", "prometheus"} <= set(services)
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        for dependency, rule in (service.get("depends_on") or {}).items():
            assert rule == {"condition": "service_healthy"}, (name, dependency)
    redis = " ".join(services["redis"]["command"])
    assert (
        "--appendonly yes" in redis and "--appendfsync everysec" in redis and "--maxmemory-policy noeviction" in redis
    )
    for name in ("gpu-worker-0", "gpu-worker-1"):
        device = services[name]["deploy"]["resources"]["reservations"]["devices"][0]
        pinned = services[name]["command"][services[name]["command"].index("--device") + 1]
        assert device["device_ids"] == [pinned] and "gpu" in device["capabilities"]
    assert services["cpu-worker"]["command"] == ["worker", "--queues", "dialogue"]
    assert "deploy" not in services["cpu-worker"], "the dialogue worker needs no GPU"


def test_a_plain_compose_up_starts_exactly_one_gpu_worker() -> None:
    """A one-GPU host runs the file unedited; the second card's worker waits behind the `gpu2` profile."""
    services = compose()["services"]

    def gpu_worker(service: dict[str, Any]) -> bool:
        devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        return service.get("command", [""])[0] == "worker" and any("gpu" in d["capabilities"] for d in devices)

    by_default = sorted(
        name for name, service in services.items() if gpu_worker(service) and not service.get("profiles")
    )
    assert by_default == ["gpu-worker-0"]
    cards = {
        card
        for service in services.values()
        if not service.get("profiles")
        for device in service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        for card in device.get("device_ids", [])
    }
    assert cards == {"0"}, "without a profile nothing may reserve a second card"
    assert services["gpu-worker-1"]["profiles"] == ["gpu2"] and gpu_worker(services["gpu-worker-1"])
    assert not any(service.get("profiles") for name, service in services.items() if name != "gpu-worker-1")


def test_secrets_have_no_defaults_and_prometheus_scrapes_every_worker() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for secret in ("SPEECHQ_API_KEYS", "OPENAUDIO_API_KEY", "FLOWER_BASIC_AUTH"):
        uses = re.findall(r"\$\{" + secret + r"([^}]*)\}", text)
        assert uses and all(use.startswith(":?") for use in uses), f"{secret} must be required, not defaulted"
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for group in job["static_configs"] for t in group["targets"]}
    workers = {name for name in compose()["services"] if name.endswith("worker") or "worker-" in name}
    assert {f"{name}:9400" for name in workers} | {"api:6666"} == targets


def final_stage(dockerfile: str) -> list[str]:
    lines = (ROOT / dockerfile).read_text().splitlines()
    start = max(n for n, line in enumerate(lines) if line.startswith("FROM "))
    return lines[start:]


@pytest.mark.parametrize("dockerfile", ["Dockerfile.api", "Dockerfile.gpu-worker"])
def test_dockerfiles_lint_clean_and_run_as_non_root(dockerfile: str) -> None:
    done = subprocess.run([str(BIN / "hadolint"), dockerfile], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    users = [line.split()[1] for line in final_stage(dockerfile) if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")


def closure(requirements: list[str]) -> set[str]:
    """Every distribution the requirements pull in, as installed here (extras followed)."""
    seen: set[str] = set()
    pending = [Requirement(r) for r in requirements]
    while pending:
        requirement = pending.pop()
        name = requirement.name.lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        for raw in dist.requires or []:
            child = Requirement(raw)
            if (
                child.marker is None
                or child.marker.evaluate({"extra": ""})
                or any(child.marker.evaluate({"extra": extra}) for extra in requirement.extras)
            ):
                pending.append(child)
    return seen


def test_the_api_image_installs_no_model_library() -> None:
    """The API image runs no model library but onnxruntime for the realtime VAD: it installs Flower and the
    realtime extra, and takes the VAD's ONNX file out of the locked faster-whisper wheel without installing
    it (no CTranslate2, SPEC §2)."""
    installs = [line for line in (ROOT / "Dockerfile.api").read_text().splitlines() if "pip install" in line]
    assert installs and all('".[flower,realtime]"' in line for line in installs)
    meta = distribution("speechq").metadata
    base = [r for r in meta.get_all("Requires-Dist") or [] if "extra ==" not in r]
    flower = [r.split(";")[0] for r in meta.get_all("Requires-Dist") or [] if 'extra == "flower"' in r]
    pulled = closure(base + flower)
    assert "fastapi" in pulled and "flower" in pulled and "celery" in pulled
    assert not pulled & MODEL_LIBRARIES, pulled & MODEL_LIBRARIES
    realtime = {
        r.split(";")[0].split(">")[0] for r in meta.get_all("Requires-Dist") or [] if 'extra == "realtime"' in r
    }
    assert realtime == {"numpy", "onnxruntime"}, realtime
    assert not closure(sorted(realtime)) & (MODEL_LIBRARIES - {"onnxruntime", "numpy"})


@pytest.fixture
def pinned_stack(tmp_path: Path) -> Iterator[tuple[str, list[Process]]]:
    """An API and three worker commands on their own Redis: --device 0 (llm), --device 1 (stt),
    --device 2,3 (tts: one process per device)."""
    with EmbeddedRedis(tmp_path / "valkey") as redis:
        env = base_env(redis.url, tmp_path, TTS_PRELOAD="false", STT_PRELOAD="false", LLM_PRELOAD="false")
        api, url = start_api(env, tmp_path)
        commands = [("llm", "0"), ("stt", "1"), ("tts", "2,3")]
        workers = [
            Process(f"worker-{queue}", [*SPEECHQ, "worker", "--queues", queue, "--device", device], env, tmp_path)
            for queue, device in commands
        ]
        try:
            yield url, workers
        finally:
            for worker in workers:
                worker.stop()
            api.stop()


def test_each_worker_sees_only_its_device_and_gets_only_its_queue(pinned_stack: tuple[str, list[Process]]) -> None:
    url, workers = pinned_stack
    with httpx.Client(base_url=url, timeout=60) as client:

        def all_up() -> list[dict[str, Any]] | None:
            for worker in workers:
                assert worker.alive(), worker.log()
            found: list[dict[str, Any]] = client.get("/v1/workers").json()["data"]
            return found if len(found) == 4 else None

        found = wait_until(all_up, timeout=60, what="four worker processes")
        seen = {(tuple(w["queues"]), w["device"], w["cuda_visible_devices"]) for w in found}
        assert seen == {(("llm",), "0", "0"), (("stt",), "1", "1"), (("tts",), "2", "2"), (("tts",), "3", "3")}
        by_queue = {w["queues"][0]: w["id"] for w in found if w["queues"] != ["tts"]}

        generate = client.post("/v1/jobs/generate", json={"prompt": "Hi", "max_tokens": 4}).json()["id"]
        transcribe = client.post("/v1/jobs/transcribe", files={"file": ("fox.wav", spoken("fox"))}).json()["id"]
        speak = client.post("/v1/jobs/synthesize", json={"text": "Pinned."}).json()["id"]
        for job_id in (generate, transcribe, speak):
            assert read_events(client, job_id)[-1].json() == {"status": "succeeded"}
        # A job names its worker by its own id; /v1/workers by the public name derived from it.
        ran_on = {
            job_id: public_worker_id(client.get(f"/v1/jobs/{job_id}").json()["worker"])
            for job_id in (generate, transcribe, speak)
        }
        assert ran_on[generate] == by_queue["llm"]
        assert ran_on[transcribe] == by_queue["stt"]
        tts_workers = {w["id"] for w in found if w["queues"] == ["tts"]}
        assert ran_on[speak] in tts_workers
