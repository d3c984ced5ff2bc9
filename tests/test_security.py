"""API keys, ownership, the shared rate limit, quotas and backpressure, against real API processes.

The secured APIs share the session's Redis and worker; the quota/backpressure stack has a Redis of its
own and no worker at first, so its queue fills and stays full until the test starts one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from cli.embedded_redis import EmbeddedRedis
from jobstore import keys
from tests.conftest import Stack
from tests.sse import read_events
from tests.stack import Process, base_env, start_api, start_worker, wait_for_worker

ALPHA, BETA = "sk-alpha-0123456789", "sk-beta-9876543210"
RATE, OTHER, BURST = "sk-rate-limited-1", "sk-rate-other-2", "sk-rate-burst-3"
KEYS = f"{ALPHA},sha256:{hashlib.sha256(BETA.encode()).hexdigest()},{RATE},{OTHER},{BURST}"
SHORT_JOB = {"prompt": "Say hi.", "max_tokens": 4, "temperature": 0}


def let_time_pass(redis_url: str, api_key: str, seconds: float) -> None:
    """Move the key's rate-limit bucket `seconds` back, as if that long had passed: the bucket (GCRA) is one
    timestamp in ms, when the key's allowance is next whole. Tests drive time this way, not by sleeping."""
    bucket = keys.rate_limit("key_" + hashlib.sha256(api_key.encode()).hexdigest()[:12])
    with Redis.from_url(redis_url, decode_responses=True) as redis:
        full_at = int(float(cast(str, redis.get(bucket))))
        redis.set(bucket, full_at - int(seconds * 1000), keepttl=True)


def secured_env(stack: Stack, **overrides: str) -> dict[str, str]:
    return {**stack.env, "API_KEY_ENABLED": "true", "API_KEYS": KEYS, **overrides}


@pytest.fixture(scope="module")
def secured(stack: Stack, logs_dir: Path) -> Iterator[str]:
    api, url = start_api(secured_env(stack), logs_dir)
    try:
        yield url
    finally:
        api.stop()


@pytest.fixture(scope="module")
def limited(stack: Stack, logs_dir: Path) -> Iterator[tuple[str, str]]:
    """Two API processes on one Redis, each enforcing 20 requests a minute, no burst."""
    env = secured_env(stack, RATE_LIMIT_ENABLED="true", RATE_LIMIT_REQUESTS="20", RATE_LIMIT_WINDOW_SECONDS="60")
    (first, first_url), (second, second_url) = start_api(env, logs_dir), start_api(env, logs_dir)
    try:
        yield first_url, second_url
    finally:
        first.stop()
        second.stop()


def ws_close_code(url: str, path: str, headers: dict[str, str] | None = None) -> int | None:
    with connect(url.replace("http://", "ws://") + path, additional_headers=headers or {}) as ws:
        try:
            ws.recv(timeout=10)
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None
    return None


def test_keys_are_required_and_checked(secured: str) -> None:
    with httpx.Client(base_url=secured, timeout=30) as client:
        for headers in ({}, {"X-API-Key": "sk-wrong"}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": ALPHA}):
            response = client.get("/v1/jobs", headers=headers)
            assert response.status_code == 401, headers
            assert response.json()["error"]["code"] == "invalid_api_key"
        assert client.get("/v1/jobs", headers={"X-API-Key": ALPHA}).status_code == 200
        assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {ALPHA}"}).status_code == 200
        assert client.get("/v1/jobs", headers={"X-API-Key": BETA}).status_code == 200, "a sha256: key works"
        assert client.post("/v1/chat/completions", json={}).json()["error"]["code"] == "invalid_api_key"
        for open_route in ("/health", "/ready", "/metrics"):
            assert client.get(open_route).status_code == 200, open_route
    assert ws_close_code(secured, "/v1/generate_ws") == 4401
    assert ws_close_code(secured, "/v1/jobs/job_x/ws", {"X-API-Key": "sk-wrong"}) == 4401


def test_another_keys_job_is_404_on_every_route(secured: str) -> None:
    alpha, beta = {"X-API-Key": ALPHA}, {"Authorization": f"Bearer {BETA}"}
    with httpx.Client(base_url=secured, timeout=60) as client:
        job_id = client.post("/v1/jobs/generate", json=SHORT_JOB, headers=alpha).json()["id"]
        assert read_events(client, job_id, **alpha)[-1].json() == {"status": "succeeded"}
        for method, path in [
            ("GET", f"/v1/jobs/{job_id}"),
            ("GET", f"/v1/jobs/{job_id}/result"),
            ("GET", f"/v1/jobs/{job_id}/events"),
            ("DELETE", f"/v1/jobs/{job_id}"),
        ]:
            response = client.request(method, path, headers=beta)
            assert response.status_code == 404, (method, path, response.text)
            assert client.request(method, path, headers=alpha).status_code != 404 or method == "DELETE"
        listed = client.get("/v1/jobs", headers=beta).json()["data"]
        assert job_id not in {job["id"] for job in listed}
        assert job_id in {job["id"] for job in client.get("/v1/jobs", headers=alpha).json()["data"]}
    assert ws_close_code(secured, f"/v1/jobs/{job_id}/ws", beta) == 4404


def test_two_api_processes_share_one_limit(limited: tuple[str, str]) -> None:
    urls = limited
    headers = {"X-API-Key": RATE}
    answers = []
    for n in range(20):
        answers.append(httpx.get(f"{urls[n % 2]}/v1/jobs", headers=headers, timeout=10))
    assert [a.status_code for a in answers] == [200] * 20
    assert answers[0].headers["RateLimit-Policy"] == '"default";q=20;w=60'
    assert answers[0].headers["RateLimit"].startswith('"default";r=19;')
    assert answers[-1].headers["RateLimit"].startswith('"default";r=0;')

    refused = httpx.get(f"{urls[0]}/v1/jobs", headers=headers, timeout=10)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["Retry-After"]) <= 3
    assert refused.headers["RateLimit-Policy"] == '"default";q=20;w=60'
    assert httpx.get(f"{urls[1]}/v1/jobs", headers=headers, timeout=10).status_code == 429
    assert ws_close_code(urls[1], "/v1/generate_ws", headers) == 4429

    # Another key has its own bucket.
    assert httpx.get(f"{urls[1]}/v1/jobs", headers={"X-API-Key": OTHER}, timeout=10).status_code == 200
    # Without a key the client's IP is the scope: 20 refusals as 401, then 429.
    anonymous = [httpx.get(f"{urls[n % 2]}/v1/jobs", timeout=10).status_code for n in range(21)]
    assert anonymous == [401] * 20 + [429]

    rejected = {urls[0]: 0.0, urls[1]: 0.0}
    for url in urls:
        for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
            for sample in family.samples:
                if sample.name == "app_rate_limit_rejections_total":
                    rejected[url] += sample.value
                    assert sample.labels["scope"] in ("key", "ip")
    assert sum(rejected.values()) == 4


