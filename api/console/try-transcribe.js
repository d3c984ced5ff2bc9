// Try → Transcribe: an uploaded file or a microphone recording sent as a job (`POST /v1/jobs/transcribe`),
// its segments shown as they are decoded and its text at the end.

import { call, jobEvents } from "./api.js";
import { audioElement, wavBlob } from "./audio.js";
import { fillModels, remember } from "./catalog.js";
import { byId, el, seconds, showError } from "./dom.js";
import { Microphone } from "./mic.js";

const RECORDING_RATE = 16000; // what Whisper hears; a smaller upload than 24 kHz
let recording = null; // {microphone, pieces}

export function setupTranscribe() {
  byId("transcribe-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const file = byId("transcribe-file").files[0];
    if (!file) {
      showError(byId("transcribe-error"), new Error("Choose an audio file first, or record one."));
      return;
    }
    transcribe(file, file.name).catch((error) => showError(byId("transcribe-error"), error));
  });
  byId("transcribe-record").addEventListener("click", () => {
    (recording ? stopRecording() : startRecording()).catch((error) => showError(byId("transcribe-error"), error));
  });
}

export async function loadTranscribeModels() {
  await fillModels(byId("transcribe-model"), "stt");
}

export function stopMicrophone() {
  recording?.microphone.stop();
  recording = null;
  const button = byId("transcribe-record");
  button.textContent = "Record from microphone";
  button.setAttribute("aria-pressed", "false");
}

async function startRecording() {
  showError(byId("transcribe-error"), null);
  const pieces = [];
  const microphone = new Microphone({ rate: RECORDING_RATE, onPiece: (piece) => pieces.push(piece) });
  await microphone.start();
  recording = { microphone, pieces };
  const button = byId("transcribe-record");
  button.textContent = "Stop and transcribe";
  button.setAttribute("aria-pressed", "true");
  byId("transcribe-state").textContent = "recording…";
}

async function stopRecording() {
  const { pieces } = recording;
  stopMicrophone();
  const blob = wavBlob(pieces, RECORDING_RATE);
  byId("transcribe-segments").replaceChildren(el("li", {}, audioElement(blob, "Your recording")));
  await transcribe(blob, "recording.wav", false);
}

async function transcribe(blob, name, clear = true) {
  showError(byId("transcribe-error"), null);
  const send = byId("transcribe-send");
  send.disabled = true;
  const output = byId("transcribe-text");
  const state = byId("transcribe-state");
  if (clear) byId("transcribe-segments").replaceChildren();
  output.textContent = "";
  try {
    const form = new FormData();
    form.append("file", blob, name);
    const model = byId("transcribe-model").value;
    if (model) form.append("model", model);
    const language = byId("transcribe-language").value.trim();
    if (language) form.append("language", language);
    state.textContent = "uploading…";
    const created = await (await call("/v1/jobs/transcribe", { method: "POST", body: form })).json();
    remember(created.id, model);
    state.textContent = "queued…";
    let ended = null;
    for await (const event of jobEvents(created.id)) {
      const data = event.data;
      if (event.event === "started") state.textContent = "transcribing…";
      else if (event.event === "segment") {
        byId("transcribe-segments").append(
          el("li", {}, el("span", { class: "muted", text: `${seconds(data.start)}–${seconds(data.end)} ` }), data.text),
        );
      } else if (event.event === "result") {
        output.textContent = data.text.trim();
        state.textContent = `done: ${seconds(data.duration)} of ${data.language || "speech"}, by ${data.model}`;
      } else if (event.event === "error") showError(byId("transcribe-error"), new Error(data.message));
      else if (event.event === "done") ended = data.status;
    }
    if (ended !== "succeeded") state.textContent = `the job ${ended}`;
  } finally {
    send.disabled = false;
  }
}
