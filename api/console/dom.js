// Small helpers for building the page's elements and showing numbers, shared by the views.

/** An element: el("td", {class: "x", dataset: {id}}, "text", child). Text is always text, never HTML. */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

export function byId(id) {
  return document.getElementById(id);
}

/** Show an error (an ApiError or any Error) in an alert paragraph; null hides it. */
export function showError(node, error) {
  if (!error) {
    node.hidden = true;
    node.textContent = "";
    return;
  }
  node.hidden = false;
  if (error.status === 401) {
    node.textContent = `This needs an API key: enter it above (${error.message}).`;
    return;
  }
  node.textContent = error.message + (error.code ? ` (${error.code})` : "");
}

export function seconds(value) {
  if (value === null || value === undefined) return "—";
  if (value < 1) return `${Math.round(value * 1000)} ms`;
  if (value < 120) return `${value.toFixed(1)} s`;
  return `${Math.floor(value / 60)} min ${Math.round(value % 60)} s`;
}

/** How long ago an epoch-seconds or ISO time was, in words. */
export function ago(when) {
  if (when === null || when === undefined) return "—";
  const epoch = typeof when === "number" ? when : Date.parse(when) / 1000;
  return seconds(Math.max(0, Date.now() / 1000 - epoch)) + " ago";
}

export function clock(when) {
  if (!when) return "—";
  const date = typeof when === "number" ? new Date(when * 1000) : new Date(when);
  return date.toLocaleTimeString();
}

export const TERMINAL = new Set(["succeeded", "failed", "cancelled", "expired"]);
export const CANCELLABLE = new Set(["queued", "running"]);

/** A status badge's class: the colour says how the job stands. */
export function statusClass(status) {
  return `status status-${status}`;
}
