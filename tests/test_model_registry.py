"""Models are the operator's: the registry (catalogue + MODELS_FILE), 404 for anything else on every route
that takes a model, no file opened and no network tried for it, and a worker's model cache at its bound."""

from __future__ import annotations

import io
import json
import os
import random
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from fastapi.testclient import TestClient

from config import Settings
from config.settings import SettingsError
from contract.catalog import ModelRole, ModelsFileError, Registry, UnknownModel, use_registry
from tests.audio import spoken
from tests.stack import private_stack, wait_until

if TYPE_CHECKING:
    import httpx2  # what Starlette's TestClient answers with, where installed

SENTINEL = "/tmp/speechq-sentinel-7f3a"
# Every spelling a client might use to make a worker open something: paths, repo ids, traversal,
# case and whitespace variants of registered names, and a long string that must not be echoed.
HOSTILE = [
    f"{SENTINEL}/model.gguf",
    "/etc/passwd",
    "~/model.gguf",
    "./gemma-3-270m",
    "var/models/gemma-3-270m-q4_k_m.gguf",
    "/work/main/var/models/./gemma-3-270m-q4_k_m.gguf",
    "evil/repo",
    "evil/repo:*.gguf",
    "hf://evil/repo/model.gguf",
    "Gemma-3-270M",
    "gemma-3-270m ",
    "x" * 10_000,
]


def registry_for(tmp_path: Path, text: str, **settings: Any) -> Registry:
    path = tmp_path / "models.yaml"
    path.write_text(text)
    return Registry.load(Settings(models_file=path, **settings))


def test_the_catalogue_aliases_and_the_operator_file(tmp_path: Path) -> None:
    registry = registry_for(
        tmp_path,
        "gemma-3-12b-it:\n"
        "  role: llm\n"
        "  source: hf://bartowski/google_gemma-3-12b-it-GGUF/google_gemma-3-12b-it-Q4_0.gguf\n"
        "  n_ctx: 8192\n"
        "  aliases: [gemma-big]\n"
        "whisper-small:\n  role: stt\n  source: /srv/models/faster-whisper-small\n",
        local_whisper_model="whisper-base",
    )
    big = registry.lookup("gemma-big", ModelRole.llm)
    assert big.name == "gemma-3-12b-it" and dict(big.options) == {"n_ctx": 8192}
    assert registry.lookup("whisper-small", ModelRole.stt).source == "/srv/models/faster-whisper-small"
    assert registry.lookup("whisper-1", ModelRole.stt).name == "whisper-base"  # the deployment's default
    assert registry.lookup("tts-1", ModelRole.tts).name == "hibari"
    assert registry.lookup(None, ModelRole.llm).name == "gemma-3-270m"
    with pytest.raises(UnknownModel):
        registry.lookup("gemma-3-12b-it", ModelRole.stt)  # registered, but not for that role
    for name in HOSTILE:
        with pytest.raises(UnknownModel):
            registry.lookup(name, ModelRole.llm)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("m:\n  role: llm\n  source: relative/model.gguf\n", "absolute path"),
        ("m:\n  role: llm\n  source: hf://only-owner/file.gguf\n", "hf://owner/repo/path"),
        ("m:\n  role: tts\n  source: /x\n", "m.role"),
        ("m:\n  role: llm\n  source: /x\n  download: true\n", "m.download"),
        ("gemma-3-270m:\n  role: llm\n  source: /x\n", "built-in"),
        ("../evil:\n  role: llm\n  source: /x\n", "not a model name"),
        ("m:\n  role: llm\n  source: /x\n  aliases: [whisper-base]\n", "also model names"),
        ("[1, 2]\n", "mapping"),
        (f"m:\n  role: llm\n  source: /x\n  sha256: {'1' * 64}\n", "quote the digest"),
        ("m: {role: llm, source: [\n", "MODELS_FILE"),
    ],
)
def test_a_bad_models_file_is_refused_naming_the_problem(tmp_path: Path, text: str, complaint: str) -> None:
    with pytest.raises(ModelsFileError, match=complaint.replace(".", r"\.")):
        registry_for(tmp_path, text)


def test_defaults_must_be_registered_and_a_path_default_is_served_by_its_stem(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="LLM_MODEL='evil/repo' is not a registered llm model"):
        Registry.load(Settings(llm_model="evil/repo"))
    registry = Registry.load(Settings(llm_model=str(tmp_path / "my-model.gguf")))
    assert registry.lookup(None, ModelRole.llm).name == "my-model"
    with pytest.raises(UnknownModel):  # clients name it by its registry name, never by the path
        registry.lookup(str(tmp_path / "my-model.gguf"), ModelRole.llm)


