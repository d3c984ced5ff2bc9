// Talking to the API from the page: the key (sessionStorage only, sent as X-API-Key, never in a URL),
// JSON requests with the API's error envelope, and Server-Sent Events read with fetch (EventSource
// cannot send headers).

const KEY_NAME = "speechq.apiKey";
export const KEY_CHANGED = "speechq:key";

export function apiKey() {
  return sessionStorage.getItem(KEY_NAME) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_NAME, key);
  else sessionStorage.removeItem(KEY_NAME);
  window.dispatchEvent(new CustomEvent(KEY_CHANGED));
}

/** A refused request: the API's `{"error": {message, type, param, code}}`, or the HTTP status. */
export class ApiError extends Error {
  constructor(status, error) {
    super(error?.message || `HTTP ${status}`);
    this.name = "ApiError";
    this.status = status;
    this.code = error?.code || null;
    this.param = error?.param || null;
  }
}

let keyRequired = false;

/** Ask `GET /health` (no key needed) whether the API wants a key, so a page without one asks for it
 * instead of sending requests that can only be refused (each refusal is an error in the browser's console). */
export async function learnWhetherKeyRequired() {
  try {
    const health = await (await fetch("/health", { cache: "no-store" })).json();
    keyRequired = health.api_key_required === true;
  } catch {
    keyRequired = false; // the requests themselves will say
  }
}

/** True when the API wants a key and none has been entered. */
export function keyMissing() {
  return keyRequired && !apiKey();
}

function refuseWithoutKey() {
  if (keyMissing()) throw new ApiError(401, { message: "no key entered", code: "missing_api_key" });
}

function headers(extra = {}) {
  const key = apiKey();
  return key ? { "X-API-Key": key, ...extra } : { ...extra };
}

async function refused(response) {
  let error = null;
  try {
    error = (await response.json()).error;
  } catch {
    // not JSON: the status says enough
  }
  return new ApiError(response.status, error);
}

/** fetch with the key; a non-2xx answer throws ApiError. */
export async function call(path, { method = "GET", json, body, signal, accept } = {}) {
  refuseWithoutKey();
  const extra = accept ? { Accept: accept } : {};
  if (json !== undefined) extra["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    signal,
    headers: headers(extra),
    body: json !== undefined ? JSON.stringify(json) : body,
    cache: "no-store",
  });
  if (!response.ok) throw await refused(response);
  return response;
}

export async function getJSON(path, options = {}) {
  return (await call(path, options)).json();
}

export async function postJSON(path, json, options = {}) {
  return (await call(path, { ...options, method: "POST", json })).json();
}

/** A Blob of what the path answers (audio), with its media type. */
export async function getBlob(path, options = {}) {
  return (await call(path, options)).blob();
}

/**
 * The events of an SSE stream, as {event, data, id} (data parsed as JSON when it is JSON), until the
 * server ends it or `signal` aborts. Comments (keep-alive pings) are skipped.
 */
export async function* events(path, { signal, lastEventId } = {}) {
  refuseWithoutKey();
  const extra = { Accept: "text/event-stream" };
  if (lastEventId) extra["Last-Event-ID"] = lastEventId;
  const response = await fetch(path, { signal, headers: headers(extra), cache: "no-store" });
  if (!response.ok) throw await refused(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  const parser = new SseParser();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      yield* parser.feed(value);
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

/** The text/event-stream format (WHATWG HTML §9.2): lines, fields, a blank line dispatches. */
export class SseParser {
  constructor() {
    this.buffer = "";
    this.id = null; // the last event id: it stays until another `id:` line, as in EventSource
    this.reset();
  }

  reset() {
    this.event = "";
    this.data = [];
  }

  *feed(text) {
    this.buffer += text;
    // A CR at the end may be the first half of a CRLF cut between two reads: it waits for the next.
    const held = this.buffer.endsWith("\r") ? 1 : 0;
    const lines = this.buffer.slice(0, this.buffer.length - held).split(/\r\n|\r|\n/);
    this.buffer = lines.pop() + this.buffer.slice(this.buffer.length - held); // an unfinished line waits too
    for (const line of lines) {
      if (line === "") {
        if (this.data.length) yield this.dispatch();
        else this.reset();
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") this.event = value;
      else if (field === "data") this.data.push(value);
      else if (field === "id") this.id = value;
    }
  }

  dispatch() {
    const text = this.data.join("\n");
    let data = text;
    try {
      data = JSON.parse(text);
    } catch {
      // plain text data (an OpenAI stream's [DONE])
    }
    const event = { event: this.event || "message", data, id: this.id };
    this.reset();
    return event;
  }
}

/**
 * A job's events (`GET /v1/jobs/{id}/events`) up to and including `done`; a dropped connection is taken
 * up again after the last event seen (Last-Event-ID), a few times.
 */
export async function* jobEvents(id, { signal } = {}) {
  let lastEventId = null;
  for (let tries = 0; tries < 5; tries++) {
    try {
      for await (const message of events(`/v1/jobs/${encodeURIComponent(id)}/events`, { signal, lastEventId })) {
        lastEventId = message.id || lastEventId;
        tries = 0;
        yield message;
        if (message.event === "done") return;
      }
    } catch (error) {
      if (signal?.aborted || (error instanceof ApiError && error.status < 500)) throw error;
    }
    if (signal?.aborted) return;
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
  throw new Error(`lost the event stream of job ${id}`);
}
