// The Workers view: live workers (queues, models loaded, device, slots, heartbeat age) and each queue's
// jobs waiting per tier (`GET /v1/queues`), read again every few seconds while the view is open.

import { ApiError, getJSON } from "./api.js";
import { ago, byId, clock, el, seconds, showError } from "./dom.js";

const EVERY_MS = 2000;
let timer = null;

export function showWorkers() {
  hideWorkers();
  load();
  timer = setInterval(load, EVERY_MS);
}

export function hideWorkers() {
  clearInterval(timer);
  timer = null;
}

function cell(value) {
  return el("td", { text: value === null || value === undefined || value === "" ? "—" : String(value) });
}

async function queues() {
  try {
    return (await getJSON("/v1/queues")).data;
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 404) throw error;
    // an API without /v1/queues: depths from /ready, no tiers
    const ready = await getJSON("/ready");
    return Object.entries(ready.queues || {}).map(([queue, q]) => ({ queue, workers: q.workers, depth: q.depth }));
  }
}

async function load() {
  try {
    const [workers, depths] = await Promise.all([getJSON("/v1/workers"), queues()]);
    showError(byId("workers-error"), null);
    byId("queues-table").tBodies[0].replaceChildren(
      ...depths.map((q) => {
        const waiting = q.waiting || {};
        const slots = q.slots ?? null;
        const use = q.running === undefined || slots === null ? "—" : `${q.running} / ${Math.max(slots - q.running, 0)}`;
        return el(
          "tr",
          { dataset: { queue: q.queue } },
          el("th", { scope: "row", text: q.queue }),
          cell(q.workers),
          cell(q.admitted ?? q.depth),
          cell(waiting.priority),
          cell(waiting.default),
          cell(waiting.flex),
          cell(use),
          cell(Object.entries(q.principals || {}).map(([key, count]) => `${key}: ${count}`).join(", ")),
        );
      }),
    );
    byId("workers-table").tBodies[0].replaceChildren(
      ...workers.data.map((w) =>
        el(
          "tr",
          { dataset: { workerId: w.id } },
          el("th", { scope: "row", class: "mono", text: w.id }),
          cell((w.queues || []).join(", ")),
          cell((w.models || []).join(", ")),
          cell(w.device),
          cell(w.slots === undefined ? null : `${w.busy ?? 0} / ${w.slots}`),
          cell(w.heartbeat_age_seconds === undefined ? null : seconds(w.heartbeat_age_seconds)),
          el("td", { title: clock(w.started_at), text: ago(w.started_at) }),
        ),
      ),
    );
    byId("workers-updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    showError(byId("workers-error"), error);
  }
}
