// The Talk view: a voice conversation over `WS /v1/realtime` (OpenAI's Realtime API). Hands-free: the
// microphone streams and the server's VAD ends each turn. Push to talk: audio goes only while the button
// is held; releasing it commits the turn and asks for a response. Speaking over the answer (or pressing
// the button) stops its playback and truncates it to what was heard (barge-in).

import { ApiError, apiKey, keyMissing } from "./api.js";
import { PcmPlayer, base64Bytes, bytesBase64 } from "./audio.js";
import { byId, el, showError } from "./dom.js";
import { Microphone } from "./mic.js";

const RATE = 24000;
const PIECE_MS = 40;
const MIN_TURN_MS = 100; // a shorter press commits nothing (the server refuses an empty buffer)
let session = null;

export function setupTalk() {
  byId("talk-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (session) return;
    session = new TalkSession(mode());
    session.open().catch((error) => {
      showError(byId("talk-error"), error);
      hangUp();
    });
  });
  byId("talk-stop").addEventListener("click", hangUp);
  for (const radio of document.querySelectorAll('input[name="talk-mode"]')) {
    radio.addEventListener("change", () => session?.setMode(mode()));
  }
  const hold = byId("talk-hold");
  hold.addEventListener("pointerdown", (event) => {
    if (event.button !== 0) return;
    hold.setPointerCapture(event.pointerId);
    session?.press();
  });
  for (const name of ["pointerup", "pointercancel"]) hold.addEventListener(name, () => session?.release());
  hold.addEventListener("keydown", (event) => {
    if (event.key !== " " && event.key !== "Enter") return;
    event.preventDefault();
    if (!event.repeat) session?.press();
  });
  hold.addEventListener("keyup", (event) => {
    if (event.key !== " " && event.key !== "Enter") return;
    event.preventDefault();
    session?.release();
  });
  hold.addEventListener("click", (event) => event.preventDefault());
}

export function hangUp() {
  session?.close();
  session = null;
  byId("talk-start").disabled = false;
  byId("talk-stop").disabled = true;
  byId("talk-hold").disabled = true;
  byId("talk-level").value = 0;
}

function mode() {
  return document.querySelector('input[name="talk-mode"]:checked').value;
}

function setState(text) {
  byId("talk-state").textContent = text;
}

/** The conversation's entries, one per item: what you said, what the model answered. */
function entry(items, itemId, role) {
  let found = items.get(itemId);
  if (!found) {
    const text = el("div", { class: "text" });
    const item = el("li", { class: role === "user" ? "you" : "answer", dataset: { itemId } },
      el("span", { class: "who", text: role === "user" ? "You said" : "Answer" }), text);
    byId("talk-log").append(item);
    found = { item, text, role };
    items.set(itemId, found);
  }
  return found;
}

class TalkSession {
  constructor(mode) {
    this.mode = mode;
    this.socket = null;
    this.microphone = null;
    this.player = new PcmPlayer();
    this.items = new Map();
    this.answer = null; // the answer whose audio plays: {itemId, parts: [{at, duration}], receivedMs}
    this.responding = false;
    this.holding = false;
    this.heldMs = 0;
  }

  async open() {
    showError(byId("talk-error"), null);
    if (keyMissing()) throw new ApiError(401, { message: "no key entered" });
    byId("talk-start").disabled = true;
    byId("talk-stop").disabled = false;
    this.player.start(); // in the click: the browser lets audio start
    setState("connecting…");
    const key = apiKey();
    const protocols = key ? ["realtime", `openai-insecure-api-key.${key}`] : ["realtime"];
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    this.socket = new WebSocket(`${scheme}://${location.host}/v1/realtime?model=gpt-realtime`, protocols);
    this.socket.addEventListener("message", (event) => this.receive(JSON.parse(event.data)));
    this.socket.addEventListener("close", (event) => {
      if (session !== this) return;
      hangUp();
      setState(`disconnected${event.code !== 1000 ? ` (${event.code}${event.reason ? ": " + event.reason : ""})` : ""}`);
    });
    await new Promise((resolve, reject) => {
      this.socket.addEventListener("open", resolve, { once: true });
      this.socket.addEventListener("error", () => reject(new Error("could not open the realtime connection")), { once: true });
    });
    this.configure();
    this.microphone = new Microphone({
      rate: RATE,
      onPiece: (piece) => this.piece(piece),
      onLevel: (level) => (byId("talk-level").value = level),
    });
    await this.microphone.start();
    byId("talk-hold").disabled = this.mode !== "push-to-talk";
    setState(this.mode === "push-to-talk" ? "connected: hold the button to talk" : "listening");
  }

  send(event) {
    if (this.socket?.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(event));
  }

  configure() {
    const turns = this.mode === "hands-free" ? { type: "server_vad" } : null;
    this.send({
      type: "session.update",
      session: {
        type: "realtime",
        audio: {
          input: { format: { type: "audio/pcm", rate: RATE }, transcription: { model: "whisper-1" }, turn_detection: turns },
          output: { format: { type: "audio/pcm", rate: RATE } },
        },
      },
    });
  }