def _routes(audio: bytes) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(method, path, httpx keyword arguments) of every route that takes a model, for a model `{}`."""
    wav = ("a.wav", audio, "audio/wav")
    yield "POST", "/v1/jobs/generate", {"json": {"prompt": "hi", "model": "{}"}}
    yield "POST", "/v1/jobs/chat", {"json": {"messages": [{"role": "user", "content": "hi"}], "model": "{}"}}
    yield "POST", "/v1/jobs/completion", {"json": {"prompt": "hi", "model": "{}"}}
    yield "POST", "/v1/generate", {"json": {"prompt": "hi", "model": "{}"}}
    yield "POST", "/v1/generate_stream", {"json": {"prompt": "hi", "model": "{}"}}
    yield "POST", "/v1/chat/completions", {"json": {"model": "{}", "messages": [{"role": "user", "content": "hi"}]}}
    yield "POST", "/v1/completions", {"json": {"model": "{}", "prompt": "hi"}}
    yield "POST", "/v1/jobs/synthesize", {"json": {"text": "hi", "model": "{}"}}
    yield "POST", "/v1/text-to-speech", {"json": {"text": "hi", "model": "{}"}}
    yield "POST", "/v1/audio/speech", {"json": {"model": "{}", "input": "hi", "voice": "alloy"}}
    yield "POST", "/v1/jobs/transcribe", {"files": {"file": wav}, "data": {"model": "{}"}}
    yield "POST", "/v1/speech-to-text", {"files": {"file": wav}, "data": {"model": "{}"}}
    yield "POST", "/v1/audio/transcriptions", {"files": {"file": wav}, "data": {"model": "{}"}}
    yield "POST", "/v1/audio/translations", {"files": {"file": wav}, "data": {"model": "{}"}}
    config = {"generation_config": json.dumps({"model": "{}"})}
    yield "POST", "/v1/dialogue", {"files": {"file": wav}, "data": config}
    yield "POST", "/v1/jobs/dialogue", {"files": {"file": wav}, "data": config}
    yield "POST", "/v1/jobs/dialogue", {"files": {"file": wav}, "data": {"synthesis_config": '{"model": "{}"}'}}
    yield "GET", "/v1/models/{}", {}


def _with_model(kwargs: dict[str, Any], model: str) -> dict[str, Any]:
    """The route's arguments with `model` in place of the `{}` placeholder (JSON-escaped inside JSON)."""
    escaped = json.dumps(model)[1:-1]
    if "files" in kwargs:
        data = {k: v.replace("{}", escaped if v.startswith("{") else model) for k, v in kwargs["data"].items()}
        return {"files": kwargs["files"], "data": data}
    if "json" in kwargs:
        return {"json": json.loads(json.dumps(kwargs["json"]).replace('"{}"', json.dumps(model)))}
    return {}


def _assert_model_not_found(response: httpx.Response | httpx2.Response, model: str) -> None:
    """`response` from a live stack (httpx) or from Starlette's TestClient (httpx2)."""
    assert response.status_code == 404, (response.request.url.path, response.text[:300])
    error = response.json()["error"]
    assert error["code"] == "model_not_found"
    assert error["message"] == "The model does not exist or is not served here; GET /v1/models lists the models"
    assert model[:40] not in response.text or len(model) < 8  # never echoed back


@pytest.fixture(scope="module")
def short_wav() -> bytes:
    return spoken("fox")


def test_every_route_that_takes_a_model_refuses_an_unregistered_one_before_a_job_exists(
    client: httpx.Client, short_wav: bytes
) -> None:
    before = client.get("/v1/jobs", params={"limit": 100}).json()["data"]
    for method, path, kwargs in _routes(short_wav):
        for model in random.Random(path).sample(HOSTILE, 4) + [HOSTILE[0]]:
            if method == "GET":
                response = client.get(path.format(model.replace("/", "%2F")))
            else:
                response = client.request(method, path, **_with_model(kwargs, model))
            _assert_model_not_found(response, model)
    assert client.get("/v1/jobs", params={"limit": 100}).json()["data"] == before


