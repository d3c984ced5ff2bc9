"""The fuzz suite (issue 28): schemathesis against a real `speechq up`, within a fixed time, finds no 5xx and
no answer the OpenAPI document does not describe, over every operation and the links between them.

The stack runs on a Valkey of its own with operator settings that keep what a fuzzer sends short on a CPU
(`STACK_SETTINGS`), and OpenAudio points at a stand-in fish-speech server that answers silence, so that a
request naming `openaudio-s1-mini` is served rather than a 502 for a server this machine does not have. The
run itself is described by tests/fuzz/schemathesis.toml. Any failure fails the test, which shows schemathesis'
report (each failure with the curl that reproduces it).
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import tomllib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from starlette.requests import Request
from starlette.responses import Response

from cli.embedded_redis import EmbeddedRedis
from tests.audio import as_wav
from tests.fake_servers import serve
from tests.stack import ROOT, base_env, start_up, wait_for_worker

FUZZ = ROOT / "tests" / "fuzz"
CONFIG = FUZZ / "schemathesis.toml"
KEY = "sk-fuzz-0123456789"
QUEUES = ("llm", "stt", "tts", "dialogue")
MIN_CASES = 5_000
MIN_STATEFUL_CASES = 200
BUDGET = int(tomllib.loads(CONFIG.read_text())["max-time"])
# Past the budget schemathesis finishes the requests in flight, shrinks what failed and writes its reports.
GRACE = 180

# Operator settings only, each one a production deployment could choose:
STACK_SETTINGS = {
    "API_KEY_ENABLED": "true",
    "API_KEYS": KEY,
    # A prompt with max_tokens past 128 tokens is a 400 (context_length_exceeded) before anything is generated,
    # and no generation runs longer than that.
    "LLM_N_CTX": "128",
    "LLM_MAX_TOKENS": "16",  # what a request that names no max_tokens gets
    # The key's jobs never outnumber the LLM slots, so a blocking request never waits behind the jobs the
    # fuzzer queued on /v1/jobs: a fifth at once is a 429.
    "LLM_PARALLEL": "4",
    "MAX_ACTIVE_JOBS_PER_KEY": "4",
}

pytestmark = pytest.mark.timeout(BUDGET + GRACE + 240)


@dataclass
class FuzzRun:
    returncode: int
    output: str  # schemathesis' terminal report
    report: dict[str, Any]  # its JSON report
    cases: Counter[str]  # test cases per phase
    operations: Counter[str]  # test cases per operation ("POST /v1/jobs/generate"), all phases
    requests: dict[str, str]  # the API's X-Request-ID of each answer -> the request as a curl command
    documented: set[str]  # the operations /openapi.json lists
    log: str  # what `speechq up` and its children logged
    seconds: float

    def tail(self, limit: int = 20_000) -> str:
        """The report from its first error or failure to its summary: what a CI log needs to reproduce them."""
        starts = [at for at in (self.output.find("= ERRORS ="), self.output.find("= FAILURES =")) if at >= 0]
        start = min(starts) if starts else max(0, len(self.output) - 4_000)
        start = self.output.rfind("\n", 0, start) + 1
        return self.output[start:][-limit:]


async def silence(request: Request) -> Response:
    """fish-speech's `/v1/tts`, answering any request with half a second of silence as WAV: the OpenAudio
    engine is fuzzed up to the server, whose own validation is not speechq's."""
    await request.body()
    return Response(as_wav(np.zeros(22_050, dtype=np.float32), 44_100), media_type="audio/wav")


def documented_operations(url: str) -> set[str]:
    schema = httpx.get(f"{url}/openapi.json", timeout=10).json()
    return {f"{method.upper()} {path}" for path, item in schema["paths"].items() for method in item}


def run_schemathesis(url: str, reports: Path) -> tuple[int, str]:
    """The run, its exit status and its output; past its budget and grace it is interrupted, and reports."""
    argv = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run", f"{url}/openapi.json",
        "--report", "json,ndjson", "--report-json-path", str(reports / "run.json"),
        "--report-ndjson-path", str(reports / "events.ndjson"), "--no-color",
    ]  # fmt: skip
    # Hypothesis's `ci` profile derandomizes: every turn of the time box would send the same cases again.
    env = {k: v for k, v in os.environ.items() if k != "CI"} | {"SPEECHQ_FUZZ_API_KEY": KEY}
    process = subprocess.Popen(
        argv, cwd=reports, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    )
    try:
        output, _ = process.communicate(timeout=BUDGET + GRACE)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)  # it stops, says what it found and writes its reports
        try:
            output, _ = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        output += f"\n[interrupted: still running {BUDGET + GRACE} s after it started]"
    (reports / "schemathesis.txt").write_text(output)
    return process.returncode, output


@dataclass
class Events:
    """What the run's event stream (every request and answer: large) tells: test cases per phase and per
    operation, and each request as a curl command by the request id the API answered it with."""

    phases: Counter[str]
    operations: Counter[str]
    requests: dict[str, str]

    @classmethod
    def read(cls, ndjson: Path) -> Events:
        found = cls(Counter(), Counter(), {})
        if not ndjson.is_file():
            return found
        with ndjson.open() as events:
            for line in events:
                if line.startswith('{"ScenarioFinished"'):
                    found.add(json.loads(line)["ScenarioFinished"])
        return found

    def add(self, scenario: dict[str, Any]) -> None:
        cases = scenario["recorder"].get("cases", {}).values()
        self.phases[scenario["phase"]] += len(cases)
        self.operations.update(f"{case['value']['method'].upper()} {case['value']['path']}" for case in cases)
        for interaction in scenario["recorder"].get("interactions", {}).values():
            answered = (interaction.get("response") or {}).get("headers", {}).get("x-request-id")
            if answered:
                self.requests[answered[0]] = as_curl(interaction["request"])


