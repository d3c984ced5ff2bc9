"""The server half of the console (SPEC §13, issue 25): the browser port, the console's files and their content
security policy, the docs without a CDN, the owner-scoped job feed, and the queue and worker views. The
page itself is driven in Chromium by tests/test_console.py."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from httpx_sse import ServerSentEvent, connect_sse

from tests.conftest import Stack
from tests.stack import Process, base_env, free_port, start_api, wait_until

OPERATOR_KEY = "operator-key-0123456789"
USER_KEY = "user-key-0123456789"
OTHER_KEY = "other-key-0123456789"


def key_id(key: str) -> str:
    return "key_" + hashlib.sha256(key.encode()).hexdigest()[:12]


@dataclass
class KeyedApi:
    url: str  # the API port
    console: str  # the browser port
    process: Process


@pytest.fixture(scope="module")
def keyed(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyedApi]:
    """An API with keys on, beside the session's (same Valkey and worker), listening on a browser port too."""
    folder = tmp_path_factory.mktemp("console-api")
    console_port = free_port()
    env = base_env(
        stack.redis_url,
        folder,
        API_KEY_ENABLED="true",
        API_KEYS=f"{OPERATOR_KEY},{USER_KEY},{OTHER_KEY}",
        OPERATOR_KEY_IDS=key_id(OPERATOR_KEY),
        CONSOLE_PORT=str(console_port),
    )
    process, url = start_api(env, folder)
    try:
        yield KeyedApi(url, f"http://127.0.0.1:{console_port}", process)
    finally:
        process.stop()


def test_the_browser_port_serves_the_api_the_console_and_the_docs_without_a_key(keyed: KeyedApi) -> None:
    assert "console    http://127.0.0.1:" in keyed.process.log()
    with httpx.Client(base_url=keyed.console, timeout=10) as browser:
        page = browser.get("/console")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy and "default-src 'self'" in policy
        assert page.headers["x-content-type-options"] == "nosniff"
        assert "<script" in page.text and "<script>" not in page.text, "scripts come from files, never inline"
        for src in _script_sources(page.text):
            script = browser.get(src)
            assert script.status_code == 200 and "javascript" in script.headers["content-type"], src
        # Only plain file names of the console's folder: no path, no other file of the package.
        for probe in ("/console/..%2Fapp.py", "/console/%2e%2e%2fapp.py", "/console/app.py", "/console/nothing.js"):
            assert browser.get(probe).status_code == 404, probe
        docs = browser.get("/docs")
        assert docs.status_code == 200 and "/docs/static/swagger-ui-bundle.js" in docs.text
        assert "cdn" not in docs.text.lower(), "the docs load nothing from elsewhere"
        assert browser.get("/docs/static/swagger-ui-bundle.js").status_code == 200
        # Whether a key is needed, asked without one: the page asks for a key before it is refused.
        assert browser.get("/health").json() == {"status": "ok", "api_key_required": True}
        # The API itself answers there too, with a key as everywhere.
        assert browser.get("/v1/models").status_code == 401
        assert browser.get("/v1/models", headers={"X-API-Key": USER_KEY}).status_code == 200


def _script_sources(html: str) -> list[str]:
    sources = []
    for chunk in html.split("<script")[1:]:
        attributes = chunk.split(">", 1)[0]
        if "src=" in attributes:
            src = attributes.split("src=", 1)[1].strip().split()[0].strip("\"'")
            sources.append(src if src.startswith("/") else f"/console/{src.removeprefix('./')}")
    return sources


def test_a_taken_console_port_is_one_log_line_and_the_api_serves(stack: Stack, tmp_path: Path) -> None:
    assert httpx.get(f"{stack.url}/health").json() == {"status": "ok", "api_key_required": False}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        env = base_env(stack.redis_url, tmp_path, CONSOLE_PORT=str(taken.getsockname()[1]))
        process, url = start_api(env, tmp_path)
        try:
            assert httpx.get(f"{url}/health", timeout=5).status_code == 200
            lines = [line for line in process.log().splitlines() if "console port" in line]
            assert len(lines) == 1 and "not available" in lines[0] and "CONSOLE_PORT" in lines[0], lines
        finally:
            process.stop()


def feed_events(url: str, key: str | None, until: float, stop: str | None = None) -> list[ServerSentEvent]:
    """The feed's events for `until` seconds (or until a `job` event's data contains `stop`)."""
    headers = {"X-API-Key": key} if key else {}
    events: list[ServerSentEvent] = []
    deadline = time.monotonic() + until
    with (
        httpx.Client(base_url=url, timeout=httpx.Timeout(5, read=until + 5)) as client,
        connect_sse(client, "GET", "/v1/jobs/feed", headers=headers) as source,
    ):
        assert source.response.status_code == 200
        for event in source.iter_sse():
            if event.event:
                events.append(event)
            if time.monotonic() > deadline or (stop and event.event == "job" and stop in event.data):
                break
    return events


