"""Transcriptions decoded together in a real worker (issue 26): one SIGKILLed mid-step has every job of the step
redelivered, and the worker that takes them over decodes them together again, each to its own text."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
from httpx_sse import connect_sse

from tests.audio import DISTINCT_SENTENCES, encode, speak, wer
from tests.stack import doomed_worker
from tests.test_jobs_api import wait_done

JOBS = 4
# Six chunks each. The first job to arrive fills the first step with four of its own, while the others upload;
# from then on each step takes a chunk of every job in turn, so by the time all four have streamed a segment,
# all four still have chunks left.
SECONDS = 175.0


def recordings() -> list[tuple[bytes, str]]:
    """JOBS recordings of SECONDS each, every one starting at another sentence; and what each says."""
    voiced = [speak(text) for text in DISTINCT_SENTENCES]
    rate = voiced[0][1]
    made = []
    for job in range(JOBS):
        parts: list[np.ndarray] = []
        said: list[str] = []
        n = job * 5
        while sum(p.size for p in parts) < SECONDS * rate:
            parts.append(voiced[n % len(voiced)][0])
            said.append(DISTINCT_SENTENCES[n % len(voiced)])
            n += 1
        made.append((encode(np.concatenate(parts), rate), " ".join(said)))
    return made


def wait_for_first_segment(client: httpx.Client, job_id: str) -> None:
    with connect_sse(client, "GET", f"/v1/jobs/{job_id}/events") as source:
        for event in source.iter_sse():
            assert event.event != "done", "the job ended before the worker could be killed"
            if event.event == "segment":
                return


def test_a_worker_killed_mid_step_has_every_job_of_it_redelivered(private_redis: str, tmp_path: Path) -> None:
    made = recordings()
    with (
        doomed_worker(
            private_redis,
            tmp_path,
            time_limit=30,
            queues="stt",
            STT_N_THREADS="2",
            STT_LANES="1",
            STT_BATCH_SIZE=str(JOBS),
            STT_PARALLEL=str(JOBS),
        ) as stack,
        httpx.Client(base_url=stack.url, timeout=30) as client,
    ):
        jobs = []
        for n, (audio, _) in enumerate(made):
            response = client.post("/v1/jobs/transcribe", files={"file": (f"r{n}.wav", audio, "audio/wav")})
            assert response.status_code == 202, response.text
            jobs.append(str(response.json()["id"]))
        for job_id in jobs:  # every job has had a chunk decoded, none has finished: the next steps hold all four
            wait_for_first_segment(client, job_id)
        stack.worker.kill()
        assert [client.get(f"/v1/jobs/{j}").json()["status"] for j in jobs] == ["running"] * JOBS
        stack.rescue()
        done = [wait_done(client, job_id, timeout=180) for job_id in jobs]
    for job, (_, said) in zip(done, made, strict=True):
        assert job["status"] == "succeeded", job
        assert job["attempts"] == 2
        assert wer(said, job["result"]["text"]) < 0.1, (said, job["result"]["text"])
    # The rescuer took the four together as well: some step held chunks of several of them.
    assert max(job["result"]["timings"]["batch_jobs"] for job in done) >= 2
