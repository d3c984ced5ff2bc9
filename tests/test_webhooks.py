"""Webhooks (SPEC §11, issue 24): signed events from a durable outbox, delivered to a real receiver on
loopback over real HTTP, verified with the official `openai` client and the `standardwebhooks` package.

The stack is the module's own (a Valkey, an `llm` worker, an API whose WEBHOOK_ALLOWED_HOSTS names the
receiver's address, 127.0.0.2), since its last test kills the API and restarts Valkey under it.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import json
import os
import signal
import threading
import time
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
from standardwebhooks import Webhook, WebhookVerificationError

from api.webhooks.delivery import Signatures
from api.webhooks.urls import RefusedUrl, WebhookPolicy
from cli.embedded_redis import EmbeddedRedis
from config.settings import SettingsError, load_settings
from jobstore import keys
from jobstore.webhooks import Delivery
from tests.conftest import MISSING_MODEL
from tests.stack import Process, base_env, free_port, start_api, start_worker, wait_for_worker, wait_until

OLD_SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # base64 of 24 bytes
NEW_SECRET = "whsec_" + "C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
WRONG_SECRET = "whsec_" + "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
RECEIVER_HOST = "127.0.0.2"  # a loopback address of its own, so that 127.0.0.1 is one the server refuses
PROMPT = {"prompt": "Hello", "max_tokens": 4, "temperature": 0}


# --- a receiver ------------------------------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered
    at: float  # time.monotonic()


@dataclass
class Receiver:
    """An HTTP server on loopback that answers each path as told (`answers`: a status, or a function giving
    one, or "slow": no answer for 60 s or until `release`) and records every request it gets."""

    url: str = ""
    answers: dict[str, int | str | Callable[[], int]] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def at(self, path: str) -> list[Received]:
        with self.lock:
            return [request for request in self.received if request.path == path]

    def delivered(self, path: str, timeout: float = 120.0) -> Received:
        """The first request to `path` answered 2xx, once there is one."""
        return wait_until(
            lambda: next((r for r in self.at(path) if 200 <= r.status < 300), None),
            timeout=timeout,
            what=f"a delivery to {path}",
        )


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            answer = state.answers.get(self.path, 200)
            if answer == "slow":
                state.release.wait(60.0)
                answer = 200
            status = answer() if callable(answer) else int(answer)
            with state.lock:
                state.received.append(Received(self.path, dict(self.headers), body, status, time.monotonic()))
            self.send_response(status)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((RECEIVER_HOST, 0), Handler)
    server.daemon_threads = True
    server.block_on_close = False
    state.url = f"http://{RECEIVER_HOST}:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()


# --- the module's stack ----------------------------------------------------------------------------------


@dataclass
class WebhookStack:
    folder: Path
    valkey: EmbeddedRedis
    env: dict[str, str]
    worker: Process
    api: Process
    url: str

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60)

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(api_key="unused", base_url=f"{self.url}/v1", max_retries=0)

    def restart_api(self) -> None:
        self.api, self.url = start_api(self.env, self.folder)


@pytest.fixture(scope="module")
def hooks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebhookStack]:
    folder = tmp_path_factory.mktemp("webhooks")
    (folder / "models.yaml").write_text(f"{MISSING_MODEL}:\n  role: llm\n  source: /nonexistent/model.gguf\n")
    valkey = EmbeddedRedis(folder / "valkey", free_port())
    valkey.start()
    env = base_env(
        valkey.url,
        folder,
        MODELS_FILE=str(folder / "models.yaml"),
        # `localhost` is allowed as a name, but it resolves to 127.0.0.1, a loopback address no entry names.
        WEBHOOK_ALLOWED_HOSTS=f"{RECEIVER_HOST},localhost",
        WEBHOOK_SECRET=f"{OLD_SECRET},{NEW_SECRET}",  # rotation: both sign every delivery
        WEBHOOK_BACKOFF_MAX_SECONDS="3",
        BATCH_SWEEP_INTERVAL_SECONDS="0.5",
    )
    worker = start_worker(env, folder, queues="llm")
    api, url = start_api(env, folder)
    stack = WebhookStack(folder, valkey, env, worker, api, url)
    try:
        wait_for_worker(url, worker)
        yield stack
    finally:
        stack.api.stop()
        worker.stop()
        valkey.stop()


def silence(seconds: float = 0.5) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16_000)
        wav.writeframes(b"\0\0" * int(16_000 * seconds))
    return out.getvalue()


def job_webhook(stack: WebhookStack, job_id: str) -> dict[str, Any]:
    with stack.client() as client:
        body: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        return dict(body.get("webhook") or {})


def delivered_state(stack: WebhookStack, job_id: str) -> dict[str, Any]:
    return state_of(stack, job_id, "delivered")


def state_of(stack: WebhookStack, job_id: str, state: str, timeout: float = 30) -> dict[str, Any]:
    """The job's webhook, once it is in `state`."""

    def reached() -> dict[str, Any] | None:
        hook = job_webhook(stack, job_id)
        return hook if hook.get("state") == state else None

    return wait_until(reached, timeout=timeout, what=f"job {job_id}'s webhook to be {state}")


