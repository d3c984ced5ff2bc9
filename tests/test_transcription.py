"""Speech to text through every path: the job API, the original API's endpoints, WebSocket and the `openai` client."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator

import httpx
import openai
import pytest
import srt
import webvtt
from websockets.sync.client import connect

from tests.audio import SENTENCES, spoken, wer
from tests.conftest import Stack
from tests.sse import read_events


@pytest.fixture
def oai(stack: Stack) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0, timeout=120) as client:
        yield client


def hostile_files() -> dict[str, bytes]:
    wav = spoken("fox")
    return {
        "empty": b"",
        "random": os.urandom(8000),
        "text": b"this is not audio at all, just text pretending " * 50,
        "truncated": wav[: len(wav) // 3],
        "lying_header": wav[:44] + b"\x00" * 800,
        "png": b"\x89PNG\r\n\x1a\n" + os.urandom(4000),
    }


@pytest.mark.parametrize("name", sorted(SENTENCES))
def test_job_api_transcribes_with_segments_and_progress(client: httpx.Client, name: str) -> None:
    response = client.post("/v1/jobs/transcribe", files={"file": (f"{name}.wav", spoken(name), "audio/wav")})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    events = read_events(client, job_id)
    assert events[-1].json() == {"status": "succeeded"}
    types = [e.event for e in events]
    assert "segment" in types and "progress" in types
    assert types.index("segment") < types.index("result")
    result = client.get(f"/v1/jobs/{job_id}/result").json()
    assert wer(SENTENCES[name], result["text"]) <= 0.15, result["text"]
    assert result["language"] == "en" and result["duration"] > 1
    assert result["segments"][0]["start"] >= 0


@pytest.mark.parametrize("fmt", ["mp3", "flac", "ogg"])
def test_other_containers_decode(client: httpx.Client, fmt: str) -> None:
    response = client.post("/v1/speech-to-text", files={"file": (f"speech.{fmt}", spoken("report", fmt))})
    assert response.status_code == 200, response.text
    assert wer(SENTENCES["report"], response.json()["text"]) <= 0.15


def test_seed_endpoint_answers_text_language_segments(client: httpx.Client) -> None:
    for name, sentence in SENTENCES.items():
        response = client.post(
            "/v1/speech-to-text", files={"file": ("a.wav", spoken(name))}, data={"language": "en", "temperature": "0"}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"text", "language", "segments"}
        assert wer(sentence, body["text"]) <= 0.15, body["text"]
        assert body["language"] == "en"
        assert {"id", "start", "end", "text"} == set(body["segments"][0])


def test_seed_websocket_answers_each_request_with_one_transcript(client: httpx.Client) -> None:
    url = str(client.base_url.copy_with(scheme="ws").join("/v1/speech-to-text/ws"))
    with connect(url) as ws:  # request after request on one connection, as the original served them
        for name, sentence in SENTENCES.items():
            ws.send(
                json.dumps(
                    {
                        "audio_base64": base64.b64encode(spoken(name)).decode(),
                        "filename": "speech.wav",
                        "content_type": "audio/wav",
                        "language": "en",
                        "response_format": "json",
                    }
                )
            )
            message = json.loads(ws.recv(timeout=120))
            assert message["event"] == "transcript", message
            assert wer(sentence, message["data"]["text"]) <= 0.15
            assert {"text", "language", "segments"} <= set(message["data"])


def test_openai_client_transcribes_in_every_format(oai: openai.OpenAI) -> None:
    for name, sentence in SENTENCES.items():
        text = oai.audio.transcriptions.create(model="whisper-1", file=(f"{name}.wav", spoken(name))).text
        assert wer(sentence, text) <= 0.15, text

    audio = ("report.wav", spoken("report"))
    plain = oai.audio.transcriptions.create(model="whisper-1", file=audio, response_format="text")
    assert wer(SENTENCES["report"], str(plain)) <= 0.15

    subtitles = list(
        srt.parse(str(oai.audio.transcriptions.create(model="whisper-1", file=audio, response_format="srt")))
    )
    assert subtitles and subtitles[0].start.total_seconds() >= 0 and subtitles[-1].end > subtitles[0].start
    assert wer(SENTENCES["report"], " ".join(s.content for s in subtitles)) <= 0.15

    vtt = str(oai.audio.transcriptions.create(model="whisper-1", file=audio, response_format="vtt"))
    captions = webvtt.from_string(vtt).captions
    assert captions and wer(SENTENCES["report"], " ".join(c.text for c in captions)) <= 0.15

    verbose = oai.audio.transcriptions.create(
        model="whisper-1", file=audio, response_format="verbose_json", timestamp_granularities=["word", "segment"]
    )
    assert verbose.language == "en" and verbose.duration > 1
    assert verbose.segments and verbose.segments[0].end > verbose.segments[0].start
    assert verbose.words and len(verbose.words) >= 8
    assert all(w.end >= w.start for w in verbose.words)


def test_openai_translation_endpoint(client: httpx.Client) -> None:
    # Over plain HTTP: the openai client marks audio.translations deprecated (the route is still OpenAI's).
    response = client.post(
        "/v1/audio/translations", files={"file": ("fox.wav", spoken("fox"))}, data={"model": "whisper-1"}
    )
    assert response.status_code == 200, response.text
    assert wer(SENTENCES["fox"], response.json()["text"]) <= 0.15


def test_unknown_model_and_bad_fields(oai: openai.OpenAI, client: httpx.Client) -> None:
    with pytest.raises(openai.NotFoundError):
        oai.audio.transcriptions.create(model="whisper-huge-v9", file=("a.wav", spoken("fox")))
    response = client.post(
        "/v1/jobs/transcribe", files={"file": ("a.wav", spoken("fox"))}, data={"response_format": "docx"}
    )
    assert response.status_code == 422 and response.json()["error"]["param"] == "response_format"
    response = client.post("/v1/jobs/transcribe", data={"language": "en"})
    assert response.status_code == 422 and response.json()["error"]["param"] == "file"
    response = client.post("/v1/speech-to-text", files={"file": ("a.wav", spoken("fox"))}, data={"temperature": "3"})
    assert response.status_code == 422 and response.json()["error"]["param"] == "temperature"


@pytest.mark.parametrize("kind", sorted(hostile_files()))
def test_hostile_files_get_4xx_on_every_path(client: httpx.Client, oai: openai.OpenAI, stack: Stack, kind: str) -> None:
    data = hostile_files()[kind]
    for path in ("/v1/jobs/transcribe", "/v1/speech-to-text", "/v1/audio/transcriptions"):
        response = client.post(path, files={"file": (f"{kind}.wav", data, "audio/wav")}, data={"model": "whisper-1"})
        assert 400 <= response.status_code < 500, (path, response.status_code, response.text)
        assert response.json()["error"]["message"], response.text

    url = str(client.base_url.copy_with(scheme="ws").join("/v1/speech-to-text/ws"))
    with connect(url) as ws:
        ws.send(json.dumps({"audio_base64": base64.b64encode(data).decode(), "filename": f"{kind}.wav"}))
        message = json.loads(ws.recv())
    assert message["event"] == "error" and message["detail"]

    with pytest.raises(openai.APIStatusError) as caught:
        oai.audio.transcriptions.create(model="whisper-1", file=(f"{kind}.wav", data))
    assert 400 <= caught.value.status_code < 500

    assert stack.worker.alive()
    good = client.post("/v1/speech-to-text", files={"file": ("fox.wav", spoken("fox"))})
    assert good.status_code == 200 and wer(SENTENCES["fox"], good.json()["text"]) <= 0.15


def test_uploads_over_the_cap_are_refused_while_reading(client: httpx.Client) -> None:
    big = b"\0" * (26 * 1024 * 1024)
    response = client.post("/v1/speech-to-text", files={"file": ("big.wav", big)})
    assert response.status_code == 413
    assert "MAX_UPLOAD_MB" in response.json()["error"]["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap must hold while the body streams
        boundary = b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        yield boundary
        for _ in range(40):
            yield b"\0" * (1024 * 1024)

    response = client.post(
        "/v1/speech-to-text", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"}
    )
    assert response.status_code == 413


def test_the_multilingual_base_model_is_served_by_name(client: httpx.Client) -> None:
    response = client.post("/v1/speech-to-text", files={"file": ("a.wav", spoken("weather"))}, data={"language": "en"})
    assert response.status_code == 200
    job = client.post(
        "/v1/jobs/transcribe", files={"file": ("a.wav", spoken("weather"))}, data={"model": "whisper-base"}
    )
    result = read_events(client, job.json()["id"])
    assert result[-1].json() == {"status": "succeeded"}
    body = client.get(f"/v1/jobs/{job.json()['id']}/result").json()
    assert body["model"] == "whisper-base"
    assert wer(SENTENCES["weather"], body["text"]) <= 0.15


def test_an_english_only_model_refuses_another_language(client: httpx.Client) -> None:
    response = client.post("/v1/speech-to-text", files={"file": ("a.wav", spoken("fox"))}, data={"language": "fr"})
    assert response.status_code == 400
    assert "whisper-base" in response.json()["error"]["message"]


def test_vad_filter_and_language_detection(client: httpx.Client) -> None:
    job = client.post(
        "/v1/jobs/transcribe",
        files={"file": ("a.wav", spoken("library"))},
        data={"model": "whisper-base", "vad_filter": "true"},
    ).json()
    assert read_events(client, job["id"])[-1].json() == {"status": "succeeded"}
    result = client.get(f"/v1/jobs/{job['id']}/result").json()
    assert result["language"] == "en"  # detected: no language was given to the multilingual model
    assert wer(SENTENCES["library"], result["text"]) <= 0.15
