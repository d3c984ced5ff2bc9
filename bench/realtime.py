"""Realtime (`WS /v1/realtime`): time from the end of speech to the first `response.output_audio.delta`,
beside the dialogue job's first audio in the same run (issue 23). Goal: ≤ 1.2× the dialogue's, under 1 s.

- realtime: one session through the official `openai` client (`model` smollm2-135m-instruct, server VAD,
  input transcription whisper-tiny.en). Each turn is the spoken question sent as a microphone sends it:
  24 kHz pcm16 in 40 ms chunks, each sent when its 40 ms have passed, after a short silence and followed
  by silence until the answer's first audio arrives; then the microphone stops until `response.done`.
  End of speech is when the question's last chunk was sent (the question's audio is cut where the voice
  ends: hibari leaves ~0.4 s of silence at the end, which would let the VAD fire before "end of speech"
  and flatter realtime). The turn's two items are deleted after it, so every turn has the same context.
- dialogue: the same audio as a WAV to `POST /v1/jobs/dialogue`, same instructions and generation
  config, timed from the request to the first `audio_chunk` event (as bench/dialogue.py times it).

Turns and jobs alternate, so the machine's noise falls on both. Prints p50/p90, the ratio, a breakdown of
each path's events, and the API's own `app_realtime_first_audio_seconds` (from the VAD's speech_stopped).

    python -m bench.realtime [--turns 20] [--silence-ms 200]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
from openai import OpenAI
from openai.resources.realtime.realtime import RealtimeConnection
from prometheus_client.parser import text_string_to_metric_families

from bench.dialogue import CHAT, INSTRUCTIONS, QUESTION, events
from bench.harness import bench_stack, median, percentile
from tests.audio import encode, speak

RATE = 24_000
CHUNK = RATE * 40 // 1000 * 2  # 40 ms of pcm16
LEAD_MS = 400  # silence before each question
VOICED = 0.02  # |sample| above this is voice (about -34 dBFS)
FIRST_AUDIO = "response.output_audio.delta"
# The events timed on each path, in the order they happen, and the names the tables give them.
REALTIME_MARKS = {
    "input_audio_buffer.speech_stopped": "speech_stopped (VAD)",
    "conversation.item.input_audio_transcription.completed": "transcription.completed",
    "response.created": "response.created",
    "response.output_audio_transcript.delta": "first transcript delta",
    FIRST_AUDIO: "first output_audio.delta",
}
DIALOGUE_MARKS = {
    "transcript": "transcript",
    "assistant_text": "first assistant_text",
    "audio_chunk": "first audio_chunk",
}
# Each stage as (from, to) on each path ("": the end of speech, or the request); None: the path has no such stage.
STAGES: list[tuple[str, tuple[str, str] | None, tuple[str, str] | None]] = [
    ("VAD: end of speech → speech_stopped", ("", "input_audio_buffer.speech_stopped"), None),
    (
        "speech to text (dialogue: from the request)",
        ("input_audio_buffer.speech_stopped", "conversation.item.input_audio_transcription.completed"),
        ("", "transcript"),
    ),
    (
        "transcript → first token",
        ("conversation.item.input_audio_transcription.completed", "response.output_audio_transcript.delta"),
        ("transcript", "assistant_text"),
    ),
    (
        "first token → first audio (first sentence written and spoken)",
        ("response.output_audio_transcript.delta", FIRST_AUDIO),
        ("assistant_text", "audio_chunk"),
    ),
    ("total: first audio", ("", FIRST_AUDIO), ("", "audio_chunk")),
]
HISTOGRAM = "app_realtime_first_audio_seconds"


@dataclass
class Timed:
    """One turn or job: its first audio (s), when each marked event first arrived (s), what it answered."""

    first_audio: float
    marks: dict[str, float] = field(default_factory=dict)
    answer: str = ""
    heard: str = ""  # the question's transcript
    vad_offset_ms: float = 0.0  # the VAD's audio_end_ms less where the voice really ended (realtime only)


def question_pcm16() -> bytes:
    """The question, spoken by hibari at 24 kHz, cut to where its voice starts and ends."""
    audio, rate = speak(QUESTION)
    assert rate == RATE, rate
    voiced = np.nonzero(np.abs(audio) > VOICED)[0]
    audio = audio[voiced[0] : voiced[-1] + 1]
    return bytes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())


def chunks(audio: bytes) -> list[bytes]:
    return [audio[i : i + CHUNK] for i in range(0, len(audio), CHUNK)]


class Microphone(threading.Thread):
    """Sends lead silence, the question, then silence until `heard` is set, each 40 ms chunk when its
    40 ms have passed (a schedule, not a sleep a chunk, so the pace does not drift)."""

    def __init__(self, conn: RealtimeConnection, speech: bytes) -> None:
        super().__init__(daemon=True)
        self.conn = conn
        self.speech = chunks(speech)
        self.heard = threading.Event()
        self.speech_end = 0.0
        self.sent_ms = 0.0  # audio sent, in ms

    def run(self) -> None:
        quiet = bytes(CHUNK)
        start = time.perf_counter()
        sent = 0

        def send(chunk: bytes) -> None:
            nonlocal sent
            sent += 1
            time.sleep(max(0.0, start + sent * 0.04 - time.perf_counter()))
            self.conn.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())
            self.sent_ms += len(chunk) / 2 / RATE * 1000

        for _ in range(LEAD_MS // 40):
            send(quiet)
        for chunk in self.speech:
            send(chunk)
        self.speech_end = time.perf_counter()
        while not self.heard.is_set():
            send(quiet)


def recv(conn: RealtimeConnection) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(conn.recv_bytes())
    if event["type"] == "error":
        raise RuntimeError(f"realtime error: {event['error']}")
    return event


def realtime_turn(conn: RealtimeConnection, speech: bytes, session_ms: float) -> tuple[Timed, float]:
    """One spoken turn; (its timings, the session's audio in ms after it)."""
    mic = Microphone(conn, speech)
    mic.start()
    arrived: dict[str, float] = {}
    user_item = answer_item = ""
    vad_end_ms = 0
    answer = heard = ""
    try:
        while True:
            event = recv(conn)
            arrived.setdefault(event["type"], time.perf_counter())
            if event["type"] == FIRST_AUDIO:
                mic.heard.set()
            elif event["type"] == "input_audio_buffer.speech_stopped":
                vad_end_ms = event["audio_end_ms"]
            elif event["type"] == "input_audio_buffer.committed":
                user_item = event["item_id"]
            elif event["type"] == "conversation.item.input_audio_transcription.completed":
                heard = event["transcript"]
            elif event["type"] == "response.done":
                response = event["response"]
                assert response["status"] == "completed", response
                answer_item = response["output"][0]["id"]
                answer = response["output"][0]["content"][0]["transcript"]
                break
    finally:
        mic.heard.set()
        mic.join()
    # A fresh conversation for the next turn: both items go, so its context is this turn's again.
    for item in (user_item, answer_item):
        conn.conversation.item.delete(item_id=item)
    deleted = 0
    while deleted < 2:
        deleted += recv(conn)["type"] == "conversation.item.deleted"
    end = mic.speech_end
    marks = {name: arrived[name] - end for name in REALTIME_MARKS if name in arrived}
    voice_end_ms = session_ms + LEAD_MS + len(speech) / 2 / RATE * 1000
    timed = Timed(arrived[FIRST_AUDIO] - end, marks, answer.strip(), heard.strip(), vad_end_ms - voice_end_ms)
    return timed, session_ms + mic.sent_ms


def dialogue_job(client: httpx.Client, wav: bytes) -> Timed:
    started = time.perf_counter()
    fields = {"instructions": INSTRUCTIONS, "generation_config": json.dumps(CHAT)}
    job = client.post("/v1/jobs/dialogue", files={"file": ("q.wav", wav)}, data=fields).json()["id"]
    marks: dict[str, float] = {}
    for event in events(client, job):
        marks.setdefault(event.event, time.perf_counter() - started)
        if event.event == "done":
            assert event.json()["status"] == "succeeded", client.get(f"/v1/jobs/{job}").text
    result = client.get(f"/v1/jobs/{job}").json()["result"]
    timed = {name: marks[name] for name in DIALOGUE_MARKS if name in marks}
    return Timed(marks["audio_chunk"], timed, str(result["response_text"]).strip(), str(result["transcript"]).strip())


def configure(conn: RealtimeConnection, silence_ms: int) -> None:
    session = {
        "type": "realtime",
        "instructions": INSTRUCTIONS,
        "max_output_tokens": CHAT["max_tokens"],
        "temperature": CHAT["temperature"],  # not in the GA client's types (the beta had it); speechq reads it
        "audio": {
            "input": {
                "transcription": {"model": "whisper-tiny.en", "language": "en"},
                "turn_detection": {"type": "server_vad", "silence_duration_ms": silence_ms},
            }
        },
    }
    conn.send_raw(json.dumps({"type": "session.update", "session": session}))
    while recv(conn)["type"] != "session.updated":
        pass


def histogram(client: httpx.Client) -> dict[float, float]:
    """The API's first-audio histogram: cumulative count by upper bound (inf: all)."""
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        if family.name == HISTOGRAM:
            for sample in family.samples:
                if sample.name == f"{HISTOGRAM}_bucket":
                    buckets[float(sample.labels["le"])] = sample.value
                elif sample.name == f"{HISTOGRAM}_sum":
                    buckets[-1.0] = sample.value
    return buckets


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> str:
    counts = {le: after[le] - before.get(le, 0.0) for le in sorted(after) if le >= 0}
    total = counts.get(float("inf"), 0.0)
    bound = next((le for le, n in counts.items() if total and n >= q * total), float("inf"))
    return f"≤ {bound:g} s"


def cpu() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            name = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.processor() or platform.machine()
    return f"{os.cpu_count()} cores, {name}"


def report(realtime: list[Timed], dialogue: list[Timed], silence_ms: int, server: str, load: str) -> None:
    rt, dl = [t.first_audio for t in realtime], [t.first_audio for t in dialogue]
    print(
        f"smollm2-135m-instruct (temperature 0, max {CHAT['max_tokens']} tokens), whisper-tiny.en, hibari; "
        f"{len(realtime)} alternating turns; server VAD silence_duration_ms={silence_ms}; CPU: {cpu()}; {load}"
    )
    # A different transcript or answer is a different first sentence: the paths would not do the same work.
    for what in ("heard", "answer"):
        same = sum(getattr(r, what) == getattr(d, what) for r, d in zip(realtime, dialogue, strict=True))
        print(f"{what} identical on both paths: {same}/{len(realtime)}", end="")
        rt_said, dl_said = Counter(getattr(r, what) for r in realtime), Counter(getattr(d, what) for d in dialogue)
        print(f"; realtime {rt_said.most_common(1)[0][0][:90]!r}… dialogue {dl_said.most_common(1)[0][0][:90]!r}…")
    print("| path | first audio p50 | p90 | min | max |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, values in (("realtime (end of speech →)", rt), ("dialogue job (request →)", dl)):
        print(
            f"| {name} | {median(values):.3f} s | {percentile(values, 0.9):.3f} s "
            f"| {min(values):.3f} s | {max(values):.3f} s |"
        )
    ratio = median(rt) / median(dl)
    print(f"realtime p50 ÷ dialogue p50: **{ratio:.2f}** (goal ≤ 1.2); realtime p50 {median(rt):.3f} s (goal < 1 s)")
    print(f"goals met: ratio ≤ 1.2: {'yes' if ratio <= 1.2 else 'NO'}; under 1 s: {'yes' if median(rt) < 1 else 'NO'}")
    print(server)
    print()
    print("realtime events, p50 (p90) of when each first arrived, from the end of speech:")
    print("| realtime event | from end of speech |")
    print("| --- | ---: |")
    for key, label in REALTIME_MARKS.items():
        values = [t.marks[key] for t in realtime if key in t.marks]
        if values:
            print(f"| {label} | {median(values):+.3f} s ({percentile(values, 0.9):+.3f} s) |")
    offsets = [t.vad_offset_ms for t in realtime]
    print(f"(the VAD put the end of speech {median(offsets):+.0f} ms from where the voice ends, p50)")
    print()
    print("where the time goes: each stage per turn, p50 (p90)")
    print("| stage | realtime | dialogue job |")
    print("| --- | ---: | ---: |")
    for label, rt_span, dl_span in STAGES:
        cells = []
        for runs, span in ((realtime, rt_span), (dialogue, dl_span)):
            values = [stage(t, span) for t in runs] if span else []
            cells.append(f"{median(values):.3f} s ({percentile(values, 0.9):.3f} s)" if values else "—")
        print(f"| {label} | {cells[0]} | {cells[1]} |")


def stage(timed: Timed, span: tuple[str, str]) -> float:
    start, end = span
    return timed.marks[end] - (timed.marks[start] if start else 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--silence-ms", type=int, default=200, help="server VAD silence_duration_ms")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    speech = question_pcm16()
    wav = encode(np.frombuffer(speech, dtype="<i2").astype(np.float32) / 32768, RATE, "wav")
    realtime: list[Timed] = []
    dialogue: list[Timed] = []
    queues = "llm,stt,tts,dialogue"
    with (
        bench_stack(queues=queues, LOG_LEVEL="WARNING") as stack,
        httpx.Client(base_url=stack.url, timeout=300) as client,
        OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0).realtime.connect(
            model=str(CHAT["model"])
        ) as conn,
    ):
        while recv(conn)["type"] != "session.created":
            pass
        configure(conn, args.silence_ms)
        _, session_ms = realtime_turn(conn, speech, 0.0)  # warm-up: every model loaded, every path taken once
        dialogue_job(client, wav)
        before = histogram(client)
        for _ in range(args.turns):
            turn, session_ms = realtime_turn(conn, speech, session_ms)
            realtime.append(turn)
            dialogue.append(dialogue_job(client, wav))
        after = histogram(client)
    count = after.get(float("inf"), 0.0) - before.get(float("inf"), 0.0)
    mean = (after.get(-1.0, 0.0) - before.get(-1.0, 0.0)) / count if count else float("nan")
    server = (
        f"API's {HISTOGRAM} (speech_stopped → first audio, {count:.0f} turns): mean {mean:.3f} s, "
        f"p50 {bucket_quantile(before, after, 0.5)}, p90 {bucket_quantile(before, after, 0.9)}"
    )
    # Other work on the machine shows in every figure: the 1-minute load average says how much there was.
    load = f"load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    report(realtime, dialogue, args.silence_ms, server, load)


if __name__ == "__main__":
    main()