def unwrapped(request: Received) -> Any:
    """The event, verified as a receiver would: `openai`'s `webhooks.unwrap` with either secret, and the
    `standardwebhooks` package; a wrong secret is refused by both (the check can fail)."""
    client = openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:9/v1")
    for secret in (OLD_SECRET, NEW_SECRET):
        event = client.webhooks.unwrap(request.body, request.headers, secret=secret)
    Webhook(NEW_SECRET).verify(request.body, request.headers)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.unwrap(request.body, request.headers, secret=WRONG_SECRET)
    with pytest.raises(WebhookVerificationError):
        Webhook(WRONG_SECRET).verify(request.body, request.headers)
    return event


# --- the tests --------------------------------------------------------------------------------------------


def test_a_url_the_server_would_not_call_is_refused_when_the_job_is_made(
    hooks: WebhookStack, receiver: Receiver, client: httpx.Client
) -> None:
    refused = {
        "http://example.com/hook": "not among the hosts",
        f"http://localhost:{free_port()}/hook": "resolves to",
        "http://127.0.0.1:9/hook": "not among the hosts",
        "http://10.0.0.1/hook": "not among the hosts",
        "http://169.254.169.254/latest/meta-data/": "not among the hosts",
        "ftp://127.0.0.1/hook": "http or https",
        "http://user:secret@127.0.0.1:9/hook": "credentials",
        "http://[::ffff:127.0.0.1]:9/hook": "not among the hosts",
    }
    with hooks.client() as api:
        for url, why in refused.items():
            answer = api.post("/v1/jobs/generate", json={**PROMPT, "webhook_url": url})
            assert answer.status_code == 422, (url, answer.text)
            error = answer.json()["error"]
            assert error["param"] == "webhook_url" and why in error["message"], (url, error)
        # A form field, and a batch, the same way.
        form = {"webhook_url": "http://example.com/hook"}
        answer = api.post("/v1/jobs/transcribe", data=form, files={"file": ("a.wav", silence(), "audio/wav")})
        assert answer.status_code == 422 and answer.json()["error"]["param"] == "webhook_url"
        answer = api.post("/v1/batches", json={"input_file_id": "file-x", "endpoint": "/v1/completions", **form})
        assert answer.status_code == 422 and answer.json()["error"]["param"] == "webhook_url"
        # webhook_events: only the four ends, and only with a URL.
        answer = api.post("/v1/jobs/generate", json={**PROMPT, "webhook_url": receiver.url, "webhook_events": ["x"]})
        assert answer.status_code == 422 and "webhook_events" in answer.text
        answer = api.post("/v1/jobs/generate", json={**PROMPT, "webhook_events": ["failed"]})
        assert answer.status_code == 422 and answer.json()["error"]["param"] == "webhook_events"
        assert not receiver.received, "nothing refused was queued"
    # The session's stack sets no WEBHOOK_ALLOWED_HOSTS: webhooks are off there, and it says so.
    answer = client.post("/v1/jobs/generate", json={**PROMPT, "webhook_url": f"{receiver.url}/off"})
    assert answer.status_code == 422 and "WEBHOOK_ALLOWED_HOSTS" in answer.json()["error"]["message"]


