"""The console (`/console`, SPEC §13, issue 25) in Debian's Chromium, driven by Playwright against a real
`speechq up` with API keys on, on the browser port (CONSOLE_PORT): the key typed once and kept in
sessionStorage, the live job table, cancel, a job's stream, streamed generation, transcription of an
upload, synthesis that plays, batches, workers, and a spoken conversation through Chromium's fake
microphone. No page may log a console error. Screenshots of each view land in the test's tmp folder; with
SPEECHQ_UPDATE_SCREENSHOTS=1 two of them replace the README's in docs/."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright, ViewportSize, expect, sync_playwright

from tests.audio import SENTENCES, encode, speak, spoken, wer
from tests.stack import ROOT, Process, free_port, start_up, up_env, wait_until

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed (`apt-get install chromium`; make test does it)"
)

KEY = "console-test-key-0123456789"
QUESTION = "What is the capital of France?"
DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 390, "height": 844}
VIEWS = ("Jobs", "Job", "Batches", "Workers", "Try", "Talk")
SECONDS = re.compile(r"^(\d+(\.\d)? s|\d+ ms)$")  # how the page writes a short time


@dataclass(frozen=True)
class Console:
    url: str  # the browser port: the page and the API it calls
    api: httpx.Client  # the same API for the test's own calls, with the key
    screens: Path


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    """`speechq up` with API keys on; its console port."""
    folder = tmp_path_factory.mktemp("console")
    console_port = free_port()
    env = up_env(folder / "var", API_KEY_ENABLED="true", API_KEYS=KEY, CONSOLE_PORT=str(console_port))
    process, _ = start_up(env, folder, "--no-flower")
    url = f"http://127.0.0.1:{console_port}"
    try:
        wait_until(lambda: ready(process, url), timeout=180, what="speechq up with every queue served")
        with httpx.Client(base_url=url, headers={"X-API-Key": KEY}, timeout=30) as api:
            yield Console(url, api, tmp_path_factory.mktemp("console-screens"))
    finally:
        process.stop(timeout=90)


def ready(process: Process, url: str) -> bool:
    if not process.alive():
        raise RuntimeError(f"speechq up exited:\n{process.log()[-4000:]}")
    return httpx.get(f"{url}/ready", timeout=2).status_code == 200


@pytest.fixture(scope="module")
def question_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What Chromium's fake microphone plays, over and over: the question, then seconds of silence (a turn's
    end for the server's VAD, and room for the answer before the question comes round again)."""
    pcm, rate = speak(QUESTION)
    silence = np.zeros(rate * 8, np.float32)
    path = tmp_path_factory.mktemp("microphone") / "question.wav"
    path.write_bytes(encode(np.concatenate([np.zeros(rate // 2, np.float32), pcm, silence]), rate))
    return path


@pytest.fixture(scope="module")
def browser(question_wav: Path) -> Iterator[Browser]:
    with sync_playwright() as playwright:
        yield launch(playwright, question_wav)


def launch(playwright: Playwright, microphone: Path) -> Browser:
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM),
        args=[
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={microphone}",
            "--autoplay-policy=no-user-gesture-required",
        ],
    )


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh tab (its own sessionStorage); fails the test if the page logged any console error."""
    context = browser.new_context(viewport=DESKTOP)
    tab = context.new_page()
    errors: list[str] = []

    def console_error(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(f"{message.text} at {message.location}")

    tab.on("console", console_error)
    tab.on("pageerror", lambda error: errors.append(f"uncaught: {error}"))
    yield tab
    context.close()
    assert not errors, f"the console logged errors: {errors}"


def open_console(page: Page, console: Console, view: str = "jobs") -> None:
    """The console in a new tab, with the key typed into its key field, as a person does once per tab."""
    page.goto(f"{console.url}/console#{view}")
    expect(page.locator("#key-state")).to_have_text("this API needs a key")
    page.get_by_label("API key").fill(KEY)
    page.get_by_role("button", name="Use key").click()
    expect(page.locator("#key-state")).to_have_text("key set for this tab")
    expect(page.locator("#feed-state")).to_have_text("live", timeout=10_000)


def screenshot(page: Page, console: Console, name: str, *, docs: bool = False) -> None:
    """Every view's picture in the test's folder; with SPEECHQ_UPDATE_SCREENSHOTS=1, the README's two
    (`docs`) are written over too (a plain run leaves the checkout as it was)."""
    path = console.screens / f"console-{name}.png"
    page.screenshot(path=str(path))
    if docs and os.environ.get("SPEECHQ_UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(path, ROOT / "docs" / f"console-{name}.png")


def job_row(page: Page, job_id: str) -> Any:
    return page.locator(f'#jobs-table tr[data-job-id="{job_id}"]')


def finished(console: Console, job_id: str, timeout: float = 120) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        job: dict[str, Any] = console.api.get(f"/v1/jobs/{job_id}").json()
        return job if job["status"] in ("succeeded", "failed", "cancelled", "expired") else None

    found: dict[str, Any] = wait_until(ended, timeout=timeout, interval=0.2, what=f"job {job_id} to end")
    return found


def media_duration(page: Page, selector: str) -> float:
    """The duration an <audio> element reports once its metadata has loaded (0 until then)."""
    locator = page.locator(selector)
    if not locator.count():
        return 0.0
    duration = locator.evaluate("audio => (Number.isFinite(audio.duration) ? audio.duration : 0)")
    return float(duration)


# --- the page and the key ---------------------------------------------------------------------------------


def test_the_page_keeps_the_key_in_session_storage_and_has_every_view(page: Page, console: Console) -> None:
    response = page.goto(f"{console.url}/console")
    assert response is not None and response.ok
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    # Behind keys, without one: the page asks for it and sends nothing that would be refused.
    expect(page.locator("#key-state")).to_have_text("this API needs a key")
    expect(page.locator("#feed-state")).to_have_text("needs a key")

    sent: list[tuple[str, str | None]] = []
    page.on("request", lambda request: sent.append((request.url, request.headers.get("x-api-key"))))
    page.get_by_label("API key").fill(KEY)
    page.get_by_role("button", name="Use key").click()
    expect(page.locator("#feed-state")).to_have_text("live", timeout=10_000)
    assert page.evaluate("sessionStorage.getItem('speechq.apiKey')") == KEY
    assert page.evaluate("localStorage.length") == 0
    feed = [key for url, key in sent if url.endswith("/v1/jobs/feed")]
    assert feed == [KEY], sent
    assert not [url for url, _ in sent if KEY in url], "the key went into a URL"

    for view in VIEWS:
        page.get_by_role("navigation", name="Views").get_by_role("link", name=view, exact=True).click()
        heading = page.get_by_role("heading", level=2, name=view, exact=True)
        expect(heading).to_be_visible()
        expect(heading).to_be_focused()  # keyboard and screen reader users land on the view
    # A phone's width: the page never scrolls sideways (wide tables scroll inside their own region).
    page.set_viewport_size(PHONE)
    for view in VIEWS:
        page.goto(f"{console.url}/console#{view.lower()}")
        expect(page.get_by_role("heading", level=2, name=view, exact=True)).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"], view
    page.set_viewport_size(DESKTOP)

    page.get_by_role("button", name="Forget").click()
    assert page.evaluate("sessionStorage.getItem('speechq.apiKey')") is None
    expect(page.locator("#key-state")).to_have_text("this API needs a key")


def test_the_pages_sse_reader_parses_streams_cut_anywhere(page: Page, console: Console) -> None:
    """Streams are read with fetch (EventSource cannot send the key), so the page parses SSE itself: events
    split across reads, CRLF and CR line ends, comments (pings), multi-line data, ids."""
    page.goto(f"{console.url}/console")
    stream = ': ping\r\nid: 1-0\r\nevent: token\r\ndata: {"text": "Hel"}\r\n\r\n: ping\n\n'
    stream += 'event: note\rdata: one\rdata: two\r\rid: 2-0\nevent: done\ndata: {"status": "succeeded"}\n\n'
    parsed = page.evaluate(
        """async (stream) => {
            const { SseParser } = await import("/console/api.js");
            const results = [];
            for (const size of [1, 2, 3, 7, stream.length]) {
                const parser = new SseParser();
                const events = [];
                for (let at = 0; at < stream.length; at += size) {
                    events.push(...parser.feed(stream.slice(at, at + size)));
                }
                results.push(events);
            }
            return results;
        }""",
        stream,
    )
    expected = [
        {"event": "token", "data": {"text": "Hel"}, "id": "1-0"},
        {"event": "note", "data": "one\ntwo", "id": "1-0"},  # the last id stays, as in EventSource
        {"event": "done", "data": {"status": "succeeded"}, "id": "2-0"},
    ]
    assert parsed == [expected] * 5


def test_workers_show_queues_models_and_heartbeats(page: Page, console: Console) -> None:
    open_console(page, console, "workers")
    workers = console.api.get("/v1/workers").json()["data"]
    assert workers
    for worker in workers:
        row = page.locator(f'#workers-table tr[data-worker-id="{worker["id"]}"]')
        expect(row).to_contain_text(", ".join(worker["queues"]))
        for model in worker["models"]:
            expect(row).to_contain_text(model)
        expect(row.locator("td").nth(3)).to_have_text(f"0 / {worker['slots']}")
        expect(row.locator("td").nth(4)).to_have_text(SECONDS)  # the heartbeat's age
    for queue in ("llm", "stt", "tts", "dialogue"):
        expect(page.locator(f'#queues-table tr[data-queue="{queue}"] td').first).to_have_text("1")
    screenshot(page, console, "workers")


# --- jobs -------------------------------------------------------------------------------------------------


def test_a_job_submitted_through_the_api_appears_within_2_s_and_succeeds_live(page: Page, console: Console) -> None:
    open_console(page, console)
    page.evaluate("window.sameDocument = true")
    created = console.api.post("/v1/jobs/generate", json={"prompt": "Say hello.", "max_tokens": 24})
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    row = job_row(page, job_id)
    expect(row).to_be_visible(timeout=2_000)
    expect(row.locator("td.col-kind")).to_have_text("generate")
    expect(row.locator("td.col-status")).to_have_text("succeeded", timeout=90_000)
    job = finished(console, job_id)
    expect(row.locator("td.col-model")).to_have_text(job["result"]["model"])
    expect(row.locator("td.col-worker")).to_have_text(job["worker"])
    expect(row.locator("td.col-attempts")).to_have_text("1")
    assert page.evaluate("window.sameDocument") is True, "the page reloaded"

    page.get_by_label("Status").select_option("failed")
    expect(row).to_be_hidden()
    page.get_by_label("Status").select_option("succeeded")
    expect(row).to_be_visible()
    page.get_by_label("Kind").select_option("transcribe")
    expect(row).to_be_hidden()
    page.get_by_label("Kind").select_option("")
    page.get_by_label("Status").select_option("")

    # The job's own view: its events replayed, its text, its facts.
    row.get_by_role("link", name=job_id).click()
    expect(page.get_by_role("heading", level=2, name=f"Job {job_id}")).to_be_visible()
    expect(page.locator("#job-status")).to_have_text("succeeded")
    expect(page.locator("#job-text")).to_have_text(job["result"]["text"])
    expect(page.locator("#job-events li code").first).to_have_text("queued")
    expect(page.locator("#job-events li code").last).to_have_text("done")
    screenshot(page, console, "job")


# --- try it -----------------------------------------------------------------------------------------------


def test_a_streamed_generation_shows_its_text_growing(page: Page, console: Console) -> None:
    open_console(page, console, "try")
    expect(page.locator("#generate-model option")).not_to_have_count(1)  # the registered models are offered
    page.get_by_label("Prompt", exact=True).fill("Tell me a long story about a lighthouse keeper and a storm.")
    page.get_by_label("Max tokens").fill("80")
    page.get_by_role("button", name="Send").click()
    reply = page.locator("#generate-log li.assistant .text").last
    lengths: list[int] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not page.locator("#generate-state").inner_text().startswith("done"):
        lengths.append(len(reply.inner_text()))
        time.sleep(0.15)
    growth = sorted(set(lengths) - {0})
    assert len(growth) >= 3, f"the text did not grow while it was written: {lengths}"
    assert lengths == sorted(lengths), f"the text shrank: {lengths}"
    job_id = page.locator("#generate-log li.assistant .job-link").last.inner_text()
    result = console.api.get(f"/v1/jobs/{job_id}/result").json()
    expect(reply).to_have_text(result["text"])
    screenshot(page, console, "try")


def test_transcribing_an_uploaded_wav_shows_its_text(page: Page, console: Console, tmp_path: Path) -> None:
    upload = tmp_path / "fox.wav"
    upload.write_bytes(spoken("fox"))
    open_console(page, console, "try")
    page.get_by_label("Audio file").set_input_files(upload)
    page.get_by_role("button", name="Transcribe file").click()
    expect(page.locator("#transcribe-state")).to_contain_text("done", timeout=60_000)
    text = page.locator("#transcribe-text").inner_text()
    assert wer(SENTENCES["fox"], text) <= 0.2, text
    expect(page.locator("#transcribe-segments li")).not_to_have_count(0)


def test_synthesis_plays_as_it_streams_and_whole(page: Page, console: Console) -> None:
    open_console(page, console, "try")
    panel = page.get_by_role("region", name="Speak")
    panel.get_by_label("Text").fill("Hello from the console. This is the second sentence.")
    panel.get_by_label("Voice").select_option(label="heart (hibari)")
    panel.get_by_role("button", name="Speak").click()
    expect(page.locator("#speak-state")).to_contain_text("done", timeout=60_000)
    duration = wait_until(lambda: media_duration(page, "#speak-audio audio"), timeout=30, what="the audio's duration")
    job_id = page.locator("#speak-audio .job-link").inner_text()
    result = console.api.get(f"/v1/jobs/{job_id}").json()["result"]
    assert duration == pytest.approx(result["duration"], abs=0.05)
    assert result["voice"] == "heart" and result["chunks"] >= 2
    # Each chunk went to the speakers as it came, before the whole file was there.
    expect(page.locator("#speak-state")).to_contain_text(f"{result['chunks']} chunks played as they arrived")


# --- batches, and cancel (after the others: the table in the README's screenshot has jobs of every kind) -----


def test_batches_show_their_progress(page: Page, console: Console) -> None:
    line = {"method": "POST", "url": "/v1/chat/completions"}
    body = {"model": "smollm2-135m-instruct", "max_tokens": 4, "messages": [{"role": "user", "content": "Hi."}]}
    requests = "".join(json.dumps({"custom_id": f"r{n}", **line, "body": body}) + "\n" for n in range(2))
    uploaded = console.api.post("/v1/files", files={"file": ("hi.jsonl", requests.encode())}, data={"purpose": "batch"})
    assert uploaded.status_code == 200, uploaded.text
    batch = console.api.post(
        "/v1/batches",
        json={"input_file_id": uploaded.json()["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"},
    ).json()
    open_console(page, console, "batches")
    row = page.locator(f'#batches-table tr[data-batch-id="{batch["id"]}"]')
    expect(row).to_contain_text("/v1/chat/completions")
    expect(row.get_by_role("progressbar")).to_have_attribute("max", "2")
    expect(row).to_contain_text("completed", timeout=90_000)
    expect(row.get_by_role("progressbar")).to_have_attribute("value", "2")
    expect(row).to_contain_text("2 done, 0 failed, of 2")
    screenshot(page, console, "batches")


def test_cancel_from_the_table(page: Page, console: Console) -> None:
    open_console(page, console)
    body = {"prompt": "Write a very long story about the sea.", "max_tokens": 400}
    job_id = console.api.post("/v1/jobs/generate", json=body).json()["id"]
    row = job_row(page, job_id)
    cancel = row.get_by_role("button", name=f"Cancel job {job_id}")
    expect(cancel).to_be_visible(timeout=2_000)
    cancel.click()
    expect(row.locator("td.col-status")).to_have_text("cancelled", timeout=30_000)
    expect(cancel).to_have_count(0)
    assert finished(console, job_id)["status"] == "cancelled"
    screenshot(page, console, "jobs", docs=True)


# --- talk -------------------------------------------------------------------------------------------------


def test_talk_through_the_fake_microphone_hears_the_question_and_answers(page: Page, console: Console) -> None:
    open_console(page, console, "talk")
    page.get_by_role("button", name="Start talking").click()
    heard = page.locator("#talk-log li.you .text").first
    answer = page.locator("#talk-log li.answer .text").first
    expect(heard).to_contain_text("France", ignore_case=True, timeout=60_000)
    assert wer(QUESTION, heard.inner_text()) <= 0.5, heard.inner_text()
    expect(answer).not_to_be_empty(timeout=60_000)
    # The response ends (heard whole, or cut short when the looping microphone asks again).
    ended = re.compile(r"\b(complete|interrupted)\b")
    expect(page.locator("#talk-log li.answer").first).to_have_class(ended, timeout=60_000)
    assert len(answer.inner_text().split()) >= 2, answer.inner_text()
    screenshot(page, console, "talk", docs=True)
    page.get_by_role("button", name="Hang up").click()
    expect(page.locator("#talk-state")).to_have_text("not connected")