def test_the_burst_multiplier_raises_the_bucket_not_the_rate(stack: Stack, logs_dir: Path) -> None:
    env = secured_env(
        stack,
        RATE_LIMIT_ENABLED="true",
        RATE_LIMIT_REQUESTS="20",
        RATE_LIMIT_WINDOW_SECONDS="60",
        RATE_LIMIT_BURST_MULTIPLIER="2",
    )
    api, url = start_api(env, logs_dir)
    headers = {"X-API-Key": BURST}
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=10) as client:
            burst = [client.get("/v1/jobs").status_code for _ in range(41)]
            assert burst == [200] * 40 + [429]
            wait = int(client.get("/v1/jobs").headers["Retry-After"])
            let_time_pass(stack.redis_url, BURST, wait)
            # One request per 3 s is the sustained rate, whatever the bucket size.
            assert [client.get("/v1/jobs").status_code for _ in range(2)] == [200, 429]
    finally:
        api.stop()


@pytest.fixture
def idle_stack(tmp_path: Path) -> Iterator[tuple[str, dict[str, str], Path]]:
    """An API on its own Redis with no worker yet: queues only fill."""
    with EmbeddedRedis(tmp_path / "valkey") as redis:
        env = base_env(
            redis.url,
            tmp_path,
            API_KEY_ENABLED="true",
            API_KEYS="sk-q1,sk-q2,sk-q3",
            MAX_ACTIVE_JOBS_PER_KEY="2",
            QUEUE_MAX_DEPTH="4",
        )
        api, url = start_api(env, tmp_path)
        try:
            yield url, env, tmp_path
        finally:
            api.stop()


def test_quota_and_queue_depth_refuse_and_lose_nothing(idle_stack: tuple[str, dict[str, str], Path]) -> None:
    url, env, tmp = idle_stack
    accepted: list[str] = []
    with httpx.Client(base_url=url, timeout=60) as client:

        def submit(key: str) -> httpx.Response:
            response = client.post("/v1/jobs/generate", json=SHORT_JOB, headers={"X-API-Key": key})
            if response.status_code == 202:
                accepted.append(response.json()["id"])
            return response

        assert [submit("sk-q1").status_code for _ in range(2)] == [202, 202]
        over = submit("sk-q1")
        assert over.status_code == 429 and over.json()["error"]["code"] == "too_many_active_jobs"
        assert over.headers["Retry-After"]
        cancelled = accepted.pop(0)
        assert client.delete(f"/v1/jobs/{cancelled}", headers={"X-API-Key": "sk-q1"}).status_code == 202
        assert submit("sk-q1").status_code == 202, "a cancelled job frees its place"
        assert submit("sk-q2").status_code == 202
        # A cancelled job still waiting left the count at once: three wait, room for one more.
        assert submit("sk-q2").status_code == 202
        full = submit("sk-q3")
        assert full.status_code == 503 and full.json()["error"]["code"] == "queue_full"
        assert int(full.headers["Retry-After"]) > 0
        assert client.get("/v1/jobs", headers={"X-API-Key": "sk-q3"}).json()["data"] == []

        worker: Process = start_worker(env, tmp, queues="llm")
        try:
            wait_for_worker(url, worker, queue="llm")
            owners = dict.fromkeys(accepted[:-2], "sk-q1") | dict.fromkeys(accepted[-2:], "sk-q2")
            for job_id, key in owners.items():
                events = read_events(client, job_id, **{"X-API-Key": key})
                assert events[-1].json() == {"status": "succeeded"}, job_id
            assert client.get(f"/v1/jobs/{cancelled}", headers={"X-API-Key": "sk-q1"}).json()["status"] == "cancelled"
        finally:
            worker.stop()


def test_metrics_can_require_a_key(stack: Stack, logs_dir: Path) -> None:
    api, url = start_api(secured_env(stack, METRICS_REQUIRE_KEY="true"), logs_dir)
    try:
        assert httpx.get(f"{url}/metrics", timeout=10).status_code == 401
        scraped = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {ALPHA}"}, timeout=10)
        assert scraped.status_code == 200 and "app_http_requests_total" in scraped.text
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
    finally:
        api.stop()
