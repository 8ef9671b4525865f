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

// The event type, lower-cased; an UnsupportedEventError when the destination does not take it.
export function typeOf(event, supported) {
  const type = String(event.type ?? "").toLowerCase();
  if (!supported.includes(type)) {
    throw new UnsupportedEventError(`event type ${JSON.stringify(event.type)} is not supported by this destination`);
  }
  return type;
}

// Standard base64 of the UTF-8 bytes of `s`.
export function base64(s) {
  return globalThis.__keelDigest("identity", String(s), undefined, "base64");
}

// Hex SHA-256 of the UTF-8 bytes of `s` (`encoding` "base64" for base64).
export function sha256(s, encoding = "hex") {
  return globalThis.__keelDigest("sha256", String(s), undefined, encoding);
}

// Hex SHA-1 of the UTF-8 bytes of `s`.
export function sha1(s, encoding = "hex") {
  return globalThis.__keelDigest("sha1", String(s), undefined, encoding);
}

// Hex MD5 of the UTF-8 bytes of `s`.
export function md5(s, encoding = "hex") {
  return globalThis.__keelDigest("md5", String(s), undefined, encoding);
}

// HMAC-SHA256 of `s` keyed with `key` (hex, or "base64").
export function hmacSha256(key, s, encoding = "hex") {
  return globalThis.__keelDigest("hmac-sha256", String(s), String(key), encoding);
}

// URL-safe base64 (no padding) of the UTF-8 bytes of `s`: JWT segments.
export function base64url(s) {
  return globalThis.__keelDigest("identity", String(s), undefined, "base64url");
}

// A signed JWT (RS256) of `claims` with the PKCS#8 PEM private key `pemKey` (a Google
// service account's `private_key`).
export function signJwtRs256(claims, pemKey, header = { alg: "RS256", typ: "JWT" }) {
  const input = `${base64url(JSON.stringify(header))}.${base64url(JSON.stringify(claims))}`;
  return `${input}.${globalThis.__keelDigest("rsa-sha256", input, String(pemKey), "base64url")}`;
}

// True when `s` already looks like a hex SHA-256 digest (64 hex digits).
export function isSha256(s) {
  return typeof s === "string" && /^[a-f0-9]{64}$/i.test(s);
}

// The event is of a kind the destination does not take: it is skipped (not dead-lettered)
// and the explain API shows this message as the reason.
export class UnsupportedEventError extends Error {
  constructor(message) {
    super(message);
    this.name = "UnsupportedEventError";
    this.status = 400;
    this.drop = true;
  }
}

// `path` ("a.b.c") in `obj`: a member of that exact name first, else the dotted walk.
export function get(obj, path) {
  if (obj === null || obj === undefined) return undefined;
  if (typeof obj === "object" && path in obj) return obj[path];
  let v = obj;
  for (const key of path.split(".")) {
    if (v === null || v === undefined) return undefined;
    v = v[key];
  }
  return v;
}

// RudderStack's getValueFromMessage over `paths`: the first value that is truthy, 0 or false;
// null when none is.
export function first(obj, paths) {
  for (const p of paths) {
    const v = get(obj, p);
    if (v || v === 0 || v === false) return v;
  }
  return null;
}

// Neither undefined nor null.
export const isSet = (v) => v !== undefined && v !== null;

// RudderStack's isDefinedAndNotNullAndNotEmpty: not undefined, null, NaN, {} or [] or blank.
export function notEmpty(v) {
  return !(
    v === undefined ||
    v === null ||
    Number.isNaN(v) ||
    (typeof v === "object" && Object.keys(v).length === 0) ||
    (typeof v === "string" && v.trim().length === 0)
  );
}
