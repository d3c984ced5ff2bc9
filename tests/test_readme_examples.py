"""The README's curl and Python examples, run as written against a real `speechq up` with the default
models: each must answer 2xx with something sensible, not merely something.

Every curl command of the README needs an entry in EXPECTED (a new example without a check fails here),
and every file an example uploads an entry in UPLOADS."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.audio import encode, speak, spoken, wer
from tests.stack import ROOT, start_up, up_env, wait_until

README = ROOT / "README.md"
HOSTS = ("localhost:6666", "127.0.0.1:6666")
QUESTION = "Name three fruits."
UPLOADS: dict[str, Callable[[], bytes]] = {
    "meeting.mp3": lambda: spoken("fox", "mp3"),
    "question.wav": lambda: encode(*speak(QUESTION)),
}
FOX = "The quick brown fox jumps over the lazy dog."


@dataclass(frozen=True)
class Example:
    language: str  # sh or python
    line: int  # where the block starts in README.md
    code: str


def readme_examples() -> list[Example]:
    """The fenced sh blocks that call the API with curl, and the Python blocks that talk to it."""
    found = []
    for match in re.finditer(r"^```(\w+)\n(.*?)^```", README.read_text(), flags=re.M | re.S):
        language, code = match.group(1), match.group(2)
        line = README.read_text()[: match.start()].count("\n") + 1
        if language in ("sh", "bash") and re.search(r"^\s*curl ", code, flags=re.M):
            found.append(Example("sh", line, code))
        elif language == "python" and any(host in code for host in HOSTS):
            found.append(Example("python", line, code))
    return found


def curl_commands(code: str) -> list[list[str]]:
    """Each curl command of a shell block as arguments, continuation lines joined, comments dropped."""
    joined = code.replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in joined.splitlines() if line.strip().startswith("curl ")]


# --- what a sensible answer is --------------------------------------------------------------------------


def words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z]{2,}", text)


def assert_sensible(text: str, prompt: str = "") -> None:
    """Prose, not garbage: a few words, mostly Latin letters (the base model's answer to an instruction was
    the prompt again, then Japanese and fragments), and not the prompt echoed back."""
    letters = [c for c in text if c.isalpha()]
    assert len(words(text)) >= 2, f"hardly any words: {text!r}"
    latin = sum(c.isascii() for c in letters)
    assert latin >= 0.9 * len(letters), f"{len(letters) - latin} of {len(letters)} letters not Latin: {text!r}"
    echoed = bool(prompt) and text.strip().lower().startswith(prompt.strip().lower())
    assert not echoed, f"the prompt echoed back: {text!r}"


def json_body(args: list[str]) -> dict[str, Any]:
    return dict(json.loads(args[args.index("-d") + 1]))


def form_field(args: list[str], name: str) -> str:
    for value in args[args.index("-F") :]:
        if value.startswith(f"{name}="):
            return value.split("=", 1)[1]
    raise KeyError(name)


class Run:
    """One block's commands against the stack: remembers the last job id for the `job_…` placeholders."""

    def __init__(self, url: str, folder: Path) -> None:
        self.url = url
        self.folder = folder
        self.job_id: str | None = None
        self.jobs: list[str] = []

    def curl(self, args: list[str]) -> tuple[bytes, Path | None]:
        target: Path | None = None
        if ">" in args:
            at = args.index(">")
            target = self.folder / args[at + 1]
            args = args[:at] + args[at + 2 :]
        filled = []
        for arg in args[1:]:
            for host in HOSTS:
                arg = arg.replace(host, self.url.removeprefix("http://"))
            if "job_…" in arg:
                assert self.job_id, "a `job_…` placeholder before any example created a job"
                arg = arg.replace("job_…", self.job_id)
            filled.append(arg)
        done = subprocess.run(
            ["curl", "--fail-with-body", "-sS", "--max-time", "120", *filled],
            cwd=self.folder,
            capture_output=True,
            timeout=150,
        )
        assert done.returncode == 0, (args, done.returncode, done.stdout[-2000:], done.stderr[-2000:])
        if target is not None:
            target.write_bytes(done.stdout)
        return done.stdout, target

    def job(self, answer: dict[str, Any]) -> None:
        if str(answer.get("id", "")).startswith("job_"):
            self.job_id = answer["id"]
            self.jobs.append(answer["id"])

    def finished(self, job_id: str) -> dict[str, Any]:
        def terminal() -> dict[str, Any] | None:
            job: dict[str, Any] = httpx.get(f"{self.url}/v1/jobs/{job_id}", timeout=10).json()
            return job if job["status"] in ("succeeded", "failed", "cancelled") else None

        found: dict[str, Any] = wait_until(terminal, timeout=120, interval=0.2, what=f"job {job_id}")
        return found

    def transcript(self, audio: Path) -> str:
        with audio.open("rb") as handle:
            answer = httpx.post(f"{self.url}/v1/speech-to-text", files={"file": (audio.name, handle)}, timeout=60)
        assert answer.status_code == 200, answer.text
        return str(answer.json()["text"])


# --- each curl example and how its answer is judged -------------------------------------------------------


def generate(run: Run, args: list[str], out: bytes, _: Path | None) -> None:
    answer = json.loads(out)
    run.job(answer)
    assert answer["status"] == "queued" and answer["links"]["events"].endswith("/events")