def as_curl(request: dict[str, Any]) -> str:
    """A recorded request as the curl command that sends it again (with the key, which its record hides)."""
    command = ["curl", "-X", request["method"]]
    for name, values in request.get("headers", {}).items():
        value = KEY if name.lower() == "x-api-key" else values[0]
        command += ["-H", shlex.quote(f"{name}: {value}")]
    body = request.get("body")
    if body:
        data = base64.b64decode(body["$base64"]).decode("utf-8", errors="backslashreplace")
        command += ["--data-binary", shlex.quote(data[:2_000])]
    return " ".join([*command, shlex.quote(request["uri"])])


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzRun]:
    folder = tmp_path_factory.mktemp("fuzz")
    with EmbeddedRedis(folder / "valkey") as redis, serve({"/v1/tts": silence}) as openaudio:
        env = base_env(redis.url, folder, OPENAUDIO_API_BASE=openaudio, **STACK_SETTINGS)
        up, url = start_up(env, folder, "--no-flower")
        try:
            for queue in QUEUES:
                wait_for_worker(url, up, queue, timeout=180)
            reports = folder / "schemathesis"
            reports.mkdir()
            started = time.monotonic()
            returncode, output = run_schemathesis(url, reports)
            seconds = time.monotonic() - started
            report, events = reports / "run.json", reports / "events.ndjson"
            assert report.is_file(), f"schemathesis wrote no report (exit {returncode}):\n{output[-6_000:]}"
            read = Events.read(events)
            counts = {"phases": read.phases, "operations": read.operations, "seconds": round(seconds)}
            (reports / "cases.json").write_text(json.dumps(counts, indent=1))
            log = up.log()
            if returncode == 0 and not log_problems(log):
                events.unlink()  # 100 MB or more; kept when something failed
            yield FuzzRun(
                returncode=returncode,
                output=output,
                report=json.loads(report.read_text()),
                cases=read.phases,
                operations=read.operations,
                requests=read.requests,
                documented=documented_operations(url),
                log=log,
                seconds=seconds,
            )
        finally:
            up.stop(timeout=90)


def test_the_fuzzer_finds_no_server_error_and_no_answer_the_schema_does_not_describe(fuzzed: FuzzRun) -> None:
    report = fuzzed.report
    found = {"failures": report["failures"], "errors": report["errors"], "exit": fuzzed.returncode}
    assert found == {"failures": [], "errors": [], "exit": 0}, f"{found}\n\n{fuzzed.tail()}"


def test_it_runs_thousands_of_cases_within_its_time(fuzzed: FuzzRun) -> None:
    generated = fuzzed.report["test_cases"]["generated"]
    summary = f"{generated} cases in {fuzzed.seconds:.0f} s, by phase {dict(fuzzed.cases)}"
    assert generated >= MIN_CASES, f"only {summary}\n\n{fuzzed.tail()}"
    assert fuzzed.seconds <= BUDGET + GRACE, summary


def test_every_documented_operation_is_fuzzed(fuzzed: FuzzRun) -> None:
    operations = fuzzed.report["operations"]
    assert operations["tested"] == operations["total"] == len(fuzzed.documented), operations
    untested = sorted(fuzzed.documented - set(fuzzed.operations))
    assert not untested, f"no case sent to {untested}\n\n{fuzzed.tail()}"


def test_the_stateful_phase_follows_links_between_operations(fuzzed: FuzzRun) -> None:
    stateful = fuzzed.report["phases"]["stateful"]
    assert stateful == {"status": "success", "skip_reason": None}, f"{stateful}\n\n{fuzzed.tail()}"
    assert fuzzed.cases["stateful"] >= MIN_STATEFUL_CASES, dict(fuzzed.cases)


def log_problems(log: str) -> list[tuple[str, str | None]]:
    """Lines at ERROR or above, logged exceptions, and tracebacks, each with its request id. Celery's INFO line
    for a job that ended as jobs may (`raised expected: JobFailed(...)`, `ignored` for a cancelled one) carries a
    traceback in its `data` for Flower: the job's record holds the cause, so that one is no problem."""
    found: list[tuple[str, str | None]] = []
    for line in log.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            if "Traceback" in line:
                found.append((line, None))
            continue
        if record.get("logger") == "celery.app.trace" and record.get("level") == "INFO":
            record = {key: value for key, value in record.items() if key != "data"}
        if record.get("level") in ("ERROR", "CRITICAL") or "exc_info" in record or "Traceback" in json.dumps(record):
            found.append((line, record.get("request_id")))
    return found


def test_the_stack_logs_no_error_and_no_traceback(fuzzed: FuzzRun) -> None:
    problems = log_problems(fuzzed.log)
    shown = [
        f"{line[:4_000]}\n  request {request_id}: {fuzzed.requests.get(request_id or '', '(not one of the run)')}"
        for line, request_id in problems[:5]
    ]
    assert not problems, f"{len(problems)} lines; the first, with the request that led to each:\n" + "\n".join(shown)
