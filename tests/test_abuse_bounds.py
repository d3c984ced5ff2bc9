"""Tiny files that decode to huge work, text with nothing to speak, and the worker's metrics endpoint.

The intake API runs on a Redis of its own with no worker: anything it accepts stays queued, anything it
refuses must leave no job behind. The lying file goes through the session's real worker.
"""

from __future__ import annotations

import io
import json
import wave
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from cli.embedded_redis import EmbeddedRedis
from contract.dialogue import DialogueModels, DialogueResult, DialogueTimings
from contract.errors import InvalidAudio
from contract.jobs import JobKind, JobRecord, JobStatus
from contract.speech import speakable
from contract.transcription import TranscriptionResult, TranscriptionTimings
from media.audio import decode, plausible_seconds, probe
from tests.audio import SENTENCES, encode, speak
from tests.sse import read_events
from tests.stack import Process, base_env, free_port, start_api, start_worker, wait_until
from workers.metrics import MAX_MODEL_LABELS, OTHER, WorkerMetrics

KEY, BUDGETED, OTHER_KEY, SPEAKER = "sk-intake-1", "sk-budget-2", "sk-other-3", "sk-speaker-4"
BATCHER = "sk-batcher-5"
BUDGET_SECONDS = 200


def low_rate_wav(samples: int, rate: int = 1) -> bytes:
    """16-bit mono silence at `rate` Hz: at 1 Hz every two bytes claim a second."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(bytes(2 * samples))
    return buffer.getvalue()


def silent_flac(seconds: float, rate: int = 44_100) -> bytes:
    return encode(np.zeros(int(seconds * rate), np.float32), rate, "flac")


def lying_flac(seconds: float, declared: float, rate: int = 44_100) -> bytes:
    """Silence whose STREAMINFO says it lasts only `declared` seconds."""
    data = bytearray(silent_flac(seconds, rate))
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0, "STREAMINFO comes first"
    # STREAMINFO (from byte 8): block sizes (4), frame sizes (6), then 64 bits: rate 20, channels 3,
    # bits per sample 5, total samples 36.
    packed = int.from_bytes(data[18:26], "big")
    packed = (packed & ~((1 << 36) - 1)) | int(declared * rate)
    data[18:26] = packed.to_bytes(8, "big")
    return bytes(data)


def long_speech(seconds: float) -> tuple[np.ndarray, int]:
    """Real speech (every test sentence, then again) lasting at least `seconds`."""
    parts = [speak(text) for text in SENTENCES.values()]
    rate = parts[0][1]
    once = np.concatenate([pcm for pcm, _ in parts])
    return np.tile(once, int(np.ceil(seconds * rate / once.size))), rate


@pytest.fixture(scope="module")
def intake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An API with keys and a small audio budget, on a Redis of its own, with no worker."""
    folder = tmp_path_factory.mktemp("intake")
    with EmbeddedRedis(folder / "valkey") as redis:
        env = base_env(
            redis.url,
            folder,
            API_KEY_ENABLED="true",
            API_KEYS=f"{KEY},{BUDGETED},{OTHER_KEY},{SPEAKER},{BATCHER}",
            AUDIO_SECONDS_PER_KEY_PER_DAY=str(BUDGET_SECONDS),
        )
        api, url = start_api(env, folder)
        try:
            yield url
        finally:
            api.stop()


def jobs_of(url: str, key: str) -> list[dict[str, object]]:
    answer = httpx.get(f"{url}/v1/jobs", headers={"X-API-Key": key}, timeout=30)
    assert answer.status_code == 200, answer.text
    data: list[dict[str, object]] = answer.json()["data"]
    return data


def transcribe(url: str, key: str, audio: bytes, name: str, route: str = "/v1/jobs/transcribe") -> httpx.Response:
    form = {"model": "whisper-1"} if route.startswith("/v1/audio/") else {}  # OpenAI's routes require one
    return httpx.post(f"{url}{route}", files={"file": (name, audio)}, data=form, headers={"X-API-Key": key}, timeout=60)


