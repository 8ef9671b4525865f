// Customer.io through its Track API (https://customer.io/docs/api/track/), as RudderStack's
// CUSTOMERIO destination (its default, non-"batching framework" path) maps events.
// Origin https://track.customer.io (https://track-eu.customer.io with datacenter "EU").
// Auth: `Authorization: Basic base64(siteID:apiKey)`.
// Config (RudderStack's keys): siteID, apiKey, datacenter ("US" | "EU"),
// deviceTokenEventName. Keel extension: apiBaseUrl replaces the origin.
// Mapping:
//   identify → PUT /api/v1/customers/{userId or email} with the traits (address flattened
//     to city/country/postalCode/state/street; createdAt → created_at seconds; _timestamp;
//     anonymous_id).
//   track → POST /api/v1/customers/{id}/events {name, type: "event", data: properties,
//     timestamp}; without a userId/email POST /api/v1/events with anonymous_id.
//     "Application Installed" / "Application Opened" (or deviceTokenEventName) with
//     context.device.token → PUT /api/v1/customers/{id}/devices; "Application
//     Uninstalled" → DELETE /api/v1/customers/{id}/devices/{token}.
//   page → the same with type "page" and name = name or properties.url.
//   screen → an event "Viewed <event or properties.name> Screen".
//   alias → POST /api/v1/merge_customers {primary: userId, secondary: previousId}
//     (keyed by email when the id looks like an email).
//   group → an object (type "object", action identify / delete / add_relationships /
//     delete_relationships) for POST /api/v2/batch, with the user as relationship.
// Batching: batch() puts group objects together into /api/v2/batch {batch: [...]} (at
// most 1000 objects and 500 KB, RudderStack's limits); the other calls go one per request
// (the v1 endpoints take one call each). batchResponse(): a 207 answer's
// errors[].batch_index dead-letters those events (RudderStack's v1 network handler).
// Departures from RudderStack: none intended; the email test behind "email or id" is a
// plain pattern (validator.isEmail is stricter on exotic addresses).
import { DestinationError, UnsupportedEventError, baseUrl, base64, get, first } from "keel";

export const maxBatchSize = 1000;
export const maxBatchBytes = 500000;

const DEVICE_EVENTS = ["Application Installed", "Application Opened", "Application Uninstalled"];
const DEVICE_DELETE_EVENT = "Application Uninstalled";
const OBJECT_ACTIONS = ["identify", "delete", "add_relationships", "delete_relationships"];
const ADDRESS = { city: "address.city", country: "address.country", postalCode: "address.postalCode", state: "address.state", street: "address.street" };

// ---------- helpers ----------

const USER_ID_ONLY = ["userId", "traits.userId", "traits.id", "context.traits.userId", "context.traits.id"];
const EMAIL = ["traits.email", "context.traits.email", "properties.email", "context.externalId.0.id"];
const HISTORICAL = ["timestamp", "originalTimestamp"];

const isEmail = (s) => typeof s === "string" && /^[^\s@"(),:;<>[\\\]]+@[^\s@"(),:;<>[\\\]]+\.[A-Za-z]{2,}$/.test(s);
const encode = (p) => (typeof p === "string" ? encodeURIComponent(p) : p);
const seconds = (t) => Math.floor(new Date(t).getTime() / 1000);

// UTF-8 safe truncation to `max` bytes.
function truncateBytes(s, max) {
  let bytes = 0;
  let out = "";
  for (const ch of String(s)) {
    const c = ch.codePointAt(0);
    const n = c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4;
    if (bytes + n > max) break;
    bytes += n;
    out += ch;
  }
  return out;
}

function dropUndefined(obj) {
  const out = {};
  for (const [k, v] of Object.entries(obj)) if (v !== undefined) out[k] = v;
  return out;
}

// ---------- per type ----------