def test_a_job_a_chat_a_failure_and_a_batch_each_deliver_one_signed_event(
    hooks: WebhookStack, receiver: Receiver
) -> None:
    with hooks.client() as api:
        job = api.post("/v1/jobs/generate", json={**PROMPT, "webhook_url": f"{receiver.url}/job"}).json()
        failing = api.post(
            "/v1/jobs/generate",
            json={**PROMPT, "model": MISSING_MODEL, "webhook_url": f"{receiver.url}/failed"},
        ).json()
        cancelled = api.post(
            "/v1/jobs/generate",
            json={
                **PROMPT,
                "max_tokens": 400,
                "webhook_url": f"{receiver.url}/cancelled",
                "webhook_events": ["cancelled"],
            },
        ).json()
        assert api.delete(f"/v1/jobs/{cancelled['id']}").status_code == 202
        unwanted = api.post(
            "/v1/jobs/generate",
            json={**PROMPT, "webhook_url": f"{receiver.url}/unwanted", "webhook_events": ["failed"]},
        ).json()
    oai = hooks.openai()
    chat = oai.chat.completions.with_raw_response.create(
        model="smollm2-135m-instruct",
        max_tokens=4,
        temperature=0,
        messages=[{"role": "user", "content": "Hi"}],
        extra_body={"webhook_url": f"{receiver.url}/chat", "webhook_events": ["succeeded"]},
    )
    chat_job = chat.headers["x-job-id"]
    lines = [
        {"custom_id": str(n), "method": "POST", "url": "/v1/completions", "body": {"model": "gemma-3-270m", **PROMPT}}
        for n in range(2)
    ]
    uploaded = oai.files.create(
        file=("b.jsonl", "".join(json.dumps(line) + "\n" for line in lines).encode()), purpose="batch"
    )
    batch = oai.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/completions",
        completion_window="24h",
        extra_body={"webhook_url": f"{receiver.url}/batch"},
    )

    event = unwrapped(receiver.delivered("/job"))
    assert event.type == "job.succeeded" and event.object == "event" and event.id.startswith("evt_")
    assert event.data.id == job["id"] and event.data.kind == "generate" and event.data.status == "succeeded"
    assert abs(event.created_at - time.time()) < 120
    assert "result" not in json.loads(receiver.at("/job")[0].body)["data"], "no results in the body"
    request = receiver.at("/job")[0]
    assert request.headers["webhook-id"] == event.id and len(request.headers["webhook-signature"].split()) == 2

    event = unwrapped(receiver.delivered("/failed"))
    assert event.type == "job.failed" and event.data.id == failing["id"]
    with hooks.client() as api:
        assert event.data.error == api.get(f"/v1/jobs/{failing['id']}").json()["error"]  # the job's error object
    assert event.data.error["type"] == "model_unavailable" and event.data.error["message"]

    event = unwrapped(receiver.delivered("/cancelled"))
    assert event.type == "job.cancelled" and event.data.id == cancelled["id"] and event.data.status == "cancelled"

    event = unwrapped(receiver.delivered("/chat"))
    assert event.type == "job.succeeded" and event.data.id == chat_job and event.data.kind == "chat"

    event = unwrapped(receiver.delivered("/batch"))
    assert event.type == "batch.completed" and event.data.id == batch.id
    assert oai.batches.retrieve(batch.id).status == "completed"

    # Once each, and the job says so.
    hook = delivered_state(hooks, job["id"])
    assert hook["url"] == f"{receiver.url}/job" and hook["attempts"] == 1 and hook["last_status"] == 200
    assert hook["event_id"] == receiver.at("/job")[0].headers["webhook-id"]
    assert hook["events"] == ["succeeded", "failed", "cancelled", "expired"]
    for path in ("/job", "/failed", "/cancelled", "/chat", "/batch"):
        assert len(receiver.at(path)) == 1, path
    # A job that succeeded, whose webhook wanted only failures: nothing sent, and it says so.
    state_of(hooks, unwanted["id"], "not_sent", timeout=60)
    assert not receiver.at("/unwanted")