# --- M2: tiny files, huge work -----------------------------------------------------------------------


@pytest.mark.parametrize(("samples", "size"), [(600, 1_244), (1_800, 3_644)])
def test_a_tiny_wav_at_1_hz_is_refused_at_the_api(intake: str, samples: int, size: int) -> None:
    audio = low_rate_wav(samples)
    assert len(audio) == size  # the reproductions' files, byte for byte in size
    for route in ("/v1/jobs/transcribe", "/v1/speech-to-text", "/v1/audio/transcriptions"):
        answer = transcribe(intake, KEY, audio, "tiny.wav", route)
        assert answer.status_code == 422, (route, answer.text)
        error = answer.json()["error"]
        assert error["code"] == "invalid_audio" and error["param"] == "file"
        assert "sample rate is 1 Hz" in error["message"] and "8000 Hz" in error["message"]
    assert jobs_of(intake, KEY) == []


def test_ten_minutes_of_silent_flac_is_refused_at_the_api(intake: str) -> None:
    audio = silent_flac(600)
    assert len(audio) < 200 * 1024  # ~10 KB a minute: the reproduction's file was 114 KB
    answer = transcribe(intake, KEY, audio, "silence.flac")
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "invalid_audio" and error["param"] == "file"
    assert "lasts 600s" in error["message"] and "KB file of speech can hold" in error["message"]
    assert "sample rate" not in error["message"]  # 44.1 kHz is fine: only the length is implausible
    assert jobs_of(intake, KEY) == []


def test_real_speech_at_the_lowest_opus_bitrate_is_well_inside_the_bound(intake: str) -> None:
    pcm, rate = long_speech(180)
    audio = encode(pcm, rate, "ogg", bit_rate=6_000)
    seconds = probe(audio, max_seconds=3_600).duration
    assert seconds is not None and seconds >= 180
    assert seconds / (len(audio) / 1024) < 2.0, "Opus at 6 kbps is ~1.3 s/KB; the bound is 2.5"
    assert seconds < plausible_seconds(len(audio)) / 1.5  # room to spare, whatever the floor
    assert decode(audio, max_seconds=3_600, time_limit=60).size / 16_000 == pytest.approx(seconds, abs=0.5)
    answer = transcribe(intake, SPEAKER, audio, "long.ogg")
    assert answer.status_code == 202, answer.text


def test_the_worker_decode_stops_a_file_whose_header_lies() -> None:
    audio = lying_flac(600, declared=5)
    info = probe(audio, max_seconds=3_600)  # the header passes every check at the API
    assert info.duration == pytest.approx(5, abs=0.1)
    bound = plausible_seconds(len(audio))
    assert 60 < bound < 600
    with pytest.raises(InvalidAudio) as caught:
        decode(audio, max_seconds=3_600, time_limit=60)
    assert caught.value.code == "invalid_audio" and caught.value.category == "unprocessable"
    # Stopped at the first frame past the bound, not after all ten minutes.
    assert f"decodes to more than the {bound:.0f}s" in str(caught.value) and "header lies" in str(caught.value)
    with pytest.raises(InvalidAudio) as capped:
        decode(audio, max_seconds=30, time_limit=60)  # MAX_AUDIO_SECONDS below the size bound: the cap speaks
    assert capped.value.code == "audio_too_long" and "MAX_AUDIO_SECONDS" in str(capped.value)


def test_the_worker_decode_refuses_a_low_sample_rate() -> None:
    with pytest.raises(InvalidAudio) as caught:
        decode(low_rate_wav(600), max_seconds=3_600, time_limit=60)
    assert caught.value.code == "invalid_audio" and "sample rate is 1 Hz" in str(caught.value)
    # 8 kHz, the floor, is speech.
    assert decode(low_rate_wav(8_000 * 3, rate=8_000), max_seconds=3_600, time_limit=60).size == 3 * 16_000