def events(run: Run, _: list[str], out: bytes, __: Path | None) -> None:
    """Server-Sent Events: `event:` and `data:` lines, an empty line after each event."""
    stream = []
    for block in re.split(r"\r?\n\r?\n", out.decode()):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "event" in fields:
            stream.append((fields["event"], json.loads(fields["data"])))
    kinds = [kind for kind, _ in stream]
    assert kinds[0] == "queued" and "token" in kinds and kinds[-1] == "done", kinds
    assert stream[-1][1]["status"] == "succeeded", stream[-1]
    assert_sensible("".join(data["text"] for kind, data in stream if kind == "token"))


def job_status(run: Run, _: list[str], out: bytes, __: Path | None) -> None:
    job = json.loads(out)
    assert job["status"] == "succeeded", job
    assert_sensible(job["result"]["text"], "Write a haiku about queues")
    assert "queue" in job["result"]["text"].lower(), job["result"]["text"]


def completion(run: Run, args: list[str], out: bytes, _: Path | None) -> None:
    text = json.loads(out)["choices"][0]["text"]
    assert "Paris" in text, text
    assert_sensible(text, json_body(args)["prompt"])


def speech_to_text(run: Run, _: list[str], out: bytes, __: Path | None) -> None:
    assert wer(FOX, json.loads(out)["text"]) <= 0.2, out


def transcribe_job(run: Run, _: list[str], out: bytes, __: Path | None) -> None:
    run.job(json.loads(out))


def speech(run: Run, args: list[str], _: bytes, file: Path | None) -> None:
    """Audio that says the text: heard back through the stack's own speech-to-text."""
    assert file is not None and file.stat().st_size > 1000
    said = json_body(args).get("text") or json_body(args)["input"]
    assert wer(said, run.transcript(file)) <= 0.34, (said, run.transcript(file))


def dialogue(run: Run, args: list[str], out: bytes, _: Path | None) -> None:
    lines = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    kinds = [line["event"] for line in lines]
    assert kinds[0] == "metadata" and "audio_chunk" in kinds and kinds[-1] == "done", kinds
    assert lines[-1]["data"]["status"] == "succeeded", lines[-1]
    heard = next(line["data"]["text"] for line in lines if line["event"] == "transcript")
    assert wer(QUESTION, heard) <= 0.2, heard
    reply = next(line["data"]["text"] for line in lines if line["event"] == "assistant_text" and "text" in line["data"])
    assert_sensible(reply, QUESTION)
    assert json.loads(form_field(args, "generation_config"))["model"] == "smollm2-135m-instruct"


EXPECTED: dict[str, Callable[[Run, list[str], bytes, Path | None], None]] = {
    "/v1/jobs/generate": generate,
    "/events": events,
    "/v1/jobs/job_…": job_status,
    "/v1/completions": completion,
    "/v1/speech-to-text": speech_to_text,
    "/v1/jobs/transcribe": transcribe_job,
    "/v1/text-to-speech": speech,
    "/v1/audio/speech": speech,
    "/v1/dialogue": dialogue,
}


def check_for(args: list[str]) -> Callable[[Run, list[str], bytes, Path | None], None]:
    route = next(arg for arg in args[1:] if any(host in arg for host in HOSTS)).split("6666", 1)[1]
    matches = [key for key in EXPECTED if route.endswith(key)]
    assert len(matches) == 1, f"README example {route!r} has no check in EXPECTED (or several): {matches}"
    return EXPECTED[matches[0]]


# --- a real `speechq up`, as `make run` starts it ------------------------------------------------------------


@pytest.fixture(scope="module")
def speechq_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("readme")
    # Greedy answers: the examples' checks read what a 135M model says, which sampling makes a lottery.
    env = up_env(folder / "var", LLM_TEMPERATURE="0")
    process, url = start_up(env, folder, "--no-flower")
    try:

        def ready() -> bool:
            if not process.alive():
                raise RuntimeError(f"speechq up exited:\n{process.log()[-4000:]}")
            return httpx.get(f"{url}/ready", timeout=2).status_code == 200

        wait_until(ready, timeout=180, what="speechq up with every queue served")
        yield url
    finally:
        process.stop(timeout=90)


def test_the_readme_has_examples_to_run() -> None:
    examples = readme_examples()
    assert sum(e.language == "sh" for e in examples) >= 4 and any(e.language == "python" for e in examples)
    for example in examples:
        for args in curl_commands(example.code) if example.language == "sh" else []:
            check_for(args)  # every curl example has a check
            for arg in args:
                if arg.startswith("file=@"):
                    assert arg.removeprefix("file=@") in UPLOADS, f"no test file for {arg}"


@pytest.mark.parametrize("example", readme_examples(), ids=lambda e: f"README.md:{e.line}-{e.language}")
def test_a_readme_example_answers_sensibly(example: Example, speechq_up: str, tmp_path: Path) -> None:
    if example.language == "python":
        code = example.code
        for host in HOSTS:
            code = code.replace(host, speechq_up.removeprefix("http://"))
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert_sensible(done.stdout)
        if "capital of France" in code:
            assert "Paris" in done.stdout, done.stdout
        return
    for name, make in UPLOADS.items():
        if f"@{name}" in example.code:
            (tmp_path / name).write_bytes(make())
    run = Run(speechq_up, tmp_path)
    for args in curl_commands(example.code):
        out, file = run.curl(args)
        check_for(args)(run, args, out, file)
    # A job an example only submits must still end well (the transcription job as SRT).
    for job_id in run.jobs:
        job = run.finished(job_id)
        assert job["status"] == "succeeded", job
        if job["kind"] == "transcribe":
            assert "fox" in httpx.get(f"{speechq_up}/v1/jobs/{job_id}/result", timeout=10).text.lower()
