"""The Helm chart (deploy/helm/speechq): its values and templates checked as text, and, where a renderer is at
hand (a `helm` binary on PATH, or the helm-python-sdk wheel, Helm's Go SDK in a shared library), `helm lint`
and the manifests rendered from the default values and from every ci/*-values.yaml, each one validated:
Kubernetes' own kinds against Kubernetes' OpenAPI schemas (kubernetes-validate, offline), KEDA's
ScaledObject and the Prometheus Operator's ServiceMonitor against the fields those controllers require."""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.stack import ROOT

CHART = ROOT / "deploy" / "helm" / "speechq"
TEMPLATES = CHART / "templates"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
KUBERNETES_VERSIONS = (
    "1.30.0",
    "1.37.0",
)  # the oldest the chart's kubeVersion admits that the schemas cover, and the newest
QUEUES = {"llm", "stt", "tts", "dialogue"}

Manifest = dict[str, Any]


def load(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict), f"{path} is not a mapping"
    return loaded


def worker_classes(values: dict[str, Any]) -> list[dict[str, Any]]:
    """The classes a values file declares, the dialogue workers last (as the chart orders them)."""
    workers = values.get("workers", {})
    classes = list(workers.get("classes", load(CHART / "values.yaml")["workers"]["classes"]))
    dialogue = {**load(CHART / "values.yaml")["workers"]["dialogue"], **workers.get("dialogue", {})}
    return classes + ([dialogue] if dialogue["enabled"] else [])


# --- without a renderer -----------------------------------------------------------------------------


def test_values_parse_and_every_worker_class_is_complete() -> None:
    for path in [CHART / "values.yaml", *CI_VALUES]:
        for worker_class in worker_classes(load(path)):
            assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", worker_class["name"]), (path, worker_class)
            assert set(worker_class["queues"]) <= QUEUES, (path, worker_class)
            assert worker_class.get("autoscaling", {}).get("threshold", 0) > 0, f"{path}: {worker_class['name']}"
    assert {p.name for p in CI_VALUES} >= {
        "external-redis-values.yaml",
        "sentinel-values.yaml",
        "gpu-classes-keda-values.yaml",
        "existing-secret-values.yaml",
    }


def test_every_worker_class_gets_a_deployment_a_service_and_a_scaled_object_from_one_list() -> None:
    """The three templates range over the same helper, so a class cannot have a Deployment and miss its
    ScaledObject; the helper puts the dialogue workers after the model classes."""
    for name in ("worker-deployment.yaml", "worker-service.yaml", "worker-scaledobject.yaml"):
        text = (TEMPLATES / name).read_text()
        assert '{{- range $class := (include "speechq.workerClasses" $ | fromYaml).classes }}' in text, name
    helpers = (TEMPLATES / "_helpers.tpl").read_text()
    assert "$all := .Values.workers.classes" in helpers
    assert "append $all (omit .Values.workers.dialogue" in helpers
    scaled = (TEMPLATES / "worker-scaledobject.yaml").read_text()
    assert "kind: ScaledObject" in scaled and "type: prometheus" in scaled and "app_queue_jobs" in helpers


def test_the_grace_period_derives_from_the_drain_value() -> None:
    """WORKER_DRAIN_SECONDS and terminationGracePeriodSeconds both come from one computed value per class."""
    helpers = (TEMPLATES / "_helpers.tpl").read_text()
    assert '$_ := set $class "terminationGracePeriodSeconds" (add $drain $margin)' in helpers
    deployment = (TEMPLATES / "worker-deployment.yaml").read_text()
    assert "terminationGracePeriodSeconds: {{ $class.terminationGracePeriodSeconds }}" in deployment
    assert re.search(r"name: WORKER_DRAIN_SECONDS\s+value: \{\{ \$class\.drainSeconds \| quote \}\}", deployment)
    values = load(CHART / "values.yaml")["workers"]
    assert values["drainSeconds"] > 0 and values["drainMarginSeconds"] > 0


# --- rendered ---------------------------------------------------------------------------------------


class RenderError(Exception):
    """The chart refused the values (a `fail`, a `required`) or a template did not render."""


def optional_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


HELM = shutil.which("helm")
HELM_SDK = optional_module("helm_python")
KUBERNETES_VALIDATE = optional_module("kubernetes_validate")
# Both packages are in the lock: CI (`.ci/run`, CI=true) has them, so there a missing one fails instead of skipping.
IN_CI = os.environ.get("CI") == "true"
needs_renderer = pytest.mark.skipif(
    HELM is None and HELM_SDK is None and not IN_CI,
    reason="no Helm renderer: neither a `helm` binary on PATH nor the helm-python-sdk package (pip) is installed",
)