def test_a_lying_file_fails_its_job_in_the_worker(client: httpx.Client) -> None:
    answer = client.post("/v1/jobs/transcribe", files={"file": ("liar.flac", lying_flac(600, declared=5))})
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    assert read_events(client, job_id)[-1].json() == {"status": "failed"}
    error = client.get(f"/v1/jobs/{job_id}").json()["error"]
    assert error["type"] == "invalid_audio" and "header lies" in error["message"], error


def test_the_audio_budget_is_counted_per_key_and_refusals_cost_nothing(intake: str) -> None:
    audio = low_rate_wav(8_000 * 60, rate=8_000)  # a minute
    accepted = [transcribe(intake, BUDGETED, audio, "minute.wav").status_code for _ in range(3)]
    assert accepted == [202, 202, 202]  # 180 of 200 s
    over = transcribe(intake, BUDGETED, audio, "minute.wav")
    assert over.status_code == 429, over.text
    error = over.json()["error"]
    assert error["code"] == "audio_budget_exhausted" and "AUDIO_SECONDS_PER_KEY_PER_DAY" in error["message"]
    assert 0 < int(over.headers["Retry-After"]) <= 86_400
    assert len(jobs_of(intake, BUDGETED)) == 3
    # The refused minute was not charged: 20 s still fit, then not one more; another key has its own budget.
    assert transcribe(intake, BUDGETED, low_rate_wav(8_000 * 20, rate=8_000), "twenty.wav").status_code == 202
    assert transcribe(intake, BUDGETED, low_rate_wav(8_000, rate=8_000), "one.wav").status_code == 429
    assert transcribe(intake, OTHER_KEY, audio, "minute.wav").status_code == 202
    # A spoken dialogue draws on the same budget.
    files = {"file": ("one.wav", low_rate_wav(8_000, rate=8_000), "audio/wav")}
    dialogue = httpx.post(f"{intake}/v1/jobs/dialogue", files=files, headers={"X-API-Key": BUDGETED}, timeout=30)
    assert dialogue.status_code == 429 and dialogue.json()["error"]["code"] == "audio_budget_exhausted"


def test_batch_lines_draw_on_the_audio_budget_and_a_failed_batch_gives_it_back(intake: str) -> None:
    headers = {"X-API-Key": BATCHER}
    minute = low_rate_wav(8_000 * 60, rate=8_000)
    upload = httpx.post(
        f"{intake}/v1/files", data={"purpose": "batch"}, files={"file": ("m.wav", minute)}, headers=headers, timeout=30
    )
    assert upload.status_code == 200, upload.text
    lines = [
        {
            "custom_id": str(i),
            "method": "POST",
            "url": "/v1/audio/transcriptions",
            "body": {"model": "whisper-1", "file": upload.json()["id"]},
        }
        for i in range(4)
    ]  # 240 s of 200
    jsonl = "\n".join(json.dumps(line) for line in lines).encode()
    batch_file = httpx.post(
        f"{intake}/v1/files", data={"purpose": "batch"}, files={"file": ("b.jsonl", jsonl)}, headers=headers, timeout=30
    ).json()["id"]
    body = {"input_file_id": batch_file, "endpoint": "/v1/audio/transcriptions", "completion_window": "24h"}
    batch = httpx.post(f"{intake}/v1/batches", json=body, headers=headers, timeout=30).json()
    assert batch["status"] == "failed"
    assert [e["code"] for e in batch["errors"]["data"]] == ["audio_budget_exhausted"]
    # The three lines that fit were given back with the batch: three minutes still fit today.
    assert [transcribe(intake, BATCHER, minute, "m.wav").status_code for _ in range(3)] == [202, 202, 202]


# --- text with nothing to speak ----------------------------------------------------------------------


def test_speakable_means_a_letter_or_a_digit_in_any_script() -> None:
    assert not any(speakable(text) for text in ("😀" * 4096, "!?…", "🇫🇷 ❤️ ✨", "—\u200b\u3000", "★☆"))
    assert all(speakable(text) for text in ("Hi 😀", "こんにちは", "مرحبا", "٣", "42", "Ωmega", "½"))