function identify(event) {
  const userId = first(event, USER_ID_ONLY);
  const id = userId || first(event, EMAIL);
  if (!id) throw new DestinationError("userId or email is not present", 400);
  const payload = {};
  const pathToTraits = event.traits ? "traits" : "context.traits";
  const traitsSource = get(event, pathToTraits);
  for (const [key, path] of Object.entries(ADDRESS)) payload[key] = get(traitsSource, path);
  const traits = first(event, ["traits", "context.traits"]) || {};
  for (const trait of Object.keys(traits)) {
    if (trait === "address" || trait === "createdAt" || trait === "userId" || trait === "anonymousId") continue;
    const value = get(traitsSource, trait);
    // RudderStack escapes the first dot only: "a.b.c" → {"a.b": {c: …}}.
    const parts = trait.split(".");
    const keys = parts.length > 1 ? [`${parts[0]}.${parts[1]}`, ...parts.slice(2)] : parts;
    let o = payload;
    for (let i = 0; i < keys.length - 1; i += 1) {
      if (o[keys[i]] === null || typeof o[keys[i]] !== "object") o[keys[i]] = {};
      o = o[keys[i]];
    }
    o[keys[keys.length - 1]] = value;
  }
  if (event.user_properties) {
    for (const [k, v] of Object.entries(event.user_properties)) payload[k] = v;
  }
  const createdAt = first(event, ["traits.createdAt", "context.traits.createdAt"]);
  if (createdAt) payload.created_at = seconds(createdAt);
  const historical = first(event, HISTORICAL);
  if (historical) payload._timestamp = seconds(historical);
  if (event.anonymousId) payload.anonymous_id = event.anonymousId;
  return { method: "PUT", path: `/api/v1/customers/${encode(id)}`, body: payload };
}

function alias(event) {
  const userId = first(event, USER_ID_ONLY);
  if (!userId || !event.previousId) {
    throw new DestinationError("Both userId and previousId are mandatory for merge operation", 400);
  }
  return {
    method: "POST",
    path: "/api/v1/merge_customers",
    body: {
      primary: { [isEmail(userId) ? "email" : "id"]: userId },
      secondary: { [isEmail(event.previousId) ? "email" : "id"]: event.previousId },
    },
  };
}

function group(event) {
  const groupId = first(event, ["groupId", "traits.groupId"]);
  if (!(groupId || groupId === 0 || groupId === false)) {
    throw new DestinationError('Missing required value from "groupId"', 400);
  }
  const objectTypeId = get(event, "traits.objectTypeId");
  const userId = first(event, USER_ID_ONLY);
  const email = first(event, ["context.traits.email", "properties.email", "context.externalId.0.id"]);
  const action = first(event, ["traits.action", "properties.action"]);
  let attributes = event.traits;
  if (attributes && typeof attributes === "object") {
    attributes = { ...attributes };
    delete attributes.action;
  }
  const payload = {
    identifiers: {
      object_id: String(groupId),
      object_type_id: objectTypeId !== undefined && objectTypeId !== null ? String(objectTypeId) : "1",
    },
    type: "object",
    action: action && OBJECT_ACTIONS.includes(action) ? action : "identify",
    attributes: attributes || {},
    cio_relationships: [],
  };
  const id = (userId !== null && userId !== undefined ? String(userId) : undefined) || email;
  if (id) payload.cio_relationships.push({ identifiers: { [isEmail(id) ? "email" : "id"]: id } });
  return { method: "POST", path: "/api/v2/batch", body: payload };
}

function other(event, evName, evType, messageType, config) {
  const payload = {};
  const userId = first(event, USER_ID_ONLY);
  const token = get(event, "context.device.token");
  const id = encode(userId || first(event, EMAIL));
  if (evName === DEVICE_DELETE_EVENT) {
    if (!id || !token) throw new DestinationError("userId/email or device_token not present", 400);
    return { method: "DELETE", path: `/api/v1/customers/${id}/devices/${encode(token)}`, body: {} };
  }
  const isDeviceEvent = DEVICE_EVENTS.includes(evName) || config.deviceTokenEventName === evName;
  let method = "POST";
  if (isDeviceEvent && id && token) {
    const timestamp = event.timestamp || event.originalTimestamp;
    const device = { ...event.properties, id: token, last_used: seconds(timestamp) };
    const deviceType = get(event, "context.device.type");
    if (deviceType && typeof deviceType === "string") {
      const apple = ["ios", "watchos", "ipados", "tvos"].includes(deviceType.toLowerCase());
      device.platform = apple ? "ios" : deviceType.toLowerCase();
    }
    payload.device = device;
    method = "PUT";
  } else {
    payload.data = event.properties;
    payload.name = evName;
    payload.type = evType;
    const historical = first(event, HISTORICAL);
    if (historical) payload.timestamp = seconds(historical);
  }
  if (id) {
    const path = isDeviceEvent && token ? `/api/v1/customers/${id}/devices` : `/api/v1/customers/${id}/events`;
    return { method, path, body: payload };
  }
  let name;
  if (messageType === "screen") {
    name = `Viewed ${truncateBytes(event.event || event.properties?.name || "", 86)} Screen`;
  } else {
    if (typeof evName !== "string") throw new DestinationError("Event Name type should be a string", 400);
    name = truncateBytes(evName, 100);
  }
  if (!event.anonymousId) throw new DestinationError("Anonymous id/ user id is required", 400);
  payload.anonymous_id = event.anonymousId;
  payload.name = name;
  return { method, path: "/api/v1/events", body: payload };
}

