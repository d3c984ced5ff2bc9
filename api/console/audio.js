// Audio in the page: decoding the API's base64 chunks, playing 16-bit PCM as it arrives (WebAudio), and
// wrapping PCM in a WAV header so an <audio controls> element can play what has arrived.

export const MEDIA_TYPES = {
  wav: "audio/wav",
  pcm: "audio/wav", // raw PCM is wrapped in a WAV header before an <audio> element sees it
  mp3: "audio/mpeg",
  opus: "audio/ogg",
  aac: "audio/aac",
  flac: "audio/flac",
};

export function base64Bytes(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

export function bytesBase64(bytes) {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

/** A mono 16-bit WAV file of the PCM pieces. */
export function wavBlob(pieces, sampleRate) {
  const length = pieces.reduce((sum, piece) => sum + piece.byteLength, 0);
  const header = new DataView(new ArrayBuffer(44));
  const text = (at, value) => [...value].forEach((c, i) => header.setUint8(at + i, c.charCodeAt(0)));
  text(0, "RIFF");
  header.setUint32(4, 36 + length, true);
  text(8, "WAVE");
  text(12, "fmt ");
  header.setUint32(16, 16, true);
  header.setUint16(20, 1, true); // PCM
  header.setUint16(22, 1, true); // mono
  header.setUint32(24, sampleRate, true);
  header.setUint32(28, sampleRate * 2, true);
  header.setUint16(32, 2, true);
  header.setUint16(34, 16, true);
  text(36, "data");
  header.setUint32(40, length, true);
  return new Blob([header.buffer, ...pieces], { type: "audio/wav" });
}

/** Where the samples start in a WAV file's first bytes (a streamed WAV's sizes are 0xFFFFFFFF). */
export function wavDataOffset(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const tag = (at) => String.fromCharCode(...bytes.subarray(at, at + 4));
  if (bytes.length < 12 || tag(0) !== "RIFF" || tag(8) !== "WAVE") return 0;
  let at = 12;
  while (at + 8 <= bytes.length) {
    const size = view.getUint32(at + 4, true);
    if (tag(at) === "data") return at + 8;
    at += 8 + size + (size % 2);
  }
  return bytes.length;
}

/** Plays 16-bit little-endian mono PCM pieces back to back, each as soon as it arrives. */
export class PcmPlayer {
  constructor() {
    this.context = null;
    this.next = 0;
    this.sources = new Set();
    this.odd = null; // a byte left over from a piece of odd length
  }

  start() {
    if (!this.context) this.context = new AudioContext();
    if (this.context.state === "suspended") this.context.resume().catch(() => {});
    return this.context;
  }

  /** Schedule `bytes` after what is already scheduled; returns {at, duration} in context seconds. */
  play(bytes, sampleRate) {
    const context = this.start();
    if (this.odd !== null) {
      const joined = new Uint8Array(bytes.length + 1);
      joined[0] = this.odd;
      joined.set(bytes, 1);
      bytes = joined;
      this.odd = null;
    }
    if (bytes.length % 2) {
      this.odd = bytes[bytes.length - 1];
      bytes = bytes.subarray(0, bytes.length - 1);
    }
    const count = bytes.length / 2;
    if (!count) return { at: context.currentTime, duration: 0 };
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const buffer = context.createBuffer(1, count, sampleRate);
    const samples = buffer.getChannelData(0);
    for (let i = 0; i < count; i++) samples[i] = view.getInt16(i * 2, true) / 32768;
    const source = context.createBufferSource();
    source.buffer = buffer;
    source.connect(context.destination);
    const at = Math.max(context.currentTime + 0.02, this.next);
    source.start(at);
    this.next = at + buffer.duration;
    this.sources.add(source);
    source.addEventListener("ended", () => this.sources.delete(source));
    return { at, duration: buffer.duration };
  }

  get playing() {
    return Boolean(this.context) && this.next > this.context.currentTime;
  }

  get now() {
    return this.context ? this.context.currentTime : 0;
  }

  /** Stop at once (barge-in, or leaving the view). */
  stop() {
    for (const source of this.sources) {
      try {
        source.stop();
      } catch {
        // never started
      }
    }
    this.sources.clear();
    this.next = 0;
    this.odd = null;
  }

  close() {
    this.stop();
    if (this.context) this.context.close().catch(() => {});
    this.context = null;
  }
}

/**
 * The `audio_chunk` events of a synthesis or a dialogue: WAV and PCM chunks are played as they arrive
 * (when `live`); every format is kept, so `blob()` is the audio so far, playable by an <audio> element.
 */
export class ChunkedAudio {
  constructor({ live = true, player = new PcmPlayer() } = {}) {
    this.live = live;
    this.player = player;
    this.pieces = [];
    this.format = null;
    this.sampleRate = 24000;
    this.seconds = 0;
    this.played = 0; // chunks handed to the player as they arrived
  }

  get pcm() {
    return this.format === "wav" || this.format === "pcm";
  }

  add(chunk) {
    let bytes = base64Bytes(chunk.audio);
    this.format = chunk.format;
    this.sampleRate = chunk.sample_rate;
    this.seconds = chunk.end ?? this.seconds;
    if (this.format === "wav" && this.pieces.length === 0) bytes = bytes.subarray(wavDataOffset(bytes));
    this.pieces.push(bytes);
    if (this.live && this.pcm) {
      this.player.play(bytes, this.sampleRate);
      this.played++;
    }
  }

  blob() {
    if (this.pcm) return wavBlob(this.pieces, this.sampleRate);
    return new Blob(this.pieces, { type: MEDIA_TYPES[this.format] || "application/octet-stream" });
  }

  stop() {
    this.player.stop();
  }
}

/** An <audio controls> element playing a Blob (its object URL is freed when the element is replaced). */
export function audioElement(blob, label) {
  const audio = document.createElement("audio");
  audio.controls = true;
  audio.preload = "auto";
  audio.setAttribute("aria-label", label);
  audio.src = URL.createObjectURL(blob);
  return audio;
}

/** Replace what `holder` shows with `audio`, freeing the previous element's object URL. */
export function replaceAudio(holder, audio) {
  for (const old of holder.querySelectorAll("audio")) {
    const url = old.src;
    old.pause();
    old.removeAttribute("src");
    old.load(); // let go of the Blob before it is freed: a load still reading it would fail loudly
    if (url.startsWith("blob:")) URL.revokeObjectURL(url);
  }
  holder.replaceChildren(audio);
}