def test_a_receiver_down_for_30_seconds_gets_the_event_once_it_is_back(hooks: WebhookStack, receiver: Receiver) -> None:
    up_at = time.monotonic() + 30.0
    receiver.answers["/down"] = lambda: 503 if time.monotonic() < up_at else 200
    with hooks.client() as api:
        job = api.post("/v1/jobs/generate", json={**PROMPT, "webhook_url": f"{receiver.url}/down"}).json()
        failing = state_of(hooks, job["id"], "failing", timeout=60)
        assert failing["last_status"] == 503 and "503" in failing["last_error"] and failing["next_attempt_at"]
        pending = [line for line in api.get("/metrics").text.splitlines() if "webhook_oldest_pending" in line]
        assert any(not line.startswith("#") and float(line.split()[-1]) > 0 for line in pending), pending
        delivered = receiver.delivered("/down", timeout=90)
        # Back at `up_at`: the next try comes within one longest wait (3 s) and a poll.
        assert delivered.at - up_at < 3.0 + 5.0
        tries = receiver.at("/down")
        assert len({request.headers["webhook-id"] for request in tries}) == 1, "every try is the same event"
        assert [request.status for request in tries].count(200) == 1
        assert len(tries) >= 5, "tried again and again while it was down"
        hook = delivered_state(hooks, job["id"])
        assert hook["attempts"] == len(tries) and hook["last_error"] is None
        metrics = api.get("/metrics").text
        assert 'app_webhook_deliveries_total{outcome="retried"}' in metrics


def test_a_slow_receiver_does_not_hold_the_others(hooks: WebhookStack, receiver: Receiver) -> None:
    receiver.answers["/slow"] = "slow"
    with hooks.client() as api:
        slow = api.post("/v1/jobs/generate", json={**PROMPT, "webhook_url": f"{receiver.url}/slow"}).json()
        state_of(hooks, slow["id"], "pending", timeout=60)
        others = [
            api.post("/v1/jobs/generate", json={**PROMPT, "webhook_url": f"{receiver.url}/other{n}"}).json()
            for n in range(3)
        ]
        for n, _ in enumerate(others):
            receiver.delivered(f"/other{n}", timeout=60)
        assert not receiver.release.is_set() and not receiver.at("/slow"), "the slow receiver still holds its try"
        # Its own try ends at WEBHOOK_TIMEOUT_SECONDS (5 s), and is tried again.
        hook = state_of(hooks, slow["id"], "failing", timeout=30)
        assert "no answer within 5 s" in hook["last_error"]


def test_an_event_survives_an_api_killed_and_valkey_restarted_before_its_delivery(
    hooks: WebhookStack, receiver: Receiver
) -> None:
    """Last in the module: it kills the API and restarts Valkey (SIGKILL, AOF) between the job's end and
    its delivery; a fresh API delivers it, with the id of the tries before."""
    receiver.answers["/flaky"] = 503
    with hooks.client() as api:
        job = api.post("/v1/jobs/generate", json={**PROMPT, "webhook_url": f"{receiver.url}/flaky"}).json()
    state_of(hooks, job["id"], "failing", timeout=60)
    first_id = receiver.at("/flaky")[0].headers["webhook-id"]
    os.kill(hooks.api.pid, signal.SIGKILL)
    hooks.api.stop()
    time.sleep(1.5)  # Valkey's AOF is fsynced every second: what it has held a second is on disk
    with redis.Redis.from_url(hooks.valkey.url) as probe:
        assert probe.exists(keys.webhook(first_id))
        pid = int(probe.info("server")["process_id"])
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not _answers(hooks.valkey.url), timeout=10, what="Valkey to be gone")
    hooks.valkey.stop()
    hooks.valkey = EmbeddedRedis(hooks.folder / "valkey", int(hooks.valkey.url.rsplit(":", 1)[1].split("/")[0]))
    hooks.valkey.start()
    receiver.answers["/flaky"] = 200
    tried_before = len(receiver.at("/flaky"))
    hooks.restart_api()
    delivered = receiver.delivered("/flaky", timeout=60)
    assert delivered.headers["webhook-id"] == first_id
    assert len(receiver.at("/flaky")) == tried_before + 1
    assert delivered_state(hooks, job["id"])["event_id"] == first_id