def test_the_feed_sends_a_snapshot_then_each_change_of_the_keys_own_jobs(keyed: KeyedApi) -> None:
    with httpx.Client(base_url=keyed.url, timeout=30) as api:
        mine = api.post(
            "/v1/jobs/generate", json={"prompt": "Hi", "max_tokens": 4}, headers={"X-API-Key": USER_KEY}
        ).json()
        theirs = api.post(
            "/v1/jobs/generate", json={"prompt": "Hi", "max_tokens": 4}, headers={"X-API-Key": OTHER_KEY}
        ).json()
        wait_until(
            lambda: api.get(f"/v1/jobs/{mine['id']}", headers={"X-API-Key": USER_KEY}).json()["status"] == "succeeded",
            timeout=60,
            what="the first job",
        )
    second: dict[str, str] = {}

    def submit_soon() -> None:
        time.sleep(1.0)  # after the snapshot: from here on, the job must come as `job` events
        with httpx.Client(base_url=keyed.url, timeout=30) as api:
            second.update(
                api.post(
                    "/v1/jobs/generate", json={"prompt": "Hello", "max_tokens": 4}, headers={"X-API-Key": USER_KEY}
                ).json()
            )

    thread = threading.Thread(target=submit_soon)
    thread.start()
    events = feed_events(keyed.url, USER_KEY, until=60, stop='"status":"succeeded"')
    thread.join()
    assert events[0].event == "snapshot"
    ids = [job["id"] for job in json.loads(events[0].data)["data"]]
    assert mine["id"] in ids and theirs["id"] not in ids, "the key's own jobs, and only those"
    assert second["id"] not in ids
    followed = [json.loads(event.data) for event in events[1:] if event.event == "job"]
    statuses = [job["status"] for job in followed if job["id"] == second["id"]]
    assert statuses and statuses[-1] == "succeeded", statuses
    assert all(job["id"] != theirs["id"] for job in followed)
    assert all(job["id"] != mine["id"] for job in followed), "an unchanged job is not sent again"
    final = followed[-1]
    assert final["kind"] == "generate" and final["timings"]["total_seconds"] is not None and final["worker"]


def test_queues_show_every_keys_line_to_an_operator_and_only_your_own_to_others(keyed: KeyedApi) -> None:
    with httpx.Client(base_url=keyed.url, timeout=30) as api:
        as_user = api.get("/v1/queues", headers={"X-API-Key": USER_KEY}).json()["data"]
        as_operator = api.get("/v1/queues", headers={"X-API-Key": OPERATOR_KEY}).json()["data"]
        assert {queue["queue"] for queue in as_user} == {"llm", "stt", "tts", "dialogue"}
        llm = next(queue for queue in as_user if queue["queue"] == "llm")
        assert llm["workers"] >= 1 and llm["slots"] >= 1
        assert set(llm["waiting"]) == {"priority", "default", "flex"}
        for queue in as_user:
            assert set(queue["principals"]) == {key_id(USER_KEY)}, "a key sees only its own line"
        assert all("principals" in queue for queue in as_operator)
        workers = api.get("/v1/workers", headers={"X-API-Key": USER_KEY}).json()["data"]
        assert workers and all(w["slots"] >= 1 for w in workers)
        assert all(w["heartbeat_age_seconds"] is not None and w["heartbeat_age_seconds"] < 30 for w in workers)


def test_an_operator_sees_who_waits(keyed: KeyedApi) -> None:
    """Jobs held in the scheduler (a flex batch of long generations behind a full worker): the operator's
    view names the key that waits, with its count."""
    with httpx.Client(base_url=keyed.url, timeout=30) as api:
        user = {"X-API-Key": USER_KEY}
        jobs = [
            api.post(
                "/v1/jobs/generate",
                json={"prompt": "Count to a hundred", "max_tokens": 200, "service_tier": "flex"},
                headers=user,
            ).json()
            for _ in range(12)
        ]
        try:

            def waiting() -> dict[str, int] | None:
                queues = api.get("/v1/queues", headers={"X-API-Key": OPERATOR_KEY}).json()["data"]
                llm = next(queue for queue in queues if queue["queue"] == "llm")
                principals: dict[str, int] = llm["principals"]
                return principals if principals.get(key_id(USER_KEY), 0) > 0 else None

            seen = wait_until(waiting, timeout=30, what="the user's jobs waiting")
            assert seen[key_id(USER_KEY)] <= len(jobs)
            mine = api.get("/v1/queues", headers=user).json()["data"]
            assert next(q for q in mine if q["queue"] == "llm")["principals"][key_id(USER_KEY)] > 0
        finally:
            for job in jobs:
                api.delete(f"/v1/jobs/{job['id']}", headers=user)
