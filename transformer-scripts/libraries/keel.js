// Helpers shared by Keel's destination scripts (import { ... } from "keel").

// An error that tells the router what to do: 4xx dead-letters the event, 5xx retries it.
export class DestinationError extends Error {
  constructor(message, status = 400) {
    super(message);
    this.name = "DestinationError";
    this.status = status;
  }
}

// The first non-empty value among `paths` ("a.b.c") in `obj`.
export function pick(obj, ...paths) {
  for (const path of paths) {
    let v = obj;
    for (const key of path.split(".")) {
      if (v === null || v === undefined) break;
      v = v[key];
    }
    if (v !== undefined && v !== null && v !== "") return v;
  }
  return undefined;
}

// Milliseconds since the epoch of the event's time (timestamp, else originalTimestamp,
// else receivedAt); undefined when none parses.
export function eventTimeMs(event) {
  for (const key of ["timestamp", "originalTimestamp", "receivedAt", "sentAt"]) {
    const v = event[key];
    if (v === undefined || v === null) continue;
    const ms = typeof v === "number" ? v : Date.parse(v);
    if (!Number.isNaN(ms)) return ms;
  }
  return undefined;
}

// The event's traits (identify: traits, else context.traits).
export function traitsOf(event) {
  return event.traits ?? event.context?.traits ?? {};
}

// Removes undefined and null members (one level).
export function compact(obj) {
  const out = {};
  for (const [k, v] of Object.entries(obj)) {
    if (v !== undefined && v !== null) out[k] = v;
  }
  return out;
}

// `base` without a trailing slash; `fallback` when `base` is empty.
export function baseUrl(base, fallback) {
  const b = typeof base === "string" && base.trim() !== "" ? base.trim() : fallback;
  return b.replace(/\/+$/, "");
}

// The event type, lower-cased; a DestinationError when the destination does not take it.
export function typeOf(event, supported) {
  const type = String(event.type ?? "").toLowerCase();
  if (!supported.includes(type)) {
    throw new DestinationError(`event type ${JSON.stringify(event.type)} is not supported by this destination`, 400);
  }
  return type;
}

const B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

// Standard base64 of the UTF-8 bytes of `s` (V8 alone has no btoa or TextEncoder).
export function base64(s) {
  const bytes = unescape(encodeURIComponent(String(s)));
  let out = "";
  for (let i = 0; i < bytes.length; i += 3) {
    const a = bytes.charCodeAt(i);
    const b = i + 1 < bytes.length ? bytes.charCodeAt(i + 1) : NaN;
    const c = i + 2 < bytes.length ? bytes.charCodeAt(i + 2) : NaN;
    out += B64[a >> 2];
    out += B64[((a & 3) << 4) | (Number.isNaN(b) ? 0 : b >> 4)];
    out += Number.isNaN(b) ? "=" : B64[((b & 15) << 2) | (Number.isNaN(c) ? 0 : c >> 6)];
    out += Number.isNaN(c) ? "=" : B64[c & 63];
  }
  return out;
}