@pytest.mark.parametrize(("route", "field"), [("/v1/jobs/synthesize", "text"), ("/v1/text-to-speech", "text")])
def test_emoji_only_text_is_refused_before_a_job_exists(intake: str, route: str, field: str) -> None:
    headers = {"X-API-Key": KEY}
    answer = httpx.post(f"{intake}{route}", json={field: "😀" * 4096}, headers=headers, timeout=30)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["param"] == field and "nothing to speak" in error["message"]
    assert jobs_of(intake, KEY) == []


# --- M4: the worker's metrics endpoint -------------------------------------------------------------


def listening(port: int) -> set[str]:
    """The local addresses of every socket listening on `port` (IPv4 and IPv6), from /proc/net."""
    found: set[str] = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


@pytest.mark.parametrize(("host", "address"), [(None, "0100007F"), ("0.0.0.0", "00000000")])
def test_a_worker_serves_metrics_on_loopback_only_by_default(tmp_path: Path, host: str | None, address: str) -> None:
    port = free_port()
    with EmbeddedRedis(tmp_path / "valkey") as redis:
        env = base_env(redis.url, tmp_path, WORKER_METRICS_PORT=str(port))
        env.pop("WORKER_METRICS_HOST", None)
        if host is not None:
            env["WORKER_METRICS_HOST"] = host
        worker: Process = start_worker(env, tmp_path, queues="dialogue")
        try:
            addresses = wait_until(lambda: listening(port), timeout=60, what="the worker's metrics port")
            assert addresses == {address}, addresses  # 0100007F: 127.0.0.1 only; 00000000: every address
            scraped = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
            assert scraped.status_code == 200 and "worker_jobs_total" in scraped.text
        finally:
            worker.stop()


def label_values(registry: CollectorRegistry, label: str) -> set[str]:
    return {s.labels[label] for metric in registry.collect() for s in metric.samples if label in s.labels}


def dialogue_result() -> DialogueResult:
    return DialogueResult(
        transcript="hi",
        language="en",
        segments=[],
        response_text="hello",
        response_format="wav",
        media_type="audio/wav",
        sample_rate=16_000,
        reference_id=None,
        voice="hibari",
        duration=1.0,
        chunks=1,
        conversation_id=None,
        models=DialogueModels(stt="whisper-tiny.en", llm="gemma-3-270m", tts="hibari"),
        usage=None,
        timings=DialogueTimings(seconds=0.5, first_audio_seconds=0.2),
    )


def test_metric_labels_never_take_a_clients_string() -> None:
    metrics = WorkerMetrics()
    job = JobRecord(id="job_x", kind=JobKind.transcribe, status=JobStatus.running, owner="o", request={})
    garbage = 'x"} 1\nevil{a="b'
    for n in range(MAX_MODEL_LABELS + 5):
        result = TranscriptionResult(
            text="hi",
            language="en",
            duration=1.0,
            task="transcribe",
            segments=[],
            model=f"model-{n}",
            timings=TranscriptionTimings(seconds=0.1),
        )
        metrics.finished(job, "succeeded", result, None, 0.2)
    metrics.finished(job, garbage, None, {"type": garbage, "message": "m"}, 0.1)
    metrics.finished(job, "failed", None, {"type": "invalid_audio", "message": "m"}, 0.1)
    # Stages are the results' own timing fields (a dialogue's `first_audio` is not one of STAGES).
    dialogue = JobRecord(id="job_d", kind=JobKind.dialogue, status=JobStatus.running, owner="o", request={})
    metrics.finished(dialogue, "succeeded", dialogue_result(), None, 0.3)
    assert label_values(metrics.registry, "stage") == {"total", "run", OTHER}
    assert label_values(metrics.registry, "status") == {"succeeded", "failed", OTHER}
    assert label_values(metrics.registry, "type") == {"invalid_audio", OTHER}
    models = label_values(metrics.registry, "model")
    assert len(models) == MAX_MODEL_LABELS + 1 and OTHER in models and f"model-{MAX_MODEL_LABELS}" not in models
