"""What the fuzz suite (tests/test_fuzz.py) found, each shown fixed against the real API: an event id that
`str.isdigit` took for digits ("²") or past Redis's 64 bits began a job's event stream that Redis then refused
(an error logged, the stream cut); a file's `purpose` and a batch's `endpoint` are documented as the sets the
API accepts and an upload as never empty (a fuzzer drawing any string never created a file, so nothing behind
`/v1/files` was reached); and a file's content is documented as the bytes it is served as, not as JSON."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from api.batch_lines import ENDPOINTS
from api.routes.files import PURPOSES
from api.routes.jobs import EVENT_ID
from tests.sse import read_events


@pytest.fixture
def schema(client: httpx.Client) -> dict[str, Any]:
    document: dict[str, Any] = client.get("/openapi.json").json()
    return document


def body_schema(schema: dict[str, Any], path: str, media_type: str) -> dict[str, Any]:
    ref = schema["paths"][path]["post"]["requestBody"]["content"][media_type]["schema"]["$ref"]
    found: dict[str, Any] = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return found


def test_an_event_id_is_documented_and_any_other_is_a_422_before_the_stream(
    client: httpx.Client, schema: dict[str, Any]
) -> None:
    parameters = schema["paths"]["/v1/jobs/{job_id}/events"]["get"]["parameters"]
    documented = {p["name"]: p["schema"]["anyOf"][0]["pattern"] for p in parameters if p["in"] in ("header", "query")}
    assert documented == {"Last-Event-ID": EVENT_ID, "after": EVENT_ID}
    created = client.post("/v1/jobs/generate", json={"prompt": "hi", "max_tokens": 2})
    job_id = created.json()["id"]
    for bad in ("²", "1-²", "99999999999999999999-0", "18446744073709551616", "1e3", " 1", "-1"):
        refused = client.get(f"/v1/jobs/{job_id}/events", params={"after": bad})
        assert refused.status_code == 422 and refused.json()["error"]["param"] == "after", (bad, refused.text)
    # A header arrives as Latin-1: byte 0xB2 is "²" to the API.
    refused = client.get(f"/v1/jobs/{job_id}/events", headers={b"Last-Event-ID": b"\xb2"})
    assert refused.status_code == 422 and refused.json()["error"]["param"] == "Last-Event-ID", refused.text
    events = read_events(client, job_id, **{"Last-Event-ID": ""})
    assert events[-1].event == "done"
    resumed = read_events(client, job_id, **{"Last-Event-ID": events[0].id})
    assert [event.id for event in resumed] == [event.id for event in events[1:]]


def test_a_file_upload_documents_what_it_refuses(client: httpx.Client, schema: dict[str, Any]) -> None:
    fields = body_schema(schema, "/v1/files", "multipart/form-data")["properties"]
    assert fields["purpose"]["enum"] == list(PURPOSES) and fields["file"]["minLength"] == 1
    refused = client.post("/v1/files", files={"file": ("notes.txt", b"hello")}, data={"purpose": "other"})
    assert refused.status_code == 422 and refused.json()["error"]["param"] == "purpose", refused.text
    refused = client.post("/v1/files", files={"file": ("empty.txt", b"")}, data={"purpose": "batch"})
    assert refused.status_code == 422 and refused.json()["error"]["param"] == "file", refused.text
    for accepted in PURPOSES:
        answer = client.post("/v1/files", files={"file": ("notes.txt", b"hello")}, data={"purpose": accepted})
        assert answer.status_code == 200 and answer.json()["purpose"] == accepted, answer.text


def test_a_files_content_is_documented_and_served_as_bytes(client: httpx.Client, schema: dict[str, Any]) -> None:
    documented = schema["paths"]["/v1/files/{file_id}/content"]["get"]["responses"]["200"]["content"]
    assert list(documented) == ["application/octet-stream"]
    data = b'{"not": "json to the API"}\n\x00\xff'
    uploaded = client.post("/v1/files", files={"file": ("blob.bin", data)}, data={"purpose": "user_data"}).json()
    answer = client.get(f"/v1/files/{uploaded['id']}/content")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/octet-stream"
    assert answer.content == data


def test_a_batch_endpoint_is_documented_as_the_set_batches_serve(client: httpx.Client, schema: dict[str, Any]) -> None:
    endpoint = body_schema(schema, "/v1/batches", "application/json")["properties"]["endpoint"]
    assert endpoint["enum"] == list(ENDPOINTS)
    refused = client.post("/v1/batches", json={"input_file_id": "file-x", "endpoint": "/v1/embeddings"})
    assert refused.status_code == 422 and refused.json()["error"]["param"] == "endpoint", refused.text
    assert all(served in refused.json()["error"]["message"] for served in ENDPOINTS)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/text-to-speech", {"text": "H\u2082O"}),
        ("/v1/audio/speech", {"model": "tts-1", "voice": "alloy", "input": "x \u00b2 \u2460 \u1369a H\u2082O"}),
    ],
)
def test_digits_that_are_not_decimal_are_spoken(client: httpx.Client, path: str, body: dict[str, Any]) -> None:
    """hibari read "₂" as a number and failed on int() (a 500): such digits are read as their value."""
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text


def test_a_websocket_resume_after_an_id_redis_would_refuse_is_refused(client: httpx.Client) -> None:
    from jobstore.event_log import parse_event_id

    for bad in ("\u00b2", "99999999999999999999-0", "1-\u0662"):
        with pytest.raises(ValueError):
            parse_event_id(bad)
    assert parse_event_id("18446744073709551615-0") == "18446744073709551615-0"


def test_streams_and_upstream_failures_are_documented(schema: dict[str, Any]) -> None:
    for path in ("/v1/chat/completions", "/v1/completions"):
        content = schema["paths"][path]["post"]["responses"]["200"]["content"]
        assert "text/event-stream" in content and "application/json" in content
    assert schema["paths"]["/v1/generate_stream"]["post"]["responses"]["200"]["content"]["application/json"] == {}
    assert "audio/mpeg" in schema["paths"]["/v1/text-to-speech"]["post"]["responses"]["200"]["content"]
    assert "502" in schema["paths"]["/v1/audio/speech"]["post"]["responses"]
