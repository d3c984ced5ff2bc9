// The Jobs view: one `GET /v1/jobs/feed` stream (a snapshot, then each change of the key's jobs) kept in a
// table, filtered by status and kind, with a Cancel button per job that can still be cancelled.

import { call, events } from "./api.js";
import { modelOf } from "./catalog.js";
import { CANCELLABLE, byId, el, seconds, showError, statusClass } from "./dom.js";

const MAX_ROWS = 200;
const ACTIVE = new Set(["queued", "running", "cancelling"]);
const rows = new Map(); // job id → {job, row}
const listeners = new Set();
let feed = null;

/** Call `listener(job)` for every change the feed reports (the Job view follows its job this way). */
export function onJob(listener) {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

export function knownJob(id) {
  return rows.get(id)?.job || null;
}

export async function cancelJob(id) {
  const job = await (await call(`/v1/jobs/${encodeURIComponent(id)}`, { method: "DELETE" })).json();
  upsert(job);
  return job;
}

export function setupJobs() {
  byId("filter-status").addEventListener("change", applyFilters);
  byId("filter-kind").addEventListener("change", applyFilters);
  byId("jobs-filters").addEventListener("submit", (event) => event.preventDefault());
  byId("jobs-table").addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-cancel]");
    if (!button) return;
    button.disabled = true;
    try {
      await cancelJob(button.dataset.cancel);
      showError(byId("jobs-error"), null);
    } catch (error) {
      showError(byId("jobs-error"), error);
      button.disabled = false;
    }
  });
}

/** (Re)open the feed: at start and whenever the key changes. */
export function connectFeed() {
  feed?.abort();
  feed = new AbortController();
  for (const { row } of rows.values()) row.remove();
  rows.clear();
  applyFilters();
  follow(feed.signal);
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

function setState(text, live = false) {
  const badge = byId("feed-state");
  badge.textContent = text;
  badge.classList.toggle("live", live);
}

async function follow(signal) {
  let delay = 1000;
  while (!signal.aborted) {
    setState("connecting…");
    try {
      for await (const message of events("/v1/jobs/feed", { signal })) {
        if (message.event === "snapshot") {
          replaceAll(message.data.data);
          setState("live", true);
          showError(byId("jobs-error"), null);
          delay = 1000;
        } else if (message.event === "job") {
          upsert(message.data);
        }
      }
    } catch (error) {
      if (signal.aborted) return;
      if (error.status === 401 || error.status === 403) {
        setState("needs a key");
        showError(byId("jobs-error"), error);
        return; // a new key reconnects
      }
      if (error.status === 404) {
        await pollList(signal); // an API without the feed: one list request a second instead
        return;
      }
      showError(byId("jobs-error"), error);
    }
    if (signal.aborted) return;
    setState("reconnecting…");
    await sleep(delay, signal);
    delay = Math.min(delay * 2, 15000);
  }
}

async function pollList(signal) {
  while (!signal.aborted) {
    try {
      const answer = await (await call("/v1/jobs?limit=100", { signal })).json();
      replaceAll(answer.data);
      setState("polling (no feed on this API)");
    } catch (error) {
      if (signal.aborted) return;
      showError(byId("jobs-error"), error);
    }
    await sleep(1000, signal);
  }
}

function replaceAll(jobs) {
  const seen = new Set(jobs.map((job) => job.id));
  for (const [id, { row }] of rows) {
    if (!seen.has(id)) {
      row.remove();
      rows.delete(id);
    }
  }
  for (const job of jobs) upsert(job, false);
  applyFilters();
}

function upsert(job, filter = true) {
  let entry = rows.get(job.id);
  if (entry && entry.job.updated_at && job.updated_at && job.updated_at < entry.job.updated_at) return;
  if (!entry) {
    entry = { job, row: el("tr", { dataset: { jobId: job.id } }) };
    rows.set(job.id, entry);
    place(entry);
  }
  entry.job = job;
  render(entry);
  for (const listener of listeners) listener(job);
  if (filter) applyFilters();
}

/** Newest first, by creation time; the oldest rows go past MAX_ROWS. */
function place(entry) {
  const body = byId("jobs-table").tBodies[0];
  const created = entry.job.created_at;
  const after = [...body.rows].find((row) => rows.get(row.dataset.jobId)?.job.created_at < created);
  body.insertBefore(entry.row, after || null);
  while (body.rows.length > MAX_ROWS) {
    const last = body.rows[body.rows.length - 1];
    rows.delete(last.dataset.jobId);
    last.remove();
  }
}

function waiting(job) {
  if (job.status !== "queued") return "—";
  const parts = [];
  if (job.queue_position !== undefined && job.queue_position !== null) parts.push(`${job.queue_position} ahead`);
  if (job.estimated_start_seconds !== undefined && job.estimated_start_seconds !== null) {
    parts.push(`~${seconds(job.estimated_start_seconds)}`);
  }
  return parts.join(", ") || "waiting";
}

function timings(job) {
  const t = job.timings || {};
  const parts = [];
  if (t.queue_seconds !== null && t.queue_seconds !== undefined) parts.push(`queued ${seconds(t.queue_seconds)}`);
  if (t.run_seconds !== null && t.run_seconds !== undefined) parts.push(`ran ${seconds(t.run_seconds)}`);
  return parts.join(" · ") || "—";
}

function render({ job, row }) {
  const link = el("a", { href: `#job/${encodeURIComponent(job.id)}`, class: "mono", text: job.id });
  const status = el("span", { class: statusClass(job.status), text: job.status });
  const action = CANCELLABLE.has(job.status)
    ? el("button", { type: "button", dataset: { cancel: job.id }, "aria-label": `Cancel job ${job.id}`, text: "Cancel" })
    : null;
  const cells = [
    [link],
    [job.kind],
    [modelOf(job) || "—"],
    [job.service_tier || "—"],
    [status],
    [waiting(job)],
    [job.worker ? el("span", { class: "mono", text: job.worker }) : "—"],
    [String(job.attempts ?? 0)],
    [timings(job)],
    [action],
  ];
  const names = ["id", "kind", "model", "tier", "status", "waiting", "worker", "attempts", "timings", "actions"];
  row.replaceChildren(
    ...cells.map((content, i) => el(i === 0 ? "th" : "td", { class: `col-${names[i]}`, scope: i === 0 ? "row" : null }, ...content)),
  );
  row.dataset.status = job.status;
  row.dataset.kind = job.kind;
}

function applyFilters() {
  const status = byId("filter-status").value;
  const kind = byId("filter-kind").value;
  let shown = 0;
  for (const { job, row } of rows.values()) {
    const statusOk = !status || (status === "active" ? ACTIVE.has(job.status) : job.status === status);
    row.hidden = !(statusOk && (!kind || job.kind === kind));
    if (!row.hidden) shown++;
  }
  byId("jobs-count").textContent = rows.size ? `${shown} of ${rows.size} jobs shown` : "";
  byId("jobs-empty").hidden = rows.size > 0;
}
