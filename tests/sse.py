"""Reading a job's Server-Sent Events in tests (parsing by httpx-sse)."""

from __future__ import annotations

import httpx
from httpx_sse import ServerSentEvent, connect_sse


def read_events(client: httpx.Client, job_id: str, **headers: str) -> list[ServerSentEvent]:
    """Every event of the job's stream; the keep-alive pings (comments, which httpx-sse reports as empty
    events once an id has been seen) are left out."""
    with connect_sse(client, "GET", f"/v1/jobs/{job_id}/events", headers=headers) as source:
        assert source.response.status_code == 200, source.response.read()
        assert source.response.headers["content-type"].startswith("text/event-stream")
        return [event for event in source.iter_sse() if event.event != "message" or event.data]
