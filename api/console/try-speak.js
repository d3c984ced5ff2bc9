// Try → Speak: a text synthesized as a job (`POST /v1/jobs/synthesize`, WAV) in any voice, heard as its
// `audio_chunk` events arrive, then offered whole in an <audio controls> element.

import { getBlob, jobEvents, postJSON } from "./api.js";
import { ChunkedAudio, audioElement, replaceAudio } from "./audio.js";
import { remember, voiceList } from "./catalog.js";
import { byId, el, seconds, showError } from "./dom.js";

let playing = null;

export function setupSpeak() {
  byId("speak-form").addEventListener("submit", (event) => {
    event.preventDefault();
    playing?.stop();
    playing = new ChunkedAudio({ live: true });
    playing.player.start(); // in the click: the browser lets audio start
    speak(playing).catch((error) => showError(byId("speak-error"), error));
  });
}

export function stopSpeaking() {
  playing?.player.close();
  playing = null;
}

export async function loadVoices() {
  const select = byId("speak-voice");
  const voices = await voiceList();
  select.replaceChildren(select.options[0]);
  const byModel = new Map();
  for (const voice of voices.data) {
    if (!byModel.has(voice.model)) byModel.set(voice.model, []);
    byModel.get(voice.model).push(voice);
  }
  for (const [model, list] of byModel) {
    const group = el("optgroup", { label: model });
    for (const voice of list) group.append(new Option(`${voice.id} (${model})`, `${model}\n${voice.id}`));
    select.append(group);
  }
}

async function speak(audio) {
  showError(byId("speak-error"), null);
  const text = byId("speak-text").value.trim();
  if (!text) return;
  const [model, voice] = byId("speak-voice").value ? byId("speak-voice").value.split("\n") : [undefined, undefined];
  const state = byId("speak-state");
  const send = byId("speak-send");
  send.disabled = true;
  try {
    const created = await postJSON("/v1/jobs/synthesize", { text, model, voice, response_format: "wav" });
    remember(created.id, model);
    state.textContent = "queued…";
    byId("speak-audio").replaceChildren();
    let ended = null;
    let result = null;
    for await (const event of jobEvents(created.id)) {
      if (event.event === "started") state.textContent = "synthesizing…";
      else if (event.event === "audio_chunk") {
        audio.add(event.data);
        state.textContent = `playing as it arrives: ${event.data.index + 1} chunks, ${seconds(audio.seconds)}`;
      } else if (event.event === "result") result = event.data;
      else if (event.event === "error") showError(byId("speak-error"), new Error(event.data.message));
      else if (event.event === "done") ended = event.data.status;
    }
    if (ended !== "succeeded") {
      state.textContent = `the job ${ended}`;
      return;
    }
    const blob = await getBlob(`/v1/jobs/${encodeURIComponent(created.id)}/result`);
    replaceAudio(byId("speak-audio"), audioElement(blob, "The whole synthesis"));
    byId("speak-audio").append(el("a", { href: `#job/${created.id}`, class: "job-link", text: created.id }));
    state.textContent =
      `done: ${seconds(result?.duration)} of audio, ${audio.played} chunks played as they arrived, ` +
      `${result?.model} voice ${result?.voice}`;
  } finally {
    send.disabled = false;
  }
}