export function process(event, destination) {
  const config = destination.Config ?? {};
  for (const key of ["siteID", "apiKey"]) {
    if (!config[key]) throw new DestinationError(`${key} not found in Configs`, 400);
  }
  const messageType = String(event.type ?? "").toLowerCase();
  let built;
  if (messageType === "identify") built = identify(event);
  else if (messageType === "alias") built = alias(event);
  else if (messageType === "group") built = group(event);
  else if (messageType === "page" || messageType === "screen" || messageType === "track") {
    let evType = "event";
    let evName;
    if (messageType === "page") {
      evType = "page";
      evName = event.name || event.properties?.url;
    } else if (messageType === "screen") {
      evName = `Viewed ${event.event || event.properties?.name} Screen`;
    } else {
      if (!event.event || typeof event.event !== "string") {
        throw new DestinationError("Event is a required field and should be a string", 400);
      }
      evName = event.event;
    }
    evName = evName ? String(evName) : evName;
    built = other(event, evName, evType, messageType, config);
  } else {
    throw new UnsupportedEventError(`could not determine type ${messageType}`);
  }
  const host = config.datacenter === "EU" ? "https://track-eu.customer.io" : "https://track.customer.io";
  return {
    method: built.method,
    endpoint: `${baseUrl(config.apiBaseUrl, host)}${built.path}`,
    headers: { Authorization: `Basic ${base64(`${config.siteID}:${config.apiKey}`)}` },
    params: {},
    // A device deletion has no body.
    body: built.method === "DELETE" ? {} : { JSON: dropUndefined(built.body) },
  };
}

// ---------- batching ----------

function jsonBytes(v) {
  const s = JSON.stringify(v) ?? "";
  let n = 0;
  for (const ch of s) {
    const c = ch.codePointAt(0);
    n += c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4;
  }
  return n;
}

export function batch(requests) {
  const out = [];
  const objects = [];
  requests.forEach((r, i) => {
    if (String(r.endpoint).endsWith("/api/v2/batch") && !Array.isArray(r.body?.JSON?.batch)) objects.push(i);
    else out.push({ request: r, events: [i] });
  });
  let chunk = [];
  let size = 0;
  const flush = () => {
    if (chunk.length === 0) return;
    const firstReq = requests[chunk[0]];
    out.push({
      request: {
        method: "POST",
        endpoint: firstReq.endpoint,
        headers: { ...firstReq.headers, "Content-Type": "application/json" },
        params: {},
        body: { JSON: { batch: chunk.map((i) => requests[i].body.JSON) } },
      },
      events: chunk,
    });
    chunk = [];
    size = 0;
  };
  for (const i of objects) {
    const n = jsonBytes(requests[i].body?.JSON);
    if (chunk.length >= maxBatchSize || (chunk.length > 0 && size + n > maxBatchBytes)) flush();
    chunk.push(i);
    size += n;
  }
  flush();
  return out;
}

export function batchResponse(response, requests) {
  if (response.status !== 207) return requests.map(() => null);
  const errors = Array.isArray(response.body?.errors) ? response.body.errors : [];
  const failed = new Map();
  for (const e of errors) {
    const parts = [
      e.reason ? `reason: ${e.reason}` : undefined,
      e.field ? `field: ${e.field}` : undefined,
      e.message ? `message: ${e.message}` : undefined,
    ].filter(Boolean);
    failed.set(e.batch_index, parts.length > 0 ? parts.join(", ") : "Unknown error from CustomerIO");
  }
  return requests.map((_, i) => (failed.has(i) ? { status: 400, error: failed.get(i) } : { status: 200 }));
}