def test_a_batch_line_naming_an_unregistered_model_fails_as_model_not_found(client: httpx.Client) -> None:
    line = {
        "custom_id": "a",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "evil/repo", "messages": [{"role": "user", "content": "hi"}]},
    }
    upload = client.post(
        "/v1/files",
        data={"purpose": "batch"},
        files={"file": ("b.jsonl", json.dumps(line).encode(), "application/jsonl")},
    )
    assert upload.status_code == 200, upload.text
    created = client.post(
        "/v1/batches",
        json={"input_file_id": upload.json()["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"},
    )
    batch = created.json()
    assert batch["status"] == "failed", batch
    [error] = batch["errors"]["data"]
    assert error["code"] == "model_not_found" and error["line"] == 1
    assert "evil" not in error["message"]


class OpenedFiles:
    """Every file this process opens and every address it connects to, from Python's audit hooks."""

    active = False
    opened: list[str] = []
    connected: list[object] = []

    @classmethod
    def hook(cls, event: str, args: tuple[object, ...]) -> None:
        if not cls.active:
            return
        if event == "open" and args and isinstance(args[0], str | bytes):
            cls.opened.append(str(args[0]))
        elif event in ("socket.connect", "socket.getaddrinfo"):
            cls.connected.append(args[1] if event == "socket.connect" else args[0])


sys.addaudithook(OpenedFiles.hook)


def test_unregistered_names_open_no_file_and_try_no_network(redis_url: str, short_wav: bytes) -> None:
    """In this process: the API refusing every hostile name, and the worker's model cache refusing them
    too (a job from an API with another registry), with every open() and connect() recorded."""
    from api.app import create_app
    from contract.errors import ModelUnavailable
    from workers.models import ModelCache

    settings = Settings(redis_url=redis_url)
    redis_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    app = create_app(settings)
    with TestClient(app) as http:
        OpenedFiles.active = True
        try:
            for method, path, kwargs in _routes(short_wav):
                for model in HOSTILE:
                    if method == "POST":
                        _assert_model_not_found(http.request(method, path, **_with_model(kwargs, model)), model)
            Path(__file__).read_bytes()  # the control: an open() the hook must see
            cache = ModelCache(settings)
            for model in HOSTILE:
                for use in (cache.llm, cache.stt):
                    with pytest.raises(ModelUnavailable), use(model):
                        pass
        finally:
            OpenedFiles.active = False
    assert cache.loaded == []
    assert __file__ in OpenedFiles.opened
    touched = [p for p in OpenedFiles.opened if any(h in p for h in ("sentinel", "passwd", "evil", "gemma-3-270m"))]
    assert touched == []
    elsewhere = [
        a
        for a in OpenedFiles.connected
        if not (isinstance(a, tuple) and a[1] == redis_port) and a not in ("127.0.0.1", "localhost", "testserver")
    ]
    assert elsewhere == [], elsewhere


def test_aliases_share_one_copy_and_the_cache_keeps_its_bound() -> None:
    from workers.models import ModelCache

    settings = Settings(model_cache_size=1, llm_n_ctx=512, llm_parallel=1)
    use_registry(Registry.load(settings))
    cache = ModelCache(settings)
    with cache.stt("whisper-1") as first, cache.stt("whisper-tiny.en") as second:
        assert first is second
    with cache.llm("gemma-3-270m") as gemma, cache.llm("smollm2-135m-instruct") as smol:
        assert cache.loaded == ["gemma-3-270m", "smollm2-135m-instruct", "whisper-tiny.en"]  # both in use
        assert gemma is not smol
    # smollm2 was let go first, while gemma was still in use: the bound of one held, gemma stayed.
    assert cache.loaded == ["gemma-3-270m", "whisper-tiny.en"]
    loads: list[str] = []
    cache.on_load = lambda name, _seconds: loads.append(name)
    barrier = threading.Barrier(4)

    def use() -> None:
        barrier.wait()
        with cache.llm("smollm2-135m-instruct"):
            pass

    threads = [threading.Thread(target=use) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert loads == ["smollm2-135m-instruct"]  # four users at once, one load
    assert cache.loaded == ["smollm2-135m-instruct", "whisper-tiny.en"]


def test_a_soak_of_random_spellings_leaves_the_worker_cache_at_its_bound(tmp_path: Path, short_wav: bytes) -> None:
    rng = random.Random(13)
    llms = ["gemma-3-270m", "smollm2-135m-instruct"]
    stts = ["whisper-1", "whisper-tiny.en"]
    with (
        private_stack(tmp_path, "llm,stt", MODEL_CACHE_SIZE="1", LLM_PARALLEL="2") as stack,
        httpx.Client(base_url=stack.url, timeout=60) as client,
    ):
        jobs, refused = [], 0
        for _ in range(200):
            roll = rng.random()
            if roll < 0.8:
                model = rng.choice([*HOSTILE, *(n.upper() for n in llms), *(f"{n}.gguf" for n in llms)])
                response = client.post("/v1/jobs/completion", json={"prompt": "a", "max_tokens": 1, "model": model})
                assert response.status_code == 404, response.text[:200]
                refused += 1
            elif roll < 0.95:
                body = {"prompt": "a", "max_tokens": 1, "temperature": 0, "model": rng.choice(llms)}
                jobs.append(client.post("/v1/jobs/completion", json=body).json()["id"])
            else:
                data = {"model": rng.choice(stts)}
                files = {"file": ("a.wav", io.BytesIO(short_wav), "audio/wav")}
                jobs.append(client.post("/v1/jobs/transcribe", data=data, files=files).json()["id"])
        for job in jobs:

            def succeeded(job: str = job) -> bool:
                return bool(client.get(f"/v1/jobs/{job}").json()["status"] == "succeeded")

            wait_until(succeeded, timeout=120, what=f"job {job}")
        assert refused > 100 and len(jobs) > 20

        def advertised() -> list[str]:
            return [m for w in client.get("/v1/workers").json()["data"] for m in w.get("models", [])]

        def within_bounds() -> list[str] | None:
            loaded = advertised()
            llm_count, stt_count = sum(m in llms for m in loaded), sum(m.startswith("whisper") for m in loaded)
            return loaded if llm_count <= 1 and stt_count <= 1 else None

        # The advert is rewritten every WORKER_HEARTBEAT_SECONDS (5): the last job's unload shows within one.
        loaded = wait_until(within_bounds, timeout=15, what="one model of each role advertised")
        assert set(loaded) <= {*llms, "whisper-tiny.en"}


def test_workers_never_download() -> None:
    """A worker process runs with HF_HUB_OFFLINE=1 whatever its environment says."""
    import subprocess

    from tests.stack import ROOT

    probe = (
        "import os; from workers.startup import prepare_worker; prepare_worker(['stt']); "
        "import huggingface_hub.constants as c; print(os.environ['HF_HUB_OFFLINE'], c.HF_HUB_OFFLINE)"
    )
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "0"}
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["1", "True"], done.stderr


def test_models_prepare_fetches_an_hf_entry_and_checks_its_digest(tmp_path: Path) -> None:
    """`speechq models prepare` is the one step that downloads: it fetches an `hf://` entry from the hub
    (a local server speaking its protocol) into the models folder and refuses a file whose sha256 differs;
    a worker then resolves the prepared copy without any network."""
    import hashlib
    import http.server
    import subprocess

    from contract.catalog import CatalogEntry
    from tests.stack import ROOT, SPEECHQ
    from workers.weights import locate

    weights = b"GGUF" + bytes(range(256)) * 8
    digest = hashlib.sha256(weights).hexdigest()
    asked: list[str] = []

    class Hub(http.server.BaseHTTPRequestHandler):
        def _headers(self) -> bool:
            asked.append(f"{self.command} {self.path}")
            if self.path != "/acme/tiny/resolve/main/weights/model.gguf":
                self.send_response(404)
                self.end_headers()
                return False
            self.send_response(200)
            self.send_header("X-Repo-Commit", "a" * 40)
            self.send_header("ETag", f'"{digest}"')
            self.send_header("Content-Length", str(len(weights)))
            self.end_headers()
            return True

        def do_HEAD(self) -> None:
            self._headers()

        def do_GET(self) -> None:
            if self._headers():
                self.wfile.write(weights)

        def log_message(self, *_: object) -> None:
            pass

    hub = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    models = tmp_path / "models"
    models_file = tmp_path / "models.yaml"
    models_file.write_text(
        f"tiny:\n  role: llm\n  source: hf://acme/tiny/weights/model.gguf\n  sha256: {digest}\n"
        f"tampered:\n  role: llm\n  source: hf://acme/tiny/weights/model.gguf\n  sha256: '{'1' * 64}'\n"
    )
    env = {
        **os.environ,
        "MODELS_FILE": str(models_file),
        "LLM_MODELS_DIR": str(models),
        "HF_ENDPOINT": f"http://127.0.0.1:{hub.server_port}",
        "HF_HUB_OFFLINE": "0",
    }
    try:
        done = subprocess.run(
            [*SPEECHQ, "models", "prepare", "tiny"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        prepared = models / "hf" / "acme" / "tiny" / "weights" / "model.gguf"
        assert prepared.read_bytes() == weights and "GET /acme/tiny/resolve/main/weights/model.gguf" in asked
        refused = subprocess.run(
            [*SPEECHQ, "models", "prepare", "tampered"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert refused.returncode == 1 and "does not match its sha256" in refused.stderr
    finally:
        hub.shutdown()
        hub.server_close()
    asked.clear()
    entry = CatalogEntry(
        name="tiny",
        role=ModelRole.llm,
        package="",
        description="",
        license="",
        source="hf://acme/tiny/weights/model.gguf",
    )
    assert locate(entry, models) == prepared and asked == []  # the worker's side: no request at all