def render(values: dict[str, Any], tmp_path: Path) -> list[Manifest]:
    """The chart's manifests for these values, as `helm template sq -n speech` renders them."""
    if HELM is not None:
        values_file = tmp_path / "values.yaml"
        values_file.write_text(yaml.safe_dump(values))
        command = [HELM, "template", "sq", str(CHART), "--namespace", "speech", "--values", str(values_file)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if done.returncode:
            raise RenderError(done.stderr)
        texts = [done.stdout]
    else:
        with HELM_SDK.Chart.load(str(CHART)) as chart:
            try:
                rendered = chart.render(values, name="sq", namespace="speech", is_install=True)
            except HELM_SDK.HelmError as exc:
                raise RenderError(str(exc)) from exc
        texts = [text for path, text in sorted(rendered.items()) if not path.endswith("NOTES.txt")]
    return [doc for text in texts for doc in yaml.safe_load_all(text) if doc]


def lint(values: dict[str, Any], tmp_path: Path) -> list[str]:
    """What `helm lint --strict` finds wrong (warnings and errors; not the info that an icon is recommended)."""
    if HELM is not None:
        values_file = tmp_path / "lint-values.yaml"
        values_file.write_text(yaml.safe_dump(values))
        command = [HELM, "lint", "--strict", str(CHART), "--values", str(values_file)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        return [] if done.returncode == 0 else [done.stdout + done.stderr]
    report = HELM_SDK.lint(str(CHART), values, strict=True)
    return [m["error"] for m in report["messages"] if m["severity"] >= 2] + list(report["errors"])


def value_sets() -> list[Any]:
    """The default values and every ci/*-values.yaml, by name."""
    named = [pytest.param(load(path), id=path.name.removesuffix("-values.yaml")) for path in CI_VALUES]
    return [pytest.param({}, id="defaults"), *named]


def by_kind(manifests: list[Manifest], kind: str) -> dict[str, Manifest]:
    return {m["metadata"]["name"]: m for m in manifests if m["kind"] == kind}


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "<from secret>") for e in container.get("env", [])}


def check_scaled_object(manifest: Manifest) -> None:
    """The fields KEDA's CRD requires (keda.sh/v1alpha1: spec.scaleTargetRef.name, spec.triggers[].type and
    .metadata) and those its prometheus scaler reads (serverAddress, query, threshold, as strings)."""
    spec = manifest["spec"]
    assert manifest["apiVersion"] == "keda.sh/v1alpha1"
    assert isinstance(spec["scaleTargetRef"]["name"], str)
    assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert spec["triggers"], "a ScaledObject needs a trigger"
    for trigger in spec["triggers"]:
        assert trigger["type"] == "prometheus"
        metadata = trigger["metadata"]
        assert all(isinstance(v, str) for v in metadata.values()), "trigger metadata is a map of strings"
        assert {"serverAddress", "query", "threshold"} <= set(metadata)
        assert float(metadata["threshold"]) > 0 and float(metadata.get("activationThreshold", "0")) >= 0
    for policy in spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]["policies"]:
        assert {"type", "value", "periodSeconds"} <= set(policy) and 0 < policy["periodSeconds"] <= 1800


def check_service_monitor(manifest: Manifest) -> None:
    """The fields the Prometheus Operator's CRD requires (monitoring.coreos.com/v1: spec.selector; each
    endpoint a port name, path and interval as strings)."""
    assert manifest["apiVersion"] == "monitoring.coreos.com/v1"
    spec = manifest["spec"]
    assert spec["selector"].get("matchLabels") or spec["selector"].get("matchExpressions")
    for endpoint in spec["endpoints"]:
        assert isinstance(endpoint["port"], str) and endpoint["path"] == "/metrics"
        assert re.fullmatch(r"[0-9]+(ms|s|m|h)", endpoint["interval"])


@needs_renderer
@pytest.mark.parametrize("values", value_sets())
def test_the_chart_lints_and_renders_manifests_that_match_their_schemas(values: dict[str, Any], tmp_path: Path) -> None:
    assert lint(values, tmp_path) == []
    manifests = render(values, tmp_path)
    assert manifests
    for manifest in manifests:
        if manifest["kind"] == "ScaledObject":
            check_scaled_object(manifest)
        elif manifest["kind"] == "ServiceMonitor":
            check_service_monitor(manifest)
        elif KUBERNETES_VALIDATE is not None:
            for version in KUBERNETES_VERSIONS:
                KUBERNETES_VALIDATE.validate(manifest, version, strict=True)
    if KUBERNETES_VALIDATE is None:
        message = "rendered and linted; kubernetes-validate (pip) is not installed, so no Kubernetes schema check"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


