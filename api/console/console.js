// The console's entry point: the API key form, the views (one section each, picked by the URL's
// fragment: #jobs, #job/<id>, #batches, #workers, #try, #talk) and what each starts and stops.

import { KEY_CHANGED, apiKey, keyMissing, learnWhetherKeyRequired, setApiKey } from "./api.js";
import { setupBatches, showBatches, hideBatches } from "./batches-view.js";
import { forget } from "./catalog.js";
import { byId, showError } from "./dom.js";
import { closeJob, openJob, setupJob } from "./job-view.js";
import { connectFeed, setupJobs } from "./jobs-view.js";
import { hangUp, setupTalk } from "./talk-view.js";
import { loadGenerateModels, setupGenerate } from "./try-generate.js";
import { setupSpeak, loadVoices, stopSpeaking } from "./try-speak.js";
import { loadTranscribeModels, setupTranscribe, stopMicrophone } from "./try-transcribe.js";
import { hideWorkers, showWorkers } from "./workers-view.js";

const VIEWS = ["jobs", "job", "batches", "workers", "try", "talk"];
const LEAVE = {
  job: closeJob,
  batches: hideBatches,
  workers: hideWorkers,
  try: () => {
    stopSpeaking();
    stopMicrophone();
  },
  talk: hangUp,
};
let shown = null;

function route() {
  const [name, ...rest] = location.hash.replace(/^#/, "").split("/");
  const view = VIEWS.includes(name) ? name : "jobs";
  return { view, id: view === "job" ? decodeURIComponent(rest.join("/")) : null };
}

function show(focus) {
  const { view, id } = route();
  if (shown && shown !== view) LEAVE[shown]?.();
  shown = view;
  for (const name of VIEWS) byId(`view-${name}`).hidden = name !== view;
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.view === view) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (view === "job") {
    if (id) byId("job-link").href = `#job/${encodeURIComponent(id)}`;
    openJob(id);
  } else if (view === "batches") showBatches();
  else if (view === "workers") showWorkers();
  if (focus) {
    const heading = byId(`view-${view}`).querySelector("h2");
    heading.setAttribute("tabindex", "-1");
    heading.focus();
  }
}

async function loadCatalog() {
  if (keyMissing()) return; // loaded once a key is entered
  const loads = [
    [loadGenerateModels, "generate-error"],
    [loadTranscribeModels, "transcribe-error"],
    [loadVoices, "speak-error"],
  ];
  await Promise.all(loads.map(([load, where]) => load().catch((error) => showError(byId(where), error))));
}

function showKeyState() {
  byId("key-state").textContent = apiKey() ? "key set for this tab" : keyMissing() ? "this API needs a key" : "no key";
  byId("key-forget").disabled = !apiKey();
}

function setupKey() {
  const form = byId("key-form");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const input = byId("api-key");
    setApiKey(input.value.trim());
    input.value = "";
  });
  byId("key-forget").addEventListener("click", () => setApiKey(""));
  window.addEventListener(KEY_CHANGED, () => {
    showKeyState();
    forget();
    connectFeed();
    loadCatalog();
    show(false);
  });
  showKeyState();
}

setupKey();
setupJobs();
setupJob();
setupBatches();
setupGenerate();
setupTranscribe();
setupSpeak();
setupTalk();
window.addEventListener("hashchange", () => show(true));
await learnWhetherKeyRequired();
showKeyState();
connectFeed();
loadCatalog();
show(false);
