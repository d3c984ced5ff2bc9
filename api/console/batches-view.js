// The Batches view: `GET /v1/batches` with each batch's progress, read again every few seconds while the
// view is open.

import { getJSON } from "./api.js";
import { byId, clock, el, showError, statusClass } from "./dom.js";

const EVERY_MS = 3000;
let timer = null;

export function setupBatches() {
  byId("batches-refresh").addEventListener("click", load);
}

export function showBatches() {
  hideBatches();
  load();
  timer = setInterval(load, EVERY_MS);
}

export function hideBatches() {
  clearInterval(timer);
  timer = null;
}

function progress(batch) {
  const counts = batch.request_counts || { total: 0, completed: 0, failed: 0 };
  const done = counts.completed + counts.failed;
  const bar = el("progress", {
    max: String(Math.max(counts.total, 1)),
    value: String(done),
    "aria-label": `Batch ${batch.id}: ${done} of ${counts.total} requests done`,
  });
  const words = `${counts.completed} done, ${counts.failed} failed, of ${counts.total}`;
  return [bar, " ", el("span", { class: "muted", text: words })];
}

async function load() {
  try {
    const answer = await getJSON("/v1/batches?limit=100");
    showError(byId("batches-error"), null);
    const body = byId("batches-table").tBodies[0];
    body.replaceChildren(
      ...answer.data.map((batch) =>
        el(
          "tr",
          { dataset: { batchId: batch.id } },
          el("th", { scope: "row", class: "mono", text: batch.id }),
          el("td", { text: batch.endpoint }),
          el("td", {}, el("span", { class: statusClass(batch.status), text: batch.status })),
          el("td", {}, ...progress(batch)),
          el("td", { text: clock(batch.created_at) }),
        ),
      ),
    );
    byId("batches-empty").hidden = answer.data.length > 0;
  } catch (error) {
    showError(byId("batches-error"), error);
  }
}
