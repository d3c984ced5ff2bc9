// Try → Generate or chat: a prompt or a conversation sent as a job (`POST /v1/jobs/generate|chat`) to any
// registered LLM, its reply growing as the `token` events arrive.

import { jobEvents, postJSON } from "./api.js";
import { fillModels, remember } from "./catalog.js";
import { byId, el, seconds, showError } from "./dom.js";
import { cancelJob } from "./jobs-view.js";

const conversation = []; // the chat so far: {role, content}
let running = null; // {id, controller}

export function setupGenerate() {
  const form = byId("generate-form");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    send(form).catch((error) => showError(byId("generate-error"), error));
  });
  byId("generate-stop").addEventListener("click", async () => {
    if (!running) return;
    try {
      await cancelJob(running.id);
    } catch (error) {
      showError(byId("generate-error"), error);
    }
  });
  byId("generate-clear").addEventListener("click", () => {
    running?.controller.abort();
    conversation.length = 0;
    byId("generate-log").replaceChildren();
    byId("generate-state").textContent = "";
  });
}

export async function loadGenerateModels() {
  await fillModels(byId("generate-model"), "llm");
}

function message(role, text) {
  const body = el("div", { class: "text", text });
  const item = el("li", { class: role }, el("span", { class: "who", text: role === "user" ? "You" : "Model" }), body);
  byId("generate-log").append(item);
  return { item, body };
}

function number(input) {
  return input.value === "" ? undefined : Number(input.value);
}

async function send(form) {
  if (running) return;
  showError(byId("generate-error"), null);
  const prompt = byId("generate-prompt").value.trim();
  if (!prompt) return;
  const mode = form.elements.mode.value;
  const model = byId("generate-model").value || undefined;
  const options = {
    model,
    max_tokens: number(byId("generate-max-tokens")),
    temperature: number(byId("generate-temperature")),
  };
  const asked = { role: "user", content: prompt };
  const body = mode === "chat" ? { messages: [...conversation, asked], ...options } : { prompt, ...options };
  setBusy(true);
  try {
    const created = await postJSON(`/v1/jobs/${mode}`, body);
    remember(created.id, model);
    if (mode !== "chat") byId("generate-log").replaceChildren();
    message("user", prompt);
    const reply = message("assistant", "");
    reply.item.append(el("a", { href: `#job/${created.id}`, class: "job-link", text: created.id }));
    byId("generate-prompt").value = "";
    running = { id: created.id, controller: new AbortController() };
    const text = await stream(running, reply.body);
    if (mode === "chat" && text !== null) conversation.push(asked, { role: "assistant", content: text });
  } finally {
    running = null;
    setBusy(false);
  }
}

/** The reply's text as it grows; null if the job did not succeed. */
async function stream(job, output) {
  const state = byId("generate-state");
  state.textContent = "queued…";
  let text = "";
  let ended = null;
  let result = null;
  for await (const event of jobEvents(job.id, { signal: job.controller.signal })) {
    if (event.event === "started") state.textContent = "writing…";
    else if (event.event === "token") {
      text += event.data.text;
      output.textContent = text;
    } else if (event.event === "result") result = event.data;
    else if (event.event === "error") showError(byId("generate-error"), new Error(event.data.message));
    else if (event.event === "done") ended = event.data.status;
  }
  if (result && !text) output.textContent = text = result.text;
  if (ended === "succeeded" && result) {
    const speed = result.timings?.tokens_per_second;
    state.textContent = `done: ${result.usage.completion_tokens} tokens in ${seconds(result.timings?.seconds)}`
      + (speed ? ` (${speed.toFixed(1)} tokens/s)` : "") + `, ${result.model}, finish: ${result.finish_reason}`;
  } else state.textContent = ended ? `the job ${ended}` : "";
  return ended === "succeeded" ? text : null;
}

function setBusy(busy) {
  byId("generate-send").disabled = busy;
  byId("generate-stop").disabled = !busy;
}
