"""`speechq transcribe`: transcripts for whole folder trees of recordings, through the job API.

A client of the HTTP API, so it works against any speechq: it walks the paths for audio (by extension,
and by sniffing files without one), skips files whose transcripts are newer than the audio, uploads
the rest with bounded concurrency, follows each job's events for a live `rich` display, and writes each
requested format beside the audio or under `--out` (mirroring the tree), through a temporary name so no
half-written file is ever left. Bad files are reported with the server's reason; Ctrl-C cancels the jobs
still outstanding.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import aconnect_sse
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeRemainingColumn

from contract.transcription import TranscriptionResult
from media.transcripts import render

AUDIO_EXTENSIONS = frozenset(
    ".wav .wave .mp3 .flac .ogg .oga .opus .m4a .mp4 .aac .webm .mka .mkv .aiff .aif .wma .amr .3gp .caf".split()
)
FORMATS = ("txt", "srt", "vtt", "json", "tsv")
_TEXT_EXTENSIONS = frozenset(f".{fmt}" for fmt in FORMATS) | {".md", ".csv", ".partial"}


def sniff(path: Path) -> bool:
    """Whether a file without a known extension starts like an audio container."""
    try:
        with path.open("rb") as f:
            head = f.read(16)
    except OSError:
        return False
    return (
        (head[:4] == b"RIFF" and head[8:12] == b"WAVE")
        or head[:3] == b"ID3"
        or head[:4] in (b"fLaC", b"OggS", b"\x1aE\xdf\xa3")
        or (head[:4] == b"FORM" and head[8:11] == b"AIF")
        or head[4:8] == b"ftyp"
        or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xF0 == 0xF0)  # MPEG audio / ADTS frame sync
    )


@dataclass
class Item:
    source: Path
    outputs: dict[str, Path]
    seconds: float = 0.0  # duration, when it could be read here

    def up_to_date(self) -> bool:
        made = self.source.stat().st_mtime
        return all(out.exists() and out.stat().st_mtime >= made for out in self.outputs.values())


def discover(paths: Iterable[Path], out: Path | None, formats: list[str]) -> list[Item]:
    """Every audio file under `paths`, with where each format of its transcript goes."""
    found: list[tuple[Path, Path]] = []  # (source, path relative to its root)
    for path in paths:
        if path.is_dir():
            for candidate in sorted(path.rglob("*")):
                relative = candidate.relative_to(path)
                if any(part.startswith(".") for part in relative.parts) or not candidate.is_file():
                    continue
                suffix = candidate.suffix.lower()
                if suffix in AUDIO_EXTENSIONS or (suffix not in _TEXT_EXTENSIONS and sniff(candidate)):
                    found.append((candidate, relative))
        elif path.is_file():
            found.append((path, Path(path.name)))
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    bases = [(out / relative if out else source).with_suffix("") for source, relative in found]
    clashes = {base for base in bases if bases.count(base) > 1}  # talk.wav and talk.mp3 side by side
    items = []
    for (source, _), base in zip(found, bases, strict=True):
        stem = base.with_name(base.name + source.suffix) if base in clashes else base
        items.append(Item(source, {fmt: stem.with_name(f"{stem.name}.{fmt}") for fmt in formats}))
    return items


def duration(path: Path) -> float:
    import av

    try:
        with av.open(str(path)) as container:
            return float(container.duration / av.time_base) if container.duration else 0.0
    except (av.error.FFmpegError, ValueError, OSError):  # unreadable here: the server gives the reason
        return 0.0


def rendered(result: dict[str, Any], fmt: str) -> str:
    """A transcript file's text: `txt` is the API's `text`, `json` its `verbose_json`."""
    body = render(TranscriptionResult.model_validate(result), {"txt": "text", "json": "verbose_json"}.get(fmt, fmt))
    return body if isinstance(body, str) else json.dumps(body, ensure_ascii=False, indent=2) + "\n"


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


class Failed(Exception):
    pass


@dataclass
class Batch:
    server: str
    headers: dict[str, str]
    fields: dict[str, str]
    concurrency: int
    console: Console
    done: list[Item] = field(default_factory=list)
    failed: list[tuple[Item, str]] = field(default_factory=list)
    active: dict[str, Item] = field(default_factory=dict)  # job id -> item, while the job runs
    cancelled: int = 0

    async def run(self, items: list[Item]) -> None:
        queue: asyncio.Queue[Item] = asyncio.Queue()
        for item in items:
            queue.put_nowait(item)
        self.by_seconds = any(item.seconds for item in items)  # else progress counts files
        total_seconds = sum(item.seconds for item in items) if self.by_seconds else float(len(items))
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.overall = self.progress.add_task("all", total=total_seconds, detail="")
        self.total_files, self.total_seconds = len(items), total_seconds
        self.seconds_done = 0.0
        self._update()
        timeout = httpx.Timeout(30.0, read=None)
        async with httpx.AsyncClient(base_url=self.server, headers=self.headers, timeout=timeout) as client:
            self.client = client
            with self.progress:
                slots = [
                    self.progress.add_task("", total=1.0, detail="", visible=False) for _ in range(self.concurrency)
                ]
                try:
                    await asyncio.gather(*(self._slot(queue, slot) for slot in slots))
                except asyncio.CancelledError:
                    await self._cancel_outstanding()
                    raise

    async def _slot(self, queue: asyncio.Queue[Item], slot: TaskID) -> None:
        while not queue.empty():
            item = queue.get_nowait()
            self.progress.update(
                slot, description=item.source.name, completed=0, total=item.seconds or 1.0, visible=True
            )
            try:
                result = await self._transcribe(item, slot)
                for fmt, path in item.outputs.items():
                    write_atomically(path, rendered(result, fmt))
                self.done.append(item)
            except Failed as exc:
                self.failed.append((item, str(exc)))
            except httpx.HTTPError as exc:  # the server went away or stalled: this file is not done
                self.failed.append((item, f"{type(exc).__name__}: {exc or 'no answer'} ({self.server})"))
            self.seconds_done += item.seconds if self.by_seconds else 1.0
            self.progress.update(slot, description="", completed=0, visible=False)
            self._update()

    def _update(self, in_flight: float = 0.0) -> None:
        finished = len(self.done) + len(self.failed)
        minutes = f"{self.seconds_done / 60:.1f}/{self.total_seconds / 60:.1f} min"
        detail = f"files {finished}/{self.total_files} · audio {minutes}"
        self.progress.update(self.overall, completed=self.seconds_done + in_flight, detail=detail)

    async def _transcribe(self, item: Item, slot: TaskID) -> dict[str, Any]:
        data = await asyncio.to_thread(item.source.read_bytes)
        files = {"file": (item.source.name, data)}
        response = await self.client.post("/v1/jobs/transcribe", files=files, data=self.fields)
        if response.status_code != 202:
            raise Failed(_reason(response))
        job_id = response.json()["id"]
        self.active[job_id] = item  # until it ends; on Ctrl-C, what is still here gets cancelled
        async with aconnect_sse(self.client, "GET", f"/v1/jobs/{job_id}/events") as source:
            async for event in source.aiter_sse():
                if event.event == "progress" and item.seconds:
                    seen = float(event.json().get("fraction", 0.0)) * item.seconds
                    self.progress.update(slot, completed=seen)
                    self._update(in_flight=seen)
        job = (await self.client.get(f"/v1/jobs/{job_id}")).json()
        self.active.pop(job_id, None)
        if job["status"] != "succeeded":
            error = job.get("error") or {}
            raise Failed(f"{error.get('type', job['status'])}: {error.get('message', 'the job did not succeed')}")
        return dict(job["result"])

    async def _cancel_outstanding(self) -> None:
        for job_id in list(self.active):
            try:
                await self.client.delete(f"/v1/jobs/{job_id}", timeout=5)
                self.cancelled += 1
            except httpx.HTTPError:
                pass


DEFAULT_IN_FLIGHT = 10  # when the server does not say: a default worker's STT_PARALLEL (8), and 2 uploading
MAX_IN_FLIGHT = 64


def in_flight_to_fill(server: str, headers: dict[str, str]) -> int:
    """Files to keep in flight: the transcriptions the server's `stt` workers run at once (the slots they offer,
    `GET /v1/queues`), and 2 more uploading and waiting, so that each decoding step finds its batch full."""
    try:
        queues = httpx.get(f"{server}/v1/queues", headers=headers, timeout=10).raise_for_status().json()["data"]
        slots = next(int(q["slots"]) for q in queues if q["queue"] == "stt")
    except (httpx.HTTPError, ValueError, KeyError, TypeError, StopIteration):
        return DEFAULT_IN_FLIGHT  # an older server, or none yet: the upload says which
    return min(MAX_IN_FLIGHT, max(2, slots + 2))


def _reason(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        return f"{error.get('code') or response.status_code}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}: {response.text[:200]}"


def transcribe_paths(
    paths: list[Path],
    *,
    out: Path | None,
    formats: list[str],
    server: str,
    api_key: str | None,
    model: str | None,
    language: str | None,
    concurrency: int | None,
    force: bool,
    console: Console,
    service_tier: str = "flex",
) -> int:
    """Run the whole command; returns the exit status (0 all good, 1 some files failed, 2 unusable, 130 Ctrl-C).
    `concurrency` None: enough files in flight to fill what the server's transcription workers take at once."""
    items = discover(paths, out, formats)
    todo = [item for item in items if force or not item.up_to_date()]
    skipped = len(items) - len(todo)
    if not items:
        console.print("no audio files found")
        return 0
    for item in todo:
        item.seconds = duration(item.source)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    fields = {"response_format": "verbose_json", "service_tier": service_tier}
    fields |= {k: v for k, v in (("model", model), ("language", language)) if v}
    if concurrency is None and todo:
        concurrency = in_flight_to_fill(server.rstrip("/"), headers)
    batch = Batch(server.rstrip("/"), headers, fields, max(1, min(concurrency or 1, len(todo) or 1)), console)
    started = time.monotonic()
    try:
        if todo:
            asyncio.run(batch.run(todo))
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted[/]: {batch.cancelled} job(s) cancelled; finished files are kept")
        return 130
    except httpx.ConnectError as exc:
        console.print(f"[red]cannot reach speechq at {server}[/] ({exc}); start it with `speechq up` or pass --server")
        return 2
    elapsed = time.monotonic() - started
    audio = sum(item.seconds for item in batch.done)
    speed = f", {audio / elapsed:.1f} s of audio per second" if audio and elapsed > 0 else ""
    console.print(
        f"{len(batch.done)} transcribed ({audio / 60:.1f} min of audio in {elapsed:.1f}s{speed}), "
        f"{skipped} skipped (transcripts up to date), {len(batch.failed)} failed"
    )
    for item, reason in batch.failed:
        console.print(f"  [red]failed[/] {item.source}: {reason}")
    return 1 if batch.failed else 0
