// The Job view: one job's facts and its live event stream (`GET /v1/jobs/{id}/events`, read with fetch):
// tokens as they are written, transcript segments as they come, audio chunks played as they arrive, and
// at the end the whole audio in an <audio controls> element.

import { getBlob, getJSON, jobEvents } from "./api.js";
import { ChunkedAudio, audioElement, replaceAudio, wavBlob } from "./audio.js";
import { modelOf } from "./catalog.js";
import { CANCELLABLE, TERMINAL, byId, clock, el, seconds, showError, statusClass } from "./dom.js";
import { cancelJob, onJob } from "./jobs-view.js";

const MAX_EVENTS = 300;
let current = null;

export function setupJob() {
  byId("job-cancel").addEventListener("click", async () => {
    if (!current) return;
    byId("job-cancel").disabled = true;
    try {
      show(current, await cancelJob(current.id));
    } catch (error) {
      showError(byId("job-error"), error);
      byId("job-cancel").disabled = false;
    }
  });
  byId("job-live-audio").addEventListener("change", (event) => {
    if (!current) return;
    current.audio.live = event.target.checked;
    if (!event.target.checked) current.audio.stop();
  });
}

export function closeJob() {
  if (!current) return;
  current.controller.abort();
  current.audio.player.close();
  current.unsubscribe();
  current = null;
}

/** Show job `id` (or, with none, the hint to pick one) and follow its events. */
export function openJob(id) {
  if (current?.id === id) return;
  closeJob();
  byId("job-none").hidden = Boolean(id);
  byId("job-body").hidden = !id;
  byId("job-cancel").hidden = true;
  byId("job-status").textContent = "";
  byId("job-title").textContent = id ? `Job ${id}` : "Job";
  showError(byId("job-error"), null);
  if (!id) return;
  for (const box of ["job-text-box", "job-segments-box", "job-audio-box"]) byId(box).hidden = true;
  for (const list of ["job-text", "job-segments", "job-events", "job-audio", "job-result", "job-facts"]) {
    byId(list).replaceChildren();
  }
  byId("job-progress").value = 0;
  byId("job-stage").textContent = "";
  byId("job-audio-state").textContent = "";
  const job = { id, controller: new AbortController(), audio: new ChunkedAudio({ live: false }), text: "" };
  job.unsubscribe = onJob((changed) => changed.id === id && current === job && show(job, changed));
  current = job;
  follow(job);
}

/** The job as it is now, shown; null (the error shown) when it could not be read. */
async function refresh(job) {
  const { signal } = job.controller;
  try {
    const record = await getJSON(`/v1/jobs/${encodeURIComponent(job.id)}`, { signal });
    show(job, record);
    return record;
  } catch (error) {
    if (!signal.aborted) showError(byId("job-error"), error);
    return null;
  }
}

async function follow(job) {
  const { signal } = job.controller;
  const record = await refresh(job);
  if (!record) return;
  // A job that has ended replays its events: its audio is not played again, only offered at the end.
  job.audio.live = !TERMINAL.has(record.status) && byId("job-live-audio").checked;
  try {
    for await (const message of jobEvents(job.id, { signal })) {
      handle(job, message);
      if (message.event === "done") await finish(job);
    }
  } catch (error) {
    if (!signal.aborted) showError(byId("job-error"), error);
  }
}

function fact(name, value) {
  return [el("dt", { text: name }), el("dd", {}, value)];
}

function show(job, record) {
  if (current !== job) return;
  job.record = record;
  const status = byId("job-status");
  status.className = statusClass(record.status);
  status.textContent = record.status;
  const cancel = byId("job-cancel");
  cancel.hidden = !CANCELLABLE.has(record.status);
  if (!cancel.hidden) cancel.disabled = false;
  const t = record.timings || {};
  const waiting =
    record.status === "queued"
      ? `${record.queue_position ?? "?"} ahead` +
        (record.estimated_start_seconds != null ? `, starts in ~${seconds(record.estimated_start_seconds)}` : "")
      : "—";
  byId("job-facts").replaceChildren(
    ...fact("Kind", record.kind),
    ...fact("Model", modelOf(record) || "—"),
    ...fact("Tier", record.service_tier || "—"),
    ...fact("Queue / ETA", waiting),
    ...fact("Worker", record.worker || "—"),
    ...fact("Attempts", String(record.attempts ?? 0)),
    ...fact("Created", clock(record.created_at)),
    ...fact("Timings", `queued ${seconds(t.queue_seconds)}, ran ${seconds(t.run_seconds)}, total ${seconds(t.total_seconds)}`),
    ...fact("Error", record.error ? `${record.error.type}: ${record.error.message}` : "—"),
  );
  if (record.result) byId("job-result").textContent = JSON.stringify(record.result, null, 2);
}