  setMode(mode) {
    if (mode === this.mode) return;
    if (this.holding) this.release();
    this.mode = mode;
    this.configure();
    byId("talk-hold").disabled = mode !== "push-to-talk";
    setState(mode === "push-to-talk" ? "hold the button to talk" : "listening");
  }

  piece(bytes) {
    if (this.mode === "push-to-talk" && !this.holding) return;
    if (this.socket?.bufferedAmount > 1 << 20) return; // the connection is stuck: drop, do not pile up
    this.send({ type: "input_audio_buffer.append", audio: bytesBase64(bytes) });
    if (this.holding) this.heldMs += PIECE_MS;
  }

  press() {
    if (this.mode !== "push-to-talk" || this.holding) return;
    this.bargeIn(true);
    this.send({ type: "input_audio_buffer.clear" });
    this.holding = true;
    this.heldMs = 0;
    byId("talk-hold").setAttribute("aria-pressed", "true");
    setState("listening: release to send");
  }

  release() {
    if (!this.holding) return;
    this.holding = false;
    byId("talk-hold").setAttribute("aria-pressed", "false");
    if (this.heldMs < MIN_TURN_MS) {
      this.send({ type: "input_audio_buffer.clear" });
      setState("too short: hold the button while you speak");
      return;
    }
    this.send({ type: "input_audio_buffer.commit" });
    this.send({ type: "response.create" });
    setState("thinking…");
  }

  /** Stop the answer playing and tell the server how much of it was heard. */
  bargeIn(cancel) {
    const answer = this.answer;
    if (answer && this.player.playing) {
      const now = this.player.now;
      const heard = answer.parts.reduce((sum, part) => sum + Math.min(Math.max(now - part.at, 0), part.duration), 0);
      this.player.stop();
      const endMs = Math.min(Math.floor(heard * 1000), Math.floor(answer.receivedMs));
      this.send({ type: "conversation.item.truncate", item_id: answer.itemId, content_index: 0, audio_end_ms: endMs });
      this.items.get(answer.itemId)?.item.classList.add("interrupted");
    }
    if (cancel && this.responding) this.send({ type: "response.cancel" });
    this.answer = null;
  }

  receive(event) {
    const you = (id) => entry(this.items, id, "user");
    const said = (id) => entry(this.items, id, "assistant");
    switch (event.type) {
      case "input_audio_buffer.speech_started":
        this.bargeIn(false); // the server cancels its response itself (interrupt_response)
        you(event.item_id).item.classList.add("pending");
        setState("hearing you…");
        break;
      case "input_audio_buffer.speech_stopped":
        setState("thinking…");
        break;
      case "input_audio_buffer.committed":
        you(event.item_id).item.classList.add("pending");
        break;
      case "conversation.item.input_audio_transcription.delta":
        you(event.item_id).text.textContent += event.delta;
        break;
      case "conversation.item.input_audio_transcription.completed": {
        const found = you(event.item_id);
        found.text.textContent = event.transcript.trim() || "(nothing heard)";
        found.item.classList.remove("pending");
        break;
      }
      case "conversation.item.input_audio_transcription.failed":
        you(event.item_id).text.textContent = "(not understood)";
        break;
      case "response.created":
        this.responding = true;
        break;
      case "response.output_item.added":
        said(event.item.id);
        setState("answering…");
        break;
      case "response.output_audio_transcript.delta":
      case "response.output_text.delta":
        said(event.item_id).text.textContent += event.delta;
        break;
      case "response.output_audio_transcript.done":
        said(event.item_id).text.textContent = event.transcript;
        break;
      case "response.output_text.done":
        said(event.item_id).text.textContent = event.text;
        break;
      case "response.output_audio.delta":
        this.play(event.item_id, base64Bytes(event.delta));
        break;
      case "response.done":
        this.responding = false;
        for (const item of event.response.output || []) {
          this.items.get(item.id)?.item.classList.add(event.response.status === "completed" ? "complete" : "interrupted");
        }
        setState(this.mode === "push-to-talk" ? "hold the button to talk" : "listening");
        break;
      case "error":
        if (event.error.code !== "response_cancel_not_active") showError(byId("talk-error"), event.error);
        break;
      default:
        break;
    }
  }

  play(itemId, bytes) {
    if (!this.answer || this.answer.itemId !== itemId) this.answer = { itemId, parts: [], receivedMs: 0 };
    this.answer.parts.push(this.player.play(bytes, RATE));
    this.answer.receivedMs += (bytes.length / 2 / RATE) * 1000;
  }

  close() {
    this.microphone?.stop();
    this.player.close();
    if (this.socket && this.socket.readyState <= WebSocket.OPEN) this.socket.close(1000);
    setState("not connected");
  }
}