@needs_renderer
@pytest.mark.parametrize("values", value_sets())
def test_each_worker_class_drains_within_its_grace_period_and_scales_on_its_queues(
    values: dict[str, Any], tmp_path: Path
) -> None:
    manifests = render(values, tmp_path)
    deployments = by_kind(manifests, "Deployment")
    scaled = by_kind(manifests, "ScaledObject")
    keda = values.get("keda", {}).get("enabled", False)
    defaults = load(CHART / "values.yaml")["workers"]
    margin = values.get("workers", {}).get("drainMarginSeconds", defaults["drainMarginSeconds"])
    for worker_class in worker_classes(values):
        name = f"sq-speechq-worker-{worker_class['name']}"
        pod = deployments[name]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        drain = int(env_of(container)["WORKER_DRAIN_SECONDS"])
        expected = worker_class.get(
            "drainSeconds", values.get("workers", {}).get("drainSeconds", defaults["drainSeconds"])
        )
        assert drain == expected, name
        assert pod["terminationGracePeriodSeconds"] == drain + worker_class.get("drainMarginSeconds", margin), name
        assert container["args"][:3] == ["worker", "--queues", ",".join(worker_class["queues"])]
        gpus = worker_class.get("gpus", 0)
        assert container["resources"].get("limits", {}).get("nvidia.com/gpu", 0) == gpus, name
        assert ("--device" in container["args"]) == (gpus > 0), name
        assert pod["securityContext"]["runAsUser"] == 10001 and pod["securityContext"]["runAsNonRoot"] is True
        if keda:
            query = scaled[name]["spec"]["triggers"][0]["metadata"]["query"]
            assert f'queue=~"{"|".join(worker_class["queues"])}"' in query and "app_queue_jobs" in query
            assert scaled[name]["spec"]["minReplicaCount"] == worker_class["autoscaling"].get("minReplicas", 1)
            assert "replicas" not in deployments[name]["spec"], "KEDA owns the replica count"
    assert len(scaled) == (len(worker_classes(values)) if keda else 0)


@needs_renderer
def test_scale_to_zero_moves_the_api_readiness_off_ready(tmp_path: Path) -> None:
    """/ready answers 503 while a queue has no live worker: an API taken out of its Service then could never
    receive the job that would scale a worker up from zero."""

    def readiness(values: dict[str, Any]) -> str:
        api = by_kind(render(values, tmp_path), "Deployment")["sq-speechq-api"]
        path = api["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"]
        assert isinstance(path, str)
        return path

    assert readiness({}) == "/ready"
    assert readiness({"keda": {"enabled": True}}) == "/ready"
    assert readiness(load(CHART / "ci" / "gpu-classes-keda-values.yaml")) == "/health"


@needs_renderer
def test_redis_modes(tmp_path: Path) -> None:
    manifests = render({}, tmp_path)
    (valkey,) = by_kind(manifests, "StatefulSet").values()
    args = valkey["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert valkey["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
    api = by_kind(manifests, "Deployment")["sq-speechq-api"]["spec"]["template"]["spec"]["containers"][0]
    assert env_of(api)["REDIS_URL"] == "redis://:$(REDIS_PASSWORD)@sq-speechq-valkey:6379/0"

    sentinel = render(load(CHART / "ci" / "sentinel-values.yaml"), tmp_path)
    assert not by_kind(sentinel, "StatefulSet")
    api = by_kind(sentinel, "Deployment")["sq-speechq-api"]["spec"]["template"]["spec"]["containers"][0]
    url = env_of(api)["REDIS_URL"]
    assert re.fullmatch(
        r"(sentinel://:\$\(REDIS_PASSWORD\)@[a-z0-9.-]+:26379;){2}sentinel://\S+/0\?master_name=speechq", url
    )
    redis_urls = importlib.import_module("config.redis_urls")  # speechq's own parser takes the URL as rendered
    parsed = redis_urls.parse_sentinel_url(url.replace("$(REDIS_PASSWORD)", "s3cret"))
    assert parsed.master_name == "speechq" and len(parsed.sentinels) == 3

    external = render(load(CHART / "ci" / "external-redis-values.yaml"), tmp_path)
    assert not by_kind(external, "StatefulSet")
    (secret,) = by_kind(external, "Secret").values()
    assert {"REDIS_URL", "CELERY_BROKER_URL", "API_KEYS"} <= set(secret["data"])


@needs_renderer
@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"workers": {"classes": [{"name": "gpu", "queues": ["llm", "dialogue"]}]}}, "mixes dialogue"),
        ({"workers": {"classes": [{"name": "GPU", "queues": ["llm"]}]}}, "DNS label"),
        ({"workers": {"classes": [{"name": "dialogue", "queues": ["llm"]}]}}, "two classes are named"),
        ({"workers": {"classes": [{"name": "gpu", "queues": ["gpu"]}]}}, "speechq's queues are"),
        ({"redis": {"mode": "sentinel"}}, "redis.sentinel.hosts"),
        ({"redis": {"mode": "external"}}, "redis.external.url"),
        ({"secrets": {"create": False}}, "secrets.existingSecret"),
    ],
)
def test_values_the_chart_refuses(values: dict[str, Any], message: str, tmp_path: Path) -> None:
    with pytest.raises(RenderError, match=re.escape(message)):
        render(values, tmp_path)