function summary(message) {
  const data = message.data;
  switch (message.event) {
    case "token":
      return JSON.stringify(data.text);
    case "audio_chunk":
      return `#${data.index}, ${data.format}, until ${seconds(data.end)}`;
    case "segment":
      return `${seconds(data.start)}–${seconds(data.end)} ${data.text}`;
    case "progress":
      return `${Math.round(data.fraction * 100)}% ${data.stage}`;
    case "result":
      return "(see Result)";
    default: {
      const text = typeof data === "string" ? data : JSON.stringify(data);
      return text.length > 160 ? text.slice(0, 160) + "…" : text;
    }
  }
}

function logEvent(message) {
  const list = byId("job-events");
  const last = list.lastElementChild;
  if (message.event === "token" && last?.dataset.event === "token") {
    last.dataset.count = String(Number(last.dataset.count) + 1);
    last.querySelector(".summary").textContent = `×${last.dataset.count}, last ${summary(message)}`;
    return;
  }
  list.append(
    el(
      "li",
      { dataset: { event: message.event, count: "1" } },
      el("time", { text: new Date().toLocaleTimeString() }),
      " ",
      el("code", { text: message.event }),
      " ",
      el("span", { class: "summary", text: summary(message) }),
    ),
  );
  while (list.children.length > MAX_EVENTS) list.firstElementChild.remove();
}

function appendText(job, text) {
  byId("job-text-box").hidden = false;
  job.text += text;
  byId("job-text").textContent = job.text;
}

function addSegment(segment) {
  byId("job-segments-box").hidden = false;
  byId("job-segments").append(
    el("li", {}, el("span", { class: "muted", text: `${seconds(segment.start)}–${seconds(segment.end)} ` }), segment.text),
  );
}

function handle(job, message) {
  logEvent(message);
  const data = message.data;
  switch (message.event) {
    case "started":
      if (job.record && !TERMINAL.has(job.record.status)) show(job, { ...job.record, status: "running", worker: data.worker });
      break;
    case "token":
      appendText(job, data.text);
      break;
    case "assistant_text":
      if (data.final) {
        job.text = "";
        appendText(job, data.text);
      } else appendText(job, data.delta);
      break;
    case "segment":
      addSegment(data);
      break;
    case "transcript":
      byId("job-segments-box").hidden = false;
      if (!byId("job-segments").children.length) (data.segments || []).forEach(addSegment);
      break;
    case "audio_chunk":
      byId("job-audio-box").hidden = false;
      job.audio.add(data);
      byId("job-audio-state").textContent =
        `${data.index + 1} chunks, ${seconds(job.audio.seconds)} of audio so far` + (job.audio.live ? ", playing" : "");
      if (!job.audio.pcm) replaceAudio(byId("job-audio"), audioElement(job.audio.blob(), "The audio so far"));
      break;
    case "progress":
      byId("job-progress").value = data.fraction;
      byId("job-stage").textContent = data.stage;
      break;
    case "result":
      byId("job-result").textContent = JSON.stringify(data, null, 2);
      break;
    case "error":
      showError(byId("job-error"), new Error(`${data.type}: ${data.message}`));
      break;
    default:
      break;
  }
}

async function finish(job) {
  const { signal } = job.controller;
  const record = await refresh(job);
  if (!record) return;
  if (record.status === "succeeded") byId("job-progress").value = 1;
  const result = record.result || {};
  if (!job.text && typeof result.text === "string" && record.kind !== "transcribe") appendText(job, result.text);
  if (record.kind === "transcribe" && !byId("job-segments").children.length) (result.segments || []).forEach(addSegment);
  if (record.status !== "succeeded" || !["synthesize", "dialogue"].includes(record.kind)) return;
  byId("job-audio-box").hidden = false;
  try {
    let blob = await getBlob(`/v1/jobs/${encodeURIComponent(job.id)}/audio`, { signal });
    if (result.response_format === "pcm") blob = wavBlob([new Uint8Array(await blob.arrayBuffer())], result.sample_rate);
    replaceAudio(byId("job-audio"), audioElement(blob, `The audio of job ${job.id}`));
    byId("job-audio-state").textContent = `${seconds(result.duration)} of audio, ${result.response_format}`;
  } catch (error) {
    if (!signal.aborted) showError(byId("job-error"), error);
  }
}