def _answers(url: str) -> bool:
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=0.5) as probe:
            return bool(probe.ping())
    except redis.RedisError:
        return False


def test_the_policy_checks_every_address_a_name_resolves_to() -> None:
    """Unit checks of `WebhookPolicy` the HTTP tests above do not reach: names, suffixes and networks."""
    policy = WebhookPolicy(["hooks.example.com", "*.corp.example", "10.1.0.0/16", "::1"])
    assert policy.enabled and not WebhookPolicy([]).enabled
    policy.parse("https://hooks.example.com/x")
    policy.parse("https://a.b.corp.example:8443/x")
    policy.parse("http://10.1.2.3/x")
    policy.parse("http://[::1]:8080/x")
    for url in ("https://example.com/x", "https://corp.example/x", "http://10.2.0.1/x", "http://127.0.0.1/x"):
        with pytest.raises(RefusedUrl):
            policy.parse(url)
    assert policy.permits(ipaddress.ip_address("10.1.9.9"))
    for address in (
        "127.0.0.1",
        "10.2.0.1",
        "169.254.169.254",
        "192.168.1.1",
        "100.64.0.1",
        "::ffff:127.0.0.1",
        "fe80::1",
    ):
        assert not policy.permits(ipaddress.ip_address(address)), address
    assert policy.permits(ipaddress.ip_address("93.184.215.14"))
    # An allowed name that resolves to loopback is refused at the check a delivery makes too.
    with pytest.raises(RefusedUrl, match="resolves to"):
        asyncio.run(WebhookPolicy(["localhost"]).target("http://localhost:9/x"))
    target = asyncio.run(WebhookPolicy(["127.0.0.1"]).target("http://127.0.0.1:9/x"))
    assert str(target.address) == "127.0.0.1" and target.port == 9


def test_each_key_signs_with_its_own_secrets_or_the_operators() -> None:
    key_secret = "whsec_" + "S2V5U2VjcmV0Rm9yS2V5QWJjMTIz"
    settings = load_settings(
        webhook_allowed_hosts="hooks.example.com",
        webhook_secret=f"{OLD_SECRET},{NEW_SECRET}",
        webhook_key_secrets={"key_abc": [key_secret]},
    )
    signatures = Signatures(settings)
    body = json.dumps({"object": "event", "id": "evt_1", "type": "job.succeeded", "data": {"id": "job_1"}})
    now = datetime.now(UTC)
    for owner, good, bad in (
        ("key_abc", [key_secret], OLD_SECRET),
        ("key_other", [OLD_SECRET, NEW_SECRET], key_secret),
    ):
        delivery = Delivery("evt_1", "https://hooks.example.com/", owner, "job_1", "job.succeeded", body, 0.0, 0)
        headers = signatures.headers(delivery, now)
        assert headers["webhook-id"] == "evt_1" and headers["webhook-timestamp"] == str(int(now.timestamp()))
        assert len(headers["webhook-signature"].split()) == len(good)
        for secret in good:
            Webhook(secret).verify(body, headers)
        with pytest.raises(WebhookVerificationError):
            Webhook(bad).verify(body, headers)


def test_webhook_settings_are_checked_at_start_up() -> None:
    with pytest.raises(SettingsError, match="WEBHOOK_SECRET is not"):
        load_settings(webhook_allowed_hosts="hooks.example.com")
    with pytest.raises(SettingsError, match="whsec_"):
        load_settings(webhook_allowed_hosts="hooks.example.com", webhook_secret="not-a-secret")
    with pytest.raises(SettingsError) as refused:
        load_settings(webhook_allowed_hosts="hooks.example.com", webhook_secret="whsec_c2hvcnQ=")
    assert "c2hvcnQ" not in str(refused.value), "a secret is never echoed"
    assert load_settings().webhook_allowed_hosts == []
